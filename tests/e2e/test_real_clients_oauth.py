"""Real clients signing in to `mcp-modelgates --transport http` with MODELGATES_AUTH=oauth, as users
of a hosted server do: nothing configured but its URL.

The pinned clients of tests/e2e/package.json (installed by `npm ci`, see test_real_clients.py):
- the TypeScript SDK's StreamableHTTPClientTransport with an `authProvider` (ts_oauth_client.mjs):
  connect, UnauthorizedError, the browser, `finishAuth`, then a tool call;
- Claude Code: `claude mcp list` says `! Needs authentication`; `claude mcp login NAME --no-browser`,
  which insists on a terminal, runs in a pseudo-terminal and gets the redirect URL pasted back;
  then `✔ Connected`, and the offline `-p` init event lists the server's tools;
- mcp-remote, the stdio-to-HTTP proxy: it prints the authorization URL, the browser ends at its
  loopback listener, and the Python SDK's stdio client calls a tool through it.

The browser is tests/browser.py (consent page, Approve, the stand-in's `GET /auth` approving at
once, the server's callback). The server's public URL is on `localhost`, the stand-in on
`127.0.0.1`. Each upstream call must carry the key that user's sign-in minted, and no minted key
may reach the server's log or a client's files.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests import test_http
from tests.browser import Browser, Page
from tests.e2e.terminal import Terminal
from tests.e2e.test_real_clients import E2E, NAME, TIMEOUT, client_env, explain, node_bin, run
from tests.fake_api import FakeModelGates
from tests.test_http import HttpServer, free_port
from tests.test_oauth import API_TOOLS, CALLBACK, start_oauth_server

__all__ = ["node_bin"]  # a fixture, imported to be found here (and `api`, `_fresh_stand_in` below)

pytestmark = pytest.mark.anyio
MAX_OUTPUT = 1 << 20  # bytes kept of a client's line of output


# The HTTP tests' stand-in fixtures: one per module, reset before each test.
api = test_http.api
_fresh_stand_in = test_http._fresh_stand_in
MINTED: list[str] = []


@pytest.fixture(autouse=True)
def _remember_minted_keys(api: FakeModelGates) -> Iterator[None]:
    yield
    MINTED.extend(api.minted)


@pytest.fixture(scope="module")
def server(api: FakeModelGates) -> Iterator[HttpServer]:
    started = start_oauth_server(api)
    yield started
    assert started.stop() == 0
    leaked = [key for key in MINTED if key in started.stderr]
    assert MINTED and not leaked, "a minted key reached the server's log"


def mcp_url(server: HttpServer) -> str:
    return f"http://localhost:{server.port}/mcp"


def upstream_keys(api: FakeModelGates) -> list[str | None]:
    """The Authorization header of each create_auth_code call that reached ModelGates."""
    return [r.headers.get("authorization") for r in api.requests if r.path == "/api/v1/auth/keys/code"]


def holds_no_minted_key(folder: Path, api: FakeModelGates) -> bool:
    texts = [p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return not any(key.encode() in text for key in api.minted for text in texts)


async def approve(authorization_url: str, stop_at: str | None = None) -> Page:
    """The user in the browser: the consent page, Approve, ModelGates, back to the client (not
    requested when `stop_at` is its redirect URI; requested, when a client listens there)."""
    browser = Browser(stop_at=(lambda u: u.startswith(stop_at)) if stop_at else None)
    try:
        consent = await browser.get(authorization_url)
        assert consent.status == 200 and "Connect your ModelGates account" in consent.text, consent.text[:500]
        return await browser.submit(consent, "action", "approve")
    finally:
        await browser.aclose()


# ---------------------------------------------------------------- the TypeScript SDK client


async def test_ts_sdk_client_signs_in_with_its_auth_provider_and_calls_with_the_users_key(
    node_bin: Path, server: HttpServer, api: FakeModelGates, tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    argv = [
        str(node_bin / "node"), str(E2E / "ts_oauth_client.mjs"),
        "--url", mcp_url(server), "--redirect", redirect, "--callback-url", CALLBACK,
    ]  # fmt: skip
    with (tmp_path / "stderr").open("wb") as errors:
        async with await anyio.open_process(argv, env=client_env(node_bin, tmp_path), stderr=errors) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            out = BufferedByteReceiveStream(proc.stdout)
            with anyio.fail_after(TIMEOUT):
                asked = json.loads(await out.receive_until(b"\n", MAX_OUTPUT))
                final = await approve(asked["authorize"], stop_at=redirect)
                assert final.response is None and "code" in final.query, final.url
                await proc.stdin.send(final.url.encode() + b"\n")
                report: dict[str, Any] = json.loads(await out.receive_until(b"\n", MAX_OUTPUT))
                assert await proc.wait() in (0, 1)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]] or (tmp_path / "stderr").read_text()[-3000:]
    assert report["tools"] == API_TOOLS and report["call"]["isError"] is False
    assert report["call"]["structuredContent"]["data"]["id"].startswith("auth_code_")
    (minted,) = api.minted
    assert upstream_keys(api) == [f"Bearer {minted}"]
    assert minted not in json.dumps(report) and minted not in final.url


# ---------------------------------------------------------------- Claude Code


def in_a_terminal(
    argv: list[str], env: dict[str, str], cwd: Path, answer: Callable[[str], str | None], done: str
) -> str:
    """Run `argv` in a pseudo-terminal. Each time output arrives, `answer(all output so far)` may
    give a line to type (once); stops when `done` is shown or the process ends, within TIMEOUT
    seconds. Returns the output, escape sequences and all."""
    with Terminal(argv, env, cwd) as term:
        typed = False
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not term.closed and done not in term.output:
            term.read(0.2)
            if not typed and (line := answer(term.output)) is not None:
                term.send(line + "\r")
                typed = True
        return term.output


def status_line(proc: subprocess.CompletedProcess[str]) -> str:
    return next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"{NAME}: ")), "")


def test_claude_code_needs_authentication_then_logs_in_and_offers_the_tools(
    node_bin: Path, server: HttpServer, api: FakeModelGates, tmp_path: Path
) -> None:
    """The README's hosted set-up: `claude mcp add --transport http modelgates URL`, nothing else."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = {**client_env(node_bin, tmp_path), "HOME": str(home)}
    claude = str(node_bin / "claude")
    added = run([claude, "mcp", "add", "--transport", "http", NAME, mcp_url(server)], env, cwd=project)
    assert added.returncode == 0, explain(added)
    before = run([claude, "mcp", "list"], env, cwd=project)
    assert "! Needs authentication" in status_line(before), explain(before)

    shown: list[str] = []

    def paste_the_redirect(output: str) -> str | None:
        found = re.search(rf"http://localhost:{server.port}/authorize\?[^\s\x07\x1b]+", output)
        if not found or "paste the redirect URL" not in output:
            return None
        redirect = parse_qs(urlsplit(found.group(0)).query)["redirect_uri"][0]
        callback = anyio.run(approve, found.group(0), redirect)
        shown.append(callback.url)
        return callback.url

    login = in_a_terminal(
        [claude, "mcp", "login", NAME, "--no-browser"], env, project, paste_the_redirect, done="Authenticated with"
    )
    assert shown and f'Authenticated with "{NAME}"' in login, login[-3000:]
    after = run([claude, "mcp", "list"], env, cwd=project)
    assert "✔ Connected" in status_line(after), explain(after)

    # Offline (no model login): the session still connects the server and lists its tools.
    printed = run([claude, "-p", "list your tools", "--output-format", "stream-json", "--verbose"], env, cwd=project)
    events = [json.loads(ln) for ln in printed.stdout.splitlines() if ln.startswith("{")]
    init = next((e for e in events if e.get("type") == "system" and e.get("subtype") == "init"), None)
    assert init is not None, explain(printed)
    assert {"name": NAME, "status": "connected"} in [
        {k: s.get(k) for k in ("name", "status")} for s in init["mcp_servers"]
    ]
    offered = {t for t in init["tools"] if t.startswith(f"mcp__{NAME}__")}
    assert offered == {f"mcp__{NAME}__{tool}" for tool in API_TOOLS}  # no connect_account with sign-in
    (minted,) = api.minted
    assert "mcpOAuth" in json.loads((home / ".claude" / ".credentials.json").read_text())  # where its tokens are
    assert holds_no_minted_key(home, api) and minted not in login


