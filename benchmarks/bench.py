"""Benchmark: the installed mcp-modelgates against a bare forwarder on the same stack, over stdio.

Both servers are real child processes spoken to over their stdin/stdout pipes, in one
interleaved run (each round alternates who goes first, so machine noise falls on both), against
a fast API stand-in on 127.0.0.1 in its own process (`api_stand_in.py`). The client here is a
lean JSON-RPC loop rather than the SDK's `ClientSession`, so that what is timed is the servers,
not the client. Measured:

- cold start: spawn -> initialize handshake -> completed tools/list (median);
- sequential create_auth_code calls on one session (p50, p99), and the same POST made directly
  with httpx from this process: the floor of forwarding;
- 64 calls in flight on one session (median wall time of a burst, and calls/s);
- the server's peak RSS (VmHWM) and CPU time per sequential call;
- TCP connections the stand-in accepted for the sequential calls (keep-alive: 1).

Then the same over streamable HTTP (stateless, JSON responses): `mcp-modelgates --transport http`
against `minimal_http_forwarder.py`, the same one-tool forwarder served by the SDK's own HTTP app,
interleaved the same way, spoken to by one httpx client in this process (sequential p50 and p99,
64 in flight); and two mcp-modelgates processes behind a round-robin split (each request to the
next process, no affinity, as a load balancer would send them) against one process, in calls/s.

Then sign-in (`MODELGATES_AUTH=oauth`) against per-caller keys (`MODELGATES_KEY_FROM_CLIENT=1`), the
same tool call over HTTP on the same run, each server in its own process: OAuth mode with its
memory store (budget: p50 within 1.05x, calls/s at least 0.95x) and with a Redis store
(`MODELGATES_OAUTH_STORE`, a redis-server the benchmark starts on loopback; budget: p50 within
1.10x). What OAuth mode adds to each call is opening the sealed access token and asking the store
whether its sign-in has ended; each OAuth server is signed in to once, through its consent page
and the stand-in's approval, before anything is timed.

Last, one caller's burst over HTTP with per-caller keys (`MODELGATES_KEY_FROM_CLIENT=1`), against
an API stand-in that takes 2.5 s per answer: caller A sends 450 calls at once, caller B 50 a
moment later; B's success rate (budget: at least 90 %) and latency, and what A got.

    python benchmarks/bench.py             # the full run, 80 s to 3 minutes on 2 cores
    python benchmarks/bench.py --quick     # a few rounds, only to prove it still runs
    python benchmarks/bench.py --check     # exit 1 when a budget line does not hold
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx

HERE = Path(__file__).resolve().parent
API_KEY = "sk-bench-0123456789abcdef"
PROTOCOL_VERSION = "2025-11-25"  # the handshake era Claude Code and Cursor speak
ARGUMENTS = {
    "callback_url": "https://myapp.com/auth/callback",
    "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    "code_challenge_method": "S256",
    "limit": 100.0,
}
IN_FLIGHT = 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass(frozen=True)
class Rounds:
    cold: int
    warmup: int
    sequential: int
    bursts: int
    burst_a: int  # one caller's burst over HTTP: calls A sends at once
    burst_b: int  # calls B sends alongside
    slow: float  # seconds the API stand-in takes per answer in that phase
    sign_in_bursts: int  # bursts in the sign-in phase, whose calls/s budget is the tightest


FULL = Rounds(cold=21, warmup=50, sequential=500, bursts=15, burst_a=450, burst_b=50, slow=2.5, sign_in_bursts=30)
QUICK = Rounds(cold=2, warmup=5, sequential=20, bursts=2, burst_a=80, burst_b=10, slow=0.3, sign_in_bursts=2)
FAIR_SHARE = 0.90  # budget: B's calls that succeed while A bursts


@dataclass
class Contestant:
    name: str
    argv: list[str]
    env: dict[str, str]  # the server's environment: the key and the stand-in port it talks to
    errlog: TextIO  # the server's stderr
    cold: list[float] = field(default_factory=list)
    sequential: list[float] = field(default_factory=list)
    bursts: list[float] = field(default_factory=list)
    cpu_per_call: float = math.nan
    peak_rss_kib: int = 0
    connections: int = 0
    burst_connections: int = 0
    request_log_lines: int = 0  # httpx's per-request INFO lines ("HTTP Request: POST ...") on stderr


# ---------------------------------------------------------------- the API stand-in


class StandIn:
    """`api_stand_in.py` in its own process, so that it takes no GIL from this client."""

    def __init__(self, listeners: int, slow: float, open_ports: int = 0) -> None:
        argv = [sys.executable, str(HERE / "api_stand_in.py"), "--listeners", str(listeners), "--api-key", API_KEY]
        self._proc = subprocess.Popen(
            [*argv, "--open", str(open_ports), "--slow", str(slow)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ports: list[int] = self._read()["ports"]

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the API stand-in exited")
        data: dict[str, Any] = json.loads(line)
        return data

    def _command(self, command: str) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read()

    def reset(self) -> None:
        self._command("reset")

    def connections(self) -> list[int]:
        counts: list[int] = self._command("stats")["connections"]
        return counts

    def base_url(self, listener: int) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}/api/v1"

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


# ---------------------------------------------------------------- a lean stdio JSON-RPC client


class Session:
    """One server process and a JSON-RPC session on its pipes; requests may be in flight together."""

    def __init__(self, proc: asyncio.subprocess.Process, errlog: TextIO) -> None:
        self.proc = proc
        self._errlog = errlog
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], errlog: TextIO) -> Session:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=errlog,
            env=env,
            limit=1 << 22,
        )
        return cls(proc, errlog)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"the server exited:\n{self._stderr_tail()}"))

    def _stderr_tail(self) -> str:
        self._errlog.seek(0)
        return "".join(self._errlog.readlines()[-20:])

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self._send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        message = await future
        if "error" in message:
            raise RuntimeError(f"{method} failed: {message['error']}")
        result: dict[str, Any] = message["result"]
        return result

    async def initialize(self) -> None:
        await self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
        )
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(self) -> dict[str, Any]:
        return await self.request("tools/call", {"name": "create_auth_code", "arguments": ARGUMENTS})

    async def burst(self) -> list[dict[str, Any]]:
        """IN_FLIGHT calls sent at once on this one session."""
        return list(await asyncio.gather(*(self.call() for _ in range(IN_FLIGHT))))

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


def check(result: dict[str, Any]) -> None:
    """A timed call must be a success, or the benchmark would be timing an error path."""
    structured = result.get("structuredContent") or {}
    if result.get("isError") or not str(structured.get("data", {}).get("id", "")).startswith("auth_code_"):
        raise RuntimeError(f"unexpected tool result: {json.dumps(result)[:500]}")


# ---------------------------------------------------------------- the phases


def environment(base_url: str, pycache: str) -> dict[str, str]:
    """The servers' environment. Bytecode caching is on, into a private cache that an untimed first
    start fills, because an installed server starts from cached bytecode; with
    PYTHONDONTWRITEBYTECODE set, every start would compile whichever sources changed since the
    last cache, which measures an editor's work, not a server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATES_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": pycache, "MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": base_url}


