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
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from mcp_modelgates import __version__
from mcp_modelgates.config import HEADER_SAFE, Settings, caller_key_for_request, is_loopback
from mcp_modelgates.server import SERVER_NAME, build_server

if TYPE_CHECKING:
    from mcp_modelgates.oauth.routes import OAuthServer

logger = logging.getLogger("mcp_modelgates")

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1 << 20
GRACEFUL_SECONDS = 5  # how long SIGTERM waits for in-flight calls before closing them
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
                    await send({"type": "lifespan.startup.complete"})
                    if self._oauth is not None:
                        stack.push_async_callback(self._oauth.aclose)
                elif message["type"] == "lifespan.shutdown":
                    await stack.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == HEALTH_PATH:
            if method in ("GET", "HEAD"):
                await _respond(send, 200, self._health)
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
        with caller_key_for_request(signed_in or key):  # OAuth mode has neither a token nor per-caller keys
            await self.manager.handle_request(scope, receive, send)

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
        return f"each signed-in user's own key (OAuth sign-in, issuer {settings.public_url})"
    if settings.key_from_client:
        return "each caller's own key (Authorization: Bearer <ModelGates key>)"
    mode = f"shared key {key_source}"
    return mode + ("; bearer token required" if settings.http_token is not None else "; no token (loopback only)")


def serve_http(settings: Settings, key_source: str) -> int:
    """Serve until SIGTERM/SIGINT; then in-flight calls get GRACEFUL_SECONDS to finish, and exit 0."""
    server = build_server(settings)  # connect_account where server.offers_connect says
    oauth: OAuthServer | None = None
    if settings.oauth:
        from mcp_modelgates.client import ModelGatesClient
        from mcp_modelgates.oauth.routes import OAuthServer  # imported only in this mode

        oauth = OAuthServer(settings, ModelGatesClient(settings, f"{SERVER_NAME}/{__version__}"))
        logging.getLogger("uvicorn.access").addFilter(_QueryOmitted(oauth.paths))
    app = ModelGatesHttpApp(settings, server, oauth)
    if settings.log_level != "DEBUG":
        # The SDK logs "Terminating session: None" at INFO for every stateless request.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        ws="none",
        log_config=None,  # uvicorn's records go through the project's redacting handler
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    logger.info(
        "mcp-modelgates %s serving streamable HTTP on http://%s:%d%s; API %s; %s; Host allowed: %s",
        __version__,
        _bracketed(settings.http_host),
        settings.http_port,
        MCP_PATH,
        settings.base_url,
        describe(settings, key_source),
        ", ".join(app.manager.security_settings.allowed_hosts if app.manager.security_settings else []),
    )
    if settings.http_host in _WILDCARD_BINDS and not settings.allowed_hosts:
        logger.warning("bound to all interfaces: set MODELGATES_ALLOWED_HOSTS to the name clients use to reach it")
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; with the default
    # handler that would end the process with -15 instead of 0. Ctrl-C re-raises as KeyboardInterrupt.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    return 0
