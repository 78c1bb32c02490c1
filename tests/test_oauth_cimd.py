"""Client ID Metadata Documents: a client whose `client_id` is the https URL of its metadata document.

The documents are served over TLS by a test server on 127.0.0.1 (a certificate for `client.example`
from a CA made here). The server reaches it only through the seam in code that tests have: an
in-process `OAuthServer` built with `ClientDocuments(resolver=..., allow=..., verify=...)`, a name
mapped to 127.0.0.1, an address policy that lets loopback through, and the test CA. Everything
else uses the defaults a deployment has: the refusals of loopback, private, link-local and other
non-public addresses are shown with the default policy, before any connection is made.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from mcp_modelgates import __version__, http_app
from mcp_modelgates.client import ModelGatesClient
from mcp_modelgates.config import ConfigError, load_settings
from mcp_modelgates.oauth.client_documents import (
    FETCH_TIMEOUT,
    MAX_DOCUMENT_BYTES,
    ClientDocumentError,
    ClientDocuments,
    document_url_problem,
    is_public_address,
)
from mcp_modelgates.oauth.routes import OAuthServer
from mcp_modelgates.server import build_server
from tests import test_http
from tests.browser import Browser, Page
from tests.fake_api import FakeModelGates, s256
from tests.test_http import free_port
from tests.test_oauth import CALLBACK, SECRET, MemoryStorage, redirect_uri

pytestmark = pytest.mark.anyio

api = test_http.api
_fresh_stand_in = test_http._fresh_stand_in
NAME = "client.example"


# ---------------------------------------------------------------- a TLS document server on loopback


def _certificates() -> tuple[bytes, bytes, bytes]:
    """A CA, and a certificate it signed for client.example (and its key), as PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-modelgates test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class DocumentServer:
    """Serves `routes` (path -> handler) over TLS on 127.0.0.1; records each request and SNI name."""

    ca_pem: bytes
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    sni: list[str | None] = field(default_factory=list)
    port: int = 0

    def url(self, path: str, host: str = NAME) -> str:
        return f"https://{host}:{self.port}{path}"

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def serve(self, path: str, status: int = 200, body: Any = None, **headers: str) -> str:
        def route(handler: BaseHTTPRequestHandler) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            handler.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

        self.routes[path] = route
        return self.url(path)

    def document(self, path: str, **fields: Any) -> str:
        """A valid document at `path` (its client_id its own URL), with `fields` over the defaults."""
        url = self.url(path)
        body = {
            "client_id": url,
            "client_name": "Doc Client",
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
            **fields,
        }
        return self.serve(path, body={k: v for k, v in body.items() if v is not None})


@contextlib.contextmanager
def document_server() -> Iterator[DocumentServer]:
    ca_pem, leaf_pem, key_pem = _certificates()
    docs = DocumentServer(ca_pem)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            docs.requests.append((self.path, self.headers.get("host", "")))
            route = docs.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            with contextlib.suppress(OSError):  # a client that gave up
                route(self)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with contextlib.ExitStack() as stack:
        import tempfile

        folder = stack.enter_context(tempfile.TemporaryDirectory())
        with open(f"{folder}/cert.pem", "wb") as cert, open(f"{folder}/key.pem", "wb") as key:
            cert.write(leaf_pem)
            key.write(key_pem)
        context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")
    context.sni_callback = lambda sock, name, ctx: docs.sni.append(name)  # type: ignore[assignment, misc]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    docs.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield docs
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def docs() -> Iterator[DocumentServer]:
    with document_server() as server:
        yield server


