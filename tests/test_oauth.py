"""OAuth mode (MODELGATES_AUTH=oauth) for real: the console script serving HTTP as its own authorization
server, signed in to by the Python SDK's `OAuthClientProvider` through a headless test browser
(tests/browser.py), with the ModelGates stand-in approving at its `GET /auth`.

The server's public URL is on `localhost`, the stand-in on `127.0.0.1`: two sites, as in production.
Processes are started once per module: `one` and its twin `two` share only the secret and the
public URL (a balancer in front of both is played by transports that rewrite the port), `short`
has 2-second access tokens and its own public URL (another deployment for `one`). The last test
checks that no minted key, secret or token reached any server's log.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlencode, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import SecretStr

from mcp_modelgates.config import ConfigError, caller_key_for_request, load_settings
from mcp_modelgates.oauth.sealing import Sealer
from tests import test_http
from tests.browser import Browser, Page
from tests.conftest import API_KEY, BOTH_ERAS, ROOT, server_command
from tests.fake_api import KEY_PREFIX, FakeModelGates, Recorded, Reply, s256
from tests.test_http import HttpServer, clean_env, free_port, start_server

SECRET = "oauth-test-secret-" + "5f2c9a81d3e74b06" * 2
OTHER_SECRET = "another-deployment-secret-" + "a" * 16
CALLBACK = "https://myapp.example/auth/callback"
API_TOOLS = ["generate_pkce", "create_auth_code", "exchange_auth_code"]

pytestmark = pytest.mark.anyio

# The same stand-in fixtures as the HTTP tests: one per module, reset before each test.
api = test_http.api
_fresh_stand_in = test_http._fresh_stand_in
MINTED: list[str] = []  # every key the stand-in minted in this module, for the last test's log check


@pytest.fixture(autouse=True)
def _remember_minted_keys(api: FakeModelGates) -> Iterator[None]:
    yield
    MINTED.extend(api.minted)


def oauth_env(api: FakeModelGates, public_url: str, level: str = "DEBUG", **extra: str) -> dict[str, str]:
    return {
        "MODELGATES_AUTH": "oauth",
        "MODELGATES_PUBLIC_URL": public_url,
        "MODELGATES_OAUTH_SECRET": SECRET,
        "MODELGATES_BASE_URL": api.base_url,
        "MODELGATES_MAX_RETRIES": "0",
        "MODELGATES_LOG_LEVEL": level,  # at DEBUG every line the server could log is checked for keys
        **extra,
    }


def start_oauth_server(api: FakeModelGates) -> HttpServer:
    """One process in OAuth mode whose public URL is its own port on `localhost`, for the real
    clients. Without Client ID Metadata Documents: offered them, Claude Code names itself by its
    document on claude.ai, which the server would have to look up and fetch from the internet; the
    tests reach nothing but this machine, so clients register dynamically (documents are tested in
    test_oauth_cimd.py, served from loopback through the in-process seam)."""
    port = free_port()
    return start_server(oauth_env(api, f"http://localhost:{port}", MODELGATES_OAUTH_CLIENT_DOCUMENTS="0"), port=port)


@pytest.fixture(scope="module")
def servers(api: FakeModelGates) -> Iterator[dict[str, HttpServer]]:
    started: dict[str, HttpServer] = {}
    try:
        port = free_port()
        public = f"http://localhost:{port}"
        started["one"] = start_server(oauth_env(api, public), port=port)
        started["two"] = start_server(oauth_env(api, public, level="INFO"))
        short = free_port()
        started["short"] = start_server(
            oauth_env(api, f"http://localhost:{short}", MODELGATES_OAUTH_ACCESS_TTL="2"), port=short
        )
        yield started
    finally:
        codes = {name: server.stop() for name, server in started.items()}
    assert codes == dict.fromkeys(started, 0)


@pytest.fixture(scope="module")
def one(servers: dict[str, HttpServer]) -> HttpServer:
    return servers["one"]


def origin(server: HttpServer) -> str:
    return f"http://localhost:{server.port}"


def mcp_url(server: HttpServer) -> str:
    return origin(server) + "/mcp"


# ---------------------------------------------------------------- clients


class MemoryStorage:
    """The SDK client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def redirect_uri() -> str:
    """A loopback redirect URI as a native client registers it; the browser stops before it."""
    return f"http://127.0.0.1:{free_port()}/callback"


class Rewrite:
    """A balancer without affinity in front of the processes: each request to the public port goes to
    the next backend in turn. Used as an httpx and an httpx2 transport; `sent_to` records the choices."""

    def __init__(self, public_port: int, backends: list[int]) -> None:
        self.public_port = public_port
        self._next = itertools.cycle(backends)
        self.sent_to: list[tuple[int, str]] = []

    def route(self, port: int | None, path: str) -> int | None:
        if port != self.public_port:
            return None
        backend = next(self._next)
        self.sent_to.append((backend, path))
        return backend


class _Httpx(httpx.AsyncBaseTransport):
    def __init__(self, rewrite: Rewrite) -> None:
        self.rewrite, self.inner = rewrite, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        backend = self.rewrite.route(request.url.port, request.url.path)
        if backend is not None:
            request.url = request.url.copy_with(port=backend)
        return await self.inner.handle_async_request(request)


class _Httpx2(httpx2.AsyncBaseTransport):
    def __init__(self, rewrite: Rewrite) -> None:
        self.rewrite, self.inner = rewrite, httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        backend = self.rewrite.route(request.url.port, request.url.path)
        if backend is not None:
            request.url = request.url.copy_with(port=backend)
        return await self.inner.handle_async_request(request)


@dataclass
class SignedIn:
    client: Client
    storage: MemoryStorage
    browser: Browser
    finals: list[Page] = field(default_factory=list)  # where each sign-in's browser ended up
    seen: list[httpx2.Response] = field(default_factory=list)  # every response the SDK client read


@asynccontextmanager
async def signed_in(
    url: str, mode: str = "legacy", *, rewrite: Rewrite | None = None, browser: Browser | None = None
) -> AsyncIterator[SignedIn]:
    """An SDK client with `OAuthClientProvider`; each time it needs a sign-in, the test browser opens
    the authorization URL, approves on the consent page and follows every redirect up to the client's
    redirect URI, whose query the callback handler hands back."""
    callback = redirect_uri()
    browser = browser or Browser(
        stop_at=lambda u: u.startswith(callback), transport=_Httpx(rewrite) if rewrite else None
    )
    browser.stop_at = lambda u: u.startswith(callback)
    storage = MemoryStorage()
    finals: list[Page] = []

    async def redirect_handler(authorization_url: str) -> None:
        consent = await browser.get(authorization_url)
        assert consent.status == 200, consent.text
        finals.append(await browser.submit(consent, "action", "approve"))

    async def callback_handler() -> AuthorizationCodeResult:
        final = finals[-1]
        assert final.response is None, f"the browser did not reach the client: {final.url} {final.text[:300]}"
        return AuthorizationCodeResult(
            code=final.query.get("code", ""), state=final.query.get("state"), iss=final.query.get("iss")
        )

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="SDK test client",
            redirect_uris=[callback],  # type: ignore[list-item]
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    seen: list[httpx2.Response] = []

    async def keep(response: httpx2.Response) -> None:
        await response.aread()
        seen.append(response)

    transport = _Httpx2(rewrite) if rewrite else None
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30, transport=transport, event_hooks={"response": [keep]}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        try:
            yield SignedIn(client, storage, browser, finals, seen)
        finally:
            await browser.aclose()


