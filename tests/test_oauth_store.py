"""The stores of single-use facts, one contract for both: this process's memory and a real
redis-server (tests/redis_server.py: a free port, a temp folder, no persistence). Then what only the
shared store has: its keys (ids with expiries, nothing else), deployments apart in one Redis, the
store going away and coming back, and MODELGATES_OAUTH_STORE at start-up (refused in one line,
exit 2, before binding, when it cannot be used)."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import tests.redis_server
from mcp_modelgates.config import ConfigError, load_settings
from mcp_modelgates.oauth.redis_store import QUIET_AFTER_FAILURE, RedisStore, namespace, probe
from mcp_modelgates.oauth.store import MemoryStore, OnceStore, StoreUnavailable
from tests.conftest import server_command
from tests.redis_server import RedisServer
from tests.test_http import clean_env

pytestmark = pytest.mark.anyio

ISSUER = "http://localhost:8123"
SECRET = "oauth-test-secret-" + "5f2c9a81d3e74b06" * 2
PASSWORD = "redis-pass-" + "9c1e" * 6


redis_server = tests.redis_server.redis_server  # one per module


@asynccontextmanager
async def a_store(kind: str, redis_server: RedisServer | None, issuer: str = ISSUER) -> AsyncIterator[OnceStore]:
    store: OnceStore = MemoryStore() if kind == "memory" else RedisStore(_url(redis_server), issuer)
    try:
        yield store
    finally:
        await store.aclose()


def _url(server: RedisServer | None) -> str:
    assert server is not None
    return server.url


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_server")  # skipped with one line where redis-server is missing
    return str(request.param)


def server_for(kind: str, request: pytest.FixtureRequest) -> RedisServer | None:
    return request.getfixturevalue("redis_server") if kind == "redis" else None


# ---------------------------------------------------------------- the contract, for both stores


async def test_mark_once_marks_once_for_its_ttl(kind: str, request: pytest.FixtureRequest) -> None:
    async with a_store(kind, server_for(kind, request)) as store:
        key = f"code:{time.monotonic_ns()}"
        assert await store.mark_once(key, 0.3) is False  # first use
        assert await store.mark_once(key, 0.3) is True  # second use: already marked
        assert await store.is_marked(key) and not await store.is_marked(key + "-other")
        await anyio.sleep(0.6)
        assert not await store.is_marked(key)
        assert await store.mark_once(key, 10) is False  # its mark expired, like the artefact it stood for
        await store.check()


async def test_use_once_ends_the_family_on_a_reuse(kind: str, request: pytest.FixtureRequest) -> None:
    async with a_store(kind, server_for(kind, request)) as store:
        tag = time.monotonic_ns()
        grant, other = f"grant:{tag}", f"grant:{tag}-other"
        assert await store.use_once(f"refresh:{tag}-1", 60, grant, 60) == "first"
        assert await store.use_once(f"refresh:{tag}-2", 60, grant, 60) == "first"  # the next in the family
        assert not await store.is_marked(grant)
        assert await store.use_once(f"refresh:{tag}-1", 60, grant, 60) == "again"  # a rotated one, reused
        assert await store.is_marked(grant)  # in the same step: the family has ended
        assert await store.use_once(f"refresh:{tag}-3", 60, grant, 60) == "ended"  # a newer one: refused
        assert not await store.is_marked(f"refresh:{tag}-3")  # and not marked: nothing was used
        assert await store.use_once(f"refresh:{tag}-4", 60, other, 60) == "first"  # other families go on


async def test_use_once_gives_first_exactly_once_to_concurrent_callers(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Two stores (two connection pools, as two replicas have) shown the same code 40 times at once."""
    server = server_for(kind, request)
    async with a_store(kind, server) as one, a_store(kind, server) as two:
        stores = [one, two] if kind == "redis" else [one, one]
        for round_ in range(3):
            key, family = f"code:{time.monotonic_ns()}-{round_}", f"grant:{round_}-{time.monotonic_ns()}"
            answers: list[str] = []

            async def use(store: OnceStore, key: str = key, family: str = family, answers: list[str] = answers) -> None:
                answers.append(await store.use_once(key, 60, family, 60))

            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(use, stores[i % 2])
            assert answers.count("first") == 1, answers
            assert set(answers) <= {"first", "again", "ended"} and "again" in answers


# ---------------------------------------------------------------- the shared store's own facts


async def test_redis_keys_are_ids_with_expiries_under_the_deployments_prefix(redis_server: RedisServer) -> None:
    async with a_store("redis", redis_server) as store:
        tag = time.monotonic_ns()
        await store.mark_once(f"signin:{tag}", 600)
        await store.use_once(f"code:{tag}", 300, f"grant:{tag}", 3600)
        await store.use_once(f"code:{tag}", 300, f"grant:{tag}", 3600)  # a reuse: the grant ends
    keys = {k: v for k, v in redis_server.keys().items() if str(tag) in k}
    prefix = f"mcp-modelgates:{namespace(ISSUER)}:"
    assert set(keys) == {f"{prefix}signin:{tag}", f"{prefix}code:{tag}", f"{prefix}grant:{tag}"}
    assert all(value == b"1" for value, _ in keys.values())  # a fact, no data
    ttls = {k.removeprefix(prefix).split(":")[0]: ttl for k, (_, ttl) in keys.items()}
    assert 0 < ttls["signin"] <= 600_000 and 0 < ttls["code"] <= 300_000 and 0 < ttls["grant"] <= 3_600_000


