"""The sign-in pages in a real browser: headless Chromium (tests/chromium.py) through the hosted
sign-in (MODELGATES_AUTH=oauth) and through connect_account's loopback flow.

As in production, three sites take part: the server's public URL is on `localhost`, the ModelGates
stand-in on `127.0.0.1` (another site to a browser) shows an approval page whose button sends the
browser back to the server by a navigation that site started, and the client's redirect URI is a
listener of this test on `127.0.0.1`. So a cookie whose SameSite rule does not survive that return,
a Content-Security-Policy that blocks the consent form's way on, or a consent form that another
site can post, fails here the way it would fail for a user. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import SecretStr

from mcp_modelgates.config import Settings
from mcp_modelgates.server import build_server
from tests.chromium import ARTIFACTS, MISSING, Chromium
from tests.conftest import API_KEY
from tests.fake_api import FakeModelGates
from tests.test_http import HttpServer
from tests.test_oauth import API_TOOLS, CALLBACK, MemoryStorage, authorize_url, register, start_oauth_server, text_of

if MISSING:  # one skip for the whole module: one line in the summary
    pytest.skip(f"no real browser: {MISSING}", allow_module_level=True)

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- the parts


class AppListener:
    """The client app's side on 127.0.0.1: its redirect URI (`/callback`) records each query it
    receives; any other path serves the page a test put in `pages` (a hostile site's, say)."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.pages: dict[str, str] = {}
        self.arrived = threading.Event()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/callback":
                    listener.received.append({k: v[0] for k, v in parse_qs(parts.query).items()})
                    listener.arrived.set()
                    page = "<!doctype html><title>App</title><h1>Back in the app</h1>"
                else:
                    page = listener.pages.get(parts.path, "<!doctype html><title>App</title>")
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="app-listener").start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def redirect_uri(self) -> str:
        return self.origin + "/callback"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def chrome() -> Iterator[Chromium]:
    browser = Chromium()
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def browser(chrome: Chromium) -> Chromium:
    chrome.fresh()
    return chrome


@pytest.fixture(scope="module")
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY, approval_page=True) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_stand_in(api: FakeModelGates) -> None:
    api.clear()


@pytest.fixture(scope="module")
def server(api: FakeModelGates) -> Iterator[HttpServer]:
    started = start_oauth_server(api)
    yield started
    assert started.stop() == 0
    for key in api.minted:
        assert key not in started.stderr


@pytest.fixture
def app() -> Iterator[AppListener]:
    listener = AppListener()
    yield listener
    listener.close()


def public(server: HttpServer) -> str:
    return f"http://localhost:{server.port}"


def sign_in_url(server: HttpServer, app: AppListener) -> str:
    client = register(server, app.redirect_uri, client_name="Chromium test app")
    return authorize_url(server, client, secrets.token_urlsafe(32))


def approve_on_consent_page(browser: Chromium, server: HttpServer, url: str, screenshot: str = "") -> str:
    """Open the consent page and click Approve; its text as shown."""
    browser.open(url)
    browser.wait_for_url(public(server) + "/authorize")
    shown = browser.text()
    assert "Connect your ModelGates account" in shown
    if screenshot:
        browser.screenshot(screenshot)
    browser.click('button[value="approve"]')
    return shown


def approve_on_modelgates(browser: Chromium, api: FakeModelGates) -> None:
    browser.wait_for_url(api.origin + "/auth?")
    browser.click("#approve")


def reached(api: FakeModelGates) -> list[str]:
    """The paths the stand-in was asked for, without the browser's own favicon requests."""
    return [path for r in api.requests if (path := r.path.split("?")[0]) != "/favicon.ico"]


def cookies_of(browser: Chromium, host: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in browser.cookies() if c["domain"] == host}


# ---------------------------------------------------------------- the hosted sign-in