def alternate(items: list[T], round_: int) -> list[T]:
    """The order turns every round, so that each contestant takes each place in it equally often
    (with two, who goes first alternates; with three, a reversal would leave one always in the middle)."""
    turn = round_ % len(items)
    return items[turn:] + items[:turn]


async def cold_start(contestant: Contestant) -> float:
    start = time.perf_counter()
    session = await Session.spawn(contestant.argv, contestant.env, contestant.errlog)
    await session.initialize()
    tools = await session.request("tools/list", {})
    elapsed = time.perf_counter() - start
    await session.close()
    if not any(tool["name"] == "create_auth_code" for tool in tools["tools"]):
        raise RuntimeError(f"{contestant.name}: create_auth_code is not listed")
    return elapsed


async def cold_starts(contestants: list[Contestant], rounds: int) -> None:
    for contestant in contestants:
        await cold_start(contestant)  # untimed: fills the bytecode cache
    for round_ in range(rounds):
        for contestant in alternate(contestants, round_):
            contestant.cold.append(await cold_start(contestant))


async def timed(samples: list[float], call: Callable[[], Awaitable[Any]]) -> Any:
    start = time.perf_counter()
    result = await call()
    samples.append(time.perf_counter() - start)
    return result


async def calls(contestants: list[Contestant], stand_in: StandIn, rounds: Rounds) -> list[float]:
    """The sequential and in-flight phases on one session per contestant; returns the direct httpx samples."""
    direct: list[float] = []
    url = stand_in.base_url(len(contestants)) + "/auth/keys/code"  # the port after the contestants' ones
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    body = json.dumps(ARGUMENTS).encode()

    async def post_directly() -> None:
        response = await http.post(url, content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"direct POST answered {response.status_code}")

    sessions: list[Session] = []
    try:
        for contestant in contestants:
            session = await Session.spawn(contestant.argv, contestant.env, contestant.errlog)
            sessions.append(session)
            await session.initialize()
        async with httpx.AsyncClient(trust_env=False) as http:
            pairs = list(zip(contestants, sessions, strict=True))
            stand_in.reset()
            for _ in range(rounds.warmup):
                for _, session in pairs:
                    check(await session.call())
                await post_directly()
            cpu_before = [session.cpu_seconds() for session in sessions]
            for round_ in range(rounds.sequential):
                for contestant, session in alternate(pairs, round_):
                    check(await timed(contestant.sequential, session.call))
                await timed(direct, post_directly)
            for (contestant, session), before in zip(pairs, cpu_before, strict=True):
                contestant.cpu_per_call = (session.cpu_seconds() - before) / rounds.sequential
            for contestant, count in zip(contestants, stand_in.connections(), strict=False):
                contestant.connections = count

            stand_in.reset()
            for round_ in range(rounds.bursts):
                for contestant, session in alternate(pairs, round_):
                    for result in await timed(contestant.bursts, session.burst):
                        check(result)
            for contestant, count in zip(contestants, stand_in.connections(), strict=False):
                contestant.burst_connections = count
        for contestant, session in pairs:
            contestant.peak_rss_kib = session.peak_rss_kib()
    finally:
        for session in sessions:
            await session.close()
    return direct


