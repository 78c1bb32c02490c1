"""The store of single-use facts: what a sealed blob cannot enforce on its own.

A sealed authorization code or refresh token is valid until it expires, wherever it is shown; that
it was already used once (a code redeemed, a refresh token rotated, a sign-in completed) and that a
grant was ended (by a reuse, or revoked) are facts kept here, by id. Nothing secret goes in: ids
are random, sealed inside the artefacts, and carry no key.

`OnceStore` is the interface, async so that a shared store over the network can stand in for this
process's memory: `MemoryStore` here (one replica), `RedisStore` in `redis_store.py` (any number
of replicas sharing one Redis or Valkey, MODELGATES_OAUTH_STORE). A store that cannot be reached
raises `StoreUnavailable`; what each caller does then is its own choice (routes.py, provider.py).
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

# What `use_once` found: the key was free and is now marked ("first"); it was marked already, so
# its family is now ended ("again"); or the family had ended before (nothing was marked).
Use = Literal["first", "again", "ended"]


class StoreUnavailable(Exception):
    """The store could not be read or written; the message says why (never a secret)."""


class OnceStore(Protocol):
    async def mark_once(self, key: str, ttl: float) -> bool:
        """Mark `key` for `ttl` seconds, atomically; True if it was already marked (and not expired)."""
        ...

    async def is_marked(self, key: str) -> bool:
        """Whether `key` is marked and its mark has not expired."""
        ...

    async def use_once(self, key: str, ttl: float, family: str, family_ttl: float) -> Use:
        """One atomic step for a single-use artefact of a family (a code or a refresh token of a
        grant): refused if the family has ended; marked if unused; and if used already, the reuse
        ends the family (marked for `family_ttl`), so that nothing can come between the two."""
        ...

    async def check(self) -> None:
        """Raise `StoreUnavailable` unless the store can be read and written now."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Marks in a dict of expiry times; expired ones are swept as new ones arrive."""

    SWEEP_EVERY = 1024  # marks between sweeps: the dict stays bounded by the marks still alive

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._since_sweep = 0

    def _marked(self, key: str, now: float) -> bool:
        expiry = self._expiry.get(key)
        return expiry is not None and expiry > now

    def _mark(self, key: str, ttl: float, now: float) -> None:
        self._expiry[key] = now + max(ttl, 0.0)
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}

    # No await between a check and a set below: on one event loop each method is atomic.

    async def mark_once(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if self._marked(key, now):
            return True
        self._mark(key, ttl, now)
        return False

    async def is_marked(self, key: str) -> bool:
        return self._marked(key, time.monotonic())

    async def use_once(self, key: str, ttl: float, family: str, family_ttl: float) -> Use:
        now = time.monotonic()
        if self._marked(family, now):
            return "ended"
        if self._marked(key, now):
            self._mark(family, family_ttl, now)
            return "again"
        self._mark(key, ttl, now)
        return "first"

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)