async def test_deployments_sharing_one_redis_keep_apart(redis_server: RedisServer) -> None:
    async with (
        a_store("redis", redis_server, "https://a.example") as a,
        a_store("redis", redis_server, "https://b.example") as b,
    ):
        key = f"code:{time.monotonic_ns()}"
        assert await a.mark_once(key, 60) is False
        assert await b.mark_once(key, 60) is False  # the same id in another deployment: its own fact
        assert await a.is_marked(key) and await b.is_marked(key)


async def test_an_unreachable_redis_fails_fast_and_the_store_recovers_when_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path).start()
    store = RedisStore(server.url, ISSUER)
    try:
        assert await store.mark_once("code:before", 60) is False
        server.stop()
        started = time.monotonic()
        for call in (store.is_marked("code:before"), store.mark_once("code:x", 60), store.check()):
            with pytest.raises(StoreUnavailable) as info:
                await call
            assert f"127.0.0.1:{server.port}" in str(info.value)
        assert time.monotonic() - started < 5  # refused connections, then the quiet period: no waiting
        server.start()  # back, empty: a Redis without persistence forgets everything
        deadline = time.monotonic() + 10 + QUIET_AFTER_FAILURE
        while True:
            try:
                assert await store.mark_once("code:after", 60) is False
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not come back"
                await anyio.sleep(0.1)
        assert not await store.is_marked("code:before")
    finally:
        await store.aclose()
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "mcp_modelgates.oauth"]
    assert sum("is unreachable" in line for line in lines) == 1, lines  # once per outage, not per call
    assert sum("reachable again" in line for line in lines) == 1, lines


async def test_a_password_protected_redis_wants_its_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password=PASSWORD).start()
    try:
        assert await probe(server.url, ISSUER) is None
        wrong = server.url.replace(PASSWORD, "not-the-password")
        problem = await probe(wrong, ISSUER)
        assert problem is not None and "AuthenticationError" in problem and "not-the-password" not in problem
        missing = await probe(f"redis://127.0.0.1:{server.port}/0", ISSUER)
        assert missing is not None and "Authentication" in missing
    finally:
        server.stop()


# ---------------------------------------------------------------- MODELGATES_OAUTH_STORE at start-up


def _oauth_env(store: str) -> dict[str, str]:
    return {
        "MODELGATES_AUTH": "oauth",
        "MODELGATES_PUBLIC_URL": "http://localhost:8000",
        "MODELGATES_OAUTH_SECRET": SECRET,
        "MODELGATES_OAUTH_STORE": store,
    }


@pytest.mark.parametrize(
    "store",
    [
        "http://127.0.0.1:6379",
        "redis://",
        "redis:///0",
        "redis://127.0.0.1:6379/0?ssl_cert_reqs=none",  # would turn the TLS check off
        "rediss://127.0.0.1:6380/0#x",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:99999/0",
        f"redis://:{PASSWORD} x@127.0.0.1/0",
        "unix:///run/redis.sock",
    ],
)
def test_bad_store_urls_are_refused_with_one_line_that_names_the_setting(store: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(["--transport", "http"], _oauth_env(store))
    message = str(info.value)
    assert "\n" not in message and "MODELGATES_OAUTH_STORE" in message, message
    assert PASSWORD not in message


def test_the_store_setting_needs_oauth_mode_and_its_password_is_masked() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(["--transport", "http"], {"MODELGATES_OAUTH_STORE": "redis://127.0.0.1/0"})
    assert "MODELGATES_OAUTH_STORE" in str(info.value) and "MODELGATES_AUTH" in str(info.value)
    settings = load_settings(["--transport", "http"], _oauth_env(f"redis://app:{PASSWORD}@redis.internal:6379/2"))
    assert settings.oauth_store is not None and PASSWORD not in repr(settings)
    assert settings.redact(f"AUTH {PASSWORD} failed") == "AUTH *** failed"
    assert load_settings(["--transport", "http"], _oauth_env("rediss://redis.internal:6380")).oauth_store


def _refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:  # the port is taken: a refusal after binding would say so instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        return subprocess.run(
            [*server_command(), "--transport", "http", "--port", port],
            env=clean_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_an_unreachable_store_stops_the_server_before_it_binds(tmp_path: Path) -> None:
    down = RedisServer(tmp_path)  # a free port with nothing on it
    proc = _refused(_oauth_env(down.url))
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, proc.stdout, len(lines)) == (2, "", 1), proc.stderr
    assert lines[0].startswith("mcp-modelgates: MODELGATES_OAUTH_STORE redis://127.0.0.1:")
    assert "cannot be used" in lines[0] and "ConnectionError" in lines[0], lines[0]


def test_a_store_with_the_wrong_password_stops_the_server_without_showing_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password=PASSWORD).start()
    try:
        proc = _refused(_oauth_env(server.url.replace(PASSWORD, "wrong-" + PASSWORD)))
    finally:
        server.stop()
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert "MODELGATES_OAUTH_STORE" in lines[0] and "Authentication" in lines[0], lines[0]
    assert PASSWORD not in proc.stderr and "wrong-" not in proc.stderr


def test_the_store_client_is_imported_only_with_the_setting() -> None:
    probe_code = (
        "import json, sys; import mcp_modelgates.cli, mcp_modelgates.http_app, mcp_modelgates.oauth.routes; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'mcp_modelgates'))))"
    )
    out = subprocess.run(
        [str(Path(server_command()[0]).parent / "python"), "-c", probe_code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "redis" not in out.stdout.replace("redis_store", "") and "mcp_modelgates.oauth.routes" in out.stdout


async def test_the_store_log_lines_never_name_a_password(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(f"redis://app:{PASSWORD}@127.0.0.1:1/0", ISSUER)
    assert store.where == "redis://127.0.0.1:1/0"
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailable) as info:
        await store.check()
    await store.aclose()
    assert PASSWORD not in str(info.value) and PASSWORD not in caplog.text
