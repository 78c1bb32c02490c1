"""The authorization server's state, sealed: the SDK's provider interface over `Sealer` and `OnceStore`.

The SDK's handlers (`RegistrationHandler`, `TokenHandler`, `ClientAuthenticator`) call this
provider; so do the server's own routes (consent, callback, `/mcp`). Nothing is looked up in a
table: a client id is the client's sealed registration or the https URL of its Client ID Metadata
Document (fetched by `client_documents.py`, held to the rules of a registration), a code or token
is sealed with everything it stands for (the client, the redirect URI, the PKCE challenge, the
resource, the user's ModelGates key). The store only records what must happen once: a code
redeemed, a refresh token rotated, a sign-in completed, a grant ended.

A grant is one sign-in: its code, and every access and refresh token issued from it, carry the
grant id. A code redeemed twice or a rotated refresh token shown again ends the grant (RFC 6749
section 4.1.2, OAuth 2.1 section 4.3.1), and so does revoking any of its tokens (RFC 7009): its
tokens are refused from then on, on `/mcp` too. Redeeming or rotating is one atomic step of the
store (`OnceStore.use_once`), so two replicas shown the same code at once give tokens once.

When the store cannot be reached, every step that marks something fails (`StoreUnavailable`, a
503 for the caller), but an unexpired access token is still accepted on `/mcp`: only its
revocation cannot be checked, its life is short (MODELGATES_OAUTH_ACCESS_TTL), it cannot be
refreshed meanwhile, and grants this process has seen ended stay refused from its own memory.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import DEFAULT_GRANT_TYPES, OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, SecretStr, ValidationError

from mcp_modelgates.config import Settings, is_loopback
from mcp_modelgates.oauth.client_documents import ClientDocumentError, ClientDocuments
from mcp_modelgates.oauth.sealing import Sealer, b64url
from mcp_modelgates.oauth.store import OnceStore, StoreUnavailable

logger = logging.getLogger("mcp_modelgates.oauth")

CODE_TTL = 300  # seconds from the callback to the client's token request
MAX_REDIRECT_URIS = 4  # a native client registers one; the sealed client id stays short
MAX_DOCUMENT_REDIRECT_URIS = 8  # a metadata document is not sealed into its id: it may list a few more
GRANT_TYPES = frozenset(DEFAULT_GRANT_TYPES)  # authorization_code and refresh_token
MAX_URI_CHARS = 512
MAX_NAME_CHARS = 100
CLOCK_SKEW = 60  # seconds a mark outlives what it guards: replicas' clocks may differ by that much
ENDED_REMEMBERED = 4096  # ended grants each process keeps in memory, for when the store is unreachable
OPENED_REMEMBERED = 4096  # access tokens each process keeps opened, so that a call need not decrypt its own

# The `resource` form field of the token request being served: the SDK's token handler does not
# pass it on, and audience binding needs it (RFC 8707). Set by the route for that request only.
requested_resource: contextvars.ContextVar[str | None] = contextvars.ContextVar("requested_resource", default=None)


class SealedCode(AuthorizationCode):
    id: str
    key: SecretStr
    user_id: str | None = None


class SealedRefreshToken(RefreshToken):
    id: str
    grant: str
    key: SecretStr
    user_id: str | None = None


class SealedAccessToken(AccessToken):
    grant: str
    key: SecretStr
    user_id: str | None = None


def client_ref(client_id: str) -> str:
    """A short, fixed reference to a client for what is sealed on its behalf (its id is itself a blob)."""
    return b64url(hashlib.sha256(client_id.encode()).digest()[:18])


def new_id() -> str:
    return secrets.token_urlsafe(18)


def _granted(data: dict[str, Any]) -> dict[str, Any]:
    """What a code and the tokens of its grant all carry: scopes, audience, the user and their key."""
    return {
        "scopes": data["scopes"],
        "resource": data["resource"],
        "key": SecretStr(data["key"]),
        "user_id": data["user"],
    }


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI may not be registered, or None: https, or http on a loopback host
    (any port, RFC 8252 section 7.3); no user info, no fragment (RFC 6749 section 3.1.2)."""
    if len(uri) > MAX_URI_CHARS:
        return f"a redirect URI is longer than {MAX_URI_CHARS} characters"
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return "a redirect URI is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"redirect URIs must be https or http on a loopback host, got scheme {parts.scheme!r}"
    if parts.scheme == "http" and not is_loopback(host):
        return "redirect URIs over plain http must point to a loopback host (localhost, 127.0.0.1, [::1])"
    if parts.username is not None or parts.password is not None:
        return "a redirect URI must not contain user info"
    if parts.fragment or "#" in uri:
        return "a redirect URI must not contain a fragment"
    return None