def loopback_resolver(names: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise OSError(f"no such test name {host}")
        return names[host]

    return resolve


def allow_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_loopback or is_public_address(address)


def seam(docs: DocumentServer, **names: list[str]) -> ClientDocuments:
    """The test seam: `client.example` (and `names`) on loopback, loopback allowed, the test CA."""
    return ClientDocuments(
        resolver=loopback_resolver({NAME: ["127.0.0.1"], **names}), allow=allow_loopback, verify=docs.trust()
    )


def default_policy(docs: DocumentServer, **names: list[str]) -> ClientDocuments:
    """What a deployment has (the default address policy), with names resolved without any lookup."""
    return ClientDocuments(resolver=loopback_resolver({NAME: ["127.0.0.1"], **names}), verify=docs.trust())


async def refusal(documents: ClientDocuments, url: str) -> str:
    try:
        with pytest.raises(ClientDocumentError) as info:
            await documents.fetch(url)
    finally:
        await documents.aclose()
    return str(info.value)


# ---------------------------------------------------------------- the fetch


async def test_a_document_is_fetched_from_the_checked_address_with_the_names_sni_and_host(
    docs: DocumentServer,
) -> None:
    url = docs.document("/good.json")
    documents = seam(docs)
    try:
        before = len(docs.requests)
        first = await documents.fetch(url)
        again = await documents.fetch(url)
    finally:
        await documents.aclose()
    assert first == again and first["client_id"] == url and first["client_name"] == "Doc Client"
    assert docs.requests[before:] == [("/good.json", f"{NAME}:{docs.port}")]  # once: cached after
    assert docs.sni[-1] == NAME  # verified for the name, though connected to 127.0.0.1


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "IPv6 loopback"),
        ("10.0.0.7", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "unique local"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1", "IPv6 link-local"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "IPv6 unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "IPv6 multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.10", "documentation"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.1.2.3", "IPv4-mapped private"),
        ("2002:7f00:1::1", "6to4 of loopback"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo of private"),
        ("64:ff9b::a00:1", "NAT64 of private"),
        ("fec0::1", "site-local"),
    ],
)
async def test_a_name_resolving_to_a_non_public_address_is_refused_before_any_connection(
    docs: DocumentServer, address: str, what: str
) -> None:
    before = len(docs.requests)
    reason = await refusal(default_policy(docs, **{"evil.example": [address]}), docs.url("/x.json", "evil.example"))
    assert "non-public address" in reason and str(ipaddress.ip_address(address)) in reason, (what, reason)
    assert len(docs.requests) == before
    assert not is_public_address(ipaddress.ip_address(address)), what


def test_public_addresses_pass_the_policy() -> None:
    for public in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert is_public_address(ipaddress.ip_address(public)), public


async def test_loopback_private_and_link_local_urls_are_refused_with_the_default_policy(
    docs: DocumentServer,
) -> None:
    """The real resolver on address literals (no lookup leaves the machine), and names."""
    before = len(docs.requests)
    for url in (
        f"https://127.0.0.1:{docs.port}/client.json",
        f"https://[::1]:{docs.port}/client.json",
        f"https://[::ffff:127.0.0.1]:{docs.port}/client.json",
        "https://10.0.0.1/client.json",
        "https://169.254.169.254/latest/meta-data.json",
    ):
        reason = await refusal(ClientDocuments(verify=docs.trust()), url)
        assert "non-public address" in reason, (url, reason)
    # The document server's own name maps to 127.0.0.1: refused as well, though it would answer.
    assert "non-public" in await refusal(default_policy(docs), docs.document("/fine.json"))
    # A name with one public and one loopback address: the loopback one is enough to refuse.
    mixed = default_policy(docs, **{"mixed.example": ["8.8.8.8", "127.0.0.1"]})
    assert "127.0.0.1" in await refusal(mixed, docs.url("/x.json", "mixed.example"))
    assert len(docs.requests) == before


async def test_a_redirect_is_not_followed(docs: DocumentServer) -> None:
    target = docs.document("/target.json")
    url = docs.serve("/moved.json", 302, b"", Location=target)
    before = len(docs.requests)
    reason = await refusal(seam(docs), url)
    assert "redirect" in reason and "302" in reason
    assert [path for path, _ in docs.requests[before:]] == ["/moved.json"]  # the target was never asked


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"client_id": "https://other.example/client.json"}, "client_id is not the URL"),
        ({"client_id": None}, "client_id is not the URL"),
    ],
)
async def test_a_document_naming_another_client_id_is_refused(
    docs: DocumentServer, fields: dict[str, Any], expected: str
) -> None:
    url = docs.url("/mismatch.json")
    docs.serve("/mismatch.json", body={"redirect_uris": [CALLBACK], **{k: v for k, v in fields.items() if v}})
    assert expected in await refusal(seam(docs), url)


