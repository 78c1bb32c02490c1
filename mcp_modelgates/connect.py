"""The connect flow: a one-shot loopback listener that receives the browser's redirect, then the
exchange of its code and the storage of the new key, all without the key passing through MCP.

A flow is started by a tool call and lives in a task group the server opens in its lifespan, so it
outlives the call (the browser may arrive after the call returned) but not the server: shutdown
cancels it and closes its listener. Its state (the verifier, the outcome) stays in this process's
memory. The listener binds 127.0.0.1 on a free port and parses requests with h11. It holds at most
`MAX_CONNECTIONS` connections; a new one takes the slot of the oldest that has not sent a request
head yet, and a silent connection is dropped sooner than a slow one, so that local connections
opened to hold the slots cannot lock the browser out. It answers everything but a GET of its
exact path with 404, and ends after the first callback that carries `code` or `error`. The browser
gets its page only once the exchange and the storage are done, so the page tells the truth. A
failing accept() (no descriptors left) pauses the listener; nothing a listener meets leaves its flow.
"""

from __future__ import annotations

import errno
import html
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute

from mcp_modelgates import keystore, pkce
from mcp_modelgates.client import RESTART, ApiError, ModelGatesClient, excerpt
from mcp_modelgates.models import EXCHANGE_AUTH_CODE, ExchangeAuthCodeRequest, ExchangeAuthCodeResponse

logger = logging.getLogger("mcp_modelgates.connect")

Status = Literal["connected", "waiting_for_approval", "cancelled", "expired", "failed"]

LOOPBACK = "127.0.0.1"
MAX_CONNECTIONS = 4  # a browser opens one or two; past this, the oldest one still silent is closed
SILENT_TIMEOUT = 2.0  # seconds a connection may stay silent (a browser sends at once)
READ_TIMEOUT = 5.0  # seconds for a connection to send its whole request head
ACCEPT_PAUSE, MAX_ACCEPT_PAUSE = 0.05, 1.0  # waits after a failed accept(), doubling up to the cap
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


@dataclass(eq=False)
class _Connection:
    """One accepted connection; until its request head is in, a newer connection may evict it."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    has_head: bool = False


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
    connections: list[_Connection] = field(default_factory=list)  # oldest first

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
        pause = ACCEPT_PAUSE
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    stream = await self.listener.accept()
                except OSError as exc:
                    # Out of descriptors (EMFILE, ENFILE) or memory: the connection waits in the
                    # backlog. Pause and try again; the flow, and the server, go on meanwhile.
                    level = logging.WARNING if pause == ACCEPT_PAUSE else logging.DEBUG  # once a streak
                    logger.log(level, "callback listener: accept() failed (%s); pausing", _errno_name(exc))
                    await anyio.sleep(pause)
                    pause = min(pause * 2, MAX_ACCEPT_PAUSE)
                    continue
                pause = ACCEPT_PAUSE
                if not self._make_room():
                    await stream.aclose()
                    continue
                connection = _Connection()
                self.connections.append(connection)
                tg.start_soon(self._handle, stream, connection)

    def _make_room(self) -> bool:
        """A free slot for a new connection: evicts the oldest one that has not sent its request head
        yet, so that connections opened to hold the slots cannot lock out the browser."""
        if len(self.connections) < MAX_CONNECTIONS:
            return True
        idle = next((c for c in self.connections if not c.has_head), None)
        if idle is None:
            return False  # every slot holds a request being answered; those end soon
        self.connections.remove(idle)
        idle.scope.cancel()
        return True

    async def _handle(self, stream: anyio.abc.SocketStream, connection: _Connection) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            with connection.scope:  # cancelled when a newer connection needs the slot
                try:
                    request = await _read_request(stream, conn)
                except h11.RemoteProtocolError:
                    await _send(stream, conn, 400, _page("Bad request", "This is not an HTTP request."))
                    return
                if request is not None:  # else silent, too slow or gone: drop it without an answer
                    connection.has_head = True
                    await self._respond(stream, conn, request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the other side went away
        except Exception as exc:  # a bug here must not take the flow (or the server) down
            logger.warning("callback listener: %s while answering a request", type(exc).__name__)
        finally:
            if connection in self.connections:
                self.connections.remove(connection)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _respond(self, stream: anyio.abc.SocketStream, conn: h11.Connection, request: h11.Request) -> None:
        parts = urlsplit(request.target.decode("ascii"))
        query = parse_qs(parts.query)
        code, error = query.get("code", [None])[0], query.get("error", [None])[0]
        if request.method != b"GET" or parts.path != self.path or self.callback is not None or not (code or error):
            await _send(stream, conn, 404, _page("Not found", "Nothing here."))
            return
        self.callback = _Callback(code, error)
        self.arrived.set()
        # Hold the browser until the outcome is known, so that its page says what happened.
        with anyio.move_on_after(PAGE_WAIT):
            await self.page_ready.wait()
        status, page = self.page or (500, _page("Not connected", "The server stopped before the key was stored."))
        try:
            await _send(stream, conn, status, page)
        finally:
            self.page_sent.set()


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


async def _read_request(stream: anyio.abc.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The request head, parsed by h11; None for a connection that stays silent, is too slow or ends.

    A connection that has sent nothing is dropped after SILENT_TIMEOUT (a browser sends its
    request as soon as it connects); the whole head has READ_TIMEOUT."""
    wait = SILENT_TIMEOUT
    with anyio.move_on_after(READ_TIMEOUT):
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed: it went away before a whole head
            with anyio.move_on_after(wait) as silent:
                try:
                    data = await stream.receive(4096)
                except anyio.EndOfStream:
                    data = b""  # tells h11 the other side is done
            if silent.cancelled_caught:
                return None
            wait = math.inf
            conn.receive_data(data)
    return None


def _page(title: str, message: str) -> str:
    title, message = html.escape(title), html.escape(message)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>ModelGates: {title}</title></head>"
        f'<body style="font-family:sans-serif;margin:3em"><h1>{title}</h1><p>{message}</p></body></html>'
    )


async def _send(stream: anyio.abc.SocketStream, conn: h11.Connection, status: int, page: str) -> None:
    """The whole answer, then the connection is closed: one request per connection."""
    body = page.encode("utf-8")
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ("Connection", "close"),
    ]
    events = (
        h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
        h11.Data(data=body),
        h11.EndOfMessage(),
    )
    await stream.send(b"".join(conn.send(event) or b"" for event in events))


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
        self._flows[flow.flow_id] = flow  # holds its slot from here: the await below lets other calls in
        try:
            await self._tg.start(self._run, flow)
        except OSError as exc:  # no socket to be had (out of descriptors): this call fails, nothing else
            del self._flows[flow.flow_id]
            raise ConnectError(
                f"Could not open a listener on {LOOPBACK} ({_errno_name(exc)}); try again in a moment."
            ) from None
        except BaseException:
            self._flows.pop(flow.flow_id, None)
            raise
        finished = [k for k, f in self._flows.items() if f.done.is_set()]
        for stale in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._flows[stale]
        return flow

    async def _run(self, flow: Flow, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        verifier = pkce.new_verifier()
        challenge = pkce.challenge_for(verifier, "S256")
        started = False
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
                started = True
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
        except Exception as exc:
            if not started:
                raise  # to the call that is starting the flow
            # Whatever the listener met, it ends this flow only, never the server's task group.
            logger.error("connect flow %s: the listener failed (%s)", flow.flow_id[:6], type(exc).__name__)
            if flow.outcome is None:
                flow.outcome = Outcome("failed", "The local listener failed; see the server log.")
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