async def test_sign_in_through_chromium_then_a_call_with_the_users_own_key(
    browser: Chromium, server: HttpServer, api: FakeModelGates, app: AppListener
) -> None:
    """The Python SDK's OAuth client hands its authorization URL to Chromium: consent page (CSRF
    cookie), Approve, ModelGates' page, Approve there, the cross-site return to the server's
    callback (the sign-in cookie must come along), then the app's redirect URI."""
    seen: dict[str, Any] = {}

    def in_the_browser(url: str) -> None:
        seen["consent_text"] = approve_on_consent_page(browser, server, url, screenshot="consent-page.png")
        assert ARTIFACTS.joinpath("consent-page.png").stat().st_size > 0
        browser.wait_for_url(api.origin + "/auth?")
        seen["while_at_modelgates"] = cookies_of(browser, "localhost")
        browser.click("#approve")
        browser.wait_for_url(app.redirect_uri)
        seen["after"] = cookies_of(browser, "localhost")
        browser.screenshot("back-in-the-app.png")

    async def redirect_handler(url: str) -> None:
        seen["consent_url"] = url
        await anyio.to_thread.run_sync(in_the_browser, url)

    async def callback_handler() -> AuthorizationCodeResult:
        query = app.received[-1]
        return AuthorizationCodeResult(code=query.get("code", ""), state=query.get("state"), iss=query.get("iss"))

    provider = OAuthClientProvider(
        server_url=public(server) + "/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="Chromium test app",
            redirect_uris=[app.redirect_uri],  # type: ignore[list-item]
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=60) as http,
        Client(streamable_http_client(public(server) + "/mcp", http_client=http), mode="legacy") as client,
    ):
        tools = await client.list_tools()
        created = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})

    assert [t.name for t in tools.tools] == API_TOOLS
    assert created.is_error is False, text_of(created)
    # The page named the app (as unverified) and where the user goes back to.
    assert "Chromium test app (the name the app gave itself; not verified)" in seen["consent_text"]
    assert f"You are then sent back to {urlsplit(app.origin).netloc}." in seen["consent_text"]
    (back,) = app.received
    assert set(back) == {"code", "state", "iss"} and back["iss"] == public(server)
    # The consent cookie (CSRF) is Strict; the sign-in cookie is Lax and was sent back across sites,
    # then removed by the callback. Neither is readable by a script.
    held = seen["while_at_modelgates"]
    assert held["mg_consent"]["sameSite"] == "Strict" and held["mg_consent"]["httpOnly"] is True
    (pending,) = [c for name, c in held.items() if name.startswith("mg_signin_")]
    assert pending["sameSite"] == "Lax" and pending["httpOnly"] is True
    assert not [name for name in seen["after"] if name.startswith("mg_signin_")]
    # ModelGates: its page, its form, one exchange; then each call upstream with the minted key.
    paths = reached(api)
    assert paths[:3] == ["/auth", "/auth/approve", "/api/v1/auth/keys"], paths
    (minted,) = api.minted
    calls = [r for r in api.requests if r.path == "/api/v1/auth/keys/code"]
    assert [r.headers.get("authorization") for r in calls] == [f"Bearer {minted}"]
    assert browser.csp_violations() == []
    for cookie in browser.cookies():
        assert minted not in cookie["value"]


def test_deny_on_the_consent_page_goes_back_to_the_app_with_access_denied(
    browser: Chromium, server: HttpServer, api: FakeModelGates, app: AppListener
) -> None:
    browser.open(sign_in_url(server, app))
    browser.wait_for_url(public(server) + "/authorize")
    browser.click('button[value="deny"]')  # the form's answer goes to the app: form-action must allow it
    browser.wait_for_url(app.redirect_uri)
    (back,) = app.received
    assert back["error"] == "access_denied" and back["iss"] == public(server) and back["state"].startswith("st-")
    assert reached(api) == []
    assert browser.csp_violations() == []


def test_the_consent_page_blocks_framing_scripts_and_outside_loads(
    browser: Chromium, server: HttpServer, api: FakeModelGates, app: AppListener
) -> None:
    url = sign_in_url(server, app)
    # Framed by another site: refused by frame-ancestors (and X-Frame-Options).
    app.pages["/frame"] = f'<!doctype html><iframe id="f" src="{html.escape(url)}"></iframe>'
    browser.open(app.origin + "/frame")
    browser.wait_for(lambda: any("frame-ancestors" in v for v in browser.csp_violations()), "a frame-ancestors refusal")
    browser.fresh()
    # On the page itself, anything that is not its own inline style is refused: a script, an
    # image from elsewhere, a form to another site.
    browser.open(url)
    browser.wait_for_url(public(server) + "/authorize")
    browser.driver.execute_script(
        """
        const img = document.createElement('img'); img.src = arguments[0] + '/pixel.png'; document.body.append(img);
        const s = document.createElement('script'); s.textContent = 'document.title = "ran"'; document.body.append(s);
        """,
        api.origin,
    )
    browser.wait_for(lambda: len(browser.csp_violations()) >= 2, "two CSP refusals")
    assert browser.driver.title != "ran"
    assert reached(api) == []  # the image was never requested
    refused = " ".join(browser.csp_violations())
    assert "img-src" in refused or "default-src" in refused
    assert "script-src" in refused or "default-src" in refused