# ---------------------------------------------------------------- the HTTP run

CALL_BODY = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "create_auth_code", "arguments": ARGUMENTS}}
).encode()
KEEP_IDLE = 2.0  # seconds; below uvicorn's 5 s keep-alive, so a reused connection is never one it is closing


@dataclass
class HttpContestant:
    name: str
    ports: list[int]  # more than one: requests go round-robin, each to the next
    pids: list[int] = field(default_factory=list)
    authorization: str | None = None  # the header each request carries: a caller's key, an access token
    sequential: list[float] = field(default_factory=list)
    bursts: list[float] = field(default_factory=list)
    cpu_per_call: float = math.nan


class LeanHttp:
    """A lean HTTP/1.1 client for the HTTP run, as the JSON-RPC loop is for stdio: keep-alive
    connections per port, each request written as prepared bytes and its JSON answer read by
    Content-Length, so that what is timed is the servers, not an HTTP library's overhead."""

    def __init__(self) -> None:
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}
        self._open: list[asyncio.StreamWriter] = []

    async def post(self, port: int, body: bytes, authorization: str | None = None) -> tuple[int, Any]:
        idle = self._idle.setdefault(port, [])
        while idle and time.monotonic() - idle[-1][2] > KEEP_IDLE:
            idle.pop()[1].close()
        if idle:
            reader, writer, _ = idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            self._open.append(writer)
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" not in headers:
            raise RuntimeError(f"an answer without Content-Length: {lines}")
        data = await reader.readexactly(int(headers["content-length"]))
        idle.append((reader, writer, time.monotonic()))
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        for writer in self._open:
            writer.close()
        for writer in self._open:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def start_http(
    argv: list[str], env: dict[str, str], errlog: TextIO, http: LeanHttp, port: int | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    """A server process on a free port (or `port`), once it answers an initialize on /mcp (any
    answer but a connection failure, for a server that wants a credential first)."""
    port = port or free_port()
    proc = await asyncio.create_subprocess_exec(
        *argv, "--port", str(port), stdin=asyncio.subprocess.DEVNULL, stdout=errlog, stderr=errlog, env=env
    )
    init = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
    body = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}).encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.returncode is None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if (await http.post(port, body))[0] in (200, 401):
                return proc, port
        await asyncio.sleep(0.05)
    errlog.seek(0)
    raise RuntimeError(f"{argv} did not start serving:\n{''.join(errlog.readlines()[-20:])}")


async def http_call(http: LeanHttp, port: int, authorization: str | None = None) -> dict[str, Any]:
    status, message = await http.post(port, CALL_BODY, authorization)
    if status != 200:
        raise RuntimeError(f"POST /mcp answered {status}: {message}")
    result: dict[str, Any] = message["result"]
    return result