def _loopback_port_free(registered: str, asked: str) -> bool:
    """RFC 8252 section 7.3: a loopback http redirect URI matches with any port, all else exact."""
    try:
        r, a = urlsplit(registered), urlsplit(asked)
        same_host = r.hostname == a.hostname and r.hostname is not None and is_loopback(r.hostname)
        _ = (r.port, a.port)
    except ValueError:
        return False
    return (r.scheme, a.scheme) == ("http", "http") and same_host and (r.path, r.query) == (a.path, a.query)


class DocumentClient(OAuthClientInformationFull):
    """A client known by its metadata document: its `client_id` is the document's URL."""

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        # A document is static while a native client's loopback port is chosen per sign-in.
        if redirect_uri is not None and any(
            _loopback_port_free(str(uri), str(redirect_uri)) for uri in self.redirect_uris or []
        ):
            return redirect_uri
        return super().validate_redirect_uri(redirect_uri)


def client_from_document(url: str, document: dict[str, Any]) -> DocumentClient:
    """The client a metadata document describes, by the rules a registration follows; a public
    client (`none`), since a document anyone can read cannot hold a secret."""
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise ClientDocumentError("a client metadata document must not hold a client secret")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise ClientDocumentError(
            f"token_endpoint_auth_method {str(method)[:40]!r} is not supported for metadata documents: use none"
        )
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > MAX_DOCUMENT_REDIRECT_URIS:
        raise ClientDocumentError(f"a client metadata document lists 1 to {MAX_DOCUMENT_REDIRECT_URIS} redirect_uris")
    for uri in uris:
        problem = redirect_uri_problem(uri) if isinstance(uri, str) else "a redirect URI is not a string"
        if problem is not None:
            raise ClientDocumentError(problem)
    name, scope = document.get("client_name"), document.get("scope")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise ClientDocumentError(f"client_name must be text of at most {MAX_NAME_CHARS} characters")
    if scope is not None and (not isinstance(scope, str) or len(scope) > MAX_URI_CHARS):
        raise ClientDocumentError("scope must be text of at most {MAX_URI_CHARS} characters")
    grant_types = document.get("grant_types", list(DEFAULT_GRANT_TYPES))
    if (
        not isinstance(grant_types, list)
        or not set(grant_types) <= GRANT_TYPES
        or "authorization_code" not in grant_types
    ):
        raise ClientDocumentError("grant_types may be authorization_code and refresh_token only")
    response_types = document.get("response_types", ["code"])
    if response_types != ["code"]:
        raise ClientDocumentError('response_types must be ["code"]')
    try:
        return DocumentClient(
            client_id=url,
            client_name=name,
            redirect_uris=[AnyUrl(uri) for uri in uris],
            token_endpoint_auth_method="none",  # noqa: S106 - a method's name, not a secret
            grant_types=grant_types,
            response_types=response_types,
            scope=scope,
        )
    except ValidationError:
        raise ClientDocumentError("the client metadata document has a field this server cannot read") from None