def text_of(result: Any) -> str:
    return result.content[0].text  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the sign-in, step by step, by hand


@dataclass
class Registered:
    client_id: str
    redirect_uri: str
    body: dict[str, Any]


def register(server: HttpServer, redirect: str | None = None, **metadata: Any) -> Registered:
    uri = redirect or redirect_uri()
    body = {"redirect_uris": [uri], "token_endpoint_auth_method": "none", "client_name": "hand", **metadata}
    answer = httpx.post(origin(server) + "/register", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    return Registered(answer.json()["client_id"], uri, answer.json())


def authorize_url(server: HttpServer, client: Registered, verifier: str, **extra: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "state": "st-" + secrets.token_hex(4),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "resource": mcp_url(server),
        **extra,
    }
    return origin(server) + "/authorize?" + urlencode({k: v for k, v in query.items() if v != ""})


@dataclass
class Grant:
    client: Registered
    verifier: str
    code: str
    final: Page


async def authorization_code(server: HttpServer, browser: Browser | None = None, **extra: str) -> Grant:
    """Register, consent and come back: the code the client's redirect URI receives."""
    client = register(server)
    verifier = secrets.token_urlsafe(32)
    browser = browser or Browser()
    browser.stop_at = lambda u: u.startswith(client.redirect_uri)
    consent = await browser.get(authorize_url(server, client, verifier, **extra))
    assert consent.status == 200, consent.text
    final = await browser.submit(consent, "action", "approve")
    assert final.response is None and "code" in final.query, final.url
    return Grant(client, verifier, final.query["code"], final)


def token(server: HttpServer, **form: str) -> httpx.Response:
    return httpx.post(origin(server) + "/token", data=form, timeout=30)


def redeem(server: HttpServer, grant: Grant, **override: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": grant.code,
        "redirect_uri": grant.client.redirect_uri,
        "client_id": grant.client.client_id,
        "code_verifier": grant.verifier,
        "resource": mcp_url(grant_server(grant)),
        **override,
    }
    return token(grant_server(grant), **{k: v for k, v in form.items() if v != ""})


def grant_server(grant: Grant) -> HttpServer:
    return _SERVER_OF[grant.client.redirect_uri]


_SERVER_OF: dict[str, HttpServer] = {}


async def tokens_for(server: HttpServer, browser: Browser | None = None) -> tuple[Grant, dict[str, Any]]:
    grant = await authorization_code(server, browser)
    _SERVER_OF[grant.client.redirect_uri] = server
    answer = redeem(grant_server(grant), grant)
    assert answer.status_code == 200, answer.text
    return grant, answer.json()


def refresh(server: HttpServer, grant: Grant, refresh_token: str, **extra: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": grant.client.client_id}
    return token(server, **form, **extra)


def call_mcp(server: HttpServer, access_token: str | None, body: Any = None, **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {access_token}"} if access_token is not None else {}
    payload = body or {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx.post(
        mcp_url(server),
        json=payload,
        headers={"accept": "application/json, text/event-stream", **auth, **headers},
        timeout=30,
    )


def create_call(callback: str = CALLBACK) -> dict[str, Any]:
    params = {"name": "create_auth_code", "arguments": {"callback_url": callback}}
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}


# ---------------------------------------------------------------- discovery


def test_metadata_names_this_server_exactly(one: HttpServer) -> None:
    issuer = origin(one)
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        prm = httpx.get(issuer + path, timeout=30)
        assert prm.status_code == 200
        assert prm.json() == {
            "resource": issuer + "/mcp",
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "ModelGates",
        }
    meta = httpx.get(issuer + "/.well-known/oauth-authorization-server", timeout=30).json()
    assert meta["issuer"] == issuer  # exactly the origin: no trailing slash
    assert (
        meta["authorization_endpoint"],
        meta["token_endpoint"],
        meta["registration_endpoint"],
        meta["revocation_endpoint"],
    ) == (issuer + "/authorize", issuer + "/token", issuer + "/register", issuer + "/revoke")
    assert "none" in meta["revocation_endpoint_auth_methods_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "scopes_supported" not in meta


def test_metadata_register_and_token_answer_cors_but_the_consent_page_does_not(one: HttpServer) -> None:
    cross = {"origin": "https://inspector.example"}
    meta = httpx.get(origin(one) + "/.well-known/oauth-authorization-server", headers=cross, timeout=30)
    assert meta.headers.get("access-control-allow-origin") == "*"
    for path in ("/register", "/token", "/revoke"):
        preflight = httpx.options(
            origin(one) + path,
            headers={
                **cross,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
            timeout=30,
        )
        assert preflight.status_code == 200, path
        assert preflight.headers.get("access-control-allow-origin") == "*" and "POST" in preflight.headers.get(
            "access-control-allow-methods", ""
        )
        assert "access-control-allow-credentials" not in preflight.headers  # no cookies involved
    consent = httpx.options(origin(one) + "/consent", headers={**cross, "access-control-request-method": "POST"})
    assert consent.status_code == 405 and "access-control-allow-origin" not in consent.headers


def test_mcp_without_a_token_gets_401_pointing_to_the_metadata(one: HttpServer, api: FakeModelGates) -> None:
    prm = f'resource_metadata="{origin(one)}/.well-known/oauth-protected-resource/mcp"'
    for method in ("POST", "GET"):  # before the method is looked at: a client learns where to sign in
        answer = httpx.request(method, mcp_url(one), timeout=30)
        assert (answer.status_code, answer.headers["www-authenticate"]) == (401, f"Bearer {prm}")
    answer = call_mcp(one, "not-a-token-at-all")
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"') and prm in challenge
    assert (
        call_mcp(one, None, authorization="Basic abc")
        .headers["www-authenticate"]
        .startswith('Bearer error="invalid_token"')
    )
    assert api.requests == []


async def test_mcp_keeps_its_origin_allow_list(one: HttpServer) -> None:
    _, tokens = await tokens_for(one)
    assert call_mcp(one, tokens["access_token"]).status_code == 200
    assert call_mcp(one, tokens["access_token"], origin="https://evil.example").status_code == 403
    assert call_mcp(one, None, origin="https://evil.example").status_code == 403  # before the token


# ---------------------------------------------------------------- the SDK client signs in


@BOTH_ERAS
async def test_the_sdk_client_signs_in_and_calls_with_the_users_own_key(
    one: HttpServer, api: FakeModelGates, mode: str
) -> None:
    async with signed_in(mcp_url(one), mode) as session:
        tools = await session.client.list_tools()
        created = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        again = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
    assert [t.name for t in tools.tools] == API_TOOLS  # no connect_account: the key is the sign-in's
    assert created.is_error is False and again.is_error is False, text_of(created)

    # The browser went: consent page, Approve, ModelGates, the server's callback, then the client.
    (final,) = session.finals
    hosts = [(urlsplit(u).hostname, urlsplit(u).path) for u in final.visited]
    assert hosts == [
        ("localhost", "/consent"),
        ("127.0.0.1", "/auth"),
        ("localhost", "/oauth/callback"),
    ]
    assert final.query["iss"] == origin(one) and final.query["state"]
    # ModelGates was asked for the server's own callback with a fresh S256 challenge...
    approval = next(r for r in api.requests if r.path.startswith("/auth?"))
    query = parse_qs(urlsplit(approval.path).query)
    assert query["callback_url"][0].startswith(origin(one) + "/oauth/callback?flow=")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    # ...the callback exchanged the code once, without any API key, and got the user's new key...
    exchanges = [r for r in api.requests if r.path == "/api/v1/auth/keys"]
    assert len(exchanges) == 1 and "authorization" not in exchanges[0].headers
    assert s256(exchanges[0].json["code_verifier"]) == query["code_challenge"][0]
    (minted,) = api.minted
    # ...and each tool call went upstream with that key.
    calls = [r for r in api.requests if r.path == "/api/v1/auth/keys/code"]
    assert [r.headers.get("authorization") for r in calls] == [f"Bearer {minted}"] * 2
    assert session.storage.tokens is not None and minted not in session.storage.tokens.model_dump_json()


async def test_an_expired_access_token_is_refreshed_without_a_new_sign_in(
    servers: dict[str, HttpServer], api: FakeModelGates
) -> None:
    short = servers["short"]
    async with signed_in(mcp_url(short)) as session:
        first = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        assert session.storage.tokens is not None
        old_access, old_refresh = session.storage.tokens.access_token, session.storage.tokens.refresh_token
        assert session.storage.tokens.expires_in == 2
        await anyio.sleep(3)
        assert call_mcp(short, old_access).status_code == 401  # expired, on the server's side too
        second = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        assert session.storage.tokens.access_token != old_access
        assert session.storage.tokens.refresh_token != old_refresh  # rotated
    assert first.is_error is False and second.is_error is False, text_of(second)
    assert len(session.finals) == 1  # one sign-in only
    (minted,) = api.minted
    calls = [r.headers.get("authorization") for r in api.requests if r.path == "/api/v1/auth/keys/code"]
    assert calls == [f"Bearer {minted}"] * 2
    refreshes = [r for r in session.seen if r.request.url.path == "/token"]
    assert len(refreshes) == 2 and all(r.status_code == 200 for r in refreshes)


@BOTH_ERAS
async def test_two_processes_sharing_only_the_secret_serve_every_step_in_turn(
    servers: dict[str, HttpServer], api: FakeModelGates, mode: str
) -> None:
    one, two = servers["one"], servers["two"]
    balancer = Rewrite(one.port, [one.port, two.port])
    async with signed_in(mcp_url(one), mode, rewrite=balancer) as session:
        created = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        listed = await session.client.list_tools()
    assert created.is_error is False, text_of(created)
    assert [t.name for t in listed.tools] == API_TOOLS
    # Every step of the sign-in and the calls, alternating between the processes.
    steps = [path for _, path in balancer.sent_to]
    for step in ("/mcp", "/register", "/authorize", "/consent", "/oauth/callback", "/token"):
        assert step in steps, step
    backends = [port for port, _ in balancer.sent_to]
    assert all(a != b for a, b in itertools.pairwise(backends))
    served = {path: {p for p, q in balancer.sent_to if q == path} for path in steps}
    assert {one.port, two.port} <= set().union(*served.values())
    (minted,) = api.minted
    assert [r.headers.get("authorization") for r in api.requests if r.path == "/api/v1/auth/keys/code"] == [
        f"Bearer {minted}"
    ]


# ---------------------------------------------------------------- refusals: tokens on /mcp


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


async def test_mcp_refuses_every_token_this_deployment_did_not_issue_as_an_access_token(
    servers: dict[str, HttpServer], api: FakeModelGates
) -> None:
    one, short = servers["one"], servers["short"]
    grant, tokens = await tokens_for(one)
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    assert call_mcp(one, access).status_code == 200  # the real one works
    (minted,) = api.minted
    _, short_tokens = await tokens_for(short)
    assert call_mcp(short, short_tokens["access_token"]).status_code == 200  # within its 2 seconds
    later = time.time() + 3600  # valid but for what each case changes
    payload = {"grant": "g", "client": "c", "resource": mcp_url(one), "scopes": [], "key": minted, "user": None}
    bad = {
        "the user's raw ModelGates key": minted,
        "the server's own API key": API_KEY,
        "tampered at the start": _flip(access, 3),
        "tampered in the middle": _flip(access, len(access) // 2),
        "tampered at the end": _flip(access, len(access) - 1),
        "truncated": access[:-6],
        "extended": access + "AAAA",
        "not base64url": access[:20] + "!" + access[21:],
        "a refresh token": refresh_token,
        "an authorization code": grant.code,
        "a client id": grant.client.client_id,
        "another deployment's access token": short_tokens["access_token"],
        "sealed with another secret": Sealer([OTHER_SECRET], origin(one)).seal("access", {**payload, "exp": later}),
        "sealed for another issuer": Sealer([SECRET], "http://localhost:1").seal("access", {**payload, "exp": later}),
        "sealed for another resource": Sealer([SECRET], origin(one)).seal(
            "access", {**payload, "resource": "http://localhost:1/mcp", "exp": later}
        ),
        "expired": Sealer([SECRET], origin(one)).seal("access", {**payload, "exp": time.time() - 1}),
    }
    api.clear()
    for name, value in bad.items():
        answer = call_mcp(one, value, create_call())
        assert answer.status_code == 401, name
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
        assert answer.content == b"", name
    assert api.requests == []  # nothing reached ModelGates
    # A 2-second token, really expired on its own server.
    await anyio.sleep(3)
    assert call_mcp(short, short_tokens["access_token"]).status_code == 401


# ---------------------------------------------------------------- refusals: /token


async def test_the_token_endpoint_checks_verifier_redirect_uri_client_and_resource(one: HttpServer) -> None:
    grant = await authorization_code(one)
    _SERVER_OF[grant.client.redirect_uri] = one
    other_client = register(one)
    cases = {
        "wrong verifier": ({"code_verifier": secrets.token_urlsafe(32)}, "invalid_grant"),
        "no verifier": ({"code_verifier": ""}, "invalid_request"),
        "wrong redirect URI": ({"redirect_uri": redirect_uri()}, "invalid_request"),
        "another client": ({"client_id": other_client.client_id}, "invalid_grant"),
        "an unknown client": ({"client_id": "nobody"}, "invalid_client"),
        "another resource": ({"resource": "https://evil.example/mcp"}, "invalid_target"),
        "a resource with a slash": ({"resource": mcp_url(one) + "/"}, "invalid_target"),
    }
    for name, (override, error) in cases.items():
        answer = redeem(one, grant, **override)
        assert answer.status_code in (400, 401), name
        assert answer.json()["error"] == error, (name, answer.json())
    # None of those used the code up: the right request still gets tokens.
    good = redeem(one, grant)
    assert good.status_code == 200, good.text
    body = good.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    assert good.headers["cache-control"] == "no-store"


async def test_a_code_used_twice_is_refused_and_ends_what_it_granted(one: HttpServer) -> None:
    grant, tokens = await tokens_for(one)
    assert call_mcp(one, tokens["access_token"]).status_code == 200
    again = redeem(one, grant)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    # The tokens the first redemption got are revoked with it (RFC 6749 section 4.1.2).
    assert call_mcp(one, tokens["access_token"]).status_code == 401
    assert refresh(one, grant, tokens["refresh_token"]).json()["error"] == "invalid_grant"


async def test_a_code_without_a_resource_is_bound_to_this_server_anyway(one: HttpServer) -> None:
    grant = await authorization_code(one, resource="")
    _SERVER_OF[grant.client.redirect_uri] = one
    answer = redeem(one, grant, resource="")
    assert answer.status_code == 200
    assert call_mcp(one, answer.json()["access_token"]).status_code == 200


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_grant(one: HttpServer) -> None:
    grant, first = await tokens_for(one)
    second = refresh(one, grant, first["refresh_token"], resource=mcp_url(one))
    assert second.status_code == 200, second.text
    second_tokens = second.json()
    assert second_tokens["refresh_token"] != first["refresh_token"]
    assert call_mcp(one, second_tokens["access_token"]).status_code == 200
    assert (
        refresh(one, grant, second_tokens["refresh_token"], resource="https://evil.example/mcp").json()["error"]
        == "invalid_target"
    )
    other = register(one)
    assert refresh(one, Grant(other, "", "", grant.final), second_tokens["refresh_token"]).json()["error"] in (
        "invalid_grant"
    )

    reused = refresh(one, grant, first["refresh_token"])
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    # Reuse means the refresh token leaked: the whole grant ends, the newest tokens too.
    assert refresh(one, grant, second_tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert call_mcp(one, second_tokens["access_token"]).status_code == 401
    assert call_mcp(one, first["access_token"]).status_code == 401
    # Another sign-in of the same client is unaffected.
    _, fresh = await tokens_for(one)
    assert call_mcp(one, fresh["access_token"]).status_code == 200


# ---------------------------------------------------------------- /revoke (RFC 7009)


def revoke(server: HttpServer, grant: Grant, token_value: str, **extra: str) -> httpx.Response:
    form = {"token": token_value, "client_id": grant.client.client_id, **extra}
    return httpx.post(origin(server) + "/revoke", data={k: v for k, v in form.items() if v != ""}, timeout=30)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revoking_either_token_ends_the_whole_sign_in(one: HttpServer, which: str) -> None:
    grant, first = await tokens_for(one)
    rotated = refresh(one, grant, first["refresh_token"]).json()
    assert call_mcp(one, rotated["access_token"]).status_code == 200
    answer = revoke(one, grant, rotated[which], token_type_hint=which)
    assert (answer.status_code, answer.content, answer.headers["cache-control"]) == (200, b"", "no-store")
    # Within that one request: every token of the sign-in is refused from now on.
    assert call_mcp(one, rotated["access_token"]).status_code == 401
    assert call_mcp(one, first["access_token"]).status_code == 401
    assert refresh(one, grant, rotated["refresh_token"]).json()["error"] == "invalid_grant"
    assert revoke(one, grant, rotated[which]).status_code == 200  # again: the same answer
    _, other = await tokens_for(one)  # other sign-ins go on
    assert call_mcp(one, other["access_token"]).status_code == 200


async def test_revoke_tells_nothing_about_tokens_that_are_not_the_clients_own(one: HttpServer) -> None:
    grant, tokens = await tokens_for(one)
    stranger = await authorization_code(one)
    as_stranger = Grant(stranger.client, "", "", stranger.final)
    for value in (tokens["access_token"], tokens["refresh_token"], "junk", grant.code, grant.client.client_id):
        answer = revoke(one, as_stranger, value)
        assert (answer.status_code, answer.content) == (200, b""), value
    assert call_mcp(one, tokens["access_token"]).status_code == 200  # another client cannot end it
    assert revoke(one, grant, tokens["access_token"], token_type_hint="something_else").status_code == 200
    assert call_mcp(one, tokens["access_token"]).status_code == 401  # an unknown hint is ignored


async def test_revoke_wants_a_known_client_and_a_token(one: HttpServer) -> None:
    grant, tokens = await tokens_for(one)
    nobody = revoke(one, Grant(Registered("nobody", "", {}), "", "", grant.final), tokens["access_token"])
    assert (nobody.status_code, nobody.json()["error"]) == (401, "invalid_client")
    no_client = revoke(one, Grant(Registered("", "", {}), "", "", grant.final), tokens["access_token"])
    assert (no_client.status_code, no_client.json()["error"]) == (401, "invalid_client")
    missing = revoke(one, grant, "")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    assert call_mcp(one, tokens["access_token"]).status_code == 200


# ---------------------------------------------------------------- refusals: registration and /authorize


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "http://evil.example/callback",  # plain http off loopback
        "http://localhost.evil.example/callback",
        "http://127.0.0.1.evil.example/callback",
        "https://app.example/callback#fragment",
        "https://user:pw@evil.example/callback",
        "ftp://app.example/callback",
        "com.example.app:/callback",
        "https://app.example/" + "x" * 600,
    ],
)
def test_registration_refuses_redirect_uris_that_could_send_a_code_anywhere(one: HttpServer, uri: str) -> None:
    answer = httpx.post(origin(one) + "/register", json={"redirect_uris": [uri]}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def test_registration_accepts_loopback_on_any_port_and_https(one: HttpServer) -> None:
    uris = [
        "http://localhost:33418/callback",
        "http://127.0.0.1:9/cb?x=1",
        "http://[::1]:8080/",
        "https://app.example/cb",
    ]
    answer = httpx.post(origin(one) + "/register", json={"redirect_uris": uris, "client_name": "Claude Code (t)"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["redirect_uris"] == uris and body["client_name"] == "Claude Code (t)"
    assert body["token_endpoint_auth_method"] == "client_secret_post" and body["client_secret"]  # RFC 7591 default
    assert len(body["client_id"]) < 2048  # fits in an authorization URL
    too_many = httpx.post(origin(one) + "/register", json={"redirect_uris": [uris[0]] * 5})
    assert too_many.status_code == 400


async def test_a_client_with_a_secret_must_send_it_at_the_token_endpoint(one: HttpServer) -> None:
    grant = await authorization_code(one)
    confidential = register(one, grant.client.redirect_uri, token_endpoint_auth_method=None).body
    grant.client = Registered(confidential["client_id"], grant.client.redirect_uri, confidential)
    _SERVER_OF[grant.client.redirect_uri] = one
    browser = Browser(stop_at=lambda u: u.startswith(grant.client.redirect_uri))
    consent = await browser.get(authorize_url(one, grant.client, grant.verifier))
    grant.code = (await browser.submit(consent, "action", "approve")).query["code"]
    assert redeem(one, grant).json()["error"] == "invalid_client"
    assert redeem(one, grant, client_secret="wrong").json()["error"] == "invalid_client"
    assert redeem(one, grant, client_secret=confidential["client_secret"]).status_code == 200


def test_authorize_errors_never_redirect_to_an_unregistered_uri(one: HttpServer, api: FakeModelGates) -> None:
    client = register(one)
    verifier = secrets.token_urlsafe(32)
    for bad in (
        {"client_id": "not-a-client"},
        {"client_id": register(one).client_id[:-3]},
        {"redirect_uri": "https://evil.example/cb"},
        {"redirect_uri": client.redirect_uri + "/extra"},
        {"state": "s" * 600},
    ):
        answer = httpx.get(authorize_url(one, client, verifier, **bad), timeout=30)
        assert answer.status_code == 400 and "location" not in answer.headers, bad
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["x-frame-options"] == "DENY"
    doubled = authorize_url(one, client, verifier) + "&client_id=" + register(one).client_id
    assert httpx.get(doubled, timeout=30).status_code == 400
    assert api.requests == []


def test_authorize_errors_go_back_to_the_client_with_state_and_iss(one: HttpServer) -> None:
    client = register(one)
    verifier = secrets.token_urlsafe(32)
    for extra, error in (
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"resource": "https://evil.example/mcp"}, "invalid_target"),
        ({"scope": "admin"}, "invalid_scope"),  # not registered
    ):
        answer = httpx.get(authorize_url(one, client, verifier, state="keep-me", **extra), timeout=30)
        assert answer.status_code == 302, extra
        location = answer.headers["location"]
        assert location.startswith(client.redirect_uri + "?"), location
        query = parse_qs(urlsplit(location).query)
        assert (query["error"], query["state"], query["iss"]) == ([error], ["keep-me"], [origin(one)]), extra


# ---------------------------------------------------------------- refusals: consent and callback


async def test_the_consent_page_names_the_client_and_cannot_be_framed(one: HttpServer, api: FakeModelGates) -> None:
    client = register(one, client_name="<b>Evil</b> & co")
    browser = Browser()
    page = await browser.get(authorize_url(one, client, secrets.token_urlsafe(32)))
    assert page.status == 200
    assert "&lt;b&gt;Evil&lt;/b&gt; &amp; co" in page.text and "<b>Evil" not in page.text
    assert urlsplit(client.redirect_uri).netloc in page.text and "not verified" in page.text
    assert page.form().buttons == {"action": ["approve", "deny"]} and page.form().action == "/consent"
    headers = page.response.headers if page.response else {}
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src" not in csp
    assert f"form-action 'self' {api.origin} http://{urlsplit(client.redirect_uri).netloc}" in csp
    assert headers["cache-control"] == "no-store"
    (consent_cookie,) = [c for c in page.response.headers.get_list("set-cookie")] if page.response else [""]
    assert consent_cookie.startswith("mg_consent=") and "HttpOnly" in consent_cookie
    assert "SameSite=strict" in consent_cookie and "Path=/" in consent_cookie
    assert api.requests == []  # nothing happens before Approve


async def test_a_consent_from_another_site_or_browser_is_refused(one: HttpServer, api: FakeModelGates) -> None:
    client = register(one)
    browser = Browser(stop_at=lambda u: u.startswith(client.redirect_uri))
    page = await browser.get(authorize_url(one, client, secrets.token_urlsafe(32)))
    for headers in ({"origin": "https://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        refused = await browser.submit(page, "action", "approve", **headers)
        assert refused.status == 403, headers
    # The form, replayed from a browser that never saw the page (no consent cookie): refused too.
    stranger = Browser()
    assert (await stranger.submit(page, "action", "approve")).status == 403
    # An attacker's own consent form, posted from the victim's browser, does not match their cookie.
    attacker = Browser()
    their_page = await attacker.get(authorize_url(one, register(one), secrets.token_urlsafe(32)))
    assert (await browser.submit(their_page, "action", "approve")).status == 403
    assert api.requests == []  # none of them reached ModelGates
    tampered = Page(page.url, page.response)
    form = page.form()
    blob = form.fields["request"]
    forged = page.text.replace(blob, blob[:-2] + ("AA" if blob[-2:] != "AA" else "BB"))
    tampered.response = httpx.Response(200, text=forged, request=page.response.request if page.response else None)
    assert (await browser.submit(tampered, "action", "approve")).status == 400
    # The real thing still works.
    approved = await browser.submit(page, "action", "approve")
    assert approved.response is None and "code" in approved.query


async def test_deny_sends_access_denied_back_with_state_and_iss(one: HttpServer, api: FakeModelGates) -> None:
    client = register(one)
    browser = Browser(stop_at=lambda u: u.startswith(client.redirect_uri))
    page = await browser.get(authorize_url(one, client, secrets.token_urlsafe(32), state="st-deny"))
    denied = await browser.submit(page, "action", "deny")
    assert denied.response is None
    assert denied.query == {
        "error": "access_denied",
        "error_description": "the user denied the sign-in",
        "state": "st-deny",
        "iss": origin(one),
    }
    assert api.requests == []


async def test_the_callback_works_only_in_the_browser_that_consented_and_once(
    one: HttpServer, api: FakeModelGates
) -> None:
    client = register(one)
    alice = Browser(stop_at=lambda u: u.startswith(api.origin))  # stop before ModelGates
    page = await alice.get(authorize_url(one, client, secrets.token_urlsafe(32), state="st-a"))
    at_modelgates = await alice.submit(page, "action", "approve")
    assert urlsplit(at_modelgates.url).path == "/auth"
    # The ModelGates link opened in another browser: ModelGates approves there, our callback refuses
    # before any exchange (that browser has no sign-in cookie).
    mallory = Browser(stop_at=lambda u: u.startswith(client.redirect_uri))
    elsewhere = await mallory.get(at_modelgates.url)
    assert elsewhere.status == 400 and "another browser" in elsewhere.text
    assert [r.path for r in api.requests if r.method == "POST"] == []
    # In the browser that consented it completes, and exchanges exactly once.
    alice.stop_at = lambda u: u.startswith(client.redirect_uri)
    done = await alice.get(at_modelgates.url)
    assert done.response is None and done.query["state"] == "st-a" and done.query["iss"] == origin(one)
    callback_url = next(u for u in done.visited if "/oauth/callback" in u)
    assert not [name for name in alice.cookies_for(callback_url) if name.startswith("mg_signin_")]
    # Replayed in the same browser, with its cookie put back: already complete, nothing re-sent.
    pending_cookie = next(
        c
        for r in alice.responses
        for c in r.headers.get_list("set-cookie")
        if c.startswith("mg_signin_") and "Max-Age=600" in c
    )
    name, value = pending_cookie.split(";")[0].split("=", 1)
    alice.jar["localhost"][name] = (value, None)
    replay = await alice.get(callback_url)
    assert replay.status == 400 and "already complete" in replay.text
    assert [r.path for r in api.requests if r.method == "POST"] == ["/api/v1/auth/keys"]


async def test_a_modelgates_error_comes_back_to_the_client_as_an_oauth_error(
    one: HttpServer, api: FakeModelGates
) -> None:
    def refuse(rec: Recorded) -> Reply | None:
        if rec.method == "GET" and rec.path.startswith("/auth?"):
            callback = parse_qs(urlsplit(rec.path).query)["callback_url"][0]
            return Reply(302, headers={"Location": callback + "&error=access_denied"})
        return None

    api.handler = refuse
    client = register(one)
    browser = Browser(stop_at=lambda u: u.startswith(client.redirect_uri))
    page = await browser.get(authorize_url(one, client, secrets.token_urlsafe(32), state="st-err"))
    back = await browser.submit(page, "action", "approve")
    assert back.response is None
    assert (back.query["error"], back.query["state"], back.query["iss"]) == ("access_denied", "st-err", origin(one))
    assert "ModelGates did not approve" in back.query["error_description"]
    assert [r.method for r in api.requests] == ["GET"]  # no exchange was attempted


async def test_a_failed_exchange_comes_back_as_server_error_and_is_not_retried(
    one: HttpServer, api: FakeModelGates
) -> None:
    api.reply(500, {"error": {"code": 500, "message": "boom"}}, path="/auth/keys")
    client = register(one)
    browser = Browser(stop_at=lambda u: u.startswith(client.redirect_uri))
    page = await browser.get(authorize_url(one, client, secrets.token_urlsafe(32)))
    back = await browser.submit(page, "action", "approve")
    assert back.query["error"] == "server_error" and back.query["iss"] == origin(one)
    assert [r.path for r in api.requests if r.method == "POST"] == ["/api/v1/auth/keys"]  # sent once


# ---------------------------------------------------------------- users and their keys


def encodings(secret: str) -> list[str]:
    """A secret as it could leak: plain, URL-encoded, base64 (standard and URL-safe, any alignment)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    for pad in ("", " ", "  "):  # base64 of the secret at each offset in a longer text
        raw = base64.b64encode((pad + secret).encode()).decode()
        start = {0: 0, 1: 4, 2: 4}[len(pad)]
        forms |= {raw[start : start + 24], raw[start : start + 24].replace("+", "-").replace("/", "_")}
    return sorted(forms)


async def test_two_users_signed_in_at_once_never_see_each_others_key(one: HttpServer, api: FakeModelGates) -> None:
    def slow(rec: Recorded) -> Reply | None:  # slow enough that the two users' calls overlap
        if rec.path == "/api/v1/auth/keys/code":
            callback = rec.json["callback_url"]
            return Reply(200, {"data": {"id": callback, "app_id": 1, "created_at": "2025-08-24T10:30:00Z"}}, delay=0.05)
        return None

    api.handler = slow
    results: dict[str, list[Any]] = {"alice": [], "bob": []}

    async def user(name: str) -> None:
        async with signed_in(mcp_url(one)) as session, anyio.create_task_group() as tg:
            for i in range(5):

                async def one_call(i: int = i) -> None:
                    answer = await session.client.call_tool(
                        "create_auth_code", {"callback_url": f"https://{name}.example/{i}"}
                    )
                    results[name].append(answer)

                tg.start_soon(one_call)

    async with anyio.create_task_group() as tg:
        tg.start_soon(user, "alice")
        tg.start_soon(user, "bob")
    assert len(api.minted) == 2
    keys = {
        rec.json["callback_url"].split("/")[2].split(".")[0]: rec.headers["authorization"].removeprefix("Bearer ")
        for rec in api.requests
        if rec.path == "/api/v1/auth/keys/code"
    }
    pairs = {
        (rec.json["callback_url"].split("/")[2], rec.headers["authorization"])
        for rec in api.requests
        if rec.path == "/api/v1/auth/keys/code"
    }
    assert len(pairs) == 2 and set(keys.values()) == set(api.minted) and keys["alice"] != keys["bob"]
    for name, answers in results.items():
        assert len(answers) == 5 and all(a.is_error is False for a in answers), name
        dumped = json.dumps([a.model_dump(mode="json") for a in answers])
        assert not any(form in dumped for key in api.minted for form in encodings(key)), name


async def test_no_minted_key_in_any_response_url_page_cookie_or_tool_result(
    servers: dict[str, HttpServer], api: FakeModelGates
) -> None:
    one = servers["one"]
    async with signed_in(mcp_url(one)) as session:
        created = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        failed = await session.client.call_tool("create_auth_code", {"callback_url": "not a url"})
        api.reply(401, {"error": {"code": 401, "message": f"Key {api.minted[0]} is not valid"}})  # echoed back
        echoed = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
    (minted,) = api.minted
    assert created.is_error is False and failed.is_error is True and echoed.is_error is True
    assert "Key *** is not valid" in text_of(echoed)
    seen: list[str] = []
    for response in session.browser.responses:
        seen += [str(response.url), response.text, json.dumps(dict(response.headers.multi_items()))]
    for response in session.seen:
        seen += [str(response.request.url), response.text, json.dumps(dict(response.headers.multi_items()))]
        seen.append(response.request.content.decode(errors="replace"))
    for page in session.finals:
        seen += [page.url, *page.visited]
    seen.append(json.dumps(session.browser.jar))
    seen.append(session.storage.tokens.model_dump_json() if session.storage.tokens else "")
    seen += [json.dumps(r.model_dump(mode="json")) for r in (created, failed, echoed)]
    blob = "\n".join(seen)
    assert len(blob) > 10_000  # the check saw the whole sign-in
    leaked = [form for form in encodings(minted) if form in blob]
    assert leaked == []


async def test_a_key_revoked_at_modelgates_says_to_sign_in_again(one: HttpServer, api: FakeModelGates) -> None:
    async with signed_in(mcp_url(one)) as session:
        assert (await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})).is_error is False
        api.revoke(api.minted[0])
        refused = await session.client.call_tool("create_auth_code", {"callback_url": CALLBACK})
    text = text_of(refused)
    assert refused.is_error is True and "HTTP 401" in text
    assert "Sign in to this server again" in text and "MODELGATES_API_KEY" not in text


# ---------------------------------------------------------------- every endpoint: Host and body caps

OAUTH_PATHS = [
    ("GET", "/.well-known/oauth-protected-resource/mcp"),
    ("GET", "/.well-known/oauth-protected-resource"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("POST", "/register"),
    ("POST", "/token"),
    ("GET", "/authorize"),
    ("POST", "/consent"),
    ("GET", "/oauth/callback"),
    ("POST", "/revoke"),
    ("POST", "/mcp"),
]


@pytest.mark.parametrize(("method", "path"), OAUTH_PATHS)
def test_every_endpoint_checks_host_and_caps_its_body(one: HttpServer, method: str, path: str) -> None:
    url = origin(one) + path
    assert httpx.request(method, url, headers={"host": "evil.example"}, timeout=30).status_code == 421
    assert httpx.request(method, url, headers={"host": f"rebind.example:{one.port}"}, timeout=30).status_code == 421
    big = b"x" * (2 << 20)
    answer = httpx.request(method, url, content=big, headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code in (401, 413), answer.status_code  # /mcp asks for a token before reading
    if path != "/mcp":
        assert answer.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while it streams in
            for _ in range(32):
                yield b"y" * (64 << 10)

        streamed = httpx.request(method, url, content=chunks(), timeout=30)
        assert streamed.status_code == 413
    assert httpx.request("PUT", url, timeout=30).status_code in (401, 405)


def test_unknown_paths_are_404_and_the_public_host_is_allowed(one: HttpServer) -> None:
    assert httpx.get(origin(one) + "/.well-known/openid-configuration").status_code == 404
    assert httpx.get(origin(one) + "/introspect").status_code == 404
    assert httpx.get(origin(one) + "/revoke").status_code == 405  # POST only
    assert httpx.get(origin(one) + "/.well-known/oauth-authorization-server").status_code == 200


def test_a_public_host_behind_a_balancer_is_allowed(api: FakeModelGates) -> None:
    server = start_server(
        oauth_env(api, "https://mcp.example.com", level="INFO"), "--host", "0.0.0.0"
    )  # non-loopback bind is allowed in this mode
    try:
        url = f"http://127.0.0.1:{server.port}/.well-known/oauth-authorization-server"
        meta = httpx.get(url, headers={"host": "mcp.example.com"}, timeout=30)
        assert meta.status_code == 200 and meta.json()["issuer"] == "https://mcp.example.com"
        assert httpx.get(url, headers={"host": "other.example.com"}, timeout=30).status_code == 421
        page = httpx.get(
            f"http://127.0.0.1:{server.port}/authorize?client_id=x", headers={"host": "mcp.example.com"}, timeout=30
        )
        assert page.status_code == 400
    finally:
        assert server.stop() == 0
    assert "OAuth sign-in, issuer https://mcp.example.com" in server.stderr


def test_cookies_are_host_prefixed_and_secure_on_https(api: FakeModelGates) -> None:
    """On an https public URL (TLS at the balancer) the cookies are `__Host-`, Secure, Path=/."""
    port = free_port()
    server = start_server(oauth_env(api, "https://mcp.example.com", level="INFO"), port=port)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"host": "mcp.example.com"}
        client = httpx.post(base + "/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]}, headers=headers)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client.json()["client_id"],
                "code_challenge": s256(secrets.token_urlsafe(32)),
                "state": "s",
            }
        )
        page = httpx.get(f"{base}/authorize?{query}", headers=headers, timeout=30)
        (csrf,) = page.headers.get_list("set-cookie")
        assert csrf.startswith("__Host-mg_consent=") and "Secure" in csrf and "Path=/" in csrf
        request = Page(f"{base}/authorize", page).form().fields["request"]
        cookie = {"cookie": csrf.split(";")[0]}
        approved = httpx.post(
            base + "/consent",
            data={"request": request, "action": "approve"},
            headers={**headers, **cookie, "origin": "https://mcp.example.com"},
        )
        assert approved.status_code == 303 and approved.headers["location"].startswith(api.origin + "/auth?")
        (pending,) = approved.headers.get_list("set-cookie")
        assert pending.startswith("__Host-mg_signin_") and "Secure" in pending and "SameSite=lax" in pending
        callback = parse_qs(urlsplit(approved.headers["location"]).query)["callback_url"][0]
        assert callback.startswith("https://mcp.example.com/oauth/callback?flow=")
        cross = httpx.post(
            base + "/consent",
            data={"request": request, "action": "approve"},
            headers={**headers, **cookie, "origin": f"http://127.0.0.1:{port}"},  # not the public origin
        )
        assert cross.status_code == 403
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MODELGATES_API_KEY": API_KEY}, ["MODELGATES_AUTH", "MODELGATES_API_KEY"]),
        ({"MODELGATES_HTTP_TOKEN": "tok-http-test-7d3a91c2e5f04b18"}, ["MODELGATES_AUTH", "MODELGATES_HTTP_TOKEN"]),
        ({"MODELGATES_KEY_FROM_CLIENT": "1"}, ["MODELGATES_AUTH", "MODELGATES_KEY_FROM_CLIENT"]),
        ({"MODELGATES_PUBLIC_URL": ""}, ["MODELGATES_PUBLIC_URL"]),
        ({"MODELGATES_PUBLIC_URL": "http://mcp.example.com"}, ["MODELGATES_PUBLIC_URL", "https"]),
        ({"MODELGATES_PUBLIC_URL": "https://mcp.example.com/mcp"}, ["MODELGATES_PUBLIC_URL", "path"]),
        ({"MODELGATES_PUBLIC_URL": "https://mcp.example.com?x=1"}, ["MODELGATES_PUBLIC_URL"]),
        ({"MODELGATES_PUBLIC_URL": "https://mcp.example.com#top"}, ["MODELGATES_PUBLIC_URL"]),
        ({"MODELGATES_PUBLIC_URL": "https://me:pw@mcp.example.com"}, ["MODELGATES_PUBLIC_URL"]),
        ({"MODELGATES_OAUTH_SECRET": ""}, ["MODELGATES_OAUTH_SECRET"]),
        ({"MODELGATES_OAUTH_SECRET": "short-secret-31-characters-long"}, ["MODELGATES_OAUTH_SECRET", "32"]),
        ({"MODELGATES_OAUTH_SECRET": SECRET + ",short"}, ["MODELGATES_OAUTH_SECRET"]),
        ({"MODELGATES_OAUTH_SECRET": SECRET + " x"}, ["MODELGATES_OAUTH_SECRET"]),
        ({"MODELGATES_OAUTH_ACCESS_TTL": "0"}, ["MODELGATES_OAUTH_ACCESS_TTL"]),
        ({"MODELGATES_OAUTH_ACCESS_TTL": "1.5"}, ["MODELGATES_OAUTH_ACCESS_TTL"]),
        ({"MODELGATES_OAUTH_REFRESH_TTL": "soon"}, ["MODELGATES_OAUTH_REFRESH_TTL"]),
        ({"MODELGATES_AUTH": "jwt"}, ["MODELGATES_AUTH"]),
        ({"MODELGATES_AUTH": ""}, ["MODELGATES_PUBLIC_URL", "MODELGATES_AUTH"]),  # its settings without the mode
    ],
)
def test_bad_oauth_settings_are_refused_with_one_line_naming_them(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(["--transport", "http"], _with_oauth(env))
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in names), message
    for secret in (SECRET, API_KEY, "tok-http-test", "short-secret-31", "pw@"):
        assert secret not in message


def _with_oauth(env: dict[str, str]) -> dict[str, str]:
    base = {
        "MODELGATES_AUTH": "oauth",
        "MODELGATES_PUBLIC_URL": "http://localhost:8000",
        "MODELGATES_OAUTH_SECRET": SECRET,
    }
    return {k: v for k, v in {**base, **env}.items() if v}  # "" leaves a setting out


@pytest.mark.parametrize(
    "env",
    [
        {"MODELGATES_API_KEY": API_KEY},
        {"MODELGATES_OAUTH_SECRET": "short-secret-31-characters-long"},
        {"MODELGATES_PUBLIC_URL": "http://mcp.example.com"},
    ],
)
def test_the_console_script_refuses_them_before_binding(env: dict[str, str]) -> None:
    with socket.socket() as taken:  # the port is taken: a refusal after binding would say so instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run(
            [*server_command(), "--transport", "http", "--host", "0.0.0.0", "--port", port],
            env=clean_env(_with_oauth(env)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, proc.stdout, len(lines)) == (2, "", 1), proc.stderr
    assert lines[0].startswith("mcp-modelgates: ") and next(iter(env)) in lines[0], lines[0]
    assert SECRET not in proc.stderr and API_KEY not in proc.stderr and "short-secret" not in proc.stderr


def test_a_non_loopback_bind_is_allowed_in_oauth_mode() -> None:
    settings = load_settings(["--transport", "http", "--host", "0.0.0.0"], _with_oauth({}))
    assert (settings.oauth, settings.http_host, settings.keys_per_request) == (True, "0.0.0.0", True)
    assert (settings.oauth_access_ttl, settings.oauth_refresh_ttl) == (3600, 30 * 24 * 3600)
    custom = load_settings(
        ["--transport", "http"],
        _with_oauth(
            {
                "MODELGATES_PUBLIC_URL": "HTTPS://MCP.Example.com:443/",
                "MODELGATES_OAUTH_SECRET": f" {SECRET} , {OTHER_SECRET} ",
                "MODELGATES_OAUTH_ACCESS_TTL": "2",
                "MODELGATES_OAUTH_REFRESH_TTL": "60",
            }
        ),
    )
    assert custom.public_url == "https://mcp.example.com"  # the one form clients compare the issuer in
    assert [s.get_secret_value() for s in custom.oauth_secrets] == [SECRET, OTHER_SECRET]
    assert (custom.oauth_access_ttl, custom.oauth_refresh_ttl) == (2, 60)


def test_oauth_mode_needs_the_http_transport() -> None:
    env = {"MODELGATES_AUTH": "oauth", "MODELGATES_PUBLIC_URL": "http://localhost:1", "MODELGATES_OAUTH_SECRET": SECRET}
    proc = subprocess.run(server_command(), env=clean_env(env), input="", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--transport http" in proc.stderr and proc.stdout == ""


def test_the_authorization_server_is_loaded_only_in_oauth_mode() -> None:
    probe = (
        "import json, sys; import mcp_modelgates.cli, mcp_modelgates.http_app; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mcp_modelgates'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    loaded = json.loads(out.stdout)
    assert "mcp_modelgates.http_app" in loaded
    assert not [m for m in loaded if m.startswith("mcp_modelgates.oauth")]


def test_redact_masks_the_secrets_and_the_signed_in_users_key() -> None:
    settings = load_settings(
        ["--transport", "http"],
        {
            "MODELGATES_AUTH": "oauth",
            "MODELGATES_PUBLIC_URL": "http://localhost:8000",
            "MODELGATES_OAUTH_SECRET": f"{SECRET},{OTHER_SECRET}",
        },
    )
    assert SECRET not in repr(settings) and OTHER_SECRET not in repr(settings)
    assert settings.redact(f"a {SECRET} b {OTHER_SECRET}") == "a *** b ***"
    user_key = "sk-mg-v1-" + "ab" * 16
    with caller_key_for_request(SecretStr(user_key)):
        assert settings.redact(f"key {user_key}") == "key ***"
    assert settings.redact(user_key) == user_key  # outside that user's request, nothing to mask


OAUTH_SETTINGS = [
    "MODELGATES_AUTH",
    "MODELGATES_PUBLIC_URL",
    "MODELGATES_OAUTH_SECRET",
    "MODELGATES_OAUTH_ACCESS_TTL",
    "MODELGATES_OAUTH_REFRESH_TTL",
    "MODELGATES_OAUTH_STORE",
    "MODELGATES_OAUTH_CLIENT_DOCUMENTS",
]


def test_help_server_json_the_dockerfile_and_the_readme_name_the_oauth_settings() -> None:
    helped = subprocess.run([*server_command(), "--help"], capture_output=True, text=True, timeout=30).stdout
    server_json = json.loads((ROOT / "server.json").read_text())
    (package,) = server_json["packages"]
    env = {v["name"]: v for v in package["environmentVariables"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    hosted = readme[readme.index("## Run it as a hosted server") : readme.index("## Errors and retries")]
    for name in OAUTH_SETTINGS:
        assert name in " ".join(helped.split()), name
        assert name in env and env[name]["isRequired"] is False, name
        assert name in dockerfile and name in hosted, name
        assert f"| `{name}` |" in readme, name  # a Configuration row
    assert env["MODELGATES_OAUTH_SECRET"]["isSecret"] is True
    assert env["MODELGATES_OAUTH_STORE"]["isSecret"] is True  # it may hold the store's password
    assert "'.[redis]'" in dockerfile  # the image can use a shared store
    assert hosted.index("Sign in with a ModelGates account") < hosted.index("Private or legacy set-ups")


@pytest.fixture
def keyring_with_a_key(tmp_path: Any) -> dict[str, str]:
    """A file keyring holding a key as connect_account stores it; the environment that selects it."""
    env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path)}
    setup = (
        "import keyring, sys\nkeyring.get_keyring().set_password('mcp-modelgates', 'MODELGATES_API_KEY', sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", setup, API_KEY], env={**clean_env({}), **env}, check=True)
    return env


async def test_oauth_mode_never_takes_the_key_stored_in_the_keyring(
    api: FakeModelGates, keyring_with_a_key: dict[str, str]
) -> None:
    """A stored key would otherwise go with the sign-in's exchange and become a shared key."""
    port = free_port()
    server = start_server({**oauth_env(api, f"http://localhost:{port}", level="INFO"), **keyring_with_a_key}, port=port)
    try:
        grant = await authorization_code(server)
        _SERVER_OF[grant.client.redirect_uri] = server
        access = redeem(server, grant).json()["access_token"]
        assert call_mcp(server, access, create_call()).json()["result"]["isError"] is False
    finally:
        assert server.stop() == 0
    exchange, create = [r for r in api.requests if r.method == "POST"]
    assert "authorization" not in exchange.headers  # the sign-in's exchange goes without any key
    assert create.headers["authorization"] == f"Bearer {api.minted[0]}"
    assert "each signed-in user's own key (OAuth sign-in" in server.stderr


def test_no_minted_key_secret_or_token_in_any_log_line(servers: dict[str, HttpServer]) -> None:
    assert len(MINTED) >= 10  # the sign-ins of this module's tests
    assert all("sign-in completed" in server.stderr for server in (servers["one"], servers["short"]))
    # The sign-in endpoints are logged without their query (state, consent request, ModelGates code).
    assert '"GET /oauth/callback?<omitted> HTTP/1.1" 302' in servers["one"].stderr
    assert '"GET /authorize?<omitted> HTTP/1.1" 200' in servers["one"].stderr
    for name, server in servers.items():
        log = server.stderr
        assert '"POST /mcp HTTP/1.1" 200' in log, name  # the access log is on, so this check sees it
        assert SECRET not in log and API_KEY not in log, name
        assert KEY_PREFIX not in log, f"{name} logged a minted key"
        assert not [form for key in MINTED for form in encodings(key) if form in log], f"{name} logged an encoded key"
        assert "Traceback" not in log, name
        assert "code_challenge=" not in log and "flow=" not in log and "code=auth_code" not in log, name
        assert server.out == b"", name
