"""The shared store of single-use facts: Redis or Valkey, for any number of replicas (MODELGATES_OAUTH_STORE).

Imported only when MODELGATES_OAUTH_STORE is set (the `redis` extra brings the client). Each fact
is its own key with an expiry, under `mcp-modelgates:<deployment>:` (a hash of the issuer, so that
deployments can share one Redis): `code:<id>` a redeemed code, `refresh:<id>` a rotated refresh
token, `signin:<flow>` a completed sign-in, `grant:<id>` an ended grant. The value is `1`; the ids
are random values sealed inside the artefacts, derived from no token or key.

Marking is atomic on the server: `SET key 1 NX PX ttl` for one fact, one Lua script for a code or
refresh token and its grant (`use_once`), so two replicas shown the same code at the same instant
give tokens once. Commands are never retried: a write whose answer was lost may have happened, and
sending it again would read as a reuse. After a failure the store is not asked again for
`QUIET_AFTER_FAILURE` seconds (every call fails at once meanwhile, instead of waiting out a
connect timeout each), then the next call tries again; the client reconnects by itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mcp_modelgates.config import store_location
from mcp_modelgates.oauth.store import StoreUnavailable, Use

logger = logging.getLogger("mcp_modelgates.oauth")

PREFIX = "mcp-modelgates"
CONNECT_TIMEOUT = 1.0  # seconds to connect; a store on the same network answers in well under that
COMMAND_TIMEOUT = 1.0  # seconds for an answer
QUIET_AFTER_FAILURE = 1.0  # seconds during which the store is not asked again after a failure
T = TypeVar("T")

# KEYS[1] the artefact's use, KEYS[2] its family (the grant); ARGV their TTLs in milliseconds.
# 2: the family has ended; 1: used before, so the family ends now; 0: marked now, first use.
_USE_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""
_USES: dict[int, Use] = {0: "first", 1: "again", 2: "ended"}


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def namespace(issuer: str) -> str:
    return hashlib.sha256(issuer.encode()).hexdigest()[:16]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        client_name="mcp-modelgates",
    )


class RedisStore:
    """`OnceStore` on a Redis or Valkey server, one connection pool per process."""

    def __init__(self, url: str, issuer: str) -> None:
        self.where = store_location(url)
        self._client = _client(url)
        self._prefix = f"{PREFIX}:{namespace(issuer)}:"
        self._use_once = self._client.register_script(_USE_ONCE)
        self._quiet_until = 0.0
        self._failure = ""  # why the last call failed, while the store is taken to be down

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        if now < self._quiet_until:
            raise StoreUnavailable(self._failure)
        try:
            result = await command()
        except (RedisError, OSError) as exc:
            if not self._failure:
                logger.warning("the store at %s is unreachable: %s", self.where, _describe(exc))
            self._failure = f"{self.where}: {_describe(exc)}"
            self._quiet_until = time.monotonic() + QUIET_AFTER_FAILURE
            raise StoreUnavailable(self._failure) from None
        if self._failure:
            self._failure = ""
            logger.warning("the store at %s is reachable again", self.where)
        return result

    async def mark_once(self, key: str, ttl: float) -> bool:
        async def command() -> Any:
            return await self._client.set(self._prefix + key, b"1", nx=True, px=_ms(ttl))

        return await self._call(command) is None  # SET NX answers nil when the key was there

    async def is_marked(self, key: str) -> bool:
        async def command() -> Any:
            return await self._client.exists(self._prefix + key)

        return bool(await self._call(command))

    async def use_once(self, key: str, ttl: float, family: str, family_ttl: float) -> Use:
        keys = [self._prefix + key, self._prefix + family]

        async def command() -> Any:
            return await self._use_once(keys=keys, args=[_ms(ttl), _ms(family_ttl)])

        answer = await self._call(command)
        use = _USES.get(int(answer)) if isinstance(answer, int) else None
        if use is None:
            raise StoreUnavailable(f"{self.where}: an unexpected answer to the use-once script")
        return use

    async def check(self) -> None:
        """A write that expires at once: the server is reachable, the credentials good, writes allowed."""

        await self._call(lambda: _check(self._client, self._prefix))

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _check(client: redis.Redis, prefix: str) -> Any:
    return await client.set(prefix + "check", b"1", px=1000)


async def probe(url: str, issuer: str) -> str | None:
    """Why the store cannot be used now, or None: the check above, with a client of its own and
    nothing logged (start-up says it in one line)."""
    client = _client(url)
    try:
        await _check(client, f"{PREFIX}:{namespace(issuer)}:")
    except (RedisError, OSError) as exc:
        return _describe(exc)
    finally:
        await client.aclose()
    return None
