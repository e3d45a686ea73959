"""A short-lived, per-process cache of API-key lookups.

Every request authenticates, and looking the key up in the database cost a round trip
and an ORM query per request. The cache maps sha256(secret) to the key's id and project
for ``ttl`` seconds, so a revoked key keeps working on a process that has it cached for
at most ``ttl`` seconds (documented in the API description and ``fishdip keys revoke``).
Only hits are cached: an unknown key is looked up every time, so a key created a moment
ago works at once, and guessing secrets cannot fill the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_ENTRIES = 10_000  # only real keys enter; the cap bounds memory whatever happens


@dataclass(frozen=True)
class KnownKey:
    key_id: str
    project_id: str


class KeyCache:
    """Not locked: it is only used from the event loop (api/deps.py)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, tuple[KnownKey, float]] = {}

    def get(self, key_hash: str) -> KnownKey | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        key, expires = entry
        if self.clock() >= expires:
            del self._entries[key_hash]
            return None
        return key

    def put(self, key_hash: str, key: KnownKey) -> None:
        if self.ttl <= 0:
            return
        now = self.clock()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {h: e for h, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[key_hash] = (key, now + self.ttl)
