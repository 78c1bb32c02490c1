"""A real HTTP server on 127.0.0.1 standing in for the ModelGates API in tests and benchmarks.

By default it behaves like ModelGates for the two PKCE operations and the approval page (`GET /auth`
on the origin approves at once and redirects to the callback with a code; with `approval_page` it
shows a page whose **Approve on ModelGates** form posts to `/auth/approve`, which redirects the same
way, so that a real browser comes back to the callback by a navigation this site started): `POST /auth/keys/code` issues
a code bound to its challenge (requires a bearer key: the configured one, or one it minted and did not
`revoke`), `POST /auth/keys` checks the verifier against that challenge and mints a new key (kept in
`minted`), and codes are single-use and expire after `code_ttl` seconds. Tests can
queue scripted answers (`reply`) that take precedence, in order, over that behaviour. Every
request is recorded (method, path, headers, raw body) and connections are counted.

Run it alone for manual tries and the real-client harness (`--accept-code` makes one code
exchangeable again and again, for a static script such as tests/e2e/spec.json):
    python tests/fake_api.py --port 8765 --accept-code auth_code_e2e
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import json
import secrets
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

KEY_PREFIX = "sk-mg-v1-"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer. `action` other than "respond": "reset" (close without answering),
    "truncate" (promise more body than is sent, then close), "reset_mid_body" (send half of the
    body, then reset the connection), "stream" (send `stream_bytes` of body in chunks; with
    `chunked`, without a Content-Length, so that only the reader can enforce a size cap).
    "respond" with `chunked` sends `body` in chunks of 64 KiB without a Content-Length."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "respond"
    stream_bytes: int = 0
    chunked: bool = False
    path: str | None = None  # only for requests to this path; None: any


@dataclass
class _Code:
    challenge: str | None
    method: str | None
    issued: float
    used: bool = False


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "metadata": None}, "user_id": None}


class FakeModelGates:
    def __init__(
        self,
        api_key: str = "sk-test-key",
        code_ttl: float = 600.0,
        prefix: str = "/api/v1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        approval_page: bool = False,
    ) -> None:
        self.api_key = api_key
        self.approval_page = approval_page
        self.code_ttl = code_ttl
        self.prefix = prefix
        self.requests: list[Recorded] = []
        self.connections = 0
        self._replies: deque[Reply] = deque()
        self._codes: dict[str, _Code] = {}
        self.minted: list[str] = []  # every key an exchange issued, in order
        self.revoked: set[str] = set()
        self._lock = threading.Lock()
        self.handler: Callable[[Recorded], Reply | None] | None = None
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self.scheme = "http"
        if ssl_context is not None:  # HTTPS: the handshake runs on accept
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-modelgates", daemon=True
        )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> FakeModelGates:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeModelGates:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.prefix

    # ------------------------------------------------------------ scripting
    def reply(self, status: int = 200, json: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self._replies.append(Reply(status=status, json=json, **kwargs))

    def clear(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()
            self.minted.clear()
            self.revoked.clear()
            self.connections = 0

    def expire(self, code: str) -> None:
        with self._lock:
            self._codes[code].issued -= self.code_ttl + 1

    def revoke(self, key: str) -> None:
        """The user deleted this key at ModelGates: it is refused from now on."""
        with self._lock:
            self.revoked.add(key)

    def issue_code(self, challenge: str | None = None, method: str | None = "S256") -> str:
        code = "auth_code_" + secrets.token_hex(8)
        with self._lock:
            self._codes[code] = _Code(challenge, method, time.monotonic())
        return code

    # ------------------------------------------------------------ behaviour
    def _next_reply(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            for i, r in enumerate(self._replies):
                if r.path is None or self.prefix + r.path == rec.path:
                    del self._replies[i]
                    return r
        if self.handler is not None and (scripted := self.handler(rec)) is not None:
            return scripted
        return self._default(rec)

    def _default(self, rec: Recorded) -> Reply:
        if rec.method == "GET" and urlsplit(rec.path).path == "/auth":
            return self._approval_page(rec) if self.approval_page else self._approve(rec)
        if rec.method == "POST" and rec.path == "/auth/approve":  # the approval page's form
            return self._approve(replace(rec, path="/auth?" + rec.body.decode()))
        if rec.method != "POST":
            return Reply(405, error_body(405, "Method not allowed"))
        try:
            body = rec.json
        except ValueError:
            return Reply(400, error_body(400, "Invalid JSON body"))
        if not isinstance(body, dict):
            return Reply(400, error_body(400, "Body must be an object"))
        if rec.path == self.prefix + "/auth/keys/code":
            bearer = (rec.headers.get("authorization") or "").removeprefix("Bearer ")
            with self._lock:
                known = bearer == self.api_key or (bearer in self.minted and bearer not in self.revoked)
            if not known:
                return Reply(401, error_body(401, "Missing Authentication header"))
            if not isinstance(body.get("callback_url"), str):
                return Reply(400, error_body(400, "callback_url is required"))
            code = self.issue_code(body.get("code_challenge"), body.get("code_challenge_method"))
            return Reply(200, {"data": {"id": code, "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}})
        if rec.path == self.prefix + "/auth/keys":
            with self._lock:
                entry = self._codes.get(str(body.get("code")))
                if entry is None or entry.used:
                    return Reply(403, error_body(403, "Invalid code or code_verifier"))
                if time.monotonic() - entry.issued > self.code_ttl:
                    return Reply(403, error_body(403, "Authorization code expired"))
                method = body.get("code_challenge_method")
                if entry.challenge is not None and method is not None and method != (entry.method or "S256"):
                    return Reply(400, error_body(400, "Invalid code_challenge_method"))
                if entry.challenge is not None:
                    verifier = body.get("code_verifier")
                    derived = (
                        verifier
                        if (entry.method or "S256") == "plain"
                        else s256(verifier)
                        if isinstance(verifier, str)
                        else None
                    )
                    if derived != entry.challenge:
                        return Reply(403, error_body(403, "Invalid code or code_verifier"))
                entry.used = True
                key = KEY_PREFIX + secrets.token_hex(16)
                self.minted.append(key)
            return Reply(200, {"key": key, "user_id": "user_2abc"})
        return Reply(404, error_body(404, "Not found"))

    def _approval_page(self, rec: Recorded) -> Reply:
        """The approval page a person sees: one button, posting the request's parameters back."""
        fields = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(values[0])}">'
            for name, values in parse_qs(urlsplit(rec.path).query).items()
        )
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ModelGates: approve</title></head>'
            f'<body><h1>Approve a new key</h1><form method="post" action="/auth/approve">{fields}'
            '<button type="submit" id="approve">Approve on ModelGates</button></form></body></html>'
        )
        return Reply(200, body=page.encode(), headers={"Content-Type": "text/html; charset=utf-8"})

    def _approve(self, rec: Recorded) -> Reply:
        """The approval page, approved at once: 302 to callback_url with a code bound to the challenge."""
        query = parse_qs(urlsplit(rec.path).query)
        callback = query.get("callback_url", [""])[0]
        if not callback:
            return Reply(400, error_body(400, "callback_url is required"))
        code = self.issue_code(query.get("code_challenge", [None])[0], query.get("code_challenge_method", ["S256"])[0])
        joiner = "&" if urlsplit(callback).query else "?"
        return Reply(302, headers={"Location": f"{callback}{joiner}{urlencode({'code': code})}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    fake: FakeModelGates

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up (a timeout test, a size cap): expected, not noise
        super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Without TCP_NODELAY, Nagle plus delayed ACKs make small answers take ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.fake._lock:
            self.fake.connections += 1
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be observed
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
        reply = self.server.fake._next_reply(rec)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.action == "reset":
            self._reset()
            return
        body = (
            reply.body
            if reply.body is not None
            else (json.dumps(reply.json).encode() if reply.json is not None else b"")
        )
        self.send_response(reply.status)
        has_type = any(k.lower() == "content-type" for k in reply.headers)
        if not has_type and reply.json is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.action == "stream":
            self.send_header(
                *(("Transfer-Encoding", "chunked") if reply.chunked else ("Content-Length", str(reply.stream_bytes)))
            )
            self.end_headers()
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < reply.stream_bytes:
                    n = min(len(chunk), reply.stream_bytes - sent)
                    self.wfile.write(b"%x\r\n%s\r\n" % (n, chunk[:n]) if reply.chunked else chunk[:n])
                    sent += n
                if reply.chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client stopped reading, as it should
            self.close_connection = True
            return
        if reply.action == "reset_mid_body":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(0.05)  # let the client start reading the body before the reset
            self._reset()
            return
        if reply.action == "truncate":
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for start in range(0, len(body), 65536):
                    piece = body[start : start + 65536]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True  # the client stopped reading, as it may
            return
        if not any(k.lower() == "content-length" for k in reply.headers):  # a test may claim another length
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of an orderly shutdown."""
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle


# RFC 7636's example verifier (its S256 challenge is E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM).
EXAMPLE_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


def accept_code(fake: FakeModelGates, code: str, verifier: str = EXAMPLE_VERIFIER) -> None:
    """Make `code` exchangeable any number of times with `verifier` (S256). It is issued afresh
    before each exchange that names it, so every other check (method, verifier) still applies, and
    a static script can succeed from several clients in turn although real codes are single-use."""
    challenge = s256(verifier)
    chained = fake.handler

    def reissue(rec: Recorded) -> Reply | None:
        if rec.path == fake.prefix + "/auth/keys":
            with contextlib.suppress(ValueError):
                if isinstance(body := rec.json, dict) and body.get("code") == code:
                    with fake._lock:
                        fake._codes[code] = _Code(challenge, "S256", time.monotonic())
        return chained(rec) if chained is not None else None

    fake.handler = reissue


if __name__ == "__main__":  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description="A ModelGates stand-in on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="sk-test-key")
    parser.add_argument("--accept-code", metavar="CODE", help=f"always accept CODE with verifier {EXAMPLE_VERIFIER}")
    args = parser.parse_args()
    with FakeModelGates(api_key=args.api_key, port=args.port) as fake:
        if args.accept_code:
            accept_code(fake, args.accept_code)
        print(f"fake ModelGates at {fake.base_url} (key {args.api_key})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
