#!/usr/bin/env node
// The official TypeScript SDK client (@modelcontextprotocol/sdk Client + StdioClientTransport, or
// StreamableHTTPClientTransport with --url) against an MCP server, checked with ajv the way a
// strict TypeScript host would check it.
//
//   node ts_client.mjs --spec spec.json [--env KEY=VALUE]... -- SERVER_CMD [ARGS...]
//   node ts_client.mjs --spec spec.json --url http://127.0.0.1:8000/mcp [--header NAME=VALUE]...
//
// Checks: every tool's inputSchema and outputSchema compile with ajv; every tool has an object
// outputSchema; the spec's expected input/output properties and required inputs are there; each
// spec call succeeds (arguments valid against the inputSchema, structuredContent valid against
// the outputSchema, the expectStructured subset and the expectKeys present) or fails as expected (isError or a
// JSON-RPC error, with expectErrorText in its message). Prints a JSON report on stdout; exit 0
// when every check passed, 1 otherwise, 2 on a usage error.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport, getDefaultEnvironment } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { AjvJsonSchemaValidator } from "@modelcontextprotocol/sdk/validation/ajv";

const argv = process.argv.slice(2);
const dd = argv.includes("--url") ? argv.length : argv.indexOf("--");
if (dd < 0 || dd === argv.length - 1) {
  process.stderr.write("usage: node ts_client.mjs --spec FILE [--env K=V]... -- CMD [ARGS...] | --url URL [--header K=V]...\n");
  process.exit(2);
}
const [command, ...args] = argv.slice(dd + 1);
const env = {};
const headers = {};
let spec = null;
let url = null;
for (let i = 0; i < dd; i += 2) {
  const [flag, val] = [argv[i], argv[i + 1]];
  if (flag === "--spec" && val) spec = JSON.parse(readFileSync(val, "utf8"));
  else if (flag === "--env" && val?.includes("=")) env[val.slice(0, val.indexOf("="))] = val.slice(val.indexOf("=") + 1);
  else if (flag === "--header" && val?.includes("=")) headers[val.slice(0, val.indexOf("="))] = val.slice(val.indexOf("=") + 1);
  else if (flag === "--url" && val) url = new URL(val);
  else {
    process.stderr.write(`ts_client: bad option ${flag} ${val ?? ""}\n`);
    process.exit(2);
  }
}
if (!spec) {
  process.stderr.write("ts_client: --spec is required\n");
  process.exit(2);
}

const report = { ok: false, protocolVersion: null, serverInfo: null, checks: [], stderrTail: "" };
const check = (name, ok, detail) => {
  report.checks.push({ name, ok: !!ok, ...(ok || detail === undefined ? {} : { detail }) });
  return !!ok;
};
const subset = (want, got) =>
  want === null || typeof want !== "object"
    ? want === got
    : got !== null && typeof got === "object" && Object.entries(want).every(([k, v]) => subset(v, got[k]));