def test_a_consent_form_posted_from_another_site_is_refused(
    browser: Chromium, server: HttpServer, api: FakeModelGates, app: AppListener
) -> None:
    """A hostile page with a copy of the consent form (even its sealed request): the browser sends
    no Strict consent cookie from another site, and the server refuses the cross-site POST."""
    url = sign_in_url(server, app)
    browser.open(url)
    browser.wait_for_url(public(server) + "/authorize")
    sealed = browser.driver.find_element("css selector", 'input[name="request"]').get_attribute("value")
    app.pages["/attack"] = (
        f'<!doctype html><form method="post" action="{public(server)}/consent">'
        f'<input type="hidden" name="request" value="{html.escape(sealed)}">'
        '<button id="go" type="submit" name="action" value="approve">Win a prize</button></form>'
    )
    browser.open(app.origin + "/attack")
    browser.click("#go")
    browser.wait_for_url(public(server) + "/consent")
    # Refused for its origin, the first check (the browser sent no Strict cookie either).
    assert "This form can only be sent from this server's own consent page." in browser.text()
    assert reached(api) == [] and app.received == []


def test_the_callback_in_a_browser_without_the_sign_in_cookie_exchanges_nothing(
    browser: Chromium, server: HttpServer, api: FakeModelGates, app: AppListener
) -> None:
    approve_on_consent_page(browser, server, sign_in_url(server, app))
    browser.wait_for_url(api.origin + "/auth?")
    browser.fresh()  # the return arrives in a browser that did not consent (no cookies)
    browser.click("#approve")
    browser.wait_for_url(public(server) + "/oauth/callback")
    assert "Sign-in not completed" in browser.text()
    assert reached(api) == ["/auth", "/auth/approve"]  # no exchange
    assert app.received == []


# ---------------------------------------------------------------- connect_account's loopback flow


async def test_connect_account_in_chromium_reaches_its_connected_page(
    browser: Chromium, api: FakeModelGates, tmp_path: Path
) -> None:
    """The in-memory server on the 2025-11-25 handshake asks for the URL; Chromium opens it,
    approves on ModelGates' page and comes back to the one-time listener on 127.0.0.1."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    settings = Settings(
        api_key=SecretStr(API_KEY), base_url=api.base_url, timeout=10.0, connect_timeout=5.0, workspace=str(workspace)
    )
    pages: list[str] = []

    def in_the_browser(url: str) -> None:
        browser.open(url)
        approve_on_modelgates(browser, api)
        browser.wait_for_url("http://127.0.0.1:")
        browser.wait_for(lambda: "Connected" in browser.text(), "the Connected page")
        pages.append(browser.text())
        browser.screenshot("connect-account-connected.png")

    async def accept(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        tg.start_soon(anyio.to_thread.run_sync, in_the_browser, params.url)
        return types.ElicitResult(action="accept")

    async with (
        anyio.create_task_group() as tg,
        Client(build_server(settings), mode="legacy", elicitation_callback=accept) as client,
    ):
        result = await client.call_tool("connect_account", {})

    assert result.structured_content is not None and result.structured_content["status"] == "connected", result
    (page,) = pages
    assert "Connected; you can close this tab." in page
    (minted,) = api.minted
    assert (workspace / ".env").read_text() == f"MODELGATES_API_KEY={minted}\n"
    assert minted not in page
    assert browser.csp_violations() == []


def test_the_harness_reports_a_csp_violation_when_a_page_blocks_something(browser: Chromium, app: AppListener) -> None:
    """The checks above read `csp_violations()`: it must report one when a page's policy blocks."""
    app.pages["/strict"] = (
        '<!doctype html><meta http-equiv="Content-Security-Policy" content="img-src \'none\'">'
        f'<img src="{app.origin}/x.png">'
    )
    browser.open(app.origin + "/strict")
    browser.wait_for(lambda: bool(browser.csp_violations()), "a reported violation")