async def test_an_oversize_document_is_refused_whether_or_not_it_says_its_length(docs: DocumentServer) -> None:
    big = {"client_id": docs.url("/big.json"), "redirect_uris": [CALLBACK], "pad": "x" * MAX_DOCUMENT_BYTES}
    docs.serve("/big.json", body=big)
    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in await refusal(seam(docs), docs.url("/big.json"))

    def chunked(handler: BaseHTTPRequestHandler) -> None:  # no Content-Length: counted as it arrives
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(8):
            chunk = b"x" * 1024
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    docs.routes["/chunked.json"] = chunked
    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in await refusal(seam(docs), docs.url("/chunked.json"))


async def test_a_slow_document_is_given_up_on_after_the_timeout(docs: DocumentServer) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(40):  # a byte each 0.25 s: 10 s for the whole, twice the timeout
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.25)

    docs.routes["/slow.json"] = trickle
    started = time.monotonic()
    reason = await refusal(seam(docs), docs.url("/slow.json"))
    elapsed = time.monotonic() - started
    assert "did not arrive within" in reason
    assert FETCH_TIMEOUT - 0.5 < elapsed < FETCH_TIMEOUT + 4, elapsed  # the whole fetch, not each read


async def test_a_certificate_for_another_name_is_refused(docs: DocumentServer) -> None:
    """`other.example` maps to the same server, whose certificate names only client.example."""
    reason = await refusal(seam(docs, **{"other.example": ["127.0.0.1"]}), docs.url("/good.json", "other.example"))
    assert "could not be fetched" in reason and "CERTIFICATE_VERIFY_FAILED" in reason.upper().replace(" ", "_")


@pytest.mark.parametrize(
    "url",
    [
        "http://client.example/client.json",
        "https://client.example",
        "https://client.example/",
        "https://client.example/client.json?v=1",
        "https://client.example/client.json#top",
        "https://user:pw@client.example/client.json",
        "https://client.example/a/../client.json",
        "https://client.example/./client.json",
        "https://client.example/" + "x" * 600,
        "https://client.example/cli ent.json",
        "https://client.example/é.json",
    ],
)
async def test_client_id_urls_that_are_not_allowed(url: str) -> None:
    assert document_url_problem(url) is not None
    documents = ClientDocuments(resolver=loopback_resolver({}))  # never reached
    assert await refusal(documents, url) == document_url_problem(url)


async def test_failures_are_cached_briefly_too(docs: DocumentServer) -> None:
    docs.serve("/flaky.json", 500, {"error": "boom"})
    documents = seam(docs)
    try:
        before = len(docs.requests)
        for _ in range(3):
            with pytest.raises(ClientDocumentError, match="HTTP 500"):
                await documents.fetch(docs.url("/flaky.json"))
        assert len(docs.requests) == before + 1
    finally:
        await documents.aclose()


# ---------------------------------------------------------------- the server: sign-in with a document


def _get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, **{"timeout": 30, **kwargs})


def _post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, **{"timeout": 30, **kwargs})


@dataclass
class InProcess:
    origin: str
    oauth: OAuthServer


@contextlib.asynccontextmanager
async def served(api: FakeModelGates, documents: ClientDocuments, **extra: str) -> AsyncIterator[InProcess]:
    """OAuth mode built in this process with the documents seam, served by uvicorn in a thread."""
    port = free_port()
    env = {
        **extra,
        "MODELGATES_AUTH": "oauth",
        "MODELGATES_PUBLIC_URL": f"http://localhost:{port}",
        "MODELGATES_OAUTH_SECRET": SECRET,
        "MODELGATES_BASE_URL": api.base_url,
        "MODELGATES_MAX_RETRIES": "0",
    }
    settings = load_settings(["--transport", "http"], env)
    oauth = OAuthServer(settings, ModelGatesClient(settings, f"test/{__version__}"), documents=documents)
    app = http_app.ModelGatesHttpApp(settings, build_server(settings), oauth)
    server = uvicorn.Server(http_app.uvicorn_config(app, "127.0.0.1", port, 64))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            await anyio.sleep(0.05)
        yield InProcess(f"http://localhost:{port}", oauth)
    finally:
        server.should_exit = True
        thread.join(30)