class SealedProvider(OAuthAuthorizationServerProvider[SealedCode, SealedRefreshToken, SealedAccessToken]):
    def __init__(
        self,
        settings: Settings,
        store: OnceStore,
        sealer: Sealer | None = None,
        documents: ClientDocuments | None = None,
    ) -> None:
        self.issuer = settings.public_url
        self.client_documents = settings.oauth_client_documents
        self.documents = documents or ClientDocuments()
        self.resource = settings.public_url + "/mcp"
        self.sealer = sealer or Sealer([s.get_secret_value() for s in settings.oauth_secrets], self.issuer)
        self.store = store
        self.access_ttl = settings.oauth_access_ttl
        self.refresh_ttl = settings.oauth_refresh_ttl
        # An ended grant's mark outlives every token of it issued before it ended.
        self.grant_ttl = max(self.refresh_ttl, self.access_ttl) + CLOCK_SKEW
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._opened: OrderedDict[str, tuple[float, SealedAccessToken]] = OrderedDict()
        self._failed_open_logged_at = -1e9

    # ------------------------------------------------------------ clients (RFC 7591)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        """Checks the redirect URIs, then makes the client id the sealed registration itself."""
        uris = [str(uri) for uri in client_info.redirect_uris or []]
        if not uris or len(uris) > MAX_REDIRECT_URIS:
            raise RegistrationError("invalid_redirect_uri", f"register 1 to {MAX_REDIRECT_URIS} redirect URIs")
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem is not None:
                raise RegistrationError("invalid_redirect_uri", problem)
        name = client_info.client_name
        if name is not None and len(name) > MAX_NAME_CHARS:
            raise RegistrationError(
                "invalid_client_metadata", f"client_name is longer than {MAX_NAME_CHARS} characters"
            )
        if client_info.scope is not None and len(client_info.scope) > MAX_URI_CHARS:
            raise RegistrationError("invalid_client_metadata", "scope is too long")
        client_info.client_id = self.sealer.seal(
            "client",
            {
                "name": name,
                "redirect_uris": uris,
                "auth_method": client_info.token_endpoint_auth_method,
                "grant_types": client_info.grant_types,
                "response_types": client_info.response_types,
                "scope": client_info.scope,
                "secret": client_info.client_secret,
                "issued_at": client_info.client_id_issued_at,
            },
        )

    async def document_client(self, url: str) -> DocumentClient:
        """The client whose metadata document `url` is; `ClientDocumentError` saying why not."""
        if not self.client_documents:
            raise ClientDocumentError(
                "this server does not fetch client metadata documents (MODELGATES_OAUTH_CLIENT_DOCUMENTS=0); "
                "the app must register instead"
            )
        return client_from_document(url, await self.documents.fetch(url))

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if client_id.startswith("https://"):
            try:
                return await self.document_client(client_id)
            except ClientDocumentError as exc:
                logger.info("a client metadata document was refused: %s", exc)
                return None
        data = self.sealer.open("client", client_id)
        if data is None:
            return None
        return OAuthClientInformationFull(
            client_id=client_id,
            client_name=data["name"],
            redirect_uris=[AnyUrl(uri) for uri in data["redirect_uris"]],
            token_endpoint_auth_method=data["auth_method"],
            grant_types=data["grant_types"],
            response_types=data["response_types"],
            scope=data["scope"],
            client_secret=data["secret"],
            client_id_issued_at=data["issued_at"],
        )

    # ------------------------------------------------------------ authorization

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        """Not called: this server's own `/authorize` shows its consent page first (routes.py)."""
        raise AuthorizeError("server_error", "authorization requests are served by the consent page")

    def issue_code(self, pending: dict[str, Any], key: str, user_id: str | None) -> str:
        """The authorization code for a completed sign-in: the pending request's bindings and the key."""
        payload = {field: pending[field] for field in ("client", "redirect_uri", "explicit", "challenge", "resource")}
        return self.sealer.seal(
            "code",
            {
                **payload,
                "scopes": pending["scopes"],
                "id": new_id(),
                "key": key,
                "user": user_id,
                "exp": time.time() + CODE_TTL,
            },
        )

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> SealedCode | None:
        data = self.sealer.open("code", authorization_code)
        if data is None or data["client"] != client_ref(client.client_id):
            return None
        return SealedCode(
            code=authorization_code,
            expires_at=data["exp"],
            client_id=client.client_id,
            code_challenge=data["challenge"],
            redirect_uri=AnyUrl(data["redirect_uri"]),
            redirect_uri_provided_explicitly=data["explicit"],
            id=data["id"],
            **_granted(data),
        )

    def _check_resource(self, bound: str | None) -> None:
        """RFC 8707: a resource named at the token endpoint must be the one the grant is bound to."""
        asked = requested_resource.get()
        if asked is not None and asked != bound:
            raise TokenError("invalid_target", f"this grant is for the resource {bound}")

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: SealedCode
    ) -> OAuthToken:
        self._check_resource(authorization_code.resource)
        grant = authorization_code.id  # the grant is named after the code that started it
        ttl = max(authorization_code.expires_at - time.time(), 0) + CLOCK_SKEW
        use = await self.store.use_once(f"code:{authorization_code.id}", ttl, f"grant:{grant}", self.grant_ttl)
        if use != "first":
            self._ended_here(grant)
            raise TokenError("invalid_grant", "authorization code already used; the tokens issued for it are revoked")
        return self._tokens(
            client,
            grant,
            authorization_code.scopes,
            authorization_code.resource,
            authorization_code.key,
            authorization_code.user_id,
        )

    # ------------------------------------------------------------ tokens

    def _tokens(
        self,
        client: OAuthClientInformationFull,
        grant: str,
        scopes: list[str],
        resource: str | None,
        key: SecretStr,
        user_id: str | None,
    ) -> OAuthToken:
        now = time.time()
        common = {
            "grant": grant,
            "client": client_ref(client.client_id),
            "resource": resource,
            "scopes": scopes,
            "key": key.get_secret_value(),
            "user": user_id,
        }
        access = self.sealer.seal("access", {**common, "exp": now + self.access_ttl})
        refresh = self.sealer.seal("refresh", {**common, "id": new_id(), "exp": now + self.refresh_ttl})
        return OAuthToken(
            access_token=access,
            expires_in=self.access_ttl,
            scope=" ".join(scopes) if scopes else None,
            refresh_token=refresh,
        )

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> SealedRefreshToken | None:
        data = self.sealer.open("refresh", refresh_token)
        if data is None or data["client"] != client_ref(client.client_id):
            return None
        # Whether its grant has ended is asked in the same step that rotates it (exchange_refresh_token).
        return SealedRefreshToken(
            token=refresh_token,
            client_id=client.client_id,
            expires_at=int(data["exp"]),
            id=data["id"],
            grant=data["grant"],
            **_granted(data),
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: SealedRefreshToken, scopes: list[str]
    ) -> OAuthToken:
        """Rotation: each refresh token works once; shown again, it ends its grant (the whole family,
        every token descended from that sign-in)."""
        self._check_resource(refresh_token.resource)
        ttl = max((refresh_token.expires_at or 0) - time.time(), 0) + CLOCK_SKEW
        grant = refresh_token.grant
        use = await self.store.use_once(f"refresh:{refresh_token.id}", ttl, f"grant:{grant}", self.grant_ttl)
        if use != "first":
            self._ended_here(grant)
        if use == "again":
            raise TokenError("invalid_grant", "refresh token already used; this sign-in is revoked, sign in again")
        if use == "ended":
            raise TokenError("invalid_grant", "this sign-in has ended (signed out or revoked); sign in again")
        return self._tokens(client, grant, scopes, refresh_token.resource, refresh_token.key, refresh_token.user_id)

    async def load_access_token(self, token: str) -> SealedAccessToken | None:
        """An access token sealed by this deployment, unexpired, issued for this server's `/mcp`
        (its audience), of a grant not ended; None for anything else (a raw ModelGates key too)."""
        opened = self._opened.get(token)
        if opened is None or opened[0] <= time.time():
            data = self.sealer.open("access", token)
            if data is None or data["resource"] != self.resource:
                self._opened.pop(token, None)
                return None
            exp, grant = data["exp"], data["grant"]
            access = SealedAccessToken(
                token=token, client_id=data["client"], expires_at=int(exp), grant=grant, **_granted(data)
            )
            opened = (float(exp), access)
            # Kept opened: the next call with it skips the decryption. Its expiry is checked above on
            # every call, its grant below, so a cached token is refused exactly when a fresh one is.
            self._opened[token] = opened
            while len(self._opened) > OPENED_REMEMBERED:
                self._opened.popitem(last=False)
        if await self._grant_ended(opened[1].grant):
            return None
        return opened[1]

    async def _grant_ended(self, grant: str) -> bool:
        """Whether a grant has ended; while the store cannot be read, only what this process saw."""
        if grant in self._ended:
            return True
        try:
            ended = await self.store.is_marked(f"grant:{grant}")
        except StoreUnavailable as exc:
            now = time.monotonic()
            if now - self._failed_open_logged_at > 30:  # one line per 30 s through an outage
                self._failed_open_logged_at = now
                logger.warning(
                    "revocations cannot be read (%s): unexpired access tokens are accepted until the store is back",
                    exc,
                )
            return False
        if ended:
            self._ended_here(grant)
        return ended

    def _ended_here(self, grant: str) -> None:
        # An ended grant never comes back, so remembering one is always right; the oldest go first.
        self._ended[grant] = None
        self._ended.move_to_end(grant)
        while len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    async def end_grant(self, grant: str) -> None:
        """Every token of the grant is refused from now on, on every replica sharing the store."""
        await self.store.mark_once(f"grant:{grant}", self.grant_ttl)
        self._ended_here(grant)

    def grant_of(self, client: OAuthClientInformationFull, token: str, hint: str | None = None) -> str | None:
        """The grant of an access or refresh token this deployment issued to `client`, or None."""
        kinds = ("refresh", "access") if hint == "refresh_token" else ("access", "refresh")
        for kind in kinds:
            data = self.sealer.open(kind, token)
            if data is not None and data["client"] == client_ref(client.client_id):
                return str(data["grant"])
        return None

    async def revoke_token(self, token: SealedAccessToken | SealedRefreshToken) -> None:
        await self.end_grant(token.grant)