async def http_burst(http: LeanHttp, c: HttpContestant) -> list[dict[str, Any]]:
    """IN_FLIGHT calls at once, each to the next port in turn."""
    ports = c.ports
    calls = (http_call(http, ports[i % len(ports)], c.authorization) for i in range(IN_FLIGHT))
    return list(await asyncio.gather(*calls))


async def http_phase(http: LeanHttp, pairs: list[HttpContestant], rounds: Rounds, sequential: bool) -> None:
    if sequential:
        for _ in range(rounds.warmup):
            for c in pairs:
                check(await http_call(http, c.ports[0], c.authorization))
        before = [sum(cpu_seconds(pid) for pid in c.pids) for c in pairs]
        for round_ in range(rounds.sequential):
            for c in alternate(pairs, round_):
                port = c.ports[round_ % len(c.ports)]  # a contestant of several processes: each in turn
                check(await timed(c.sequential, functools.partial(http_call, http, port, c.authorization)))
        for c, cpu in zip(pairs, before, strict=True):
            c.cpu_per_call = (sum(cpu_seconds(pid) for pid in c.pids) - cpu) / rounds.sequential
    for c in pairs:  # an untimed burst each: opens the connections a burst needs
        await http_burst(http, c)
    for round_ in range(rounds.bursts):
        for c in alternate(pairs, round_):
            for result in await timed(c.bursts, functools.partial(http_burst, http, c)):
                check(result)


async def stop_all(http: LeanHttp, procs: list[asyncio.subprocess.Process]) -> None:
    """The client's connections closed, then every server process stopped (SIGTERM) and waited for."""
    await http.close()
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        await proc.wait()


async def run_http(
    stand_in: StandIn, pycache: str, stack: contextlib.ExitStack, rounds: Rounds
) -> list[HttpContestant]:
    """mcp-modelgates vs the minimal HTTP forwarder; then one process vs two behind round-robin."""
    procs: list[asyncio.subprocess.Process] = []
    http = LeanHttp()
    try:

        async def start(argv: list[str], listener: int) -> tuple[int, int]:
            errlog = stack.enter_context(tempfile.TemporaryFile("a+"))  # noqa: SIM115 - the stack closes it
            env = environment(stand_in.base_url(listener), pycache)
            proc, port = await start_http(argv, env, errlog, http)
            procs.append(proc)
            return proc.pid, port

        project_argv = [*find_project(), "--transport", "http"]
        pid, port = await start(project_argv, 0)
        floor_pid, floor_port = await start([sys.executable, str(HERE / "minimal_http_forwarder.py")], 1)
        project = HttpContestant("mcp-modelgates", [port], [pid])
        floor = HttpContestant("minimal HTTP forwarder", [floor_port], [floor_pid])
        await http_phase(http, [project, floor], rounds, sequential=True)

        twin_pid, twin_port = await start(project_argv, 0)
        one = HttpContestant("one process", [port], [pid])
        two = HttpContestant("two processes", [port, twin_port], [pid, twin_pid])
        await http_phase(http, [one, two], rounds, sequential=False)
    finally:
        await stop_all(http, procs)
    return [project, floor, one, two]


def http_report(
    project: HttpContestant, floor: HttpContestant, one: HttpContestant, two: HttpContestant, rounds: Rounds
) -> tuple[str, bool]:
    def cps(c: HttpContestant) -> float:
        return IN_FLIGHT / statistics.median(c.bursts)

    lines, holds = budget_table("over HTTP", project.name, floor.name, call_rows(project, floor, rounds))
    lines += [
        "",
        f"| scale-out, {IN_FLIGHT} in flight | {one.name} | {two.name}, round-robin | ratio |",
        "|---|---:|---:|---:|",
        f"| calls/s, median of {rounds.bursts} bursts | {cps(one):.0f} | {cps(two):.0f} | {cps(two) / cps(one):.2f}x |",
    ]
    return "\n".join(lines), holds


# ---------------------------------------------------------------- sign-in (OAuth mode) against per-caller keys

