"""Two replicas and one Redis: every single-use and revocation promise of OAuth mode holds across them.

Two console-script processes, `a` and `b`, share the secret, the public URL (`a`'s port, where the
test browser signs in) and MODELGATES_OAUTH_STORE, a real redis-server (tests/redis_server.py; the
module is skipped with one line where it is missing). Token, revocation and `/mcp` requests go to
either replica directly, as a balancer without affinity would send them. The store going away
(its process stopped) and coming back is one test; the last two check what the store holds and
that no minted key, secret or token reached a log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

import tests.redis_server
from mcp_modelgates.oauth.redis_store import namespace
from tests import test_http
from tests.browser import Browser
from tests.fake_api import KEY_PREFIX, FakeModelGates
from tests.redis_server import RedisServer
from tests.test_http import HttpServer, free_port, start_server
from tests.test_oauth import (
    SECRET,
    Grant,
    authorization_code,
    authorize_url,
    create_call,
    encodings,
    oauth_env,
    register,
)

pytestmark = pytest.mark.anyio

api = test_http.api
_fresh_stand_in = test_http._fresh_stand_in
MINTED: list[str] = []
TOKENS: list[str] = []  # every access and refresh token issued in this module, for the last checks


@pytest.fixture(autouse=True)
def _remember_minted_keys(api: FakeModelGates) -> Iterator[None]:
    yield
    MINTED.extend(api.minted)


redis_server = tests.redis_server.redis_server  # one per module


@pytest.fixture(scope="module")
def replicas(api: FakeModelGates, redis_server: RedisServer) -> Iterator[dict[str, HttpServer]]:
    started: dict[str, HttpServer] = {}
    try:
        port = free_port()
        public = f"http://localhost:{port}"
        store = {"MODELGATES_OAUTH_STORE": redis_server.url}
        started["a"] = start_server(oauth_env(api, public, **store), port=port)
        started["b"] = start_server(oauth_env(api, public, level="INFO", **store))
        yield started
    finally:
        codes = {name: server.stop() for name, server in started.items()}
    assert codes == dict.fromkeys(started, 0)


@pytest.fixture(scope="module")
def a(replicas: dict[str, HttpServer]) -> HttpServer:
    return replicas["a"]


@pytest.fixture(scope="module")
def b(replicas: dict[str, HttpServer]) -> HttpServer:
    return replicas["b"]


def public_mcp(a: HttpServer) -> str:
    return f"http://localhost:{a.port}/mcp"


def post(server: HttpServer, path: str, form: dict[str, str], client: httpx.Client | None = None) -> httpx.Response:
    url = f"http://localhost:{server.port}{path}"
    return (client or httpx).post(url, data=form, timeout=30)  # type: ignore[attr-defined, no-any-return]


def redeem_form(a: HttpServer, grant: Grant) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": grant.code,
        "redirect_uri": grant.client.redirect_uri,
        "client_id": grant.client.client_id,
        "code_verifier": grant.verifier,
        "resource": public_mcp(a),
    }


def redeem(a: HttpServer, at: HttpServer, grant: Grant) -> httpx.Response:
    answer = post(at, "/token", redeem_form(a, grant))
    if answer.status_code == 200:
        TOKENS.extend(answer.json()[name] for name in ("access_token", "refresh_token"))
    return answer


def refresh(at: HttpServer, grant: Grant, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": grant.client.client_id}
    answer = post(at, "/token", form)
    if answer.status_code == 200:
        TOKENS.extend(answer.json()[name] for name in ("access_token", "refresh_token"))
    return answer


def revoke(at: HttpServer, grant: Grant, token: str) -> httpx.Response:
    return post(at, "/revoke", {"token": token, "client_id": grant.client.client_id})


def status_on(server: HttpServer, access_token: str, body: Any = None) -> int:
    payload = body or {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {access_token}"}
    return httpx.post(f"http://localhost:{server.port}/mcp", json=payload, headers=headers, timeout=30).status_code


def healthz(server: HttpServer) -> int:
    return httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=30).status_code


def tool_call_works(server: HttpServer, access_token: str) -> bool:
    headers = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {access_token}"}
    url = f"http://localhost:{server.port}/mcp"
    answer = httpx.post(url, json=create_call(), headers=headers, timeout=30)
    return answer.status_code == 200 and answer.json()["result"]["isError"] is False


async def signed_in(a: HttpServer) -> tuple[Grant, dict[str, Any]]:
    grant = await authorization_code(a)
    answer = redeem(a, a, grant)
    assert answer.status_code == 200, answer.text
    return grant, answer.json()


# ---------------------------------------------------------------- single use across replicas


async def test_a_code_redeemed_on_one_replica_is_refused_on_the_other(a: HttpServer, b: HttpServer) -> None:
    grant = await authorization_code(a)
    first = redeem(a, a, grant)
    assert first.status_code == 200, first.text
    access = first.json()["access_token"]
    assert status_on(a, access) == 200 and status_on(b, access) == 200
    again = redeem(a, b, grant)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    # A code used twice leaked: what the first redemption got is revoked, on both replicas.
    assert status_on(a, access) == 401 and status_on(b, access) == 401
    assert refresh(a, grant, first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def race(form: dict[str, str], targets: dict[str, tuple[httpx.Client, HttpServer]]) -> dict[str, httpx.Response]:
    """The same token request sent to each target at the same instant (threads behind a barrier)."""
    barrier = threading.Barrier(len(targets))
    answers: dict[str, httpx.Response] = {}

    def send(name: str, client: httpx.Client, server: HttpServer) -> None:
        barrier.wait(timeout=30)
        answers[name] = post(server, "/token", form, client)

    threads = [threading.Thread(target=send, args=(name, *target)) for name, target in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


async def test_the_same_code_sent_to_both_replicas_at_the_same_instant_gives_tokens_once(
    a: HttpServer, b: HttpServer
) -> None:
    with httpx.Client(timeout=30) as to_a, httpx.Client(timeout=30) as to_b:
        for client, server in ((to_a, a), (to_b, b)):  # connections open before the race
            assert client.get(f"http://localhost:{server.port}/healthz").status_code == 200
        for _ in range(5):
            grant = await authorization_code(a)
            answers = race(redeem_form(a, grant), {"a": (to_a, a), "b": (to_b, b)})
            statuses = sorted(answer.status_code for answer in answers.values())
            assert statuses == [200, 400], {name: answer.text for name, answer in answers.items()}
            winner = next(answer for answer in answers.values() if answer.status_code == 200).json()
            loser = next(answer for answer in answers.values() if answer.status_code == 400).json()
            assert loser["error"] == "invalid_grant"
            TOKENS.extend((winner["access_token"], winner["refresh_token"]))
            # The second redemption counts as a reuse: the tokens of the first are revoked with it.
            assert status_on(a, winner["access_token"]) == 401 and status_on(b, winner["access_token"]) == 401


async def test_a_rotated_refresh_token_reused_on_the_other_replica_ends_the_family_on_both(
    a: HttpServer, b: HttpServer
) -> None:
    grant, first = await signed_in(a)
    second = refresh(a, grant, first["refresh_token"])
    assert second.status_code == 200, second.text
    third = refresh(b, grant, second.json()["refresh_token"]).json()  # rotation goes on across replicas
    assert status_on(a, third["access_token"]) == 200 and status_on(b, third["access_token"]) == 200

    reused = refresh(b, grant, first["refresh_token"])  # rotated on `a`, shown again on `b`
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    # Every token descended from that sign-in is refused, on both replicas.
    for server in (a, b):
        for access in (first["access_token"], second.json()["access_token"], third["access_token"]):
            assert status_on(server, access) == 401
        assert refresh(server, grant, third["refresh_token"]).json()["error"] == "invalid_grant"
    _, other = await signed_in(a)  # another sign-in goes on
    assert status_on(b, other["access_token"]) == 200


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_a_token_revoked_on_one_replica_is_refused_on_both(a: HttpServer, b: HttpServer, which: str) -> None:
    grant, tokens = await signed_in(a)
    assert status_on(a, tokens["access_token"]) == 200 and status_on(b, tokens["access_token"]) == 200
    assert revoke(b, grant, tokens[which]).status_code == 200
    # The very next request, on either replica.
    assert status_on(a, tokens["access_token"]) == 401 and status_on(b, tokens["access_token"]) == 401
    assert refresh(a, grant, tokens["refresh_token"]).json()["error"] == "invalid_grant"


# ---------------------------------------------------------------- the store going away


async def test_the_store_going_away_fails_sign_in_and_tokens_closed_keeps_access_tokens_and_recovers(
    a: HttpServer, b: HttpServer, redis_server: RedisServer, api: FakeModelGates
) -> None:
    # Before the outage: a signed-in user, a revoked one (seen ended by both replicas), a code not
    # yet redeemed, and a sign-in approved on the consent page, its browser now at ModelGates.
    grant, tokens = await signed_in(a)
    probe, probe_tokens = await signed_in(a)  # its refresh token tells when `a` marks again
    gone, gone_tokens = await signed_in(a)
    assert revoke(a, gone, gone_tokens["access_token"]).status_code == 200
    assert status_on(a, gone_tokens["access_token"]) == 401 and status_on(b, gone_tokens["access_token"]) == 401
    pending = await authorization_code(a)
    alice = Browser(stop_at=lambda u: u.startswith(api.origin))
    client = register(a)
    page = await alice.get(authorize_url(a, client, "v" * 43))
    at_modelgates = await alice.submit(page, "action", "approve")
    assert at_modelgates.response is None and "/auth?" in at_modelgates.url

    def exchanges() -> int:
        return len([r for r in api.requests if r.path == "/api/v1/auth/keys"])

    exchanges_before = exchanges()
    redis_server.stop()
    try:
        for server in (a, b):
            # Tool calls with a valid access token keep working: only revocations cannot be read.
            assert tool_call_works(server, tokens["access_token"])
            # Still in service: a balancer taking every replica out would stop those calls too.
            assert healthz(server) == 200
            # A grant this replica saw ended stays refused, from its own memory.
            assert status_on(server, gone_tokens["access_token"]) == 401
            # Everything that needs a mark fails closed, saying so.
            for answer in (
                refresh(server, grant, tokens["refresh_token"]),
                redeem(a, server, pending),
                revoke(server, grant, tokens["access_token"]),
            ):
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "temporarily_unavailable"
                assert answer.headers["retry-after"] and answer.headers["cache-control"] == "no-store"
        # A new sign-in stops at the consent page, before the user is sent to ModelGates...
        fresh = Browser(stop_at=lambda u: u.startswith(api.origin))
        consent = await fresh.get(authorize_url(a, register(a), "w" * 43))
        refused = await fresh.submit(consent, "action", "approve")
        assert refused.status == 503 and "in a moment" in refused.text
        # ...and one coming back from ModelGates stops at the callback, before any exchange.
        alice.stop_at = lambda u: u.startswith(client.redirect_uri)
        back = await alice.get(at_modelgates.url)
        assert back.status == 503 and "Reload this page" in back.text
        assert exchanges() == exchanges_before  # nothing was sent to ModelGates meanwhile
    finally:
        redis_server.start()  # the same port, empty: a Redis without persistence forgets

    # Recovery: within a few seconds each replica marks again (after its own quiet second).
    deadline = time.monotonic() + 20
    for server, (g, t) in ((a, (probe, probe_tokens)), (b, (grant, tokens))):
        while refresh(server, g, t["refresh_token"]).status_code == 503:
            assert time.monotonic() < deadline, "the replicas did not recover"
            await anyio.sleep(0.2)
    # The code the outage refused was not used up by those attempts; then it is used once.
    assert redeem(a, a, pending).status_code == 200
    assert redeem(a, b, pending).status_code == 400
    assert exchanges() == exchanges_before
    # The callback the store refused finishes on a reload (its cookie was kept), exchanging once.
    done = await alice.get(back.url)
    assert done.response is None and "code" in done.query, done.text[:300]
    assert exchanges() == exchanges_before + 1
    # The revoked sign-in is still refused where it was seen ended, though Redis forgot it.
    assert status_on(a, gone_tokens["access_token"]) == 401 and status_on(b, gone_tokens["access_token"]) == 401
    await alice.aclose()
    await fresh.aclose()


# ---------------------------------------------------------------- what the store and the logs hold


async def test_the_store_holds_ids_with_expiries_and_nothing_secret(
    a: HttpServer, b: HttpServer, redis_server: RedisServer, api: FakeModelGates
) -> None:
    grant, tokens = await signed_in(a)
    rotated = refresh(b, grant, tokens["refresh_token"]).json()
    assert refresh(a, grant, tokens["refresh_token"]).status_code == 400  # a reuse: the grant ends
    keys = redis_server.keys()
    prefix = f"mcp-modelgates:{namespace(f'http://localhost:{a.port}')}:"
    assert keys and all(key.startswith(prefix) for key in keys), sorted(keys)[:5]
    kinds = {key.removeprefix(prefix).split(":", 1)[0] for key in keys}
    assert kinds <= {"code", "refresh", "signin", "grant", "check"} and {"code", "refresh", "grant"} <= kinds
    limits = {"code": 300 + 60, "signin": 600 + 1, "refresh": 30 * 24 * 3600 + 60, "grant": 30 * 24 * 3600 + 60}
    for key, (value, ttl) in keys.items():
        kind = key.removeprefix(prefix).split(":", 1)[0]
        assert value == b"1", key
        assert 0 < ttl <= limits.get(kind, 1) * 1000, (key, ttl)  # every fact expires, none outlives its artefact
    dump = "\n".join(keys)
    secrets_seen = [*api.minted, *MINTED, SECRET, *TOKENS, tokens["access_token"], rotated["access_token"]]
    assert not [s for s in secrets_seen if s in dump or s[:24] in dump]
    assert KEY_PREFIX not in dump


def test_no_minted_key_secret_or_token_in_any_log_line(replicas: dict[str, HttpServer]) -> None:
    assert len(MINTED) >= 10
    for name, server in replicas.items():
        log = server.stderr
        assert "shared store redis://127.0.0.1:" in log, name
        assert "is unreachable" in log and "reachable again" in log, name  # the outage, said once each way
        # What it means for access tokens, at most one line per 30 s however many calls came meanwhile.
        assert 1 <= log.count("revocations cannot be read") <= 2, name
        assert SECRET not in log and KEY_PREFIX not in log, name
        assert not [form for key in MINTED for form in encodings(key) if form in log], name
        assert not [t for t in TOKENS if t[:24] in log], name
        assert "Traceback" not in log, name
