"""The installed console script over a real stdio pipe, as Claude Code and Cursor launch it."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import stdio_client

from mcp_modelgates import __version__
from tests.conftest import API_KEY, ClientFactory, server_command, stdio_params, wire
from tests.fake_api import FakeModelGates

VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy"])  # the handshake era that Claude Code and Cursor speak
async def test_stdio_session_matches_the_in_memory_server(fake: FakeModelGates, connect: ClientFactory) -> None:
    params = stdio_params({"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url})
    calls: list[tuple[str, dict[str, Any]]] = [
        ("create_auth_code", {"callback_url": "http://localhost:3000/cb", "limit": 5}),
        ("exchange_auth_code", {"code": "auth_code_unknown", "code_verifier": VERIFIER}),
        ("exchange_auth_code", {"code": "https://app/cb?code=abc&state=1"}),
    ]
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        over_stdio_tools = await session.list_tools()
        fake.reply(200, {"data": {"id": "auth_code_1", "app_id": 7, "created_at": "2025-08-24T10:30:00Z"}})
        over_stdio = [wire(await session.call_tool(name, args)) for name, args in calls]
    assert (init.server_info.name, init.server_info.version) == ("mcp-modelgates", __version__)
    assert init.instructions and "generate_pkce" in init.instructions

    async with connect() as client:
        in_memory_tools = await client.list_tools()
        fake.reply(200, {"data": {"id": "auth_code_1", "app_id": 7, "created_at": "2025-08-24T10:30:00Z"}})
        in_memory = [wire(await client.call_tool(name, args)) for name, args in calls]
    assert wire(over_stdio_tools) == wire(in_memory_tools)
    assert over_stdio == in_memory
    assert over_stdio[0]["structuredContent"]["data"]["app_id"] == 7
    assert over_stdio[1]["isError"] is True and "HTTP 403" in over_stdio[1]["content"][0]["text"]
    assert over_stdio[2]["isError"] is True and "only the value" in over_stdio[2]["content"][0]["text"]
    # one exchange reached the API from each session; the whole-URL code never did
    assert [r.path for r in fake.requests].count("/api/v1/auth/keys") == 2


def _rpc(id_: int, method: str, params: dict[str, Any] | None = None) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}) + "\n"


def test_every_stdout_line_is_json_rpc_and_eof_ends_the_server(fake: FakeModelGates) -> None:
    fake.reply(502, body=b"<html>\x1b[2J bad gateway</html>")
    proc = subprocess.Popen(
        server_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=stdio_params(
            {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url, "MODELGATES_MAX_RETRIES": "0"}
        ).env,
    )
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    lines = [
        _rpc(1, "initialize", init),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n",
        "this is not json\n",
        _rpc(2, "tools/list"),
        _rpc(3, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": "https://a.b/cb"}}),
        _rpc(4, "tools/call", {"name": "exchange_auth_code", "arguments": {"code": 12}}),
        _rpc(5, "tools/call", {"name": "nope", "arguments": {}}),
        _rpc(6, "prompts/get", {"name": "connect_modelgates_account", "arguments": {"callback_url": "https://a.b/c"}}),
    ]
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write("".join(lines).encode())
    proc.stdin.flush()
    raw_lines: list[bytes] = []
    while {1, 2, 3, 4, 5, 6} - {json.loads(line).get("id") for line in raw_lines}:
        line = proc.stdout.readline()
        assert line, "the server closed stdout early"
        raw_lines.append(line)
    proc.stdin.close()  # end of input: the server must exit cleanly
    assert proc.wait(timeout=5) == 0
    out = b"".join(raw_lines) + proc.stdout.read()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    messages = [json.loads(line) for line in out.decode().splitlines()]  # every line parses
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    by_id = {m.get("id"): m for m in messages}
    assert by_id[3]["result"]["isError"] is True and "HTTP 502" in by_id[3]["result"]["content"][0]["text"]
    assert by_id[4]["result"]["isError"] is True and "code: " in by_id[4]["result"]["content"][0]["text"]
    assert by_id[5]["error"]["code"] == -32602
    assert "generate_pkce" in by_id[6]["result"]["messages"][0]["content"]["text"]
    assert API_KEY not in out.decode() and API_KEY not in err.decode()
    assert b"\x1b" not in out