OAUTH_SECRET = "bench-oauth-secret-" + "0123456789abcdef" * 2
CALLER_KEY = "sk-bench-caller-c-5555cccc"
OAUTH_P50 = 1.05  # budget: OAuth mode with its memory store, against per-caller keys
OAUTH_CPS = 0.95
REDIS_P50 = 1.10  # budget: OAuth mode with the Redis store
# Processes per contestant, taking calls in turn: one process alone reads a few percent faster or
# slower than its twin with the same settings (where it runs, how its memory was laid out), as much
# as these budgets allow, so each side is the mean of two.
REPLICAS = 2


@contextlib.contextmanager
def redis_server() -> Any:
    """A redis-server on a free loopback port, no persistence, in a temp folder; None without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def sign_in(origin: str) -> str:
    """One sign-in as a client and its user's browser make it: register, the consent page, Approve,
    the stand-in's approval, the server's callback, the token request. Returns the access token."""
    verifier = "bench-verifier-" + "v" * 40
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    redirect = "http://127.0.0.1:9/callback"
    async with httpx.AsyncClient(trust_env=False, timeout=30) as web:
        client_id = (
            await web.post(
                f"{origin}/register", json={"redirect_uris": [redirect], "token_endpoint_auth_method": "none"}
            )
        ).json()["client_id"]
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect,
            "state": "bench",
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        page = await web.get(f"{origin}/authorize", params=query)
        form = re.search(r'name="request" value="([^"]+)"', page.text)
        if page.status_code != 200 or form is None:
            raise RuntimeError(f"no consent page: {page.status_code} {page.text[:200]}")
        cookies = {"mg_consent": page.cookies["mg_consent"]}
        approved = await web.post(
            f"{origin}/consent", data={"request": form.group(1), "action": "approve"}, cookies=cookies
        )
        at_modelgates = await web.get(approved.headers["location"])  # approves at once
        back = await web.get(at_modelgates.headers["location"], cookies=dict(approved.cookies))
        code = dict(httpx.URL(back.headers["location"]).params)["code"]
        form_data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        tokens = (await web.post(f"{origin}/token", data=form_data)).json()
    return str(tokens["access_token"])


async def run_oauth(
    stand_in: StandIn, listener: int, pycache: str, stack: contextlib.ExitStack, rounds: Rounds, store: str | None
) -> list[HttpContestant]:
    """Per-caller keys, OAuth mode with its memory store and, given a Redis URL, with the Redis store."""
    procs: list[asyncio.subprocess.Process] = []
    http = LeanHttp()
    try:

        def oauth(extra: dict[str, str]) -> tuple[dict[str, str], int]:
            port = free_port()  # the first replica's; every replica has this public URL: one deployment
            settings = {
                "MODELGATES_AUTH": "oauth",
                "MODELGATES_PUBLIC_URL": f"http://localhost:{port}",
                "MODELGATES_OAUTH_SECRET": OAUTH_SECRET,
            }
            return {**settings, **extra}, port

        plans = [("per-caller keys", {"MODELGATES_KEY_FROM_CLIENT": "1"}, None)]
        plans.append(("OAuth, memory store", *oauth({})))
        if store is not None:
            plans.append(("OAuth, Redis store", *oauth({"MODELGATES_OAUTH_STORE": store})))
        contestants = [HttpContestant(name, []) for name, _, _ in plans]
        # REPLICAS processes each, started in turn (one of each, then the next of each), so that
        # whatever comes with being started first or last falls on every contestant alike.
        for replica in range(REPLICAS):
            for contestant, (_, extra, port) in zip(contestants, plans, strict=True):
                errlog = stack.enter_context(tempfile.TemporaryFile("a+"))  # noqa: SIM115 - the stack closes it
                env = environment(stand_in.base_url(listener), pycache)
                del env["MODELGATES_API_KEY"]  # each caller's own key, or each signed-in user's
                argv = [*find_project(), "--transport", "http"]
                proc, bound = await start_http(argv, {**env, **extra}, errlog, http, port if replica == 0 else None)
                procs.append(proc)
                contestant.ports.append(bound)
                contestant.pids.append(proc.pid)
        contestants[0].authorization = f"Bearer {CALLER_KEY}"
        for contestant, (_, _, port) in zip(contestants[1:], plans[1:], strict=True):
            contestant.authorization = f"Bearer {await sign_in(f'http://localhost:{port}')}"
        await http_phase(http, contestants, replace(rounds, bursts=rounds.sign_in_bursts), sequential=True)
    finally:
        await stop_all(http, procs)
    return contestants


def oauth_report(contestants: list[HttpContestant], rounds: Rounds) -> tuple[str, bool]:
    rounds = replace(rounds, bursts=rounds.sign_in_bursts)
    per_caller, memory, *with_redis = contestants
    lines, holds = budget_table(
        "sign-in", memory.name, per_caller.name, call_rows(memory, per_caller, rounds, OAUTH_P50, OAUTH_CPS)
    )
    lines.append("")
    if with_redis:
        (redis,) = with_redis
        more, redis_holds = budget_table(
            "sign-in", redis.name, per_caller.name, call_rows(redis, per_caller, rounds, REDIS_P50, None)
        )
        lines += more
        holds &= redis_holds
    else:
        lines.append(f"(OAuth with the Redis store: not run, no redis-server here; budget p50 <= {REDIS_P50:.2f}x)")
    return "\n".join(lines), holds


# ---------------------------------------------------------------- one caller's burst


@dataclass
class Caller:
    name: str
    key: str
    outcomes: list[tuple[str, float]] = field(default_factory=list)  # ("ok" | "capped" | "error", seconds)

    def count(self, outcome: str) -> int:
        return sum(1 for o, _ in self.outcomes if o == outcome)

    def latencies(self) -> list[float]:
        return [seconds for o, seconds in self.outcomes if o == "ok"]


async def fair_call(http: httpx.AsyncClient, url: str, caller: Caller) -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
        "Authorization": f"Bearer {caller.key}",
    }
    start = time.perf_counter()
    try:
        answer = await http.post(url, content=CALL_BODY, headers=headers)
        result = answer.json()["result"] if answer.status_code == 200 else {}
    except httpx.HTTPError:
        result = {}
    elapsed = time.perf_counter() - start
    if result and not result.get("isError"):
        outcome = "ok"
    elif "Too many calls at once" in json.dumps(result):
        outcome = "capped"
    else:
        outcome = "error"
    caller.outcomes.append((outcome, elapsed))


async def run_fairness(stand_in: StandIn, pycache: str, stack: contextlib.ExitStack, rounds: Rounds) -> list[Caller]:
    """B sends `burst_b` calls alone; then A bursts `burst_a` calls and B sends `burst_b` again a
    moment later, each caller with a key of its own."""
    errlog = stack.enter_context(tempfile.TemporaryFile("a+"))  # noqa: SIM115 - the stack closes it
    env = environment(stand_in.base_url(len(stand_in.ports) - 1), pycache)  # the slow port, any key
    del env["MODELGATES_API_KEY"]
    env["MODELGATES_KEY_FROM_CLIENT"] = "1"
    lean = LeanHttp()
    proc, port = await start_http([*find_project(), "--transport", "http"], env, errlog, lean)
    key_b = "sk-bench-caller-b-9876543210"
    alone, a, b = (
        Caller("B alone", key_b),
        Caller("A, bursting", "sk-bench-caller-a-0123456789"),
        Caller("B, while A bursts", key_b),
    )
    try:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=120, trust_env=False) as http:
            url = f"http://127.0.0.1:{port}/mcp"
            await asyncio.gather(*(fair_call(http, url, alone) for _ in range(rounds.burst_b)))
            burst = asyncio.gather(*(fair_call(http, url, a) for _ in range(rounds.burst_a)))
            await asyncio.sleep(min(0.2, rounds.slow / 2))  # B comes while A's burst is in flight
            await asyncio.gather(burst, *(fair_call(http, url, b) for _ in range(rounds.burst_b)))
    finally:
        await lean.close()
        proc.terminate()
        await proc.wait()
    return [alone, a, b]


def fairness_report(alone: Caller, a: Caller, b: Caller, rounds: Rounds) -> tuple[str, bool]:
    def share(c: Caller) -> float:
        return c.count("ok") / len(c.outcomes)

    def latency(c: Caller) -> str:
        samples = c.latencies()
        return f"{statistics.median(samples) * 1000:.0f} / {p99(samples) * 1000:.0f}" if samples else "-"

    holds = share(b) >= FAIR_SHARE
    callers = (alone, a, b)
    lines = [
        f"| one caller's burst, API answering in {rounds.slow:g} s | "
        + " | ".join(c.name for c in callers)
        + " | budget |",
        "|---|---:|---:|---:|---|",
        f"| calls sent | {len(alone.outcomes)} at once | {len(a.outcomes)} at once | {len(b.outcomes)}, a moment "
        "later | |",
        "| succeeded | "
        + " | ".join(f"{c.count('ok')} ({share(c):.0%})" for c in callers)
        + f" | B >= {FAIR_SHARE:.0%} {'ok' if holds else 'MISSED'} |",
        "| refused at once: over the caller's cap of calls in flight | "
        + " | ".join(str(c.count("capped")) for c in callers)
        + " | |",
        "| other errors | " + " | ".join(str(c.count("error")) for c in callers) + " | |",
        "| latency of the successes, p50 / p99 (ms) | " + " | ".join(latency(c) for c in callers) + " | |",
    ]
    return "\n".join(lines), holds


# ---------------------------------------------------------------- the report


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {version(name)}" for name in ("mcp", "httpx", "pydantic"))
    system = f"{platform.system()} {platform.release()}"
    return f"{cores} cores ({model}), {system}, Python {platform.python_version()}; {versions}"


# (metric, project value, floor value, format, budget: (limit, higher is better) or None)
Row = tuple[str, float, float, str, tuple[float, bool] | None]


def call_rows(
    project: Contestant | HttpContestant,
    floor: Contestant | HttpContestant,
    rounds: Rounds,
    p50_budget: float = 1.10,
    cps_budget: float | None = 0.90,
) -> list[Row]:
    """The rows every comparison shares: sequential calls, server CPU, and bursts of IN_FLIGHT."""
    ms = 1000.0

    def cps(c: Contestant | HttpContestant) -> float:
        return IN_FLIGHT / statistics.median(c.bursts)

    return [
        (f"sequential call p50, {rounds.sequential} calls (ms)", statistics.median(project.sequential) * ms,
         statistics.median(floor.sequential) * ms, "{:.2f}", (p50_budget, False)),
        ("sequential call p99 (ms)", p99(project.sequential) * ms, p99(floor.sequential) * ms, "{:.2f}", None),
        ("server CPU per sequential call (ms)", project.cpu_per_call * ms, floor.cpu_per_call * ms, "{:.2f}", None),
        (f"{IN_FLIGHT} in flight: wall, median of {rounds.bursts} (ms)", statistics.median(project.bursts) * ms,
         statistics.median(floor.bursts) * ms, "{:.1f}", None),
        (f"{IN_FLIGHT} in flight: calls/s", cps(project), cps(floor), "{:.0f}",
         (cps_budget, True) if cps_budget is not None else None),
    ]  # fmt: skip


def budget_table(corner: str, mine: str, theirs: str, rows: list[Row]) -> tuple[list[str], bool]:
    """The table's head and a row per metric with its ratio and, where it has one, its budget verdict."""
    corner_cell = f" {corner} " if corner else " "
    lines = [f"|{corner_cell}| {mine} | {theirs} | ratio | budget |", "|---|---:|---:|---:|---|"]
    holds = True
    for metric, value, floor_value, fmt, budget in rows:
        ratio = value / floor_value if floor_value else math.nan
        verdict = ""
        if budget is not None:
            limit, higher_is_better = budget
            ok = ratio >= limit if higher_is_better else ratio <= limit
            holds &= ok
            verdict = f"{'>=' if higher_is_better else '<='} {limit:.2f}x {'ok' if ok else 'MISSED'}"
        lines.append(f"| {metric} | {fmt.format(value)} | {fmt.format(floor_value)} | {ratio:.2f}x | {verdict} |")
    return lines, holds