async def test_a_client_with_a_metadata_document_url_signs_in_and_calls(
    docs: DocumentServer, api: FakeModelGates
) -> None:
    callback = redirect_uri()
    url = docs.document("/sdk-client.json", client_name="Document SDK client", redirect_uris=[callback])
    async with served(api, seam(docs)) as server:
        meta = _get(server.origin + "/.well-known/oauth-authorization-server", timeout=30).json()
        assert meta["client_id_metadata_document_supported"] is True
        browser = Browser(stop_at=lambda u: u.startswith(callback))
        finals: list[Page] = []

        async def redirect_handler(authorization_url: str) -> None:
            assert parse(authorization_url)["client_id"] == url  # the SDK client used its URL as its id
            consent = await browser.get(authorization_url)
            assert consent.status == 200, consent.text
            assert "Document SDK client" in consent.text and f"{NAME}:{docs.port}" in consent.text
            finals.append(await browser.submit(consent, "action", "approve"))

        async def callback_handler() -> AuthorizationCodeResult:
            final = finals[-1]
            return AuthorizationCodeResult(
                code=final.query["code"], state=final.query.get("state"), iss=final.query["iss"]
            )

        provider = OAuthClientProvider(
            server_url=server.origin + "/mcp",
            client_metadata=OAuthClientMetadata(redirect_uris=[callback], token_endpoint_auth_method="none"),  # type: ignore[list-item]
            storage=MemoryStorage(),
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
            client_metadata_url=url,
        )
        seen: list[str] = []

        async def keep(response: httpx2.Response) -> None:
            seen.append(response.request.url.path)

        async with (
            httpx2.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [keep]}) as http,
            Client(streamable_http_client(server.origin + "/mcp", http_client=http), mode="legacy") as client,  # type: ignore[arg-type]
        ):
            created = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})
        await browser.aclose()
    assert created.is_error is False, created
    assert "/register" not in seen and "/token" in seen  # no dynamic registration at all
    (minted,) = api.minted
    calls = [r for r in api.requests if r.path == "/api/v1/auth/keys/code"]
    assert [r.headers.get("authorization") for r in calls] == [f"Bearer {minted}"]
    assert [p for p, _ in docs.requests].count("/sdk-client.json") == 1  # /authorize and /token: one fetch


def parse(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(urlsplit(url).query))


def authorize(origin: str, client_id: str, redirect: str, **extra: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "state": "st-doc",
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
        **extra,
    }
    return f"{origin}/authorize?{urlencode(query)}"


async def test_authorize_says_why_a_document_cannot_be_used_and_never_redirects(
    docs: DocumentServer, api: FakeModelGates
) -> None:
    mismatch = docs.url("/wrong-id.json")
    docs.serve("/wrong-id.json", body={"client_id": docs.url("/other.json"), "redirect_uris": [CALLBACK]})
    cases = {
        mismatch: "client_id is not the URL",
        docs.document("/secret.json", client_secret="s3cr3t-" + "x" * 20): "must not hold a client secret",
        docs.document("/basic.json", token_endpoint_auth_method="client_secret_basic"): "use none",
        docs.document("/js.json", redirect_uris=["javascript:alert(1)"]): "redirect URIs must be https",
        docs.document("/http.json", redirect_uris=["http://evil.example/cb"]): "loopback host",
        docs.document("/implicit.json", response_types=["token"]): "response_types",
        docs.document("/grants.json", grant_types=["client_credentials"]): "grant_types",
    }
    async with served(api, seam(docs)) as server:
        for client_id, reason in cases.items():
            page = _get(authorize(server.origin, client_id, CALLBACK), timeout=30)
            assert page.status_code == 400 and "location" not in page.headers, client_id
            assert "metadata document cannot be used" in page.text and reason in page.text, (client_id, page.text)
    # With the address policy a deployment has, the same server's documents on loopback are refused.
    before = len(docs.requests)
    async with served(api, ClientDocuments(verify=docs.trust())) as server:
        for client_id in (f"https://127.0.0.1:{docs.port}/good.json", f"https://[::1]:{docs.port}/good.json"):
            page = _get(authorize(server.origin, client_id, CALLBACK), timeout=30)
            assert page.status_code == 400 and "non-public address" in page.text, page.text
    assert len(docs.requests) == before
    assert api.requests == []


