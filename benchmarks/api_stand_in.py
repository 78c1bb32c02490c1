"""A fast ModelGates stand-in on 127.0.0.1 for the benchmark, run as its own process.

It answers `POST {prefix}/auth/keys/code` like the API does (a bearer key is required, the body
must be a JSON object with a `callback_url`) from a bare asyncio protocol, so that its own cost
stays far below that of the servers being measured. In its own process it takes no GIL from
the benchmark's client. Every accepted socket gets TCP_NODELAY: without it, Nagle's algorithm
and delayed ACKs turn each small answer into a ~40 ms wait and the benchmark measures nothing.

It listens on one port per contestant so that connections can be counted per contestant.
With `--open N`, N more ports accept any bearer key (per-caller and sign-in contestants bring keys
of their own) and also play ModelGates' side of a sign-in: `GET /auth` approves at once, sending
the browser to its `callback_url` with a code, and `POST {prefix}/auth/keys` mints a key for it.
With `--slow SECONDS`, one more port (the last) answers after SECONDS and accepts any bearer
key: the slow API of the per-caller burst, where callers bring keys of their own.
Protocol on its pipes: the first stdout line is `{"ports": [...]}`; then each stdin line
`stats` is answered with one JSON line of per-port counts, `reset` zeroes them, EOF stops it.

    python benchmarks/api_stand_in.py --listeners 3 --api-key sk-bench [--open 1] [--slow 2.5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import socket
import sys
from urllib.parse import parse_qs, urlsplit

PREFIX = "/api/v1"
_CODES = itertools.count(1)


def _response(status: int, reason: str, payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


def _error(status: int, reason: str, message: str) -> bytes:
    return _response(status, reason, {"error": {"code": status, "message": message, "metadata": None}, "user_id": None})


def _sign_in(method: str, path: str, body: bytes) -> bytes | None:
    """ModelGates' side of a sign-in, for the open ports: approval at once, then a minted key."""
    if method == "GET" and path.startswith("/auth?"):
        callback = parse_qs(urlsplit(path).query).get("callback_url", [""])[0]
        location = f"{callback}{'&' if '?' in callback else '?'}code=auth_code_{next(_CODES)}"
        return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
    if method == "POST" and path == PREFIX + "/auth/keys":
        return _response(200, "OK", {"key": f"sk-bench-minted-{next(_CODES)}", "user_id": "user_bench"})
    return None


class Counts:
    def __init__(self, listeners: int) -> None:
        self.connections = [0] * listeners
        self.requests = [0] * listeners

    def reset(self) -> None:
        self.connections = [0] * len(self.connections)
        self.requests = [0] * len(self.requests)


class _Connection(asyncio.Protocol):
    def __init__(self, counts: Counts, index: int, authorization: str | None, delay: float = 0.0) -> None:
        self._counts = counts
        self._index = index
        self._authorization = authorization  # None: any bearer key
        self._delay = delay
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._counts.connections[self._index] += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self._buffer) < end + 4 + length:
                return  # the body has not fully arrived yet
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            method, path, _ = lines[0].split(" ", 2)
            self._counts.requests[self._index] += 1
            answer = self._answer(method, path, headers, body)
            close = headers.get("connection", "").lower() == "close"
            if self._delay:
                asyncio.get_running_loop().call_later(self._delay, self._send, answer, close)
            else:
                self._send(answer, close)
            if close:
                return

    def _send(self, answer: bytes, close: bool) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return  # the client gave up
        self._transport.write(answer)
        if close:
            self._transport.close()

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if self._authorization is None and not self._delay:
            signed_in = _sign_in(method, path, body)
            if signed_in is not None:
                return signed_in
        if method != "POST" or path != PREFIX + "/auth/keys/code":
            return _error(404, "Not Found", "Not found")
        authorization = headers.get("authorization", "")
        allowed = authorization == self._authorization if self._authorization else authorization.startswith("Bearer ")
        if not allowed:
            return _error(401, "Unauthorized", "Missing Authentication header")
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "Bad Request", "Invalid JSON body")
        if not isinstance(data, dict) or not isinstance(data.get("callback_url"), str):
            return _error(400, "Bad Request", "callback_url is required")
        code = {"id": f"auth_code_{next(_CODES)}", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
        return _response(200, "OK", {"data": code})


async def _serve(listeners: int, api_key: str, open_ports: int, slow: float) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts(listeners + open_ports + (1 if slow else 0))
    servers = []
    for index in range(len(counts.connections)):
        if index < listeners:
            factory = functools.partial(_Connection, counts, index, f"Bearer {api_key}")
        elif index < listeners + open_ports:
            factory = functools.partial(_Connection, counts, index, None)
        else:
            factory = functools.partial(_Connection, counts, index, None, slow)
        servers.append(await loop.create_server(factory, "127.0.0.1", 0, backlog=1024))
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps({"ports": ports}), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "reset":
            counts.reset()
            print("{}", flush=True)
        elif command == "stats":
            print(json.dumps({"connections": counts.connections, "requests": counts.requests}), flush=True)
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1, help="how many ports to listen on (one per contestant)")
    parser.add_argument("--api-key", default="sk-bench", help="the bearer key the stand-in accepts")
    parser.add_argument("--open", type=int, default=0, help="add N fast ports taking any key, with sign-in")
    parser.add_argument("--slow", type=float, default=0.0, help="add a port answering after SECONDS, any key")
    args = parser.parse_args()
    asyncio.run(_serve(args.listeners, args.api_key, args.open, args.slow))


if __name__ == "__main__":
    main()
