"""The streamable HTTP transport for real: the console script as a subprocess on 127.0.0.1, spoken
to by httpx and by the SDK's streamable HTTP client in both protocol eras.

Server processes are started once per module (a token-protected shared-key pair, for the
statelessness test, and one in per-caller key mode); every test resets the stand-in. Their
stderr is kept, and the last test checks that no key or token ever reached it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from mcp_modelgates import __version__
from mcp_modelgates.config import ConfigError, Settings, caller_key_for_request, load_settings
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY, BOTH_ERAS, server_command, wire
from tests.fake_api import KEY_PREFIX, FakeModelGates, Recorded, Reply, s256

TOKEN = "tok-http-test-7d3a91c2e5f04b18"
ALICE = "sk-caller-alice-1111aaaa"
BOB = "sk-caller-bob-2222bbbb"
SECRETS = (API_KEY, TOKEN, ALICE, BOB)
ORIGIN = "https://app.example.com"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CALLBACK = "https://myapp.example/auth/callback"
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
MODERN = "2026-07-28"
API_TOOLS = ["generate_pkce", "create_auth_code", "exchange_auth_code"]
LOOPBACK_TOOLS = [*API_TOOLS, "connect_account"]  # bound to loopback, the server is on the user's machine

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(env: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MODELGATES_")}, **env}


@dataclass
class HttpServer:
    """The console script serving `--transport http` on a free port; its output is drained by threads."""

    proc: subprocess.Popen[bytes]
    port: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def start_server(env: dict[str, str], *args: str, port: int | None = None) -> HttpServer:
    port = port or free_port()
    proc = subprocess.Popen(
        [*server_command(), "--transport", "http", "--port", str(port), *args],
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    server = HttpServer(proc, port)
    for pipe, sink in ((proc.stdout, server.out), (proc.stderr, server.err)):
        threading.Thread(
            target=lambda p=pipe, s=sink: [s.extend(chunk) for chunk in iter(p.readline, b"")], daemon=True
        ).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {server.stderr[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.05)
    server.stop()
    pytest.fail("the server did not answer /healthz within 30 s")


@pytest.fixture(scope="module")
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_stand_in(api: FakeModelGates) -> None:
    api.clear()
    api.handler = None


def _shared_env(api: FakeModelGates, level: str = "DEBUG") -> dict[str, str]:
    return {
        "MODELGATES_API_KEY": API_KEY,
        "MODELGATES_BASE_URL": api.base_url,
        "MODELGATES_HTTP_TOKEN": TOKEN,
        "MODELGATES_ALLOWED_ORIGINS": ORIGIN,
        "MODELGATES_MAX_RETRIES": "0",
        "MODELGATES_LOG_LEVEL": level,  # at DEBUG, every line the server could log is checked for secrets
    }


@pytest.fixture(scope="module")
def servers(api: FakeModelGates) -> Iterator[dict[str, HttpServer]]:
    """Two shared-key servers with a token (one is the other's twin for the statelessness test)
    and one in per-caller key mode."""
    started: dict[str, HttpServer] = {}
    try:
        started["shared"] = start_server(_shared_env(api))
        started["twin"] = start_server(_shared_env(api, "INFO"))
        started["per_caller"] = start_server(
            {"MODELGATES_KEY_FROM_CLIENT": "1", "MODELGATES_BASE_URL": api.base_url, "MODELGATES_LOG_LEVEL": "DEBUG"}
        )
        yield started
    finally:
        codes = {name: server.stop() for name, server in started.items()}
    assert codes == dict.fromkeys(started, 0)


@pytest.fixture(scope="module")
def shared(servers: dict[str, HttpServer]) -> HttpServer:
    return servers["shared"]


@pytest.fixture(scope="module")
def per_caller(servers: dict[str, HttpServer]) -> HttpServer:
    return servers["per_caller"]


@asynccontextmanager
async def sdk_client(
    url: str, mode: str, key: str | None = TOKEN, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncIterator[Client]:
    """The SDK's own streamable HTTP client, with the header a user puts in their client's config."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, transport=transport, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def rpc(id_: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}


def post(server: HttpServer, body: Any, *, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {token}"} if token is not None else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url, content=content, headers={**JSON_HEADERS, **auth, **headers}, timeout=30)


# ---------------------------------------------------------------- the tools over HTTP


def test_healthz_answers_without_auth_and_says_only_status_and_version(shared: HttpServer) -> None:
    answer = httpx.get(f"http://127.0.0.1:{shared.port}/healthz", headers={"host": "anything.example"})
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "version": __version__}


@BOTH_ERAS
async def test_sdk_client_lists_and_calls_every_tool_as_the_in_memory_server_does(
    shared: HttpServer, api: FakeModelGates, mode: str
) -> None:
    create_args = {"callback_url": CALLBACK, "code_challenge": s256(VERIFIER), "code_challenge_method": "S256"}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("create_auth_code", {**create_args, "limit": 5}),
        ("exchange_auth_code", {"code": "auth_code_unknown", "code_verifier": VERIFIER}),
        ("exchange_auth_code", {"code": "https://app/cb?code=abc&state=1"}),
    ]
    async with sdk_client(shared.url, mode) as client:
        over_http_tools = await client.list_tools()
        api.reply(200, {"data": AUTH_CODE})
        over_http = [wire(await client.call_tool(name, args)) for name, args in calls]
        pair = await client.call_tool("generate_pkce", {"callback_url": CALLBACK})
        created = await client.call_tool("create_auth_code", create_args)
        code = (created.structured_content or {})["data"]["id"]
        exchanged = await client.call_tool("exchange_auth_code", {"code": code, "code_verifier": VERIFIER})

    assert [t.name for t in over_http_tools.tools] == LOOPBACK_TOOLS
    assert pair.is_error is False and (pair.structured_content or {})["authorization_url"].startswith("http")
    assert exchanged.is_error is False and (exchanged.structured_content or {})["key"].startswith("sk-mg-v1-")
    # The exact bodies reached the stand-in, with the configured key.
    bodies = [(r.path.removeprefix("/api/v1"), r.json, r.headers.get("authorization")) for r in api.requests]
    assert bodies == [
        ("/auth/keys/code", {**create_args, "limit": 5}, f"Bearer {API_KEY}"),
        ("/auth/keys", {"code": "auth_code_unknown", "code_verifier": VERIFIER}, f"Bearer {API_KEY}"),
        ("/auth/keys/code", create_args, f"Bearer {API_KEY}"),
        ("/auth/keys", {"code": code, "code_verifier": VERIFIER}, f"Bearer {API_KEY}"),
    ]
    assert '"limit":5' in api.requests[0].body.decode().replace(" ", "")

    # Results and tool errors are what the same server answers in memory.
    settings = Settings(api_key=SecretStr(API_KEY), base_url=api.base_url, max_retries=0)
    async with Client(build_server(settings), mode=mode) as client:
        in_memory_tools = await client.list_tools()
        api.reply(200, {"data": AUTH_CODE})
        in_memory = [wire(await client.call_tool(name, args)) for name, args in calls]
    assert wire(over_http_tools) == wire(in_memory_tools)
    assert over_http == in_memory
    assert over_http[1]["isError"] is True and "HTTP 403" in over_http[1]["content"][0]["text"]
    assert over_http[2]["isError"] is True and "only the value" in over_http[2]["content"][0]["text"]


