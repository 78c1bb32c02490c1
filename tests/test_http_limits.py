"""The HTTP transport under pressure, for real: connections that send nothing or a byte at a time,
more connections than the process has descriptors, an EMFILE in connect_account's listener, a
lifespan that dies, and a SIGTERM that outlasts the grace period.

Servers are the console script as a subprocess (its descriptor limit lowered where that is the
point), except the dead-lifespan test, which serves the app with uvicorn in a thread so that its
lifespan can be made to die.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from mcp.server.lowlevel import Server
from pydantic import SecretStr

from mcp_modelgates import http_app
from mcp_modelgates.config import Settings
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY
from tests.fake_api import FakeModelGates
from tests.test_http import AUTH_CODE, CALLBACK, TOKEN, HttpServer, _shared_env, free_port, post, rpc, start_server

LIST_TOOLS = rpc(1, "tools/list")
MCP_HEADERS = {
    "authorization": f"Bearer {TOKEN}",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
}


@pytest.fixture
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as fake:
        yield fake


@contextlib.contextmanager
def serving(env: dict[str, str], nofile: int | None = None) -> Iterator[HttpServer]:
    """A server for one test, started with at most `nofile` descriptors (children inherit the
    limit: it is lowered in this process only while the server starts); stopped with exit 0."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, saved[1]))
    try:
        server = start_server(env)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.stderr[-2000:]


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the other side closes (or resets) within `within` seconds, sending nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def open_fds(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# ---------------------------------------------------------------- connections that send nothing


def test_silent_and_trickling_connections_are_closed_after_the_head_timeout(api: FakeModelGates) -> None:
    with serving(_shared_env(api, "INFO")) as server:
        address = ("127.0.0.1", server.port)
        started = time.monotonic()
        silent = [socket.create_connection(address) for _ in range(20)]
        partial = socket.create_connection(address)
        partial.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head that never ends
        trickle = socket.create_connection(address)
        trickle_closed: list[float] = []

        def send_a_byte_a_second() -> None:  # busy, but never a whole head: bounded by 40 bytes
            with contextlib.suppress(OSError):
                for byte in b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: aaaaaaaaaaaaaa"[:40]:
                    trickle.sendall(bytes([byte]))
                    if select.select([trickle], [], [], 1.0)[0]:
                        break
            trickle_closed.append(time.monotonic() - started)

        sender = threading.Thread(target=send_a_byte_a_second)
        sender.start()
        try:
            deadline = started + 3 * http_app.HEAD_TIMEOUT
            closed = [closed_by_peer(sock, max(0.001, deadline - time.monotonic())) for sock in [*silent, partial]]
            elapsed = time.monotonic() - started
            sender.join(60)
            # Meanwhile, and afterwards, real requests are answered.
            assert post(server, LIST_TOOLS).status_code == 200
        finally:
            for sock in [*silent, partial, trickle]:
                sock.close()
    assert all(closed), f"{closed.count(False)} connections still open after {elapsed:.0f} s"
    assert elapsed >= http_app.HEAD_TIMEOUT * 0.9  # not earlier than the timeout says
    assert trickle_closed and trickle_closed[0] < 3 * http_app.HEAD_TIMEOUT  # a byte a second does not keep it
    assert "Traceback" not in server.stderr


def test_more_silent_connections_than_descriptors_do_not_stop_a_real_request(api: FakeModelGates) -> None:
    """Under `ulimit -n 256`, 300 connections that send nothing: the server keeps its connections
    within its cap (a new one closes the oldest silent one), so it never runs out of descriptors
    and a real request is answered at once, long before any head timeout."""
    with serving(_shared_env(api, "INFO"), nofile=256) as server:
        assert "at most 64 connections" in server.stderr
        address = ("127.0.0.1", server.port)
        held: list[socket.socket] = []
        try:
            for _ in range(300):
                held.append(socket.create_connection(address, timeout=10))
            highest = max(open_fds(server.proc.pid))
            started = time.monotonic()
            answer = post(server, LIST_TOOLS)
            took = time.monotonic() - started
            assert wait_for(lambda: sum(closed_by_peer(s, 0.001) for s in held[:200]) >= 150, 10)
        finally:
            for sock in held:
                sock.close()
        assert answer.status_code == 200 and answer.json()["result"]["tools"]
        assert took < http_app.HEAD_TIMEOUT / 2  # answered by evicting, not by waiting for the timeout
        assert highest < 200  # far from the limit: the cap held
        assert "Too many open files" not in server.stderr and "Traceback" not in server.stderr


# ---------------------------------------------------------------- no descriptors for the listener


def test_emfile_in_the_connect_listener_leaves_the_server_serving(api: FakeModelGates, tmp_path: Path) -> None:
    """With every descriptor in use, a connection to a pending connect_account listener makes its
    accept() fail with EMFILE: the listener pauses, the server keeps serving, and once descriptors
    are free again the listener answers and the flow completes."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    with serving({**_shared_env(api, "INFO"), "MODELGATES_WORKSPACE": str(workspace)}) as server:
        call = rpc(2, "tools/call", {"name": "connect_account", "arguments": {"timeout": 120}})
        waiting = post(server, call).json()["result"]["structuredContent"]
        assert waiting["status"] == "waiting_for_approval"
        callback = httpx.URL(httpx.URL(waiting["authorization_url"]).params["callback_url"])
        assert callback.port is not None
        pid = server.proc.pid
        limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        knock: socket.socket | None = None
        try:
            assert wait_for(lambda: "connect flow" in server.stderr, 10)
            fds = set(open_fds(pid))
            lowest_free = next(n for n in range(len(fds) + 1) if n not in fds)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, limit[1]))  # no new descriptor now
            knock = socket.create_connection(("127.0.0.1", callback.port))  # the kernel takes it; accept() cannot
            wait_for(lambda: "accept() failed (EMFILE)" in server.stderr, 10)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
        assert post(server, LIST_TOOLS).status_code == 200
        assert knock is not None
        with knock:
            knock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            knock.settimeout(10)
            assert knock.recv(100).startswith(b"HTTP/1.1 404 ")  # the listener is back
        with httpx.Client(follow_redirects=True, trust_env=False, timeout=30) as browser:
            page = browser.get(waiting["authorization_url"])
        done = post(
            server, rpc(3, "tools/call", {"name": "connect_account", "arguments": {"flow_id": waiting["flow_id"]}})
        )
    assert page.status_code == 200 and "Connected" in page.text
    assert done.json()["result"]["structuredContent"]["status"] == "connected"
    assert (workspace / ".env").read_text().startswith("MODELGATES_API_KEY=")
    assert "accept() failed (EMFILE)" in server.stderr  # it did run out, and said so in one line
    assert "Traceback" not in server.stderr


# ---------------------------------------------------------------- /healthz when nothing can be served


@contextlib.contextmanager
def in_thread(app: http_app.ModelGatesHttpApp, cap: int = 64) -> Iterator[str]:
    """The app served by uvicorn with the transport's own settings, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(http_app.uvicorn_config(app, "127.0.0.1", port, cap))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 30), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_dead_lifespan_makes_healthz_503_and_mcp_503(api: FakeModelGates) -> None:
    kill = threading.Event()

    @asynccontextmanager
    async def mortal(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as tg:

            async def die() -> None:
                await anyio.to_thread.run_sync(kill.wait)
                raise RuntimeError("the lifespan died")

            tg.start_soon(die)
            yield {}

    settings = Settings(api_key=SecretStr(API_KEY), base_url=api.base_url, http_token=SecretStr(TOKEN))
    app = http_app.ModelGatesHttpApp(settings, Server("mortal", lifespan=mortal))
    try:
        with in_thread(app) as base:
            assert httpx.get(f"{base}/healthz").status_code == 200
            kill.set()
            assert wait_for(lambda: not app.serving, 10)
            health = httpx.get(f"{base}/healthz")
            call = httpx.post(f"{base}/mcp", content=json.dumps(LIST_TOOLS), headers=MCP_HEADERS)
    finally:
        kill.set()
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert call.status_code == 503 and "not serving" in call.text


def test_a_body_sent_too_slowly_is_cut_off_and_the_server_goes_on(
    api: FakeModelGates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_app, "BODY_TIMEOUT", 1.0)
    settings = Settings(api_key=SecretStr(API_KEY), base_url=api.base_url, http_token=SecretStr(TOKEN))
    app = http_app.ModelGatesHttpApp(settings, build_server(settings))
    with in_thread(app) as base:
        port = httpx.URL(base).port
        assert port is not None
        head = "".join(
            f"{k}: {v}\r\n" for k, v in {**MCP_HEADERS, "host": "127.0.0.1", "content-length": "400"}.items()
        )
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(f"POST /mcp HTTP/1.1\r\n{head}\r\n{{".encode())
            started = time.monotonic()
            closed = False
            for _ in range(100):  # a byte every 0.1 s: busy, but 400 bytes would take 40 s
                if select.select([slow], [], [], 0.1)[0]:
                    closed = slow.recv(100) == b""
                    break
                slow.sendall(b" ")
            took = time.monotonic() - started
        answer = httpx.post(f"{base}/mcp", content=json.dumps(LIST_TOOLS), headers=MCP_HEADERS)
    assert closed and 0.9 <= took < 8, took
    assert answer.status_code == 200


# ---------------------------------------------------------------- SIGTERM past the grace period


def test_sigterm_with_a_call_outlasting_the_grace_period_exits_0_without_a_traceback(api: FakeModelGates) -> None:
    with serving(_shared_env(api, "INFO")) as server:
        api.reply(200, {"data": AUTH_CODE}, delay=30, path="/auth/keys/code")
        answers: list[httpx.Response] = []
        call = rpc(1, "tools/call", {"name": "create_auth_code", "arguments": {"callback_url": CALLBACK}})
        caller = threading.Thread(target=lambda: answers.append(post(server, call)))
        caller.start()
        assert wait_for(lambda: bool(api.requests), 10), "the call never reached the stand-in"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        took = time.monotonic() - started
        caller.join(30)
    assert http_app.GRACEFUL_SECONDS <= took < http_app.GRACEFUL_SECONDS + 15
    (answer,) = answers
    assert answer.status_code == 503 and "shut down before this call finished" in answer.text
    assert "Traceback" not in server.stderr and "CancelledError" not in server.stderr
    assert "cancelled" in server.stderr  # one plain line says what happened
