"""The store of single-use facts: what a sealed blob cannot enforce on its own.

A sealed authorization code or refresh token is valid until it expires, wherever it is shown; that
it was already used once (a code redeemed, a refresh token rotated, a sign-in completed) and that a
grant was ended are facts kept here, by id. Nothing secret goes in: ids are random and carry no key.

`OnceStore` is the interface: async, so that a shared store over the network (Redis: `SET key 1 NX
PX ttl` is exactly `mark_once`) can replace `MemoryStore`, this process's memory. With several
replicas and only memory, a replay that reaches another replica within the artefact's lifetime is
not caught.
"""

from __future__ import annotations

import time
from typing import Protocol


class OnceStore(Protocol):
    async def mark_once(self, key: str, ttl: float) -> bool:
        """Mark `key` for `ttl` seconds, atomically; True if it was already marked (and not expired)."""
        ...

    async def is_marked(self, key: str) -> bool:
        """Whether `key` is marked and its mark has not expired."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Marks in a dict of expiry times; expired ones are swept as new ones arrive."""

    SWEEP_EVERY = 1024  # marks between sweeps: the dict stays bounded by the marks still alive

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._since_sweep = 0

    async def mark_once(self, key: str, ttl: float) -> bool:
        # No await between the check and the set: on one event loop this is atomic.
        now = time.monotonic()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return True
        self._expiry[key] = now + max(ttl, 0.0)
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        return False

    async def is_marked(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        return expiry is not None and expiry > time.monotonic()

    async def aclose(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)