const textOf = (result) => (result.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

const ajv = new AjvJsonSchemaValidator();
const compile = (label, schema) => {
  try {
    const validate = ajv.getValidator(schema);
    check(`${label} compiles (ajv)`, true);
    return validate;
  } catch (e) {
    check(`${label} compiles (ajv)`, false, String(e.message || e));
    return null;
  }
};

const transport = url
  ? new StreamableHTTPClientTransport(url, { requestInit: { headers } })
  : new StdioClientTransport({ command, args, env: { ...getDefaultEnvironment(), ...env }, stderr: "pipe" });
let stderr = "";
transport.stderr?.on("data", (d) => { stderr = (stderr + d.toString()).slice(-3000); });
const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
transport.setProtocolVersion = (v) => { report.protocolVersion = v; setProtocolVersion?.(v); };

const client = new Client({ name: "mcp-modelgates-e2e", version: "1.0.0" }, { capabilities: {} });
const opts = { timeout: 30000 };
try {
  await client.connect(transport, opts);
  report.serverInfo = client.getServerVersion();
  check("initialize", !!report.serverInfo, report.serverInfo);

  const tools = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : undefined, opts);
    tools.push(...page.tools);
    cursor = page.nextCursor;
  } while (cursor);
  check("tools/list", tools.length > 0, { count: tools.length });

  const byName = new Map();
  for (const t of tools) {
    const input = compile(`${t.name}: inputSchema`, t.inputSchema);
    check(`${t.name}: inputSchema is an object schema`, t.inputSchema?.type === "object", t.inputSchema);
    // every tool here returns structured content, so every tool must declare what it looks like
    const output = check(`${t.name}: has an object outputSchema`, t.outputSchema?.type === "object", t.outputSchema ?? null)
      ? compile(`${t.name}: outputSchema`, t.outputSchema)
      : null;
    byName.set(t.name, { tool: t, input, output });
  }
  const props = (schema) => Object.keys(schema?.properties || {});
  const named = new Set(["expect", "outputs", "require"].flatMap((kind) => Object.keys(spec[kind] || {})));
  for (const name of named) check(`${name}: listed`, byName.has(name), [...byName.keys()]);
  for (const [kind, field, key] of [["expect", "inputSchema", "properties"], ["outputs", "outputSchema", "properties"], ["require", "inputSchema", "required"]]) {
    for (const [name, want] of Object.entries(spec[kind] || {})) {
      const entry = byName.get(name);
      if (!entry) continue;
      const have = key === "required" ? entry.tool[field]?.required || [] : props(entry.tool[field]);
      const missing = want.filter((p) => !have.includes(p));
      check(`${name}: ${field} ${key} include ${want.join(",")}`, missing.length === 0, { missing, have });
    }
  }

  for (const [i, c] of (spec.calls || []).entries()) {
    const label = `call #${i} ${c.tool}${c.expectError ? " (expect error)" : ""}`;
    const entry = byName.get(c.tool);
    if (!c.expectError && entry?.input) {
      const v = entry.input(c.args);
      check(`${label}: arguments match the inputSchema`, v.valid, v.errorMessage);
    }
    let result;
    try {
      result = await client.callTool({ name: c.tool, arguments: c.args }, undefined, opts);
    } catch (e) {
      // a JSON-RPC error (or the SDK rejecting structuredContent that breaks the outputSchema)
      const message = String(e.message || e);
      const ok = !!c.expectError && typeof e.code === "number" && e.code !== -32001 && message.includes(c.expectErrorText ?? "");
      check(label, ok, { protocolError: { code: e.code, message } });
      continue;
    }
    const text = textOf(result);
    if (c.expectError) {
      check(label, result.isError === true && text.includes(c.expectErrorText ?? ""), { isError: !!result.isError, text });
      continue;
    }
    check(`${label}: succeeds`, !result.isError, text);
    check(`${label}: has a text version`, text.length > 0);
    if (entry?.output) {
      const v = entry.output(result.structuredContent);
      check(`${label}: structuredContent validates against the outputSchema`, result.structuredContent !== undefined && v.valid, v.errorMessage);
    }
    if (c.expectKeys !== undefined) {
      const sc = result.structuredContent ?? {};
      check(`${label}: structuredContent has ${c.expectKeys.join(",")}`, c.expectKeys.every((k) => typeof sc[k] === "string" && sc[k].length > 0), sc);
    }
    if (c.expectStructured !== undefined) {
      check(`${label}: structuredContent holds ${JSON.stringify(c.expectStructured)}`, subset(c.expectStructured, result.structuredContent), result.structuredContent);
    }
  }
} catch (e) {
  check("session", false, String(e?.stack || e));
} finally {
  try { await client.close(); } catch { /* the report says what matters */ }
}
report.stderrTail = stderr;
report.ok = report.checks.length > 0 && report.checks.every((c) => c.ok);
process.stdout.write(JSON.stringify(report, null, 2) + "\n");
process.exit(report.ok ? 0 : 1);
