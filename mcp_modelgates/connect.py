"""The connect flow: a one-shot loopback listener that receives the browser's redirect, then the
exchange of its code and the storage of the new key, all without the key passing through MCP.

A flow is started by a tool call and lives in a task group the server opens in its lifespan, so it
outlives the call (the browser may arrive after the call returned) but not the server: shutdown
cancels it and closes its listener. Its state (the verifier, the outcome) stays in this process's
memory. The listener binds 127.0.0.1 on a free port, serves at most `MAX_CONNECTIONS` connections at
a time with a short read timeout, answers everything but a GET of its exact path with 404, and ends
after the first callback that carries `code` or `error`. The browser gets its page only once the
exchange and the storage are done, so the page tells the truth.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from mcp_modelgates import keystore, pkce
from mcp_modelgates.client import RESTART, ApiError, ModelGatesClient, excerpt
from mcp_modelgates.models import EXCHANGE_AUTH_CODE, ExchangeAuthCodeRequest, ExchangeAuthCodeResponse

logger = logging.getLogger("mcp_modelgates.connect")

Status = Literal["connected", "waiting_for_approval", "cancelled", "expired", "failed"]

LOOPBACK = "127.0.0.1"
MAX_CONNECTIONS = 4  # a browser opens one or two; more at once is someone else
READ_TIMEOUT = 5.0  # seconds for a connection to send its request head
MAX_HEAD_BYTES = 16 * 1024
PAGE_WAIT = 60.0  # longest the browser waits for its page while the code is exchanged
MAX_PENDING = 8  # open listeners at once, across calls
MAX_FINISHED = 32  # outcomes kept for a later call with the flow_id


class ConnectError(Exception):
    """A refusal whose one-line message is safe to show (it names the argument, never a key)."""


@dataclass(frozen=True)
class Outcome:
    status: Status
    detail: str = ""  # what went wrong; for `connected`, what the save changed besides the key
    key_preview: str | None = None
    user_id: str | None = None


def key_preview(key: str) -> str:
    """At most the last 4 characters, and fewer for a short key, e.g. `sk-…a1b2`."""
    tail = key[-4:] if len(key) >= 16 else ""
    return ("sk-…" if key.startswith("sk-") else "…") + tail


# ---------------------------------------------------------------- the listener


@dataclass
class _Callback:
    code: str | None
    error: str | None


@dataclass
class CallbackListener:
    """Serves one callback path on 127.0.0.1; `arrived` is set by the first valid callback."""

    listener: anyio.abc.SocketListener
    path: str
    arrived: anyio.Event = field(default_factory=anyio.Event)
    callback: _Callback | None = None
    page: tuple[int, str] | None = None
    page_ready: anyio.Event = field(default_factory=anyio.Event)
    page_sent: anyio.Event = field(default_factory=anyio.Event)
    active: int = 0

    @property
    def port(self) -> int:
        return int(self.listener.extra(SocketAttribute.local_port))  # noqa: S610 - anyio, not Django

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{self.path}"

    def answer(self, status: int, page: str) -> None:
        self.page = (status, page)
        self.page_ready.set()

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                stream = await self.listener.accept()
                if self.active >= MAX_CONNECTIONS:
                    await stream.aclose()
                    continue
                self.active += 1
                tg.start_soon(self._handle, stream)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        try:
            with anyio.move_on_after(READ_TIMEOUT):
                head = await _read_head(stream)
                if head is not None:
                    await self._respond(stream, head)
                    return
            # Silent, oversized or malformed: drop it without blocking anyone.
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the other side went away
        except Exception as exc:  # a bug here must not take the flow (or the server) down
            logger.warning("callback listener: %s while answering a request", type(exc).__name__)
        finally:
            self.active -= 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _respond(self, stream: anyio.abc.SocketStream, head: bytes) -> None:
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            await _send(stream, 400, _page("Bad request", "This is not an HTTP request."))
            return
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        code, error = query.get("code", [None])[0], query.get("error", [None])[0]
        if method != "GET" or parts.path != self.path or self.callback is not None or not (code or error):
            await _send(stream, 404, _page("Not found", "Nothing here."))
            return
        self.callback = _Callback(code, error)
        self.arrived.set()
        # Hold the browser until the outcome is known, so that its page says what happened.
        with anyio.move_on_after(PAGE_WAIT):
            await self.page_ready.wait()
        status, page = self.page or (500, _page("Not connected", "The server stopped before the key was stored."))
        try:
            await _send(stream, status, page)
        finally:
            self.page_sent.set()


async def _read_head(stream: anyio.abc.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            return None
        try:
            data += await stream.receive(4096)
        except anyio.EndOfStream:
            return None
    return data


def _page(title: str, message: str) -> str:
    title, message = html.escape(title), html.escape(message)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>ModelGates: {title}</title></head>"
        f'<body style="font-family:sans-serif;margin:3em"><h1>{title}</h1><p>{message}</p></body></html>'
    )


async def _send(stream: anyio.abc.SocketStream, status: int, page: str) -> None:
    body = page.encode("utf-8")
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Referrer-Policy: no-referrer\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
        "Connection: close\r\n\r\n"
    )
    await stream.send(head.encode("latin-1") + body)


# ---------------------------------------------------------------- flows


@dataclass
class Flow:
    flow_id: str
    destination: keystore.Destination
    timeout: float
    authorization_url: str = ""
    outcome: Outcome | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    deadline: float = 0.0
    declined: bool = False

    def cancel(self) -> None:
        """The user declined: stop waiting for the browser (a callback already in hand still completes)."""
        self.declined = True
        self.scope.cancel()

    def remaining(self) -> float:
        return max(0.0, self.deadline - anyio.current_time())


class Flows:
    """Pending and finished flows of one server, keyed by unguessable ids; memory only."""

    def __init__(self, api: ModelGatesClient, base_url: str) -> None:
        self._api = api
        self._base_url = base_url
        self._tg: anyio.abc.TaskGroup | None = None
        self._flows: OrderedDict[str, Flow] = OrderedDict()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the server's lifespan: flows run in this task group, and leaving it cancels every
        flow and closes its listener (stdin EOF, SIGTERM)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def get(self, flow_id: str) -> Flow | None:
        return self._flows.get(flow_id)

    def pending(self) -> int:
        return sum(1 for f in self._flows.values() if not f.done.is_set())

    async def start(self, destination: keystore.Destination, seconds: float) -> Flow:
        if self._tg is None:
            raise ConnectError("connect_account is not available: the server is not running its flows.")
        if self.pending() >= MAX_PENDING:
            raise ConnectError(
                f"{MAX_PENDING} connect flows are already waiting for approval; finish or let one expire first."
            )
        flow = Flow(secrets.token_urlsafe(16), destination, seconds)
        await self._tg.start(self._run, flow)
        self._flows[flow.flow_id] = flow
        finished = [k for k, f in self._flows.items() if f.done.is_set()]
        for stale in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._flows[stale]
        return flow

    async def _run(self, flow: Flow, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        verifier = pkce.new_verifier()
        challenge = pkce.challenge_for(verifier, "S256")
        try:
            socket_listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=0)
            # create_tcp_listener returns a MultiListener; with one address it holds exactly one.
            bound = socket_listener.listeners[0]
            assert isinstance(bound, anyio.abc.SocketListener)
            listener = CallbackListener(bound, f"/callback/{secrets.token_urlsafe(24)}")
            async with socket_listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve)
                flow.authorization_url = pkce.authorization_url(self._base_url, listener.url, challenge, "S256")
                flow.deadline = anyio.current_time() + flow.timeout
                logger.info("connect flow %s: listening on %s:%d", flow.flow_id[:6], LOOPBACK, listener.port)
                task_status.started()
                try:
                    await self._wait(flow, listener, verifier)
                except Exception as exc:  # a bug must end this flow only, never the server's task group
                    logger.error("connect flow %s: %s", flow.flow_id[:6], type(exc).__name__)
                    flow.outcome = Outcome("failed", "The server failed internally; see its log.")
                    listener.answer(500, _page("Not connected", flow.outcome.detail))
                # Let the browser read its page before the socket goes.
                with anyio.move_on_after(2):
                    if listener.callback is not None:
                        await listener.page_sent.wait()
                tg.cancel_scope.cancel()
        finally:
            if flow.outcome is None:
                flow.outcome = Outcome("cancelled", "The server stopped before the flow ended.")
            flow.done.set()
            logger.info("connect flow %s: %s; listener closed", flow.flow_id[:6], flow.outcome.status)

    async def _wait(self, flow: Flow, listener: CallbackListener, verifier: str) -> None:
        with flow.scope:
            with anyio.move_on_after(flow.timeout):
                await listener.arrived.wait()
        if listener.callback is None:
            if flow.declined:
                flow.outcome = Outcome("cancelled", "The user declined or cancelled; the listener is closed.")
            else:
                flow.outcome = Outcome(
                    "expired", f"No approval arrived within {flow.timeout:g} s; the listener is closed."
                )
            return
        flow.outcome = outcome = await self._finish(flow, listener.callback, verifier)
        if outcome.status == "connected":
            listener.answer(200, _page("Connected", "Connected; you can close this tab."))
        else:
            listener.answer(200, _page("Not connected", outcome.detail))

    async def _finish(self, flow: Flow, callback: _Callback, verifier: str) -> Outcome:
        if callback.code is None:
            reason = excerpt(callback.error or "", 120)
            return Outcome("failed", f"ModelGates reported an error instead of a code: {reason}.")
        try:
            request = ExchangeAuthCodeRequest.model_validate(
                {"code": callback.code, "code_verifier": verifier, "code_challenge_method": "S256"}
            )
        except ValueError:
            return Outcome("failed", "The callback carried a malformed code; nothing was sent to ModelGates.")
        try:
            answer = await self._api.call(EXCHANGE_AUTH_CODE, request)
        except ApiError as exc:
            # The client's hint names the manual tools; here a fresh connect_account is the way again.
            return Outcome("failed", str(exc).replace(RESTART, "Call connect_account again to start over."))
        assert isinstance(answer, ExchangeAuthCodeResponse)
        try:
            note = await anyio.to_thread.run_sync(keystore.save, flow.destination, answer.key)
        except keystore.StoreError as exc:
            return Outcome("failed", f"The key was issued but could not be stored: {exc}")
        except Exception as exc:  # the message of an unknown error might quote the key: only its type
            return Outcome("failed", f"The key was issued but could not be stored ({type(exc).__name__}).")
        return Outcome("connected", note, key_preview(answer.key), answer.user_id)