async def test_a_documents_loopback_redirect_uri_matches_any_port_and_nothing_else(
    docs: DocumentServer, api: FakeModelGates
) -> None:
    url = docs.document("/native.json", redirect_uris=["http://127.0.0.1/callback", "https://app.example/cb"])
    async with served(api, seam(docs)) as server:
        ok = [
            "http://127.0.0.1:49152/callback",  # RFC 8252 section 7.3: any port
            "http://127.0.0.1/callback",
            "https://app.example/cb",
        ]
        for redirect in ok:
            page = _get(authorize(server.origin, url, redirect), timeout=30)
            assert page.status_code == 200, (redirect, page.text)
        refused = [
            "http://127.0.0.1:49152/other",
            "http://localhost:49152/callback",  # another host
            "https://app.example:8443/cb",  # only loopback http gets any port
            "http://127.0.0.1:49152/callback?x=1",
        ]
        for redirect in refused:
            page = _get(authorize(server.origin, url, redirect), timeout=30)
            assert page.status_code == 400 and "location" not in page.headers, redirect


async def test_a_document_client_revokes_its_own_tokens(docs: DocumentServer, api: FakeModelGates) -> None:
    url = docs.document("/revoker.json", redirect_uris=[CALLBACK])
    async with served(api, seam(docs)) as server:
        browser = Browser(stop_at=lambda u: u.startswith(CALLBACK))
        consent = await browser.get(authorize(server.origin, url, CALLBACK))
        final = await browser.submit(consent, "action", "approve")
        await browser.aclose()
        form = {
            "grant_type": "authorization_code",
            "code": final.query["code"],
            "redirect_uri": CALLBACK,
            "client_id": url,
            "code_verifier": "v" * 43,
        }
        tokens = _post(server.origin + "/token", data=form, timeout=30).json()
        headers = {"authorization": f"Bearer {tokens['access_token']}", "accept": "application/json, text/event-stream"}
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        assert _post(server.origin + "/mcp", json=listing, headers=headers, timeout=30).status_code == 200
        revoked = _post(server.origin + "/revoke", data={"token": tokens["refresh_token"], "client_id": url})
        assert revoked.status_code == 200
        assert _post(server.origin + "/mcp", json=listing, headers=headers, timeout=30).status_code == 401


async def test_documents_can_be_turned_off_for_a_server_without_internet_access(
    docs: DocumentServer, api: FakeModelGates
) -> None:
    url = docs.document("/off.json")
    before = len(docs.requests)
    async with served(api, seam(docs), MODELGATES_OAUTH_CLIENT_DOCUMENTS="0") as server:
        meta = _get(server.origin + "/.well-known/oauth-authorization-server").json()
        assert "client_id_metadata_document_supported" not in meta and meta["registration_endpoint"]
        page = _get(authorize(server.origin, url, CALLBACK))
        assert page.status_code == 400 and "MODELGATES_OAUTH_CLIENT_DOCUMENTS=0" in page.text
        token = _post(
            server.origin + "/token", data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": url}
        )
        assert (token.status_code, token.json()["error"]) == (401, "invalid_client")
    assert len(docs.requests) == before  # nothing was fetched


def test_the_documents_setting_is_1_or_0() -> None:
    env = {"MODELGATES_AUTH": "oauth", "MODELGATES_PUBLIC_URL": "http://localhost:1", "MODELGATES_OAUTH_SECRET": SECRET}
    assert load_settings(["--transport", "http"], env).oauth_client_documents is True
    off = load_settings(["--transport", "http"], {**env, "MODELGATES_OAUTH_CLIENT_DOCUMENTS": "0"})
    assert off.oauth_client_documents is False
    with pytest.raises(ConfigError, match="MODELGATES_OAUTH_CLIENT_DOCUMENTS must be 1 or 0"):
        load_settings(["--transport", "http"], {**env, "MODELGATES_OAUTH_CLIENT_DOCUMENTS": "maybe"})
    with pytest.raises(ConfigError, match="MODELGATES_OAUTH_CLIENT_DOCUMENTS is set but MODELGATES_AUTH"):
        load_settings(["--transport", "http"], {"MODELGATES_OAUTH_CLIENT_DOCUMENTS": "0"})