def test_a_plain_http_client_speaks_both_eras(shared: HttpServer, api: FakeModelGates) -> None:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl", "version": "0"}}
    answer = post(shared, rpc(1, "initialize", init))
    assert answer.status_code == 200 and "mcp-session-id" not in answer.headers  # stateless
    assert answer.json()["result"]["serverInfo"]["name"] == "mcp-modelgates"
    assert post(shared, {"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    listed = post(shared, rpc(2, "tools/list")).json()["result"]["tools"]
    assert [t["name"] for t in listed] == LOOPBACK_TOOLS
    api.reply(200, {"data": AUTH_CODE})
    called = post(shared, rpc(3, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": CALLBACK}}))
    assert called.json()["result"]["structuredContent"] == {"data": AUTH_CODE}
    assert [r.json for r in api.requests] == [{"callback_url": CALLBACK}]

    # The modern era: no handshake, the version and capabilities ride in each request's _meta.
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    modern = {"mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
    answer = post(shared, rpc(4, "tools/list", {"_meta": meta}), **modern)
    assert answer.status_code == 200, answer.text
    assert [t["name"] for t in answer.json()["result"]["tools"]] == [t["name"] for t in listed]


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each request to the next port in turn, as a round-robin balancer without affinity."""

    def __init__(self, ports: list[int]) -> None:
        self._next = itertools.cycle(ports)
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent_to: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self._next)
        self.sent_to.append(port)
        request.url = request.url.copy_with(port=port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@BOTH_ERAS
async def test_consecutive_requests_may_reach_different_processes(
    servers: dict[str, HttpServer], api: FakeModelGates, mode: str
) -> None:
    one, two = servers["shared"], servers["twin"]
    balancer = Alternating([one.port, two.port])
    async with sdk_client(one.url, mode, transport=balancer) as client:
        tools = await client.list_tools()
        pair = await client.call_tool("generate_pkce", {})
        created = await client.call_tool(
            "create_auth_code", {"callback_url": CALLBACK, "code_challenge": s256(VERIFIER)}
        )
        code = (created.structured_content or {})["data"]["id"]
        exchanged = await client.call_tool("exchange_auth_code", {"code": code, "code_verifier": VERIFIER})
    assert [t.name for t in tools.tools] == LOOPBACK_TOOLS and pair.is_error is False
    assert created.is_error is False and exchanged.is_error is False
    assert balancer.sent_to.count(one.port) >= 2 and balancer.sent_to.count(two.port) >= 2
    assert [r.path for r in api.requests] == ["/api/v1/auth/keys/code", "/api/v1/auth/keys"]


# ---------------------------------------------------------------- refusals


def test_a_missing_or_wrong_token_gets_401_and_no_detail(shared: HttpServer, api: FakeModelGates) -> None:
    call = rpc(1, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": CALLBACK}})
    for token in (None, "tok-wrong-but-long-enough-123", TOKEN + "x", TOKEN[:-1]):
        answer = post(shared, call, token=token)
        assert (answer.status_code, answer.headers.get("www-authenticate"), answer.content) == (401, "Bearer", b"")
    answer = post(shared, call, token=None, authorization=f"Basic {TOKEN}")
    assert answer.status_code == 401
    assert api.requests == []  # nothing reached ModelGates
    assert post(shared, rpc(2, "tools/list"), token=None, authorization=f"bearer {TOKEN}").status_code == 200


def test_foreign_host_and_origin_are_refused_before_the_token(shared: HttpServer) -> None:
    listing = rpc(1, "tools/list")
    assert post(shared, listing, token=None, host="evil.example").status_code == 421
    assert post(shared, listing, host=f"rebind.example:{shared.port}").status_code == 421
    assert post(shared, listing, token=None, origin="https://evil.example").status_code == 403
    assert post(shared, listing, origin="null").status_code == 403
    # the allowed names pass
    assert post(shared, listing, origin=ORIGIN).status_code == 200
    assert post(shared, listing, host=f"localhost:{shared.port}").status_code == 200


def test_a_body_over_1_mib_is_refused_with_413(shared: HttpServer) -> None:
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "' + b"x" * (2 << 20) + b'"}}'
    assert post(shared, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while it streams in
        for start in range(0, len(big), 64 << 10):
            yield big[start : start + (64 << 10)]

    answer = httpx.post(
        shared.url, content=chunks(), headers={**JSON_HEADERS, "authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert answer.status_code == 413 and answer.request.headers.get("transfer-encoding") == "chunked"


def test_other_methods_paths_and_malformed_requests_get_protocol_errors(shared: HttpServer) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    for method in ("GET", "DELETE", "PUT"):
        answer = httpx.request(method, shared.url, headers=auth)
        assert (answer.status_code, answer.headers.get("allow")) == (405, "POST")
    assert httpx.post(shared.url + "/", headers=auth).status_code == 404  # no redirect to follow
    assert httpx.post(f"http://127.0.0.1:{shared.port}/healthz").status_code == 405

    malformed = post(shared, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == -32700
    assert post(shared, b"{}", **{"content-type": "text/plain"}).status_code == 400
    unknown = post(shared, rpc(7, "tools/destroy"))
    assert unknown.json()["error"]["code"] == -32601
    assert "Traceback" not in shared.stderr


# ---------------------------------------------------------------- per-caller keys


@BOTH_ERAS
async def test_per_caller_keys_never_cross_between_concurrent_callers(
    per_caller: HttpServer, api: FakeModelGates, mode: str
) -> None:
    def slow_success(rec: Recorded) -> Reply:  # slow enough that both callers' calls overlap
        return Reply(200, {"data": AUTH_CODE}, delay=0.05)

    api.handler = slow_success

    async def caller(name: str, key: str, results: list[bool]) -> None:
        async with sdk_client(per_caller.url, mode, key=key) as client, anyio.create_task_group() as tg:
            for i in range(6):

                async def one(i: int = i) -> None:
                    answer = await client.call_tool("create_auth_code", {"callback_url": f"https://{name}.example/{i}"})
                    results.append(answer.is_error is False)

                tg.start_soon(one)

    results: list[bool] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, "alice", ALICE, results)
        tg.start_soon(caller, "bob", BOB, results)
    assert results == [True] * 12
    seen = {(r.json["callback_url"].split("/")[2], r.headers.get("authorization")) for r in api.requests}
    assert seen == {("alice.example", f"Bearer {ALICE}"), ("bob.example", f"Bearer {BOB}")}
    assert len(api.requests) == 12


async def test_without_a_key_only_create_auth_code_refuses(per_caller: HttpServer, api: FakeModelGates) -> None:
    async with sdk_client(per_caller.url, "legacy", key=None) as client:
        pair = await client.call_tool("generate_pkce", {})
        created = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        code = api.issue_code(s256(VERIFIER))
        exchanged = await client.call_tool("exchange_auth_code", {"code": code, "code_verifier": VERIFIER})
    assert pair.is_error is False and exchanged.is_error is False
    assert created.is_error is True and "Authorization: Bearer <key>" in created.content[0].text  # type: ignore[union-attr]
    (exchange,) = api.requests  # create_auth_code never left the server
    assert "authorization" not in exchange.headers  # no key was sent, so none was forwarded
    answer = post(per_caller, rpc(1, "tools/list"), token=None, authorization="Basic abc")
    assert (answer.status_code, answer.headers.get("www-authenticate")) == (401, "Bearer")


async def test_a_callers_key_is_masked_when_the_upstream_echoes_it(per_caller: HttpServer, api: FakeModelGates) -> None:
    api.reply(401, {"error": {"code": 401, "message": f"Key {ALICE} is revoked"}})
    async with sdk_client(per_caller.url, "legacy", key=ALICE) as client:
        answer = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})
    text = answer.content[0].text  # type: ignore[union-attr]
    assert answer.is_error is True and "Key *** is revoked" in text and ALICE not in text
    assert "Check the key in your Authorization header" in text  # not the server's MODELGATES_API_KEY


def test_redact_masks_the_token_and_only_the_current_requests_key() -> None:
    settings = Settings(http_token=SecretStr(TOKEN))
    assert settings.redact(f"{TOKEN} {ALICE}") == f"*** {ALICE}"
    with caller_key_for_request(SecretStr(ALICE)):
        assert settings.redact(f"{TOKEN} {ALICE} {BOB}") == f"*** *** {BOB}"
    assert settings.redact(ALICE) == ALICE


# ---------------------------------------------------------------- start-up and shutdown


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--host", "0.0.0.0"], {"MODELGATES_API_KEY": API_KEY}, ["--host", "MODELGATES_HTTP_TOKEN"]),
        ([], {"MODELGATES_HOST": "192.0.2.1"}, ["MODELGATES_HOST", "MODELGATES_KEY_FROM_CLIENT"]),
        ([], {"MODELGATES_KEY_FROM_CLIENT": "1", "MODELGATES_API_KEY": API_KEY}, ["MODELGATES_API_KEY"]),
        ([], {"MODELGATES_KEY_FROM_CLIENT": "1", "MODELGATES_HTTP_TOKEN": TOKEN}, ["MODELGATES_HTTP_TOKEN"]),
        ([], {"MODELGATES_KEY_FROM_CLIENT": "maybe"}, ["MODELGATES_KEY_FROM_CLIENT"]),
        ([], {"MODELGATES_HTTP_TOKEN": "short-tok"}, ["MODELGATES_HTTP_TOKEN"]),
        ([], {"MODELGATES_ALLOWED_ORIGINS": "app.example.com"}, ["MODELGATES_ALLOWED_ORIGINS"]),
        (["--host", "bad host/"], {}, ["--host"]),
    ],
)
def test_start_up_refuses_what_would_expose_a_key_before_binding(
    argv: list[str], env: dict[str, str], names: list[str]
) -> None:
    with socket.socket() as taken:  # the port is taken: a refusal after binding would say so instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run(
            [*server_command(), "--transport", "http", "--port", port, *argv],
            env=clean_env(env),
            capture_output=True,
            text=True,
            timeout=30,
        )
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, proc.stdout, len(lines)) == (2, "", 1), proc.stderr
    assert lines[0].startswith("mcp-modelgates: ") and all(name in lines[0] for name in names), lines[0]
    assert not any(secret in proc.stderr for secret in (*SECRETS, "short-tok"))


def test_other_start_up_combinations_and_stdio() -> None:
    token_env = {"MODELGATES_HTTP_TOKEN": TOKEN, "MODELGATES_API_KEY": API_KEY}
    exposed = load_settings(["--transport", "http", "--host", "0.0.0.0"], token_env)
    assert (exposed.transport, exposed.http_host, exposed.http_port) == ("http", "0.0.0.0", 8000)
    per_caller = load_settings(
        ["--host", "192.0.2.1"], {"MODELGATES_TRANSPORT": "http", "MODELGATES_KEY_FROM_CLIENT": "1"}
    )
    assert per_caller.key_from_client and per_caller.api_key is None
    assert load_settings([], {}).transport == "stdio"
    with pytest.raises(ConfigError, match="--transport"):  # per-caller keys mean nothing on stdio
        load_settings([], {"MODELGATES_KEY_FROM_CLIENT": "1"})
    # stdio does not even import the HTTP side
    probe = "import sys, mcp_modelgates.server; print('mcp_modelgates.http_app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_help_lists_the_http_settings() -> None:
    proc = subprocess.run([*server_command(), "--help"], capture_output=True, text=True, timeout=30)
    for word in ("--transport", "--host", "--port", "MODELGATES_HTTP_TOKEN", "MODELGATES_KEY_FROM_CLIENT"):
        assert word in proc.stdout, word


def test_connect_account_is_not_offered_when_bound_beyond_loopback(api: FakeModelGates) -> None:
    """Its listener and files would live on the server's machine, which is then not the user's."""
    server = start_server(_shared_env(api, level="INFO"), "--host", "0.0.0.0")
    try:
        listed = post(server, rpc(1, "tools/list"))
        called = post(server, rpc(2, "tools/call", {"name": "connect_account", "arguments": {}}))
        instructions = post(
            server,
            rpc(
                3,
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            ),
        )
    finally:
        server.stop()
    assert [t["name"] for t in listed.json()["result"]["tools"]] == API_TOOLS
    assert called.json()["error"]["message"] == "Unknown tool: 'connect_account'"
    assert "connect_account" not in instructions.json()["result"]["instructions"]


def test_per_caller_mode_never_takes_the_key_stored_in_the_keyring(api: FakeModelGates, tmp_path: Any) -> None:
    """A key connect_account stored would otherwise become a shared key beside the callers' own."""
    keyring_env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path)}
    setup = (
        "import keyring, sys\nkeyring.get_keyring().set_password('mcp-modelgates', 'MODELGATES_API_KEY', sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", setup, API_KEY], env={**os.environ, **keyring_env}, check=True)
    env = {
        "MODELGATES_BASE_URL": api.base_url,
        "MODELGATES_KEY_FROM_CLIENT": "1",
        "MODELGATES_LOG_LEVEL": "INFO",
        **keyring_env,
    }
    server = start_server(env)
    try:
        call = rpc(1, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": CALLBACK}})
        answer = post(server, call, token=None)
    finally:
        server.stop()
    result = answer.json()["result"]
    assert result["isError"] is True and "No ModelGates API key came with this request" in result["content"][0]["text"]
    assert api.requests == []
    assert "each caller's own key" in server.stderr


def test_sigterm_lets_an_in_flight_call_finish_then_exits_0(api: FakeModelGates) -> None:
    server = start_server(_shared_env(api))
    try:
        api.reply(200, {"data": AUTH_CODE}, delay=1.5, path="/auth/keys/code")
        answers: list[httpx.Response] = []
        call = rpc(1, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": CALLBACK}})
        caller = threading.Thread(target=lambda: answers.append(post(server, call)))
        caller.start()
        deadline = time.monotonic() + 10
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert api.requests, "the call never reached the stand-in"
        server.proc.send_signal(signal.SIGTERM)  # while the stand-in is still answering
        caller.join(timeout=15)
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.stop()
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["result"]["structuredContent"] == {"data": AUTH_CODE}
    assert "Traceback" not in server.stderr


def test_no_key_or_token_in_any_log_line(servers: dict[str, HttpServer]) -> None:
    for name, server in servers.items():
        log = server.stderr
        assert '"POST /mcp HTTP/1.1" 200' in log, name  # the access log is on, so this check sees it
        leaked = [secret for secret in (*SECRETS, KEY_PREFIX) if secret in log]  # KEY_PREFIX: an exchanged key
        assert leaked == [], f"{name} logged a secret"
        assert server.out == b"", name  # everything goes to stderr
    # At INFO the SDK's per-request "Terminating session: None" line is quieted.
    assert "Terminating session" not in servers["twin"].stderr
    assert "Terminating session" in servers["shared"].stderr  # DEBUG keeps it