# ---------------------------------------------------------------- mcp-remote


async def test_mcp_remote_signs_in_and_proxies_a_tool_call_with_the_users_key(
    node_bin: Path, server: HttpServer, api: FakeModelGates, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {**client_env(node_bin, tmp_path), "HOME": str(home), "BROWSER": "true"}  # it opens no browser
    params = StdioServerParameters(command=str(node_bin / "mcp-remote"), args=[mcp_url(server), str(port)], env=env)
    log = tmp_path / "mcp-remote.log"
    finals: list[Page] = []

    async def user_signs_in() -> None:
        for _ in range(TIMEOUT * 10):
            found = re.search(r"Please authorize this client by visiting:\s+(\S+)", await anyio.Path(log).read_text())
            if found:
                finals.append(await approve(found.group(1)))  # followed to mcp-remote's own listener
                return
            await anyio.sleep(0.1)

    with log.open("w") as errlog, anyio.fail_after(TIMEOUT):
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            async with anyio.create_task_group() as tg:
                tg.start_soon(user_signs_in)
                await session.initialize()
            tools = await session.list_tools()
            created = await session.call_tool("create_auth_code", {"callback_url": CALLBACK})
    (final,) = finals
    assert final.url.startswith(f"http://localhost:{port}/oauth/callback?") and final.status == 200, final.url
    assert [t.name for t in tools.tools] == API_TOOLS
    assert created.is_error is False, created.content
    (minted,) = api.minted
    assert upstream_keys(api) == [f"Bearer {minted}"]
    assert list((home / ".mcp-auth").rglob("*_tokens.json"))  # where its tokens are
    assert holds_no_minted_key(home, api) and minted not in log.read_text()
