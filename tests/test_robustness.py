"""Failing upstreams: safe retries, timeouts and one deadline, size caps, redirects, TLS,
malformed answers, many calls in flight, and shutting down with calls in flight.

Everything runs against real sockets on 127.0.0.1: the stand-in, a port that refuses
connections, a listener whose backlog is full (so a connect hangs), a TLS listener with a
self-signed certificate, and a second stand-in that a redirect points to.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_modelgates import client as client_module
from mcp_modelgates.config import ConfigError, Settings, load_settings
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY, ClientFactory, run_stdio, stdio_params
from tests.fake_api import FakeModelGates, Recorded, Reply, error_body

CALLBACK = "https://myapp.com/auth/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
CREATE = ("create_auth_code", {"callback_url": CALLBACK})
EXCHANGE = ("exchange_auth_code", {"code": "auth_code_1", "code_verifier": VERIFIER, "code_challenge_method": "S256"})
BOTH = pytest.mark.parametrize("call", [CREATE, EXCHANGE], ids=["create", "exchange"])
MAYBE_USED = "may already be used"
MIB = 1 << 20


def _text(result: Any) -> str:
    return str(result.content[0].text)


def _retry_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The waits the client logged before each retry (the raw float, not the formatted text)."""
    return [
        float(r.args[1])  # type: ignore[index]
        for r in caplog.records
        if r.name == "mcp_modelgates" and "retrying in" in str(r.msg) and isinstance(r.args, tuple)
    ]


