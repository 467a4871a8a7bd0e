"""T1: the agent's RAM tier, an LRU of entries within a byte budget; what it evicts is
returned for the caller to spill."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

from .entry import Entry, _Counters


class RamTier:
    """Entries in a dict, least recently used first, within ``budget_bytes``.

    Frames are kept as received (zmq frame memoryviews), never copied.
    """

    name: Final = "ram"

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget_bytes = budget_bytes
        self.bytes = 0  # payload bytes
        self.meta_bytes = 0  # meta and per-entry overhead: the budget bounds the sum
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.counters = _Counters()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.counters.misses += 1
            return None
        self._entries.move_to_end(key)
        self.counters.hits += 1
        return entry

    def peek(self, key: str) -> Entry | None:
        """The entry of ``key`` without counting a hit or refreshing its recency."""
        return self._entries.get(key)

    def put(self, key: str, entry: Entry) -> list[tuple[str, Entry]]:
        """Keep ``entry``, evicting least recently used entries to fit the budget.

        An entry larger than the whole budget (payload, meta and :data:`ENTRY_OVERHEAD`) is
        not kept (and evicts nothing).

        :returns: the evicted ``(key, entry)`` pairs, for the caller to spill.
        """
        self.remove(key)
        if not self.fits(entry):
            return []
        evicted: list[tuple[str, Entry]] = []
        while self.bytes + self.meta_bytes + entry.held_bytes > self.budget_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._uncount(old)
            evicted.append((old_key, old))
        self._entries[key] = entry
        self.bytes += entry.nbytes
        self.meta_bytes += entry.held_bytes - entry.nbytes
        self.counters.evictions += len(evicted)
        return evicted

    def fits(self, entry: Entry) -> bool:
        """Whether ``entry`` alone fits the budget."""
        return entry.held_bytes <= self.budget_bytes

    def _uncount(self, entry: Entry) -> None:
        self.bytes -= entry.nbytes
        self.meta_bytes -= entry.held_bytes - entry.nbytes

    def remove(self, key: str) -> bool:
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._uncount(old)
        return True

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self.bytes = self.meta_bytes = 0
        return count

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "meta_bytes": self.meta_bytes,
            "budget": self.budget_bytes,
            **self.counters.as_dict(),
        }
