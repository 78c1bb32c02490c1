"""The HTTP side: one shared httpx client, auth, timeouts, safe retries and error mapping.

`ModelGatesClient.call` sends one operation's body and returns the parsed response model, or
raises `ApiError` whose message is safe to show (status, the API's own message, one hint, and
never the configured key). Retries follow the contract's caveat: a request that may have
reached ModelGates is re-sent only when the operation is `resend_safe` (never an exchange,
whose code is single-use).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from pydantic import SecretStr, ValidationError

from mcp_modelgates.config import Settings, caller_identity, caller_key
from mcp_modelgates.models import Operation, RequestModel, ResponseModel

if TYPE_CHECKING:
    # Imported where first used instead: start-up up to the first tools/list does not need httpx.
    import httpx

logger = logging.getLogger("mcp_modelgates")

MAX_BODY_BYTES = 1 << 20  # a success body larger than this is refused, not buffered
ERROR_BODY_BYTES = 8 << 10  # enough of an error body for its message or an excerpt
# Content codings decoded here (zlib's window bits for each); any other is refused, since br and
# zstd would each need a package of their own, and ModelGates is asked for `identity` anyway.
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
MAX_CODINGS = 3  # layers of Content-Encoding; one is usual, more is a bomb's signature
_CODING_NAME = re.compile(r"[a-z0-9._+-]{1,32}")
EXCERPT_CHARS = 200
RETRY_WAIT_CAP = 10.0  # seconds; the most one Retry-After or backoff wait may take
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Connections to ModelGates, all callers together: room for four callers at their cap at once,
# far below a process's file descriptor limit. A call that finds all of them busy waits up to
# MODELGATES_CONNECT_TIMEOUT, then fails as local overload.
MAX_CONNECTIONS = 256
# Kept open while idle, for 5 s: httpx's default. httpcore checks every idle connection (a socket
# poll each) whenever a request joins or leaves the pool, so a larger idle set makes every call of a
# burst pay for it: with 64 kept, 64 calls in flight over HTTP took about 3x as long until the surplus
# expired; reconnecting the few a burst needs beyond these costs less (benchmarks/bench.py).
MAX_IDLE_CONNECTIONS = 20
# Calls one caller (one credential: a caller's own key, or the server's token or key) may have
# waiting on ModelGates at once. Past it a call fails at once instead of queueing, so that one
# caller's burst cannot take the pool from the others. 64 in flight is far beyond what one MCP
# client does, and exactly what the benchmark and tests/test_robustness.py send.
CALLER_IN_FLIGHT = 64

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
# ASCII digits only: str.isdigit() also accepts "²", which float() refuses.
_SECONDS = re.compile(r"[0-9]+")

RESTART = "Start the flow again: generate_pkce, then create_auth_code or the authorization URL, then exchange."
_HINTS: Mapping[tuple[str, int], str] = {
    ("/auth/keys/code", 400): "Check the arguments against the tool's input schema.",
    ("/auth/keys/code", 401): "Check MODELGATES_API_KEY: it is missing, revoked or not a ModelGates key.",
    ("/auth/keys/code", 403): "The key in MODELGATES_API_KEY may not be allowed to create authorization codes.",
    ("/auth/keys", 400): (
        "code_challenge_method must be the method used when the code was created (S256 unless plain was asked for)."
    ),
    ("/auth/keys", 401): "Check MODELGATES_API_KEY, or unset it: exchange works without a key.",
    ("/auth/keys", 403): (
        "The code is invalid, expired (codes last 10 minutes) or already used, or the code_verifier "
        "does not belong to the challenge it was created with. " + RESTART
    ),
    ("/auth/keys", 404): "The code is unknown. " + RESTART,
}
SIGN_IN_AGAIN = (
    "Sign in to this server again (in Claude Code: /mcp, then Authenticate); that creates a new ModelGates key."
)
_SIGNED_OUT = "ModelGates refused the key your sign-in created (revoked or deleted there?). " + SIGN_IN_AGAIN
_MAYBE_CONSUMED = "The request may have reached ModelGates, so the code may already be used. " + RESTART


class ApiError(Exception):
    """A call that failed; `str(err)` is for the MCP client and holds no secret."""


class _TooLarge(Exception):
    pass


class _Undecodable(Exception):
    """A body in a content coding not decoded here, or whose coding is corrupt; `str()` says which."""


class _BoundedBody:
    """A response body read under a byte cap, its content codings decoded as it streams in.

    Every layer counts against the cap on its own: the bytes on the wire and each decoded layer,
    so a small compressed answer cannot inflate past it (a nested gzip bomb stops at the cap
    too), and each `decompress` call is told how much it may produce rather than checked after.
    """

    def __init__(self, content_encoding: str, cap: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        unknown = [c for c in codings if c not in _WBITS]
        self._problem: str | None = None  # raised at the first byte, so an empty body stays an empty body
        if unknown:
            # Quoted only whole and only when it looks like a coding name: a cut could leave half a secret.
            name = repr(unknown[0]) if _CODING_NAME.fullmatch(unknown[0]) else "an unknown name"
            self._problem = f"a content coding this server does not decode ({name})"
        elif len(codings) > MAX_CODINGS:
            self._problem = f"{len(codings)} layers of content coding (at most {MAX_CODINGS} are decoded)"
        self._cap = cap
        # Codings are listed in the order they were applied: decode from the last one.
        self._codings = [] if self._problem else codings[::-1]
        self._layers = [zlib.decompressobj(_WBITS[c]) for c in self._codings]
        self._started = [False] * len(self._layers)
        self._sizes = [0] * (len(self._layers) + 1)  # the wire first, then each decoded layer
        self.body = bytearray()
        self.over = False  # a layer went past the cap; what is in `body` is its first `cap` bytes

    def feed(self, data: bytes) -> None:
        if self._problem is not None:
            raise _Undecodable(self._problem)
        self._sizes[0] += len(data)
        if self._sizes[0] > self._cap:
            self.over = True
            data = data[: max(0, self._cap - self._sizes[0] + len(data))]
        for i, layer in enumerate(self._layers):
            room = self._cap + 1 - self._sizes[i + 1]
            data = self._inflate(i, layer, data, room)
            self._sizes[i + 1] += len(data)
            if self._sizes[i + 1] > self._cap:
                self.over = True
        self.body += data[: self._cap + 1 - len(self.body)]

    def _inflate(self, i: int, layer: zlib._Decompress, data: bytes, room: int) -> bytes:
        if not data or room <= 0:
            return b""
        try:
            out: bytes = layer.decompress(data, room)
        except zlib.error:
            if self._codings[i] != "deflate" or self._started[i]:
                raise _Undecodable(f"a {self._codings[i]} coding that could not be decoded") from None
            # "deflate" is meant to be zlib-wrapped, but some servers send a raw deflate stream.
            self._layers[i] = layer = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                out = layer.decompress(data, room)
            except zlib.error:
                raise _Undecodable("a deflate coding that could not be decoded") from None
        self._started[i] = True
        return out


def _same(text: str) -> str:
    return text


def excerpt(raw: bytes | str, limit: int = EXCERPT_CHARS, redact: Callable[[str], str] = _same) -> str:
    """A short, printable, single-line excerpt of an upstream body (no control or ANSI sequences).

    `redact` runs before cleaning, so that the cut cannot leave half a secret behind, and again
    after, because removing an escape sequence can join the pieces of one.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    # Not only C0/C1 controls: bidi overrides, zero-width and unassigned code points go too.
    text = "".join(ch if ch.isprintable() else " " for ch in _ANSI.sub("", redact(text)))
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _api_message(raw: bytes, redact: Callable[[str], str]) -> str | None:
    """`error.message (error code N)` from a documented error body, or None for any other shape."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    message = excerpt(error["message"], redact=redact)
    code = error.get("code")
    return f"{message} (error code {code})" if isinstance(code, int) and not isinstance(code, bool) else message


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)  # a huge value becomes inf, then the cap
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _connect_failure(exc: BaseException, host: str, connect_timeout: float) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return f"Timed out after {connect_timeout:g} s connecting to ModelGates at {host}."
    tls = _tls_failure(exc)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError):
            reason = f"certificate verification failed: {tls.verify_message}"
        else:
            reason = str(tls.reason or type(tls).__name__)
        return (
            f"The TLS handshake with ModelGates at {host} failed ({excerpt(reason, 120)}); "
            "certificates are always verified."
        )
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror) or "name resolution" in str(seen) or "not known" in str(seen):
            return f"Could not resolve the ModelGates host {host} (DNS lookup failed)."
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return f"Could not connect to ModelGates at {host}: connection refused."
        seen = seen.__cause__ or seen.__context__
    return f"Could not connect to ModelGates at {host}."


_LOCATION = "mcp_modelgates.location"


async def _set_location_aside(response: httpx.Response) -> None:
    """Move Location out of httpx's sight: it parses the header to prepare a redirect even when not
    following one, and a hostile value (a bad port, an invalid IDNA label) raises from deep inside
    that. The value is put back for the error message once the response is ours."""
    location = response.headers.get("location")
    if location is not None:
        del response.headers["location"]
        response.extensions[_LOCATION] = location


class ModelGatesClient:
    """One per server: the httpx client is made on first use (start-up stays lean) and reused."""

    def __init__(self, settings: Settings, user_agent: str, *, backoff_base: float = 0.5) -> None:
        self._settings = settings
        self._backoff_base = backoff_base
        self._http: httpx.AsyncClient | None = None
        self._in_flight: dict[bytes, int] = {}  # calls per caller identity; one event loop, no lock
        self._headers = {
            "Accept": "application/json",
            # Answers are small JSON: compression saves nothing, so ask for none. One compressed
            # anyway is decoded under the size cap rather than refused, so that a proxy that
            # compresses regardless does not break every call.
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        auth = settings.authorization
        self._auth_headers = {**self._headers, "Authorization": auth} if auth else self._headers

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            settings = self._settings
            timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout, pool=settings.connect_timeout)
            # No redirects: the Authorization header must never follow one to another host.
            # TLS verification stays at httpx's default (on); there is no switch to turn it off.
            limits = httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_IDLE_CONNECTIONS, keepalive_expiry=5.0
            )
            self._http = httpx.AsyncClient(
                timeout=timeout,
                limits=limits,
                follow_redirects=False,
                trust_env=False,
                event_hooks={"response": [_set_location_aside]},
            )
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def call(self, op: Operation, request: RequestModel) -> ResponseModel:
        settings = self._settings
        # Per-caller key mode and OAuth mode (HTTP): the key that came with this request (sent by the
        # caller, or sealed in their access token), for this call only.
        key = caller_key() if settings.keys_per_request else None
        if op.requires_key and settings.api_key is None and key is None:
            if settings.oauth:
                raise ApiError("No signed-in ModelGates key came with this request. " + SIGN_IN_AGAIN)
            if settings.key_from_client:
                raise ApiError(
                    "No ModelGates API key came with this request: creating an authorization code needs one. "
                    "This server uses each caller's own key: send it as `Authorization: Bearer <key>` "
                    "(the header of your MCP client's server entry)."
                )
            raise ApiError(
                "MODELGATES_API_KEY is not set: creating an authorization code needs a ModelGates API key. "
                "Set it in the MCP server's environment and restart the server."
            )
        who = caller_identity(settings)
        held = self._in_flight.get(who, 0)
        if held >= CALLER_IN_FLIGHT:
            raise ApiError(
                f"Too many calls at once: this caller already has {held} calls waiting for ModelGates, the most "
                "one caller (one key or token) may have in flight. This call was not sent; send it again once "
                "some have finished."
            )
        self._in_flight[who] = held + 1
        try:
            return await self._call(op, request, key)
        finally:
            if self._in_flight[who] > 1:
                self._in_flight[who] -= 1
            else:
                del self._in_flight[who]

    async def _call(self, op: Operation, request: RequestModel, key: SecretStr | None) -> ResponseModel:
        settings = self._settings
        content = request.model_dump_json().encode()
        headers = self._auth_headers
        if key is not None:
            headers = {**self._headers, "Authorization": f"Bearer {key.get_secret_value()}"}
        url = settings.base_url + op.path
        host = settings.host
        state = {"maybe_sent": False}
        with anyio.move_on_after(settings.timeout) as scope:
            return await self._attempts(op, url, host, content, headers, state)
        if scope.cancelled_caught:
            message = f"ModelGates at {host} did not answer within {settings.timeout:g} s (MODELGATES_TIMEOUT)."
            if state["maybe_sent"] and not op.resend_safe:
                message += " " + _MAYBE_CONSUMED
            raise ApiError(message)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempts(
        self,
        op: Operation,
        url: str,
        host: str,
        content: bytes,
        headers: Mapping[str, str],
        state: dict[str, bool],
    ) -> ResponseModel:
        import httpx

        settings = self._settings
        deadline = time.monotonic() + settings.timeout
        attempt = 0
        while True:
            retry_wait: float | None = None
            failure: str
            try:
                state["maybe_sent"] = True
                status, resp_headers, raw = await self._send(op.method, url, content, headers)
            except httpx.PoolTimeout:
                # Every connection stayed busy: overload here, not a network problem. Not retried,
                # since a retry would only queue again behind the same calls.
                state["maybe_sent"] = False
                failure = (
                    f"This server is overloaded: all {MAX_CONNECTIONS} of its connections to ModelGates stayed busy "
                    f"for {settings.connect_timeout:g} s (MODELGATES_CONNECT_TIMEOUT). The call was not sent; "
                    "try again in a moment."
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The request never left this process: safe to send again for every operation.
                # A certificate that failed verification will fail the same way again, though.
                state["maybe_sent"] = False
                failure = _connect_failure(exc, host, settings.connect_timeout)
                retry_wait = None if _tls_failure(exc) else self._backoff(attempt)
            except httpx.TimeoutException:
                failure = f"ModelGates at {host} did not answer within {settings.timeout:g} s."
                if not op.resend_safe:
                    failure += " " + _MAYBE_CONSUMED
            except (httpx.TransportError, _TooLarge, _Undecodable) as exc:
                if isinstance(exc, _TooLarge):
                    failure = f"ModelGates at {host} sent a response larger than {MAX_BODY_BYTES // 1024} KiB; refused."
                elif isinstance(exc, _Undecodable):
                    failure = f"ModelGates at {host} sent a response in {exc}; refused."
                else:
                    failure = f"The connection to ModelGates at {host} failed mid-request ({type(exc).__name__})."
                if not op.resend_safe:
                    failure += " " + _MAYBE_CONSUMED
            else:
                if 200 <= status < 300:
                    return self._parse(op, status, raw, host)
                failure = self._status_failure(op, status, resp_headers, raw)
                if status in RETRY_STATUSES and op.resend_safe:
                    retry_wait = self._backoff(attempt)
                    advised = _retry_after(resp_headers.get("retry-after"))
                    if advised is not None:
                        retry_wait = min(advised, RETRY_WAIT_CAP)
            if retry_wait is None or attempt >= settings.max_retries:
                if attempt:
                    failure += f" Gave up after {attempt + 1} attempts."
                raise ApiError(settings.redact(failure))
            if time.monotonic() + retry_wait >= deadline:
                raise ApiError(settings.redact(failure + f" No time left to retry within {settings.timeout:g} s."))
            logger.info("%s: retrying in %.2f s: %s", op.path, retry_wait, settings.redact(failure))
            attempt += 1
            await anyio.sleep(retry_wait)

    def _backoff(self, attempt: int) -> float:
        wait: float = min(RETRY_WAIT_CAP, self._backoff_base * 2**attempt)
        return wait * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    async def _send(
        self, method: str, url: str, content: bytes, headers: Mapping[str, str]
    ) -> tuple[int, httpx.Headers, bytes]:
        http = self._client()
        async with http.stream(method, url, content=content, headers=headers) as resp:
            status = resp.status_code
            if _LOCATION in resp.extensions:
                resp.headers["location"] = resp.extensions[_LOCATION]
            ok = 200 <= status < 300
            cap = MAX_BODY_BYTES if ok else ERROR_BODY_BYTES
            length = resp.headers.get("content-length", "")
            if ok and length.isdigit() and int(length) > cap:
                raise _TooLarge
            # Raw bytes, decoded here under the cap: httpx's own decoding (`aiter_bytes`) inflates
            # each chunk whole before anything could count it.
            reader = _BoundedBody(resp.headers.get("content-encoding", ""), cap)
            try:
                async for chunk in resp.aiter_raw():
                    reader.feed(chunk)
                    if reader.over:
                        if ok:
                            raise _TooLarge
                        break  # an excerpt of an error body is all that is needed
            except _Undecodable as exc:
                if ok:
                    raise
                # An error answer keeps its status and what of its body could be decoded.
                if not reader.body:
                    return status, resp.headers, f"(a body in {exc}, not shown)".encode()
            return status, resp.headers, bytes(reader.body[:cap])

    def _status_failure(self, op: Operation, status: int, headers: httpx.Headers, raw: bytes) -> str:
        host = self._settings.host
        if 300 <= status < 400:
            where = _redirect_target(headers.get("location", ""), self._settings.redact)
            return (
                f"ModelGates at {host} answered HTTP {_reason(status)}, a redirect{where}; redirects are not "
                "followed (the API key must not go elsewhere). Check MODELGATES_BASE_URL."
            )
        redact = self._settings.redact
        api_message = _api_message(raw, redact)
        if api_message is not None:
            text = f"ModelGates answered HTTP {_reason(status)}: {api_message}."
        elif raw.strip():
            text = (
                f"ModelGates answered HTTP {_reason(status)} with an unexpected body: {excerpt(raw, redact=redact)!r}."
            )
        else:
            text = f"ModelGates answered HTTP {_reason(status)} with an empty body."
        hint = _HINTS.get((op.path, status))
        if hint is not None and self._settings.oauth:  # the key is the one the user's sign-in created
            hint = _SIGNED_OUT if status == 401 else hint.replace("MODELGATES_API_KEY", "your sign-in")
        elif hint is not None and self._settings.key_from_client:  # the key came with the request, not the server
            hint = hint.replace("MODELGATES_API_KEY", "the key in your Authorization header")
        if hint is None and status == 409:
            hint = "A conflicting request is in progress; try again in a moment."
        if hint is None and status == 429:
            hint = "Too many requests; wait a moment and try again."
        if hint is None and status >= 500:
            hint = "This is a failure on the ModelGates side."
            if not op.resend_safe:
                hint += " " + _MAYBE_CONSUMED
        return f"{text} {hint}" if hint else text

    def _parse(self, op: Operation, status: int, raw: bytes, host: str) -> ResponseModel:
        try:
            return op.response.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if op.secret_response:
                # A success body of this operation may hold a live key: never quote it (errors are logged).
                quoted = f" ({len(raw)} bytes, not quoted: it may hold the new key)"
            else:
                quoted = f": {excerpt(raw, redact=self._settings.redact)!r}"
            if any(e["type"] in ("json_invalid", "json_type") for e in errors) or not raw.strip():
                detail = f"a body that is not JSON{quoted}" if raw.strip() else "an empty body"
            elif any(not e["loc"] for e in errors):
                detail = f"JSON that is not an object{quoted}"
            else:
                detail = "a body that does not match the API contract: " + "; ".join(
                    _field_problem(e) for e in errors[:5]
                )
            raise ApiError(
                self._settings.redact(f"ModelGates at {host} answered HTTP {_reason(status)} with {detail}.")
            ) from None


def _redirect_target(location: str, redact: Callable[[str], str]) -> str:
    """` to <host[:port]>` of a Location header, parsed leniently: a hostile value is only described.

    The key is masked before parsing (which lowercases the host) and before the cut (which could
    leave part of it behind), as `excerpt` does for bodies."""
    location = redact(location)
    try:
        parts = urlsplit(location.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return " to an unparsable location"
    if not host:
        return " to another path on the same host" if location.strip() else ""
    return " to " + excerpt(f"{host}:{port}" if port is not None else host, 100, redact=redact)


def _field_problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"`{where}` is missing"
    return f"`{where}`: {error['msg'].lower()}"
