"""Third-party MCP clients against `mcp-modelgates --transport http`, as a hosted server is used.

The same pinned clients as test_real_clients.py (installed there by `npm ci`): the Inspector CLI
over `--transport http`, the TypeScript SDK's StreamableHTTPClientTransport (ts_client.mjs
--url) and Claude Code with the README's `claude mcp add --transport http` line. The server is
the console script on a free 127.0.0.1 port in shared-key mode with a bearer token, talking to
the in-process ModelGates stand-in.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.e2e.test_real_clients import (  # the install fixture and helpers are shared
    E2E,
    NAME,
    README,
    SPEC,
    api,
    check_tool_list,
    client_env,
    explain,
    node_bin,
    run,
    subset,
)
from tests.fake_api import FakeModelGates
from tests.test_http import HttpServer, start_server

__all__ = ["api", "node_bin"]  # fixtures, imported to be found here

TOKEN = "tok-e2e-http-5b1f0c9a8d7e6f42"


@pytest.fixture(scope="module")
def server(api: FakeModelGates) -> Iterator[HttpServer]:
    env = {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": api.base_url, "MODELGATES_HTTP_TOKEN": TOKEN}
    started = start_server(env)
    yield started
    assert started.stop() == 0
    assert TOKEN not in started.stderr and API_KEY not in started.stderr


def inspector(node_bin: Path, scratch: Path, server: HttpServer, *args: str, token: str | None = TOKEN) -> Any:
    header = ["--header", f"Authorization: Bearer {token}"] if token else []
    argv = [str(node_bin / "mcp-inspector"), "--cli", server.url, "--transport", "http", *header, *args]
    return run(argv, client_env(node_bin, scratch))


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_over_http_lists_and_calls_the_tools(
    node_bin: Path, server: HttpServer, tmp_path: Path, era: str
) -> None:
    listed = inspector(node_bin, tmp_path, server, "--protocol-era", era, "--method", "tools/list")
    assert listed.returncode == 0, explain(listed)
    check_tool_list(json.loads(listed.stdout)["tools"])
    for call in SPEC["calls"][:3]:  # the three that succeed: generate, create, exchange
        tool_args = [f"{k}={json.dumps(v)}" for k, v in call["args"].items()]
        proc = inspector(
            node_bin, tmp_path, server, "--protocol-era", era,
            "--method", "tools/call", "--tool-name", call["tool"], "--tool-arg", *tool_args,
        )  # fmt: skip
        assert proc.returncode == 0, explain(proc)
        assert subset(call["expectStructured"], json.loads(proc.stdout)["structuredContent"])


def test_inspector_without_the_token_is_refused(node_bin: Path, server: HttpServer, tmp_path: Path) -> None:
    proc = inspector(node_bin, tmp_path, server, "--method", "tools/list", token=None)
    assert proc.returncode != 0 and '"tools"' not in proc.stdout, explain(proc)


def test_ts_sdk_streamable_http_client_passes_every_spec_check(
    node_bin: Path, server: HttpServer, tmp_path: Path
) -> None:
    argv = [
        str(node_bin / "node"), str(E2E / "ts_client.mjs"), "--spec", str(E2E / "spec.json"),
        "--url", server.url, "--header", f"Authorization=Bearer {TOKEN}",
    ]  # fmt: skip
    proc = run(argv, client_env(node_bin, tmp_path))
    assert proc.returncode in (0, 1), explain(proc)
    report = json.loads(proc.stdout)
    assert report["serverInfo"]["name"] == "mcp-modelgates"
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]


def test_readme_claude_mcp_add_http_line_connects(node_bin: Path, server: HttpServer, tmp_path: Path) -> None:
    """The README's hosted-server line, with this server's URL and token; no network namespace
    here, as Claude Code must reach the server on this machine's loopback."""
    line = next(ln for ln in README.splitlines() if ln.startswith("claude mcp add --transport http "))
    argv = shlex.split(line)
    url = next(a for a in argv if a.startswith("https://"))
    argv = [a.replace(url, server.url).replace("sk-...", TOKEN) for a in argv[1:]]
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = {**client_env(node_bin, tmp_path), "HOME": str(home)}
    claude = str(node_bin / "claude")
    added = run([claude, *argv], env, cwd=project)
    assert added.returncode == 0, explain(added)
    config = json.loads((home / ".claude.json").read_text())
    (entry,) = [p["mcpServers"] for p in config["projects"].values() if p.get("mcpServers")]
    assert entry[NAME]["type"] == "http" and entry[NAME]["url"] == server.url
    listed = run([claude, "mcp", "list"], env, cwd=project)
    status = next((ln for ln in listed.stdout.splitlines() if ln.startswith(f"{NAME}: ")), "")
    assert listed.returncode == 0 and "✔ Connected" in status, explain(listed)
    assert re.search(re.escape(server.url), status)
