"""The streamable HTTP transport: a small ASGI app in front of the SDK's session manager, served by uvicorn.

Imported only for `--transport http`. The SDK's `StreamableHTTPSessionManager` runs stateless
with JSON responses, so any request may reach any process and nothing is kept between requests.
In front of it, checks run in an order that refuses early and never reads a body it will not use:
path and method, then `Host` (421) and `Origin` (403), then the bearer token (401), then the body
cap (413, from Content-Length or while a chunked body streams in), then the protocol itself.

In per-caller key mode the request's `Authorization: Bearer <key>` is put in a contextvar for
that request only (`config.caller_key_for_request`); the client forwards it and every message
masks it, exactly as the configured key. In OAuth mode (MODELGATES_AUTH=oauth) the server is also
the authorization server (`mcp_modelgates.oauth`, imported only then): its endpoints get their
`Host` checked and then their own routes, and `/mcp` wants one of its access tokens (401 with
`WWW-Authenticate: Bearer resource_metadata=...` otherwise, before the method is even looked at);
the signed-in user's ModelGates key sealed in the token goes into that same contextvar.

uvicorn runs with a protocol that bounds connections (`BoundedH11Protocol`: a deadline for each
request head and body, a cap on open connections that evicts the longest-waiting idle one), so
that connections nobody needs a credential to open cannot use up the process's descriptors.
`/healthz` answers 503 once the session manager, and with it the server's lifespan, has stopped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import resource
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import h11
import uvicorn
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mcp_modelgates import __version__
from mcp_modelgates.config import (
    HEADER_SAFE,
    ConfigError,
    Settings,
    caller_key_for_request,
    is_loopback,
    store_location,
)
from mcp_modelgates.server import SERVER_NAME, build_server

if TYPE_CHECKING:
    from mcp_modelgates.oauth.routes import OAuthServer
    from mcp_modelgates.oauth.store import OnceStore

logger = logging.getLogger("mcp_modelgates")

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1 << 20
GRACEFUL_SECONDS = 5  # how long SIGTERM waits for in-flight calls before closing them
# A client sends its request head as soon as it connects, and a 1 MiB body takes well under
# 30 s even at 50 KB/s; a connection slower than that holds a descriptor for nothing.
HEAD_TIMEOUT = 10.0  # seconds for a request head, from the connect or from the previous answer
BODY_TIMEOUT = 30.0  # seconds for the body, from its head
KEEP_ALIVE_SECONDS = 5  # an idle connection between requests (uvicorn's default, made explicit)
# Open connections: at most a quarter of the descriptors the process may have (the rest are for
# the upstream pool, connect_account's listeners, logs), within these bounds. With the usual soft
# limit of 1024 that is 256; under `ulimit -n 256`, 64.
MAX_CONNECTIONS = 256
MIN_CONNECTIONS = 16
_WILDCARD_BINDS = ("0.0.0.0", "::")  # noqa: S104 - names to recognise, not to bind


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(settings: Settings) -> list[str]:
    """`Host` values the server answers to, in the SDK's syntax (`name:*` is any port): the bound
    address, the loopback names when bound to loopback or to all interfaces (health checks and
    port forwarding arrive that way), and MODELGATES_ALLOWED_HOSTS."""
    names = [_bracketed(settings.http_host)]
    if is_loopback(settings.http_host) or settings.http_host in _WILDCARD_BINDS:
        names += ["127.0.0.1", "localhost", "[::1]"]
    if settings.public_url:  # OAuth mode: the name clients reach it by (a balancer passes it on)
        names.append(_bracketed(urlsplit(settings.public_url).hostname or ""))
    allowed: list[str] = []
    for name in [*names, *settings.allowed_hosts]:
        forms = [name] if name.endswith(":*") or name.rsplit("]", 1)[-1].count(":") else [name, f"{name}:*"]
        allowed += [form for form in forms if form not in allowed]
    return allowed


def _matches(value: str, allowed: list[str]) -> bool:
    """The SDK's rule, applied here before the body is read: exact, or `base:*` with any port."""
    return value in allowed or any(
        pattern.endswith(":*") and value.startswith(pattern[:-1]) and value[len(pattern) - 1 :].isdigit()
        for pattern in allowed
    )


