"""Client ID Metadata Documents: a client's metadata, fetched from the https URL that is its `client_id`.

The 2026-07-28 MCP authorization spec prefers these to dynamic registration: a client names itself
by the URL of a JSON document it publishes, and the authorization server fetches it. That URL is a
stranger's choice, so the fetch is fenced in:

- the URL: https, a host, a path, no user info, query, fragment or dot segments, at most 512 chars;
- the address: the name is resolved once and every address it resolves to must be public (no
  loopback, private, link-local, shared, multicast, unspecified or reserved range, IPv4 or IPv6,
  also inside IPv4-mapped, 6to4, Teredo and NAT64 addresses); the connection goes to that checked
  address, with the name as TLS SNI and `Host`, so a second lookup cannot point it elsewhere;
- the exchange: no proxy from the environment, no redirects, no connection reuse (each connection
  was verified for one name), TLS verified, at most `MAX_DOCUMENT_BYTES`, `FETCH_TIMEOUT` seconds
  for all of it, at most `MAX_FETCHES_AT_ONCE` fetches in flight;
- the document: a JSON object whose `client_id` is exactly the URL. What it may register is the
  provider's rule, the same as for dynamic registration (provider.py).

Documents are cached for `CACHE_SECONDS` (less when their `Cache-Control` says so), failures for
`FAILURE_CACHE_SECONDS`, per process. Tests serve a document from loopback by passing their own
resolver, address policy and TLS trust when they build the server in-process: a seam in code, not a
setting, so no deployment can open this to its own network.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

MAX_URL_CHARS = 512
MAX_DOCUMENT_BYTES = 5 * 1024  # the draft's suggested cap; a document is a few hundred bytes
FETCH_TIMEOUT = 5.0  # seconds for the lookup, the connection and the whole answer
CACHE_SECONDS = 300
FAILURE_CACHE_SECONDS = 10
MAX_CACHED = 512
MAX_FETCHES_AT_ONCE = 8
MAX_ADDRESSES_TRIED = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
AddressPolicy = Callable[[IPAddress], bool]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


class ClientDocumentError(Exception):
    """Why a client's metadata document cannot be used; the message is safe to show the user."""


