#!/usr/bin/env node
// The official TypeScript SDK client signing in to a server that wants MCP authorization (OAuth):
// StreamableHTTPClientTransport with an `authProvider`, as a native app with a loopback redirect
// URI uses it.
//
//   node ts_oauth_client.mjs --url http://localhost:8000/mcp --redirect http://127.0.0.1:PORT/callback
//
// 1. connect() without tokens: the SDK discovers the server's metadata, registers (RFC 7591),
//    calls redirectToAuthorization(url) and throws UnauthorizedError. The URL is printed on stdout
//    as one JSON line {"authorize": URL}.
// 2. The caller opens it in a browser and writes the redirect URL the browser reached on stdin.
// 3. transport.finishAuth(code) redeems the code; a fresh transport and Client connect with the
//    tokens, list the tools and call create_auth_code with --callback-url.
// Then a JSON report on stdout (never a token): exit 0 when every check passed, 1 otherwise.

import { createInterface } from "node:readline";
import { randomBytes } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const argv = process.argv.slice(2);
const opt = (name) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const url = opt("--url");
const redirect = opt("--redirect");
const callbackUrl = opt("--callback-url") ?? "https://myapp.example/auth/callback";
if (!url || !redirect) {
  process.stderr.write("usage: node ts_oauth_client.mjs --url URL --redirect REDIRECT_URI [--callback-url URL]\n");
  process.exit(2);
}

class MemoryProvider {
  constructor(redirectUrl) {
    this.redirect = redirectUrl;
    this.expectedState = randomBytes(16).toString("hex");
    this.authorizationUrl = null;
  }
  get redirectUrl() { return this.redirect; }
  get clientMetadata() {
    return {
      client_name: "TypeScript SDK e2e",
      redirect_uris: [this.redirect],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  state() { return this.expectedState; }
  clientInformation() { return this.client; }
  saveClientInformation(info) { this.client = info; }
  tokens() { return this.saved; }
  saveTokens(tokens) { this.saved = tokens; }
  redirectToAuthorization(authorizationUrl) { this.authorizationUrl = authorizationUrl; }
  saveCodeVerifier(verifier) { this.verifier = verifier; }
  codeVerifier() { return this.verifier; }
}

const report = { ok: false, checks: [], tools: [], call: null };
const check = (name, ok, detail) => {
  report.checks.push({ name, ok: !!ok, ...(ok || detail === undefined ? {} : { detail }) });
  return !!ok;
};
const info = { name: "mcp-modelgates-e2e-oauth", version: "1.0.0" };
const provider = new MemoryProvider(redirect);
const opts = { timeout: 30000 };

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
try {
  const first = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  try {
    await new Client(info, { capabilities: {} }).connect(first, opts);
    check("the first connect asks for a sign-in", false, "connected without one");
  } catch (e) {
    check("the first connect asks for a sign-in", e instanceof UnauthorizedError, String(e?.stack || e));
  }
  check("registered as a public client", provider.client?.client_id && !provider.client?.client_secret, provider.client);
  if (!provider.authorizationUrl) throw new Error("no authorization URL");
  process.stdout.write(JSON.stringify({ authorize: provider.authorizationUrl.href }) + "\n");

  const { value: line } = await lines.next();
  const back = new URL(String(line).trim());
  check("state came back unchanged", back.searchParams.get("state") === provider.expectedState, back.searchParams.get("state"));
  check("the authorization response names its issuer", back.searchParams.has("iss"));
  await first.finishAuth(back.searchParams.get("code") ?? "");
  check("tokens saved", !!provider.saved?.access_token && !!provider.saved?.refresh_token);

  const client = new Client(info, { capabilities: {} });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }), opts);
  check("connected with the tokens", client.getServerVersion()?.name === "mcp-modelgates", client.getServerVersion());
  report.tools = (await client.listTools(undefined, opts)).tools.map((t) => t.name);
  const result = await client.callTool({ name: "create_auth_code", arguments: { callback_url: callbackUrl } }, undefined, opts);
  report.call = { isError: !!result.isError, structuredContent: result.structuredContent ?? null };
  check("create_auth_code succeeds", !result.isError, result.content);
  await client.close();
} catch (e) {
  check("session", false, String(e?.stack || e));
}
report.ok = report.checks.length > 0 && report.checks.every((c) => c.ok);
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(report.ok ? 0 : 1);