def _bearer(value: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header, or None."""
    if value is None:
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not HEADER_SAFE.fullmatch(credential):
        return None
    return credential


def connection_cap() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // 4))


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the two bounds it lacks, so that connections cannot use up the
    process's descriptors. uvicorn 0.55 has no head timeout: its keep-alive timer starts only after
    a first answer and any byte stops it, so a connection that sends nothing (or a byte at a time)
    stays open for ever; and `limit_concurrency` only answers 503 to requests, leaving the
    connections themselves open.

    - A deadline per request: its head within HEAD_TIMEOUT of the connect or of the previous
      answer, its body within BODY_TIMEOUT of the head; past it, the connection is closed.
    - At most `max_connections` open: a new one closes the connection that has waited longest for
      a request head (silent, slow or idle between requests), so that connections held open cannot
      lock out a real request; only when every connection carries a request is the new one closed.
    """

    max_connections = MAX_CONNECTIONS
    _timer: asyncio.TimerHandle | None = None
    _waiting: Literal["head", "body"] | None = None
    _since = 0.0
    _refused_logged_at = -1e9

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._track()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_timer(None)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Starts the deadline of what the connection waits for next, when that changes."""
        state = self.conn.their_state
        waiting: Literal["head", "body"] | None = (
            "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        )
        if self.transport.is_closing():
            waiting = None
        if waiting != self._waiting:
            self._set_timer(waiting)

    def _set_timer(self, waiting: Literal["head", "body"] | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting, self._since = waiting, self.loop.time()
        if waiting is not None:
            self._timer = self.loop.call_later(HEAD_TIMEOUT if waiting == "head" else BODY_TIMEOUT, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            logger.debug("closed a connection that sent no whole request %s in time", self._waiting)
            self.transport.close()

    def _make_room(self) -> None:
        # Closed connections stay in the set until the loop's next turns: count only the live ones.
        live = [c for c in self.connections if isinstance(c, BoundedH11Protocol) and not c.transport.is_closing()]
        if len(live) <= self.max_connections:
            return
        oldest = min((c for c in live if c._waiting == "head" and c is not self), key=lambda c: c._since, default=None)
        if oldest is not None:
            oldest.transport.close()
            return
        self.transport.close()
        now = self.loop.time()
        if now - BoundedH11Protocol._refused_logged_at > 10:  # at most one line per 10 s under a flood
            BoundedH11Protocol._refused_logged_at = now
            logger.warning("%d connections, each with a request in flight: closing new ones", self.max_connections)

    @classmethod
    def limited_to(cls, max_connections: int) -> type[BoundedH11Protocol]:
        return type(cls.__name__, (cls,), {"max_connections": max_connections})


async def _respond(
    send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    if body:
        head.append((b"content-type", b"application/json" if body.startswith(b"{") else b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class ModelGatesHttpApp:
    """The ASGI app: `/healthz`, and `/mcp` behind the checks described in the module docstring."""

    def __init__(self, settings: Settings, server: Any, oauth: OAuthServer | None = None) -> None:
        self._settings = settings
        self._oauth = oauth
        self._hosts = allowed_hosts(settings)
        self._origins = list(settings.allowed_origins)
        self._token = settings.http_token.get_secret_value().encode() if settings.http_token else None
        self._health = json.dumps({"status": "ok", "version": __version__}).encode()
        self._unhealthy = json.dumps({"status": "unavailable", "version": __version__}).encode()
        self.serving = False  # the session manager (and through it the server's lifespan) is running
        self.stopping: Callable[[], bool] = lambda: False  # set by serve_http: a shutdown has begun
        self.manager = StreamableHTTPSessionManager(
            server,
            stateless=True,
            json_response=True,
            # The same rules as the checks below, so that the SDK's own check agrees with them.
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True, allowed_hosts=self._hosts, allowed_origins=self._origins
            ),
            max_request_body_size=MAX_BODY_BYTES,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Runs the session manager (and through it the server's lifespan) once for the process."""
        try:
            async with AsyncExitStack() as stack:
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        try:
                            await stack.enter_async_context(self.manager.run())
                        except Exception as exc:
                            logger.exception("the MCP session manager failed to start")
                            await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                            return
                        if self._oauth is not None:
                            stack.push_async_callback(self._oauth.aclose)
                        self.serving = True
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        self.serving = False
                        await stack.aclose()
                        await send({"type": "lifespan.shutdown.complete"})
                        return
        finally:
            # Also when the server's lifespan died under it: from then on nothing can be served,
            # and /healthz says so, so that a health check takes this process out of service.
            self.serving = False

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == HEALTH_PATH:
            if method in ("GET", "HEAD"):
                if self.serving:
                    await _respond(send, 200, self._health)
                else:
                    await _respond(send, 503, self._unhealthy)
            else:
                await _respond(send, 405, headers=[(b"allow", b"GET, HEAD")])
            return
        oauth = self._oauth
        if path != MCP_PATH and (oauth is None or path not in oauth.paths):
            await _respond(send, 404, b"Not Found")
            return
        headers = Headers(scope=scope)
        if not _matches(headers.get("host", ""), self._hosts):
            await _respond(send, 421, b"Invalid Host header")
            return
        if oauth is not None and path != MCP_PATH:
            await oauth(scope, receive, send)  # its routes judge Origin themselves (CORS, same-origin)
            return
        origin = headers.get("origin")
        if origin is not None and not _matches(origin, self._origins):
            await _respond(send, 403, b"Invalid Origin header")
            return
        signed_in: SecretStr | None = None
        if oauth is not None:  # before the method: whatever it sends, a client learns where to sign in
            signed_in = await self._signed_in_key(oauth, headers, send)
            if signed_in is None:
                return
        if method != "POST":
            # Stateless: no GET stream to resume and no session to DELETE.
            await _respond(send, 405, headers=[(b"allow", b"POST")])
            return
        credential = _bearer(headers.get("authorization"))
        key: SecretStr | None = None
        if self._token is not None:
            if credential is None or not hmac.compare_digest(credential.encode(), self._token):
                await _respond(send, 401, headers=[(b"www-authenticate", b"Bearer")])
                return
        elif self._settings.key_from_client and "authorization" in headers:
            if credential is None:
                await _respond(send, 401, headers=[(b"www-authenticate", b"Bearer")])
                return
            key = SecretStr(credential)
        if not self.serving:
            await _respond(send, 503, b"The server is not serving; see its log.")
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            with caller_key_for_request(signed_in or key):  # OAuth mode has neither a token nor per-caller keys
                await self.manager.handle_request(scope, receive, send_tracked)
        except anyio.get_cancelled_exc_class():
            if not self.stopping():
                raise
            # uvicorn cancels what still runs GRACEFUL_SECONDS into a shutdown: that is the shutdown
            # working, not a failure, so no traceback; the caller learns what happened.
            logger.warning("a call still running %d s into the shutdown was cancelled", GRACEFUL_SECONDS)
            if not started:
                await _respond(send, 503, b"The server shut down before this call finished; its outcome is unknown.")

    async def _signed_in_key(self, oauth: OAuthServer, headers: Headers, send: Send) -> SecretStr | None:
        """The ModelGates key sealed in the request's access token; None once a 401 is sent."""
        credential = _bearer(headers.get("authorization"))
        access = await oauth.verify(credential) if credential is not None else None
        if access is None:
            challenge = oauth.challenge(token_sent="authorization" in headers)
            await _respond(send, 401, headers=[(b"www-authenticate", challenge)])
            return None
        return access.key


class _QueryOmitted(logging.Filter):
    """The access log shows the sign-in endpoints without their query: a client's state, a consent
    request or the ModelGates code on its way to be exchanged are nobody's business in a log."""

    def __init__(self, paths: frozenset[str]) -> None:
        super().__init__()
        self._paths = paths

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, mark, _ = args[2].partition("?")
            if mark and path in self._paths:
                record.args = (*args[:2], path + "?<omitted>", *args[3:])
        return True


def describe(settings: Settings, key_source: str) -> str:
    if settings.oauth:
        store = (
            f"shared store {store_location(settings.oauth_store.get_secret_value())}"
            if settings.oauth_store is not None
            else "single-use facts in this process's memory"
        )
        return f"each signed-in user's own key (OAuth sign-in, issuer {settings.public_url}; {store})"
    if settings.key_from_client:
        return "each caller's own key (Authorization: Bearer <ModelGates key>)"
    mode = f"shared key {key_source}"
    return mode + ("; bearer token required" if settings.http_token is not None else "; no token (loopback only)")


def uvicorn_config(app: ModelGatesHttpApp, host: str, port: int, cap: int) -> uvicorn.Config:
    """uvicorn's settings: the transport's limits, with at most `cap` connections open."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        ws="none",
        log_config=None,  # uvicorn's records go through the project's redacting handler
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        http=BoundedH11Protocol.limited_to(cap),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # uvicorn counts open connections (closed ones too, for a turn of the loop) and requests in
        # flight against this; live connections stay within `cap`, so what it bounds is requests in
        # flight (also those whose caller left): past it, a request gets 503. h11 keeps uvicorn's
        # 16 KiB cap on a request head.
        limit_concurrency=2 * cap,
        # asyncio accepts up to `backlog` connections at a time, and they take a few turns of the
        # loop to reach the protocol (and be closed by it), so under a flood the descriptors in use
        # briefly go past the cap by up to about three backlogs, and an EMFILE there stalls every
        # accept for a second. With a quarter of the cap, 3000 connections in a row peaked at 110
        # of 256 descriptors and 373 of 1024; connections past the short queue wait for TCP's retry.
        backlog=max(16, cap // 4),
    )


def shared_store(settings: Settings) -> OnceStore:
    """The store MODELGATES_OAUTH_STORE names, once it has answered a write; `ConfigError` (one line
    naming the setting, never its password) when its client is not installed or it cannot be used."""
    assert settings.oauth_store is not None
    url = settings.oauth_store.get_secret_value()
    try:
        from mcp_modelgates.oauth.redis_store import RedisStore, probe  # imported only in this mode
    except ImportError:
        raise ConfigError(
            "MODELGATES_OAUTH_STORE needs the Redis client: pip install 'mcp-modelgates[redis]'"
        ) from None
    problem = asyncio.run(probe(url, settings.public_url))  # its own loop and client, closed after
    if problem is not None:
        raise ConfigError(f"MODELGATES_OAUTH_STORE {store_location(url)} cannot be used: {problem}")
    return RedisStore(url, settings.public_url)


def serve_http(settings: Settings, key_source: str) -> int:
    """Serve until SIGTERM/SIGINT; then in-flight calls get GRACEFUL_SECONDS to finish, and exit 0.
    Raises `ConfigError` before anything listens when the shared store cannot be used."""
    mcp_server = build_server(settings)  # connect_account where server.offers_connect says
    oauth: OAuthServer | None = None
    if settings.oauth:
        from mcp_modelgates.client import ModelGatesClient
        from mcp_modelgates.oauth.routes import OAuthServer  # imported only in this mode

        store = shared_store(settings) if settings.oauth_store is not None else None
        oauth = OAuthServer(settings, ModelGatesClient(settings, f"{SERVER_NAME}/{__version__}"), store)
        logging.getLogger("uvicorn.access").addFilter(_QueryOmitted(oauth.paths))
    app = ModelGatesHttpApp(settings, mcp_server, oauth)
    if settings.log_level != "DEBUG":
        # The SDK logs "Terminating session: None" at INFO for every stateless request.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
    cap = connection_cap()
    server = uvicorn.Server(uvicorn_config(app, settings.http_host, settings.http_port, cap))
    app.stopping = lambda: server.should_exit
    logger.info(
        "mcp-modelgates %s serving streamable HTTP on http://%s:%d%s; API %s; %s; at most %d connections; "
        "Host allowed: %s",
        __version__,
        _bracketed(settings.http_host),
        settings.http_port,
        MCP_PATH,
        settings.base_url,
        describe(settings, key_source),
        cap,
        ", ".join(app.manager.security_settings.allowed_hosts if app.manager.security_settings else []),
    )
    if settings.http_host in _WILDCARD_BINDS and not settings.allowed_hosts:
        logger.warning("bound to all interfaces: set MODELGATES_ALLOWED_HOSTS to the name clients use to reach it")
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; with the default
    # handler that would end the process with -15 instead of 0. Ctrl-C re-raises as KeyboardInterrupt.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with suppress(KeyboardInterrupt):
        server.run()
    return 0