def report(project: Contestant, floor: Contestant, direct: list[float], rounds: Rounds) -> tuple[str, bool]:
    """A markdown table with the ratios project / floor and whether each budget line holds."""
    ms = 1000.0
    rows: list[Row] = [
        (f"cold start to tools/list, median of {rounds.cold} (ms)", statistics.median(project.cold) * ms,
         statistics.median(floor.cold) * ms, "{:.0f}", (1.05, False)),
        *call_rows(project, floor, rounds),
        ("peak RSS of the server (MiB)", project.peak_rss_kib / 1024, floor.peak_rss_kib / 1024, "{:.1f}",
         (1.05, False)),
    ]  # fmt: skip
    lines, holds = budget_table("", project.name, floor.name, rows)
    keep_alive = project.connections == 1
    holds &= keep_alive
    lines.append(
        f"| TCP connections for {rounds.warmup + rounds.sequential} sequential calls | {project.connections} | "
        f"{floor.connections} | | 1 {'ok' if keep_alive else 'MISSED'} |"
    )
    lines.append(
        f"| TCP connections for {rounds.bursts} bursts of {IN_FLIGHT} | {project.burst_connections} | "
        f"{floor.burst_connections} | | |"
    )
    quiet = project.request_log_lines == 0
    holds &= quiet
    lines.append(
        f"| httpx per-request log lines on the server's stderr | {project.request_log_lines} | "
        f"{floor.request_log_lines} | | 0 {'ok' if quiet else 'MISSED'} |"
    )
    lines.append(
        f"| direct httpx POST from the client, p50 / p99 (ms) | {statistics.median(direct) * ms:.2f} / "
        f"{p99(direct) * ms:.2f} | | | the floor of forwarding |"
    )
    return "\n".join(lines), holds


