"""The authorization server's endpoints, as one ASGI app the HTTP transport hands their paths to.

- RFC 9728 metadata for `/mcp` at `/.well-known/oauth-protected-resource/mcp` and at the root path,
  RFC 8414 metadata at `/.well-known/oauth-authorization-server` (the issuer is exactly the public
  origin; S256 only; `none` among the client authentication methods; RFC 9207 `iss` advertised).
- Clients: `POST /register` (RFC 7591), or a `client_id` that is the https URL of the client's
  metadata document (Client ID Metadata Documents, `client_documents.py`).
- `POST /register` and `POST /token` are the SDK's handlers over `SealedProvider`;
  the token route hands the request's `resource` to the provider, which the SDK's handler does not.
- `GET /authorize` checks the request and shows this server's consent page; `POST /consent`
  (same origin only, CSRF-bound to a cookie) denies, or seals the pending sign-in into a cookie
  and sends the browser to ModelGates with the server's own callback and a fresh S256 challenge.
- `GET /oauth/callback` (only in the browser that consented, once) exchanges the ModelGates code,
  never twice, and sends the browser back to the client with the server's own code, `state` and `iss`.
- `POST /revoke` (RFC 7009): an access or refresh token of the calling client ends its grant, the
  whole sign-in, on every replica sharing the store.

When the store of single-use facts cannot be reached, what needs it fails closed with a 503 that
says so (`/token` and `/revoke` in OAuth's JSON, the consent and callback steps as a page, the
pending sign-in kept so that reloading finishes it once the store is back).

Metadata, `/register`, `/token` and `/revoke` answer CORS requests (no cookies are involved there).
Every request body is capped; the transport has checked `Host` before any of this runs.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from mcp.server.auth.handlers.authorize import AuthorizationRequest
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import construct_redirect_uri
from mcp.server.auth.settings import ClientRegistrationOptions
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared.auth import (
    InvalidRedirectUriError,
    InvalidScopeError,
    OAuthClientInformationFull,
    OAuthMetadata,
    ProtectedResourceMetadata,
)
from pydantic import AnyUrl, SecretStr, ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, Router, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_modelgates import pkce
from mcp_modelgates.client import ApiError, ModelGatesClient, excerpt
from mcp_modelgates.config import Settings, caller_key_for_request
from mcp_modelgates.models import EXCHANGE_AUTH_CODE, ExchangeAuthCodeRequest, ExchangeAuthCodeResponse
from mcp_modelgates.oauth import pages
from mcp_modelgates.oauth.client_documents import ClientDocumentError, ClientDocuments
from mcp_modelgates.oauth.provider import (
    DocumentClient,
    SealedAccessToken,
    SealedProvider,
    client_ref,
    new_id,
    requested_resource,
)
from mcp_modelgates.oauth.store import MemoryStore, OnceStore, StoreUnavailable

logger = logging.getLogger("mcp_modelgates.oauth")

PRM_PATH = "/.well-known/oauth-protected-resource"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"
CALLBACK_PATH = "/oauth/callback"
MAX_BODY_BYTES = 16 << 10  # far above any form or registration a client sends
SIGN_IN_TTL = 600  # seconds for the consent form, then for ModelGates' approval (its codes last 10 minutes)
MAX_STATE_CHARS = 512
AUTH_METHODS = ["none", "client_secret_post", "client_secret_basic"]
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # an S256 challenge: base64url of 32 bytes
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# The OAuth error codes a ModelGates `error=` may be passed through as; anything else is described.
_PASSED_ERRORS = ("access_denied", "temporarily_unavailable", "server_error")
RETRY_AFTER = "5"  # seconds, on a 503 while the store cannot be reached
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(model: OAuthMetadata | ProtectedResourceMetadata) -> Callable[[Request], Awaitable[Response]]:
    body = model.model_dump_json(exclude_none=True).encode()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=3600"})

    return endpoint


def _cors(app: ASGIApp, methods: list[str]) -> ASGIApp:
    # No credentials: browser-based clients read metadata and call /register and /token cross-origin.
    return CORSMiddleware(app, allow_origins=["*"], allow_methods=methods, allow_headers=["mcp-protocol-version"])


def _limited(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    return RequestBodyLimitMiddleware(request_response(endpoint), MAX_BODY_BYTES)


def _oauth_error(status: int, error: str, description: str, **headers: str) -> Response:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers={**_NO_STORE, **headers})


def _store_down(exc: StoreUnavailable) -> Response:
    logger.warning("a token or revocation request failed closed: the store is unreachable (%s)", exc)
    return _oauth_error(
        503,
        "temporarily_unavailable",
        "the sign-in store is unreachable; try again in a moment",
        **{"Retry-After": RETRY_AFTER},
    )


class OAuthServer:
    """The endpoints above, `verify` for `/mcp`, and what they share: the provider, its store and
    the ModelGates client for the callback's exchange (made without any API key)."""

    def __init__(
        self,
        settings: Settings,
        api: ModelGatesClient,
        store: OnceStore | None = None,
        documents: ClientDocuments | None = None,
    ) -> None:
        """`documents` is the tests' seam for metadata documents served from loopback; built from
        settings, the server always fetches them with the defaults (public addresses only)."""
        self.settings = settings
        self.api = api
        self.provider = SealedProvider(settings, store or MemoryStore(), documents=documents)
        self.sealer = self.provider.sealer
        self.issuer = settings.public_url
        self.resource = self.provider.resource
        self.resource_metadata_url = f"{self.issuer}{PRM_PATH}/mcp"
        self.secure = self.issuer.startswith("https://")
        # __Host- (Secure, Path=/, no Domain) keeps sibling hosts from setting them; plain http
        # (loopback only) cannot have Secure cookies, so there the names go without the prefix.
        prefix = "__Host-" if self.secure else ""
        self.consent_cookie = f"{prefix}mg_consent"
        self.sign_in_cookie = f"{prefix}mg_signin_"
        base = urlsplit(settings.base_url)
        self.modelgates_origin = f"{base.scheme}://{base.netloc}"

        prm = ProtectedResourceMetadata(
            resource=self.resource,  # type: ignore[arg-type]  # a str keeps its exact form
            authorization_servers=[self.issuer],  # type: ignore[list-item]
            resource_name="ModelGates",
        )
        metadata = OAuthMetadata(
            issuer=self.issuer,  # type: ignore[arg-type]
            authorization_endpoint=f"{self.issuer}/authorize",  # type: ignore[arg-type]
            token_endpoint=f"{self.issuer}/token",  # type: ignore[arg-type]
            registration_endpoint=f"{self.issuer}/register",  # type: ignore[arg-type]
            revocation_endpoint=f"{self.issuer}/revoke",  # type: ignore[arg-type]
            response_types_supported=["code"],
            grant_types_supported=["authorization_code", "refresh_token"],
            token_endpoint_auth_methods_supported=AUTH_METHODS,
            revocation_endpoint_auth_methods_supported=AUTH_METHODS,
            code_challenge_methods_supported=["S256"],
            authorization_response_iss_parameter_supported=True,
            client_id_metadata_document_supported=True if settings.oauth_client_documents else None,
        )
        self.authenticator = ClientAuthenticator(self.provider)
        token_handler = TokenHandler(self.provider, self.authenticator)
        registration = RegistrationHandler(self.provider, ClientRegistrationOptions(enabled=True))

        async def token(request: Request) -> Response:
            form = await request.form()  # kept by the request: the handler reads the same form
            resource = form.get("resource")
            reset = requested_resource.set(resource if isinstance(resource, str) else None)
            try:
                response: Response = await token_handler.handle(request)
                return response
            except StoreUnavailable as exc:
                # Nothing was issued: a code or refresh token is used only once its use is on record.
                return _store_down(exc)
            finally:
                requested_resource.reset(reset)

        async def register(request: Request) -> Response:
            return await registration.handle(request)

        routes = [
            Route(f"{PRM_PATH}/mcp", _cors(_limited(_json(prm)), ["GET"]), methods=["GET", "OPTIONS"]),
            Route(PRM_PATH, _cors(_limited(_json(prm)), ["GET"]), methods=["GET", "OPTIONS"]),
            Route(AS_METADATA_PATH, _cors(_limited(_json(metadata)), ["GET"]), methods=["GET", "OPTIONS"]),
            Route("/register", _cors(_limited(register), ["POST"]), methods=["POST", "OPTIONS"]),
            Route("/token", _cors(_limited(token), ["POST"]), methods=["POST", "OPTIONS"]),
            Route("/revoke", _cors(_limited(self.revoke), ["POST"]), methods=["POST", "OPTIONS"]),
            Route("/authorize", _limited(self.authorize), methods=["GET"]),
            Route("/consent", _limited(self.consent), methods=["POST"]),
            Route(CALLBACK_PATH, _limited(self.callback), methods=["GET"]),
        ]
        self.paths = frozenset(route.path for route in routes)
        self._router = Router(routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._router(scope, receive, send)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.provider.documents.aclose()
        await self.provider.store.aclose()

    # ------------------------------------------------------------ /mcp

    async def verify(self, token: str) -> SealedAccessToken | None:
        return await self.provider.load_access_token(token)

    def challenge(self, *, token_sent: bool) -> bytes:
        """`WWW-Authenticate` for a 401 on /mcp (RFC 6750 section 3, RFC 9728 section 5.1): an error
        code only when credentials were sent."""
        error = 'error="invalid_token", error_description="The access token is invalid or expired", '
        return f'Bearer {error if token_sent else ""}resource_metadata="{self.resource_metadata_url}"'.encode()

    # ------------------------------------------------------------ helpers

    def _page(self, status: int, title: str, text: str) -> Response:
        return HTMLResponse(pages.message(title, text), status_code=status, headers=pages.headers())

    def _unavailable(self, exc: StoreUnavailable, then: str) -> Response:
        logger.warning("a sign-in step failed closed: the store is unreachable (%s)", exc)
        response = self._page(
            503, "Sign-in unavailable for a moment", "This server cannot complete sign-ins right now. " + then
        )
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    def _back_to_client(self, redirect_uri: str, state: str | None, status: int = 302, **params: str) -> Response:
        """An authorization response (RFC 6749 section 4.1.2), always with RFC 9207 `iss`."""
        location = construct_redirect_uri(redirect_uri, **params, state=state, iss=self.issuer)
        return RedirectResponse(location, status_code=status, headers=pages.headers())

    def _cookie(self, response: Response, name: str, value: str, max_age: int, same_site: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite=same_site,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------ /revoke (RFC 7009)

    async def revoke(self, request: Request) -> Response:
        """Ends the grant of the token, whichever of its tokens it is. A token that is not one of
        this client's (unknown, expired, another client's) gets the same 200, as RFC 7009 says, so
        that the answer tells nothing about it."""
        try:
            client = await self.authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            return _oauth_error(401, "invalid_client", exc.message)
        form = await request.form()
        token, hint = form.get("token"), form.get("token_type_hint")
        if not isinstance(token, str) or not token:
            return _oauth_error(400, "invalid_request", "the token to revoke is missing")
        grant = self.provider.grant_of(client, token, hint if isinstance(hint, str) else None)
        if grant is not None:
            try:
                await self.provider.end_grant(grant)
            except StoreUnavailable as exc:
                # RFC 7009 section 2.2.1: on a 503 the client assumes the token still exists and retries.
                return _store_down(exc)
            logger.info("a sign-in was revoked by its client")
        return Response(status_code=200, headers=_NO_STORE)

    # ------------------------------------------------------------ /authorize

    async def authorize(self, request: Request) -> Response:
        params = request.query_params
        restart = "Start the sign-in again from your app."
        if any(len(params.getlist(name)) > 1 for name in params):
            return self._page(400, "Sign-in refused", "A parameter of this sign-in link appears twice. " + restart)
        client_id = params.get("client_id")
        if client_id is not None and client_id.startswith("https://"):
            try:
                client: OAuthClientInformationFull | None = await self.provider.document_client(client_id)
            except ClientDocumentError as exc:
                return self._page(400, "Unknown app", f"This app's metadata document cannot be used: {exc}. " + restart)
        else:
            client = await self.provider.get_client(client_id) if client_id else None
        if client is None:
            # Never redirect to a URI that no registration vouches for: say it here instead.
            return self._page(
                400,
                "Unknown app",
                "This sign-in link names an app this server does not know (or its registration is "
                "from before the server's secret changed). " + restart,
            )
        try:
            raw_uri = params.get("redirect_uri")
            redirect_uri = str(client.validate_redirect_uri(AnyUrl(raw_uri) if raw_uri is not None else None))
        except (ValidationError, InvalidRedirectUriError):
            return self._page(400, "Sign-in refused", "The app's redirect address is not one it registered. " + restart)
        state = params.get("state")
        if state is not None and len(state) > MAX_STATE_CHARS:
            return self._page(400, "Sign-in refused", "The app's state parameter is too long. " + restart)

        # From here on, an error goes back to the app at its registered redirect URI.
        try:
            auth = AuthorizationRequest.model_validate(dict(params))
        except ValidationError as exc:
            unsupported = any(e["loc"] == ("response_type",) for e in exc.errors())
            names = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            return self._back_to_client(
                redirect_uri,
                state,
                error="unsupported_response_type" if unsupported else "invalid_request",
                error_description=f"invalid or missing: {names} (PKCE with S256 is required)",
            )
        if not _CHALLENGE.fullmatch(auth.code_challenge):
            return self._back_to_client(
                redirect_uri,
                state,
                error="invalid_request",
                error_description="code_challenge is not an S256 challenge",
            )
        try:
            scopes = client.validate_scope(auth.scope) or []
        except InvalidScopeError as exc:
            return self._back_to_client(redirect_uri, state, error="invalid_scope", error_description=exc.message)
        if auth.resource is not None and auth.resource != self.resource:
            return self._back_to_client(
                redirect_uri, state, error="invalid_target", error_description=f"the resource here is {self.resource}"
            )

        csrf = request.cookies.get(self.consent_cookie) or ""
        if not _ID.fullmatch(csrf):
            csrf = new_id()
        sealed = self.sealer.seal(
            "consent",
            {
                "client": client_ref(client.client_id),
                "redirect_uri": redirect_uri,
                "explicit": auth.redirect_uri is not None,
                "state": state,
                "challenge": auth.code_challenge,
                "resource": self.resource,  # the audience, also when the client named none
                "scopes": scopes,
                "csrf": csrf,
                "exp": time.time() + SIGN_IN_TTL,
            },
        )
        target = urlsplit(redirect_uri)
        page = pages.consent(
            client_name=client.client_name,
            client_site=urlsplit(client.client_id).netloc if isinstance(client, DocumentClient) else None,
            redirect_host=target.netloc,
            server_host=urlsplit(self.issuer).netloc,
            request=sealed,
        )
        response = HTMLResponse(
            page,
            headers=pages.headers(
                (self.modelgates_origin, f"{target.scheme}://{target.netloc}"), same_origin_referrer=True
            ),
        )
        # Strict: only this server's own pages send it, which is all the consent form needs.
        self._cookie(response, self.consent_cookie, csrf, SIGN_IN_TTL * 6, "strict")
        return response

    # ------------------------------------------------------------ /consent

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        fetch_site = request.headers.get("sec-fetch-site")
        return (origin is None or origin == self.issuer) and fetch_site in (None, "same-origin")

    async def consent(self, request: Request) -> Response:
        if not self._same_origin(request):
            return self._page(403, "Refused", "This form can only be sent from this server's own consent page.")
        form = await request.form()
        blob, action = form.get("request"), form.get("action")
        pending = self.sealer.open("consent", blob) if isinstance(blob, str) else None
        if pending is None:
            return self._page(
                400, "Sign-in expired", "This consent page expired. Start the sign-in again from your app."
            )
        cookie = request.cookies.get(self.consent_cookie) or ""
        if not hmac.compare_digest(cookie.encode(), str(pending.pop("csrf")).encode()):
            return self._page(
                403, "Refused", "This consent was not given on this server's page in this browser. Start again."
            )
        if action == "deny":
            return self._back_to_client(
                pending["redirect_uri"],
                pending["state"],
                status=303,
                error="access_denied",
                error_description="the user denied the sign-in",
            )
        if action != "approve":
            return self._page(400, "Sign-in refused", "Choose Approve or Deny.")
        try:
            await self.provider.store.check()  # the callback will need it: do not send the user on for nothing
        except StoreUnavailable as exc:
            return self._unavailable(exc, "Go back and approve again in a moment.")
        flow, verifier = new_id(), pkce.new_verifier()
        pending.update(flow=flow, verifier=verifier, exp=time.time() + SIGN_IN_TTL)
        callback = f"{self.issuer}{CALLBACK_PATH}?{urlencode({'flow': flow})}"
        location = pkce.authorization_url(self.settings.base_url, callback, pkce.challenge_for(verifier), "S256")
        response = RedirectResponse(location, status_code=303, headers=pages.headers())
        # Lax: the browser comes back from ModelGates by a top-level GET from another site.
        self._cookie(response, self.sign_in_cookie + flow, self.sealer.seal("pending", pending), SIGN_IN_TTL, "lax")
        return response

    # ------------------------------------------------------------ the ModelGates callback

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        flow = params.get("flow") or ""
        cookie = request.cookies.get(self.sign_in_cookie + flow) if _ID.fullmatch(flow) else None
        pending = self.sealer.open("pending", cookie) if cookie else None
        if pending is None or not hmac.compare_digest(str(pending["flow"]).encode(), flow.encode()):
            # Checked before anything is sent to ModelGates: this browser did not consent to this sign-in.
            return self._page(
                400,
                "Sign-in not completed",
                "This sign-in was started in another browser, or it expired. Start it again from your app.",
            )
        ttl = max(pending["exp"] - time.time(), 0) + 1
        try:
            completed = await self.provider.store.mark_once(f"signin:{flow}", ttl)
        except StoreUnavailable as exc:
            # Before any exchange, and the cookie stays: reloading this page finishes the sign-in.
            return self._unavailable(exc, "Reload this page in a moment to finish signing in.")
        if completed:
            response = self._page(400, "Already signed in", "This sign-in is already complete; return to your app.")
        else:
            response = await self._finish(pending, params.get("code"), params.get("error"))
        response.delete_cookie(self.sign_in_cookie + flow, path="/", secure=self.secure, httponly=True, samesite="lax")
        return response

    async def _finish(self, pending: dict[str, Any], code: str | None, error: str | None) -> Response:
        redirect_uri, state = pending["redirect_uri"], pending["state"]
        if not code:
            reason = excerpt(error or "no code", 120)
            return self._back_to_client(
                redirect_uri,
                state,
                error=error if error in _PASSED_ERRORS else "access_denied",
                error_description=f"ModelGates did not approve the sign-in ({reason})",
            )
        try:
            exchange = ExchangeAuthCodeRequest.model_validate(
                {"code": code, "code_verifier": pending["verifier"], "code_challenge_method": "S256"}
            )
        except ValidationError:
            return self._back_to_client(
                redirect_uri, state, error="server_error", error_description="ModelGates sent back a malformed code"
            )
        try:
            answer = await self.api.call(EXCHANGE_AUTH_CODE, exchange)  # never re-sent once it may have arrived
        except ApiError as exc:
            logger.warning("sign-in: the ModelGates exchange failed: %s", exc)
            return self._back_to_client(
                redirect_uri,
                state,
                error="server_error",
                error_description="ModelGates did not issue a key for this sign-in; sign in again",
            )
        assert isinstance(answer, ExchangeAuthCodeResponse)
        with caller_key_for_request(SecretStr(answer.key)):  # masked in anything logged from here
            code_for_client = self.provider.issue_code(pending, answer.key, answer.user_id)
            logger.info("sign-in completed for ModelGates user %s", answer.user_id or "(unnamed)")
        return self._back_to_client(redirect_uri, state, code=code_for_client)
