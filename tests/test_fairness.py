"""One caller's burst cannot fail other callers' calls: the connection pool, the per-caller cap on
calls in flight, and the errors a caller sees past each.

The scenario runs for real: the console script serving `--transport http` with per-caller keys,
two callers with different keys sending raw JSON-RPC POSTs, and a stand-in that takes 1.5 s per
answer. Caller A bursts 200 calls; caller B sends 20 a moment later. With a pool shared first
come, first served, B's calls queued behind A's and timed out waiting for a connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from mcp_modelgates import client as client_module
from mcp_modelgates.config import Settings, caller_identity, caller_key_for_request
from tests.conftest import API_KEY, ClientFactory
from tests.fake_api import FakeModelGates, Recorded, Reply
from tests.test_http import JSON_HEADERS, HttpServer, start_server

ALICE = "sk-caller-alice-burst-1111aaaa"
BOB = "sk-caller-bob-steady-2222bbbb"
CALLBACK = "https://myapp.example/auth/callback"
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
CAP = client_module.CALLER_IN_FLIGHT
TOO_MANY = "Too many calls at once"

pytestmark = pytest.mark.anyio


class SlowStandIn:
    """A stand-in handler answering every create after `delay` seconds, counting each key's calls
    in flight at the stand-in (the most seen at once, per key)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, rec: Recorded) -> Reply:
        who = rec.headers.get("authorization", "")
        with self._lock:
            self.in_flight[who] = self.in_flight.get(who, 0) + 1
            self.most[who] = max(self.most.get(who, 0), self.in_flight[who])
        try:
            time.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight[who] -= 1
        return Reply(200, {"data": AUTH_CODE})


# ---------------------------------------------------------------- the scenario, over the real transport


@pytest.fixture
def per_caller_server(fake: FakeModelGates) -> Iterator[HttpServer]:
    env = {
        "MODELGATES_KEY_FROM_CLIENT": "1",
        "MODELGATES_BASE_URL": fake.base_url,
        "MODELGATES_MAX_RETRIES": "0",
        # A short wait for a free connection, so that a pool taken by one caller shows within the test.
        "MODELGATES_CONNECT_TIMEOUT": "1",
        "MODELGATES_LOG_LEVEL": "WARNING",
    }
    server = start_server(env)
    try:
        yield server
    finally:
        server.stop()


async def _call(http: httpx.AsyncClient, url: str, key: str, i: int) -> tuple[bool, str, float]:
    body = {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {"name": "create_auth_code", "arguments": {"callback_url": f"{CALLBACK}/{i}"}},
    }
    started = time.monotonic()
    answer = await http.post(url, content=json.dumps(body), headers={**JSON_HEADERS, "authorization": f"Bearer {key}"})
    elapsed = time.monotonic() - started
    if answer.status_code != 200:
        return False, f"HTTP {answer.status_code}", elapsed
    result = answer.json()["result"]
    return not result["isError"], result["content"][0]["text"], elapsed


async def test_one_callers_burst_leaves_other_callers_served(
    per_caller_server: HttpServer, fake: FakeModelGates
) -> None:
    stand_in = SlowStandIn(delay=1.5)
    fake.handler = stand_in
    outcomes: dict[str, list[tuple[bool, str, float]]] = {"A": [], "B": []}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as http:

        async def one(caller: str, key: str, i: int) -> None:
            outcomes[caller].append(await _call(http, per_caller_server.url, key, i))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, "A", ALICE, i)
            await anyio.sleep(0.3)  # B's calls come while A's burst is in flight
            for i in range(20):
                tg.start_soon(one, "B", BOB, 1000 + i)
        wall = time.monotonic() - started
    a_ok = [text for ok, text, _ in outcomes["A"] if ok]
    a_refused = [text for ok, text, _ in outcomes["A"] if not ok]
    b_ok = [ok for ok, _, _ in outcomes["B"]].count(True)
    b_failures = sorted({text for ok, text, _ in outcomes["B"] if not ok})
    assert b_ok >= 18, f"B: {b_ok}/20 succeeded while A burst; failures: {b_failures}"  # at least 90 %
    # A was held to its cap, at the server and at the stand-in; what it sent past it failed at once
    assert len(a_ok) >= CAP and a_refused, (len(a_ok), a_refused[:3])
    assert all(TOO_MANY in text and f"{CAP} calls" in text for text in a_refused), sorted(set(a_refused))[:3]
    assert stand_in.most[f"Bearer {ALICE}"] <= CAP
    assert wall < 30
    assert ALICE not in per_caller_server.stderr and BOB not in per_caller_server.stderr


# ---------------------------------------------------------------- the cap and the pool, in process


async def test_a_caller_past_its_cap_is_refused_at_once_and_nothing_is_sent(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    fake.handler = SlowStandIn(delay=1.0)
    results: list[Any] = []
    async with connect(max_retries=0) as client:

        async def one(i: int) -> None:
            results.append(await client.call_tool("create_auth_code", {"callback_url": f"{CALLBACK}/{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(CAP + 6):
                tg.start_soon(one, i)
        after = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})  # the slots are free again
    refused = [r.content[0].text for r in results if r.is_error]
    assert len(refused) == 6 and len(fake.requests) == CAP + 1, refused
    assert all(TOO_MANY in text and "was not sent" in text for text in refused)
    assert after.is_error is False


async def test_a_wait_for_a_free_connection_is_reported_as_overload_not_as_the_network(
    fake: FakeModelGates, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_CONNECTIONS", 2)  # a pool this small fills with three calls
    fake.handler = SlowStandIn(delay=1.5)
    results: list[Any] = []
    async with connect(max_retries=2, connect_timeout=0.5) as client:

        async def one(i: int) -> None:
            results.append(await client.call_tool("create_auth_code", {"callback_url": f"{CALLBACK}/{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
    texts = sorted(r.content[0].text for r in results if r.is_error)
    assert len(texts) == 1 and len(fake.requests) == 2, texts  # not retried: it would queue again
    assert "overloaded" in texts[0] and "all 2 of its connections" in texts[0] and "was not sent" in texts[0]
    assert "connecting" not in texts[0] and "Gave up" not in texts[0]


def test_a_callers_identity_is_a_keyed_hash_of_the_credential_it_uses() -> None:
    per_caller = Settings(key_from_client=True)
    with caller_key_for_request(SecretStr(ALICE)):
        alice = caller_identity(per_caller)
    with caller_key_for_request(SecretStr(BOB)):
        bob = caller_identity(per_caller)
    with caller_key_for_request(SecretStr(ALICE)):
        assert caller_identity(per_caller) == alice
    assert alice != bob and len(alice) == 16
    assert ALICE.encode() not in alice and caller_identity(per_caller) == b""  # without a key: one shared
    shared = Settings(api_key=SecretStr(API_KEY))
    with_token = Settings(api_key=SecretStr(API_KEY), http_token=SecretStr("tok-0123456789abcdef"))
    assert caller_identity(shared) not in (b"", caller_identity(with_token), alice)