def document_url_problem(url: str) -> str | None:
    """Why `url` may not serve as a metadata document `client_id`, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"the client_id URL is longer than {MAX_URL_CHARS} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "the client_id URL has spaces or characters that are not printable ASCII"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return "the client_id URL is not a valid URL"
    if parts.scheme != "https" or not host:
        return "a client_id URL must be https with a host"
    if parts.username is not None or parts.password is not None:
        return "a client_id URL must not contain user info"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "a client_id URL must not contain a query or fragment"
    if parts.path in ("", "/"):
        return "a client_id URL must have a path"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return "a client_id URL must not contain . or .. path segments"
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local, shared
    (100.64/10), multicast, unspecified, reserved or documentation, and neither is any IPv4 address
    carried inside it (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        # A connection to an IPv4-mapped or NAT64 address is one to the IPv4 address inside.
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        embedded = address.sixtofour or (address.teredo[1] if address.teredo is not None else None)
        if embedded is not None and not is_public_address(embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve(host: str, port: int) -> list[str]:
    """The addresses a name resolves to (a literal address is its own), through the system resolver."""
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.partition("%")[0])  # a zone index is not part of the address
    except ValueError:
        return None


def _cache_seconds(cache_control: str | None) -> float:
    if cache_control is None:
        return CACHE_SECONDS
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(lowered)
    return min(float(match.group(1)), CACHE_SECONDS) if match else CACHE_SECONDS


class ClientDocuments:
    """Fetches and caches metadata documents. `resolver`, `allow` and `verify` are the test seam
    described above; a server built from settings always uses the defaults."""

    def __init__(
        self,
        *,
        resolver: Resolver = resolve,
        allow: AddressPolicy = is_public_address,
        verify: ssl.SSLContext | None = None,
        user_agent: str = "mcp-modelgates",
    ) -> None:
        self._resolver = resolver
        self._allow = allow
        self._verify: ssl.SSLContext | bool = verify if verify is not None else True
        self._user_agent = user_agent
        self._http: httpx.AsyncClient | None = None
        self._cache: OrderedDict[str, tuple[float, dict[str, Any] | str]] = OrderedDict()
        self._in_flight = 0

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=self._verify,
                trust_env=False,  # no proxy: the connection goes to the address checked here
                follow_redirects=False,
                timeout=httpx.Timeout(FETCH_TIMEOUT),
                # No reuse: a pooled connection to an address was verified for one name only.
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._http

    async def fetch(self, url: str) -> dict[str, Any]:
        """The document at `url`, a JSON object naming `url` as its `client_id`; `ClientDocumentError`
        otherwise."""
        problem = document_url_problem(url)
        if problem is not None:
            raise ClientDocumentError(problem)
        cached = self._cache.get(url)
        if cached is not None and cached[0] > time.monotonic():
            if isinstance(cached[1], str):
                raise ClientDocumentError(cached[1])
            return cached[1]
        if self._in_flight >= MAX_FETCHES_AT_ONCE:
            raise ClientDocumentError("too many client metadata documents are being fetched; try again")
        self._in_flight += 1
        try:
            with anyio.fail_after(FETCH_TIMEOUT):
                document, seconds = await self._fetch(url)
        except ClientDocumentError as exc:
            self._remember(url, str(exc), FAILURE_CACHE_SECONDS)
            raise
        except TimeoutError:
            reason = f"the client metadata document did not arrive within {FETCH_TIMEOUT:g} seconds"
            self._remember(url, reason, FAILURE_CACHE_SECONDS)
            raise ClientDocumentError(reason) from None
        finally:
            self._in_flight -= 1
        self._remember(url, document, seconds)
        return document

    def _remember(self, url: str, outcome: dict[str, Any] | str, seconds: float) -> None:
        if seconds <= 0:
            self._cache.pop(url, None)
            return
        self._cache[url] = (time.monotonic() + seconds, outcome)
        self._cache.move_to_end(url)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    async def _fetch(self, url: str) -> tuple[dict[str, Any], float]:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        try:
            found = await self._resolver(host, port)
        except OSError as exc:
            raise ClientDocumentError(f"the client_id host {host} does not resolve ({exc.strerror or exc})") from None
        addresses = [_address(text) for text in found]
        if not addresses:
            raise ClientDocumentError(f"the client_id host {host} does not resolve")
        refused = [str(a) if a is not None else "?" for a in addresses if a is None or not self._allow(a)]
        if refused:
            # Any one is enough: the name's owner decides which address a later lookup returns.
            raise ClientDocumentError(f"the client_id host {host} resolves to a non-public address ({refused[0]})")
        host_header = parts.netloc.rpartition("@")[2]
        last: Exception | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            assert address is not None
            literal = f"[{address}]" if address.version == 6 else str(address)
            try:
                return await self._get(url, f"https://{literal}:{port}{parts.path}", host, host_header)
            except httpx.ConnectError as exc:
                last = exc  # the next address, if there is one
            except (httpx.HTTPError, ssl.SSLError) as exc:
                raise ClientDocumentError(f"the client metadata document could not be fetched ({_why(exc)})") from None
        raise ClientDocumentError(f"the client metadata document could not be fetched ({_why(last)})")

    async def _get(self, url: str, target: str, host: str, host_header: str) -> tuple[dict[str, Any], float]:
        headers = {
            "Host": host_header,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "Connection": "close",
            "User-Agent": self._user_agent,
        }
        async with self._client().stream("GET", target, headers=headers, extensions={"sni_hostname": host}) as answer:
            if answer.is_redirect or 300 <= answer.status_code < 400:
                raise ClientDocumentError(
                    f"the client metadata document answered with a redirect (HTTP {answer.status_code}), "
                    "which is not followed"
                )
            if answer.status_code != 200:
                raise ClientDocumentError(f"the client metadata document answered HTTP {answer.status_code}")
            length = answer.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_DOCUMENT_BYTES):
                raise ClientDocumentError(f"the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes")
            body = bytearray()
            async for chunk in answer.aiter_raw():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ClientDocumentError(f"the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes")
            cache_control = answer.headers.get("cache-control")
        try:
            document = json.loads(bytes(body))
        except ValueError:
            raise ClientDocumentError("the client metadata document is not JSON") from None
        if not isinstance(document, dict):
            raise ClientDocumentError("the client metadata document is not a JSON object")
        if document.get("client_id") != url:  # exactly: the URL names the client
            raise ClientDocumentError("the client metadata document's client_id is not the URL it was fetched from")
        return document, _cache_seconds(cache_control)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no address answered"
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