def find_project() -> list[str]:
    script = shutil.which("mcp-modelgates", path=str(Path(sys.executable).parent)) or shutil.which("mcp-modelgates")
    if script is None:
        sys.exit("bench.py: the mcp-modelgates console script is not installed (pip install -e .)")
    return [script]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(rounds: Rounds) -> tuple[str, bool]:
    # One stand-in port per contestant (so connections are counted apart); the last one serves
    # the direct httpx POSTs.
    stand_in = StandIn(listeners=3, slow=rounds.slow, open_ports=1)  # the open port: callers' own keys
    try:
        with contextlib.ExitStack() as stack:
            pycache = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pycache-"))

            def contestant(name: str, argv: list[str], port: int) -> Contestant:
                # Appended to, so that reading it never moves where the server writes.
                errlog = stack.enter_context(tempfile.TemporaryFile("a+"))
                return Contestant(name, argv, environment(stand_in.base_url(port), pycache), errlog)

            contestants = [
                contestant("mcp-modelgates", find_project(), 0),
                contestant("minimal forwarder", [sys.executable, str(HERE / "minimal_forwarder.py")], 1),
            ]
            progress(f"cold starts: 1 untimed + {rounds.cold} rounds ...")
            await cold_starts(contestants, rounds.cold)
            progress(
                f"calls: {rounds.warmup} warm-up + {rounds.sequential} sequential, "
                f"{rounds.bursts} bursts of {IN_FLIGHT} ..."
            )
            direct = await calls(contestants, stand_in, rounds)
            for c in contestants:
                c.errlog.seek(0)
                c.request_log_lines = sum("HTTP Request:" in line for line in c.errlog)
            progress(
                f"over HTTP: {rounds.warmup} warm-up + {rounds.sequential} sequential, {rounds.bursts} bursts "
                f"of {IN_FLIGHT}; then one process vs two ..."
            )
            over_http = await run_http(stand_in, pycache, stack, rounds)
            store = stack.enter_context(redis_server())
            progress(
                f"sign-in against per-caller keys: {rounds.warmup} warm-up + {rounds.sequential} sequential, "
                f"{rounds.sign_in_bursts} bursts of {IN_FLIGHT}, {REPLICAS} processes each; memory store"
                + (", Redis store ..." if store else " (no redis-server: no Redis store) ...")
            )
            signed_in = await run_oauth(stand_in, 3, pycache, stack, rounds, store)
            progress(
                f"one caller's burst: {rounds.burst_a} + {rounds.burst_b} calls, answers taking {rounds.slow:g} s ..."
            )
            callers = await run_fairness(stand_in, pycache, stack, rounds)
    finally:
        stand_in.close()
    table, holds = report(contestants[0], contestants[1], direct, rounds)
    http_table, http_holds = http_report(*over_http, rounds)
    oauth_table, oauth_holds = oauth_report(signed_in, rounds)
    fair_table, fair_holds = fairness_report(*callers, rounds)
    tables = [table, http_table, oauth_table, fair_table]
    return "\n\n".join(tables), holds and http_holds and oauth_holds and fair_holds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds only: proves the benchmark runs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget line does not hold")
    args = parser.parse_args()
    rounds = QUICK if args.quick else FULL
    table, holds = asyncio.run(run(rounds))
    print(f"Machine: {machine()}")
    print()
    print(table)
    print()
    print("Budget " + ("holds." if holds else "MISSED."))
    return 1 if args.check and not holds else 0


if __name__ == "__main__":
    sys.exit(main())