@pytest.fixture
def refused_base_url() -> Iterator[str]:
    """A port that is bound but not listening: every connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"


@pytest.fixture
def hanging_base_url() -> Iterator[str]:
    """A listener whose accept queue is full and never drained: a new connect hangs (SYNs dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            hangs = probe.connect_ex(address) != 0
        except TimeoutError:
            hangs = True
        finally:
            probe.close()
        try:
            if not hangs:
                pytest.skip("this kernel completes connects to a full backlog; no hanging connect available")
            yield f"http://127.0.0.1:{address[1]}/api/v1"
        finally:
            for filler in fillers:
                filler.close()


@asynccontextmanager
async def _session(settings: Settings, backoff_base: float, **overrides: Any) -> AsyncIterator[Client]:
    server = build_server(dataclasses.replace(settings, **overrides), backoff_base=backoff_base)
    async with Client(server, mode="auto") as client:  # type: ignore[arg-type]
        yield client


# ---------------------------------------------------------------- connection errors: retried for both tools


@pytest.mark.anyio
@BOTH
async def test_refused_connections_are_retried_with_exponential_backoff_and_jitter(
    settings: Settings, refused_base_url: str, caplog: pytest.LogCaptureFixture, call: tuple[str, dict[str, Any]]
) -> None:
    base = 0.1
    async with _session(settings, base, base_url=refused_base_url, max_retries=3) as client:
        result = await client.call_tool(*call)
    text = _text(result)
    assert result.is_error is True
    assert "connection refused" in text and "Gave up after 4 attempts" in text
    assert MAYBE_USED not in text  # it never left: the code is certainly unused
    waits = _retry_waits(caplog)
    assert len(waits) == 3
    ratios = [wait / (base * 2**attempt) for attempt, wait in enumerate(waits)]
    assert all(0.5 <= ratio <= 1.0 for ratio in ratios), waits  # doubling, each scaled by a jitter
    assert len({round(r, 6) for r in ratios}) > 1, waits  # the jitter is random, not a constant


@pytest.mark.anyio
async def test_max_retries_defaults_to_two_and_zero_disables(
    refused_base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Settings as a user's environment yields them: MODELGATES_MAX_RETRIES unset, then "0".
    unset = load_settings([], {"MODELGATES_BASE_URL": refused_base_url})
    async with _session(unset, 0.01) as client:
        default = await client.call_tool(*EXCHANGE)
    assert "Gave up after 3 attempts" in _text(default)
    assert len(_retry_waits(caplog)) == 2
    caplog.clear()
    zero = load_settings([], {"MODELGATES_BASE_URL": refused_base_url, "MODELGATES_MAX_RETRIES": "0"})
    async with _session(zero, 0.01) as client:
        disabled = await client.call_tool(*EXCHANGE)
    assert "connection refused" in _text(disabled) and "Gave up" not in _text(disabled)
    assert _retry_waits(caplog) == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@BOTH
async def test_dns_failures_are_retried(
    connect: ClientFactory, monkeypatch: pytest.MonkeyPatch, call: tuple[str, dict[str, Any]]
) -> None:
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)  # anyio passes IDNA bytes
        if name in ("127.0.0.1", "localhost"):
            return real(host, *args, **kwargs)
        lookups.append(name)  # no real lookup leaves this machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with connect(base_url="https://api.modelgates.test/api/v1") as client:
        result = await client.call_tool(*call)
    text = _text(result)
    assert "Could not resolve the ModelGates host api.modelgates.test" in text
    assert "Gave up after 3 attempts" in text and lookups == ["api.modelgates.test"] * 3


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@BOTH
async def test_connect_timeout_is_separate_from_the_overall_timeout_and_retried(
    connect: ClientFactory, hanging_base_url: str, call: tuple[str, dict[str, Any]]
) -> None:
    started = time.monotonic()
    async with connect(base_url=hanging_base_url, connect_timeout=0.2, timeout=10.0, max_retries=1) as client:
        result = await client.call_tool(*call)
    elapsed = time.monotonic() - started
    text = _text(result)
    assert "Timed out after 0.2 s connecting" in text and "Gave up after 2 attempts" in text
    assert elapsed < 6.0  # two 0.2 s connect timeouts, nowhere near the 10 s overall timeout


# ---------------------------------------------------------------- busy answers: create retried, exchange never


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_create_is_retried_on_busy_statuses(fake: FakeModelGates, connect: ClientFactory, status: int) -> None:
    fake.reply(status, error_body(status, "busy"))
    fake.reply(200, {"data": AUTH_CODE})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False and result.structured_content == {"data": AUTH_CODE}
    assert [r.json for r in fake.requests] == [CREATE[1], CREATE[1]]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize("status", [400, 401, 403, 409, 500])
async def test_create_is_not_retried_on_other_statuses(
    fake: FakeModelGates, connect: ClientFactory, status: int
) -> None:
    fake.reply(status, error_body(status, "no"))
    fake.reply(200, {"data": AUTH_CODE})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is True and f"HTTP {status}" in _text(result)
    assert len(fake.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_retry_after_in_seconds_is_honoured(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.reply(503, error_body(503, "busy"), headers={"Retry-After": "1"})
    fake.reply(200, {"data": AUTH_CODE})
    started = time.monotonic()
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False
    assert time.monotonic() - started >= 0.95
    assert _retry_waits(caplog) == [1.0]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_retry_after_as_an_http_date_is_honoured(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.reply(
        429, error_body(429, "slow down"), headers={"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}
    )
    fake.reply(200, {"data": AUTH_CODE})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False
    (wait,) = _retry_waits(caplog)
    assert 0.9 <= wait <= 2.0  # the date has whole seconds


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_each_retry_wait_is_capped(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client_module.RETRY_WAIT_CAP == 10.0
    monkeypatch.setattr(client_module, "RETRY_WAIT_CAP", 0.2)  # the same rule, faster to observe
    fake.reply(503, error_body(503, "busy"), headers={"Retry-After": "3600"})
    fake.reply(503, error_body(503, "busy"), headers={"Retry-After": "999999999999999999999999999"})
    fake.reply(200, {"data": AUTH_CODE})
    async with connect(timeout=5.0) as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False
    assert _retry_waits(caplog) == [0.2, 0.2]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_a_retry_that_would_end_after_the_deadline_is_not_attempted(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    fake.reply(503, error_body(503, "busy"), headers={"Retry-After": "5"})
    async with connect(timeout=1.0) as client:
        started = time.monotonic()
        result = await client.call_tool(*CREATE)
        elapsed = time.monotonic() - started
    assert elapsed < 0.8  # gives up at once rather than sleeping into the deadline
    assert "HTTP 503" in _text(result) and "No time left to retry within 1 s" in _text(result)
    assert len(fake.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize("value", ["²", "soon", "-1", "1.5", "Thu, 01 Jan 99999 00:00:00 GMT", ""])
async def test_unusable_retry_after_values_fall_back_to_backoff(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    fake.reply(503, error_body(503, "busy"), headers={"Retry-After": value})
    fake.reply(200, {"data": AUTH_CODE})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False, _text(result)
    assert len(fake.requests) == 2
    # the first backoff (`connect` uses a 0.01 s base, times a jitter of 0.5-1), not 1.5 s, -1 s or the cap
    (wait,) = _retry_waits(caplog)
    assert 0.005 <= wait <= 0.01, wait


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_one_overall_deadline_covers_every_attempt(fake: FakeModelGates, connect: ClientFactory) -> None:
    for _ in range(20):
        fake.reply(503, error_body(503, "busy"), delay=0.3)
    async with connect(timeout=1.0, max_retries=10) as client:
        started = time.monotonic()
        result = await client.call_tool(*CREATE)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5  # without the deadline: 20 slow answers, 6 s and more
    assert result.is_error is True and "1 s" in _text(result)
    assert 2 <= len(fake.requests) <= 4


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_the_deadline_also_cuts_short_a_retry_already_under_way(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    """Per attempt, the read timeout alone would allow 1 s more: the call as a whole may not."""
    fake.reply(503, error_body(503, "busy"), delay=0.6)
    fake.reply(200, {"data": AUTH_CODE}, delay=5.0)
    async with connect(timeout=1.0) as client:
        started = time.monotonic()
        result = await client.call_tool(*CREATE)
        elapsed = time.monotonic() - started
    assert result.is_error is True and "did not answer within 1 s (MODELGATES_TIMEOUT)" in _text(result)
    assert 0.9 <= elapsed < 2.5 and len(fake.requests) == 2  # the second answer alone would take 5 s


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, {"key": "sk-late", "user_id": None}, delay=1.5),  # read timeout: the code may be used
        Reply(action="reset"),  # reset after the request was sent
        Reply(200, {"key": "sk-cut", "user_id": None}, action="truncate"),
        Reply(200, {"key": "sk-cut", "user_id": None, "pad": "x" * 4000}, action="reset_mid_body"),
        *(Reply(s, error_body(s, "upstream trouble")) for s in (500, 502, 503, 504)),
    ],
    ids=["read-timeout", "reset", "truncated", "reset-mid-body", "500", "502", "503", "504"],
)
async def test_exchange_is_never_resent_once_it_may_have_reached_the_server(
    fake: FakeModelGates, connect: ClientFactory, reply: Reply
) -> None:
    fake.reply(**dataclasses.asdict(reply))
    fake.reply(200, {"key": "sk-second", "user_id": None})  # what a forbidden second attempt would get
    async with connect(timeout=0.8, max_retries=5) as client:
        result = await client.call_tool(*EXCHANGE)
    text = _text(result)
    assert result.is_error is True
    assert MAYBE_USED in text and "Start the flow again" in text
    assert len(fake.requests) == 1 and fake.connections == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_a_slow_answer_does_not_hold_up_other_calls(fake: FakeModelGates, connect: ClientFactory) -> None:
    fake.reply(200, {"key": "sk-slow", "user_id": None}, delay=4.0, path="/auth/keys")
    fast_done: list[float] = []
    async with connect() as client, anyio.create_task_group() as tg:
        started = time.monotonic()
        tg.start_soon(client.call_tool, *EXCHANGE)
        with anyio.fail_after(5):
            while not fake.requests:  # noqa: ASYNC110 - the stand-in runs in another thread
                await anyio.sleep(0.01)
        for _ in range(3):
            result = await client.call_tool(*CREATE)
            assert result.is_error is False
            fast_done.append(time.monotonic() - started)
    assert max(fast_done) < 2.5  # while the slow answer takes 4 s


# ---------------------------------------------------------------- 64 calls in flight over one session


@pytest.mark.anyio
async def test_64_calls_in_flight_each_get_their_own_answer(fake: FakeModelGates, connect: ClientFactory) -> None:
    """Half creates, half exchanges; a quarter slow, some failing, some retried; all concurrent."""
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def handler(rec: Recorded) -> Reply:
        body = rec.json
        if rec.path.endswith("/auth/keys/code"):
            i = int(body["callback_url"].rsplit("/", 1)[1])
            with lock:
                attempts[f"c{i}"] = attempts.get(f"c{i}", 0) + 1
                first = attempts[f"c{i}"] == 1
            if i % 4 == 1 and first:
                return Reply(503, error_body(503, f"busy {i}"))  # retried, then answered
            data = {"id": f"auth_code_{i}", "app_id": i, "created_at": "2025-08-24T10:30:00Z"}
            return Reply(200, {"data": data}, delay=0.5 if i % 4 == 0 else 0.0)
        i = int(body["code"].removeprefix("auth_code_"))
        if i % 4 == 1:
            return Reply(500, error_body(500, f"failure {i}"))
        if i % 4 == 3:
            return Reply(200, [f"not an object {i}"])
        return Reply(200, {"key": f"sk-mg-v1-{i}", "user_id": f"user_{i}"}, delay=0.5 if i % 4 == 0 else 0.0)

    fake.handler = handler
    results: dict[tuple[str, int], Any] = {}

    async def one(tool: str, i: int, client: Client) -> None:
        args = {"callback_url": f"https://app.example/cb/{i}"} if tool == "create" else {"code": f"auth_code_{i}"}
        results[tool, i] = await client.call_tool(f"{tool}_auth_code", args)

    started = time.monotonic()
    async with connect() as client, anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(one, "create", i, client)
            tg.start_soon(one, "exchange", i, client)
    assert time.monotonic() - started < 6.0  # concurrent: 16 slow answers in a row would take 8 s
    assert len(results) == 64
    for (tool, i), result in results.items():
        text = _text(result)
        if tool == "create":
            assert result.is_error is False, text
            assert result.structured_content["data"]["id"] == f"auth_code_{i}"
            assert result.structured_content["data"]["app_id"] == i
        elif i % 4 == 1:
            assert result.is_error is True and f"failure {i}" in text and MAYBE_USED in text
        elif i % 4 == 3:
            assert result.is_error is True and "not an object" in text
        else:
            assert result.structured_content == {"key": f"sk-mg-v1-{i}", "user_id": f"user_{i}"}
            assert f"sk-mg-v1-{i} " in text
    exchanges = [r for r in fake.requests if r.path.endswith("/auth/keys")]
    assert len(exchanges) == 32  # none re-sent
    assert sum(attempts.values()) == 32 + 8  # the eight 503s were retried once each


# ---------------------------------------------------------------- response size cap


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize(
    ("status", "chunked"),
    [(200, False), (200, True), (502, True)],
    ids=["sized-success", "chunked-success", "chunked-error"],
)
async def test_a_20_mb_body_is_refused_and_memory_stays_flat(
    fake: FakeModelGates, connect: ClientFactory, status: int, chunked: bool
) -> None:
    fake.reply(status, action="stream", stream_bytes=20 * 1000 * 1000, chunked=chunked)
    async with connect(max_retries=0) as client:
        tracemalloc.start()
        try:
            started = time.monotonic()
            result = await client.call_tool(*CREATE)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    text = _text(result)
    assert result.is_error is True
    if status == 200:
        assert "larger than 1024 KiB" in text and "refused" in text
    else:
        assert "HTTP 502" in text and len(text) < 600  # a short excerpt of the first bytes only
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB while refusing a 20 MB body"
    assert elapsed < 3.0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_a_declared_length_over_the_cap_is_refused_before_reading_the_body(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    # claims 20 MB, sends 10 bytes and stalls: only the header can end this call early
    fake.reply(200, body=b"x" * 10, headers={"Content-Length": str(20 * 1000 * 1000)})
    async with connect(timeout=3.0) as client:
        started = time.monotonic()
        result = await client.call_tool(*CREATE)
        elapsed = time.monotonic() - started
    assert "larger than 1024 KiB" in _text(result) and elapsed < 2.0  # not the 3 s timeout


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_a_body_just_under_the_cap_is_accepted(fake: FakeModelGates, connect: ClientFactory) -> None:
    body = json.dumps({"data": AUTH_CODE, "padding": "x" * (MIB - 200)}).encode()
    assert len(body) < MIB
    fake.reply(200, body=body, headers={"Content-Type": "application/json"})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False and result.structured_content == {"data": AUTH_CODE}


# ---------------------------------------------------------------- redirects and TLS


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@BOTH
async def test_redirects_are_not_followed_and_the_key_goes_nowhere_else(
    fake: FakeModelGates, connect: ClientFactory, status: int, call: tuple[str, dict[str, Any]]
) -> None:
    with FakeModelGates(api_key=API_KEY) as elsewhere:
        fake.reply(status, body=b"", headers={"Location": elsewhere.base_url + "/auth/keys"})
        async with connect(max_retries=3) as client:
            result = await client.call_tool(*call)
        assert elsewhere.requests == [] and elsewhere.connections == 0
    text = _text(result)
    assert result.is_error is True and f"HTTP {status}" in text
    assert f"a redirect to 127.0.0.1:{elsewhere.port};" in text and "not followed" in text
    assert len(fake.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_hostile_redirect_locations_give_a_clear_error(fake: FakeModelGates, connect: ClientFactory) -> None:
    cases = {
        "http://evil.example:abc/": "an unparsable location",
        "http://[::1/": "an unparsable location",
        "http://xn--zz/": "to xn--zz;",
        "//evil.example/steal": "to evil.example;",
        "/api/v2/auth/keys/code": "another path on the same host",
        "https://user:pw@evil.example:8443/": "to evil.example:8443;",
    }
    async with connect(max_retries=0) as client:
        for location, expected in cases.items():
            fake.reply(302, body=b"", headers={"Location": location})
            text = _text(await client.call_tool(*CREATE))
            assert "HTTP 302 Found, a redirect" in text and expected in text, (location, text)
            assert "pw" not in text and "internal error" not in text


def _openssl() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    return openssl


@pytest.fixture(scope="module")
def self_signed_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    openssl = _openssl()
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def self_signed_dir(self_signed_files: tuple[Path, Path]) -> Path:
    """A CA directory (as SSL_CERT_DIR names one) holding that certificate under its subject hash."""
    cert = self_signed_files[0]
    subject_hash = subprocess.run(
        [_openssl(), "x509", "-hash", "-noout", "-in", str(cert)], check=True, capture_output=True, text=True
    ).stdout.strip()
    folder = cert.parent / "ca-dir"
    folder.mkdir()
    shutil.copy(cert, folder / f"{subject_hash}.0")
    return folder


@pytest.fixture(scope="module")
def self_signed(self_signed_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A server TLS context with that certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed_files)
    return context


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
async def test_tls_certificates_are_verified(
    settings: Settings, connect: ClientFactory, self_signed: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeModelGates(api_key=API_KEY, ssl_context=self_signed) as tls:
        assert tls.base_url.startswith("https://127.0.0.1:")
        async with connect(base_url=tls.base_url, max_retries=3) as client:
            result = await client.call_tool(*CREATE)
        assert tls.requests == []  # the handshake failed before a byte of the request was sent
    text = _text(result)
    assert "TLS handshake" in text and "certificate verification failed" in text
    assert "Gave up" not in text and _retry_waits(caplog) == []  # the same certificate would fail again


@pytest.mark.anyio
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
async def test_there_is_no_switch_to_turn_tls_verification_off(
    self_signed_files: tuple[Path, Path],
    self_signed_dir: Path,
    self_signed: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    """Neither a flag, nor a setting, nor a CA bundle in the environment makes the client trust a
    certificate it should not. The bundle here trusts the stand-in's own self-signed certificate,
    as a stray SSL_CERT_FILE / SSL_CERT_DIR (or someone able to set them) would."""
    import httpx

    for flag in ("--insecure", "--no-verify", "--tls-verify=false"):
        with pytest.raises(ConfigError):
            load_settings([flag], {})
    bundle = str(self_signed_files[0] if variable == "SSL_CERT_FILE" else self_signed_dir)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):  # httpx reads SSL_CERT_FILE first when both are set
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, bundle)
    with FakeModelGates(api_key=API_KEY, ssl_context=self_signed) as tls:
        # The control: a client that trusts the environment does accept the certificate, so the
        # bundle would have switched verification for the client below if it read the environment.
        async with httpx.AsyncClient(trust_env=True) as trusting:
            assert (await trusting.post(tls.base_url + "/auth/keys", json={})).status_code == 403
        env = {
            "MODELGATES_BASE_URL": tls.base_url,
            "MODELGATES_API_KEY": API_KEY,
            **dict.fromkeys(("MODELGATES_INSECURE", "MODELGATES_VERIFY", "MODELGATES_TLS_VERIFY"), "0"),
            "PYTHONHTTPSVERIFY": "0",
            variable: bundle,
        }
        async with _session(load_settings([], env), 0.01) as client:
            results = [await client.call_tool(*CREATE), await client.call_tool(*EXCHANGE)]
        assert len(tls.requests) == 1  # the control's request only
    for result in results:
        assert result.is_error is True and "certificate verification failed" in _text(result), _text(result)


# ---------------------------------------------------------------- what error texts quote


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize(
    ("reply", "gone"),
    [
        (Reply(400, error_body(400, "bad\x1b[2J\x1b]0;title\x07 request\x00\r\nX-Injected: 1")), ["[2J", "0;title"]),
        (Reply(400, error_body(400, "right-to-left \u202eexe.txt and zero\u200bwidth")), []),
        (Reply(400, error_body(400, "long " * 5000)), []),
        (Reply(502, body=b"<html>\x1b[31mred\x1b[0m\x00\x07\x08 \xff\xfe gateway</html>" + b"z" * 20000), ["[31m", "[0m"]),
        (Reply(503, body="\u2028line\u2029para\ufeffbom".encode()), []),
    ],
    ids=["ansi-and-controls-in-message", "bidi-and-zero-width", "long-message", "binary-html", "unicode-separators"],
)  # fmt: skip
async def test_error_texts_quote_upstream_bodies_only_as_short_printable_excerpts(
    fake: FakeModelGates, connect: ClientFactory, reply: Reply, gone: list[str]
) -> None:
    fake.reply(**dataclasses.asdict(reply))
    async with connect(max_retries=0) as client:
        result = await client.call_tool(*CREATE)
    text = _text(result)
    assert result.is_error is True and f"HTTP {reply.status}" in text
    assert text.isprintable() and "\\x" not in text and "\\u" not in text  # not even as escapes
    assert not [piece for piece in gone if piece in text]  # whole escape sequences go, not just ESC
    assert len(text) < 500


# ---------------------------------------------------------------- malformed success answers


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])
@pytest.mark.parametrize(
    ("call", "reply", "expected"),
    [
        (CREATE, Reply(200, body=b"<html>OK</html>"), "a body that is not JSON: '<html>OK</html>'"),
        (CREATE, Reply(200, [AUTH_CODE]), "JSON that is not an object"),
        (CREATE, Reply(200, {"data": {**AUTH_CODE, "app_id": "12345"}}), "`data.app_id`"),
        (CREATE, Reply(200, {"data": {**AUTH_CODE, "app_id": True}}), "`data.app_id`"),
        (CREATE, Reply(200, {"data": {**AUTH_CODE, "id": "code\x1b[2J"}}), "`data.id`: value error, must not contain control"),
        (CREATE, Reply(200, {"data": None}), "`data`"),
        (CREATE, Reply(200, body=b""), "an empty body"),
        (EXCHANGE, Reply(200, body=b"key=sk-mg-v1-secret"), "a body that is not JSON (19 bytes, not quoted"),
        (EXCHANGE, Reply(200, [{"key": "sk-mg-v1-secret"}]), "JSON that is not an object ("),
        (EXCHANGE, Reply(200, {"key": None, "user_id": "u1"}), "`key`"),
        (EXCHANGE, Reply(200, {"key": 42, "user_id": "u1"}), "`key`"),
        (EXCHANGE, Reply(200, {"key": "sk-\x1b]0;pwned\x07", "user_id": "u1"}), "`key`: value error, must not contain control"),
        (EXCHANGE, Reply(200, {"key": "sk-mg-v1-secret", "user_id": 7}), "`user_id`"),
        (EXCHANGE, Reply(200, {"key": "sk-mg-v1-secret", "user_id": None}, action="truncate"), "failed mid-request"),
        (EXCHANGE, Reply(200, {"key": "sk-mg-v1-secret", "pad": "x" * 4000}, action="reset_mid_body"), "failed mid-request"),
        (CREATE, Reply(200, {"data": AUTH_CODE, "pad": "x" * 4000}, action="reset_mid_body"), "failed mid-request"),
    ],
)  # fmt: skip
async def test_malformed_success_answers_are_clear_tool_errors(
    fake: FakeModelGates, connect: ClientFactory, call: tuple[str, dict[str, Any]], reply: Reply, expected: str
) -> None:
    fake.reply(**dataclasses.asdict(reply))
    async with connect() as client:
        result = await client.call_tool(*call)
    text = _text(result)
    assert result.is_error is True and result.structured_content is None
    assert expected in text, text
    assert "internal error" not in text and text.isprintable()
    assert "sk-mg-v1-secret" not in text  # a body that may hold the new key is never quoted


# ---------------------------------------------------------------- stopping with calls in flight


@pytest.mark.parametrize("stop", ["eof", "sigterm"])
def test_stopping_with_many_calls_in_flight_is_prompt_and_clean(fake: FakeModelGates, stop: str) -> None:
    if stop == "sigterm" and sys.platform == "win32":
        pytest.skip("no SIGTERM on Windows")
    fake.handler = lambda rec: Reply(200, {"key": "sk-never", "user_id": None}, delay=10)
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    lines = [json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})]
    lines += [
        json.dumps(
            {"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call", "params": {"name": name, "arguments": args}}
        )
        for i, (name, args) in enumerate([CREATE, EXCHANGE] * 8)
    ]
    env = stdio_params({"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url}).env
    deadline = time.monotonic() + 10

    def all_sent() -> None:
        while len(fake.requests) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)

    # run_stdio stops the server once `initialize` is answered; wait for the 16 calls to be in flight first
    waiter = threading.Thread(target=all_sent)
    waiter.start()
    run = run_stdio(("\n".join(lines) + "\n").encode(), env, answers={1}, stop=stop, before_stop=waiter.join)
    tail = run.stderr[-2000:]
    assert len(fake.requests) == 16, tail
    assert (run.returncode, run.seconds_to_exit < 2.0) == (0, True), (run.returncode, run.seconds_to_exit, tail)
    assert b"Traceback" not in run.stderr and b"Error" not in run.stderr, tail
    messages = [json.loads(line) for line in run.stdout_lines]
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    # a call cut short gets an error answer or none at all, never a half-written line or a result
    assert all(m.get("id") == 1 or "error" in m for m in messages), messages


def test_the_readme_states_the_limits_the_code_uses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = " ".join(readme.split("## Errors and retries", 1)[1].split("\n## ", 1)[0].split())  # unwrapped
    assert sorted(client_module.RETRY_STATUSES) == [429, 502, 503, 504] and "429, 502, 503 and 504" in section
    assert client_module.RETRY_WAIT_CAP == 10.0 and "at most 10 s" in section and "capped at 10 s" in section
    assert client_module.MAX_BODY_BYTES == MIB and "larger than 1 MiB" in section
    assert client_module.ERROR_BODY_BYTES == 8 * 1024 and "first 8 KiB" in section
    assert client_module.EXCERPT_CHARS == 200 and "at most 200 characters" in section
    assert client_module.CALLER_IN_FLIGHT == 64 and "may have 64 calls waiting for ModelGates at once" in section
    assert client_module.MAX_CONNECTIONS == 256 and "a pool of 256 connections (20 of them kept open" in section
    assert client_module.MAX_IDLE_CONNECTIONS == 20 and client_module.MAX_CODINGS == 3 and "at most 3 layers" in section
    defaults = Settings()
    assert (defaults.max_retries, defaults.connect_timeout, defaults.timeout) == (2, 10.0, 30.0)
    assert "(default 2," in section and "`MODELGATES_CONNECT_TIMEOUT` (10 s)" in section
    assert "`MODELGATES_TIMEOUT` (30 s)" in section
