"""The tiers together: reads from the fastest tier holding a key, writes through RAM and
behind to disk and store, versions, demotion and eviction across tiers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .disk import DiskTier
from .entry import BufferLike, Entry, TierError, TooLarge, VersionConflict
from .ram import RamTier
from .store import StoreTier


class TieredStore:
    """RAM in front of disk in front of an optional persistent store.

    Writes go to RAM and through to disk (and to the store when configured). Don't write the
    same bytes twice to the same local disk by default: when the store directory is on the
    same device as the disk tier, the store is written and the disk tier skipped (a store hit
    is then served from the store, promoted to RAM).

    RAM evictions are spilled to disk if no lower tier holds their version (the disk tier may
    have evicted them under its own size limit). Reads look at disk before the store, so the
    disk tier never keeps a version older than the store's: a PUT that skips the disk tier
    removes any disk copy of the key. ``ram`` stats count ``evictions`` (entries pushed
    out of RAM, demotions included) and ``spills`` (those still served by a lower tier
    afterwards); ``disk`` ``spills`` counts the spill writes it received.

    Background loads (PREFETCH, MIGRATE) read with :meth:`read_below` in another thread and
    come back through :meth:`install`, which keeps them only when no newer version arrived
    meanwhile.
    """

    def __init__(self, ram: RamTier, disk: DiskTier | None, store: StoreTier | None = None) -> None:
        self.ram = ram
        self.disk = disk
        self.store = store
        self.write_disk = disk is not None and not (
            store is not None
            and store.directory is not None
            and os.stat(store.directory).st_dev == os.stat(disk.directory).st_dev
        )
        # Highest version handed out or installed per key in this process; kept after
        # evict/clear so a version number is never reused for different bytes while the agent
        # runs, and so a load that read an older version can tell it is outdated.
        self._versions: dict[str, int] = {}
        # Entries acknowledged but not yet written below RAM (write-behind); read here too,
        # so an entry too large for RAM is served while its disk write is under way.
        self._pending: dict[str, Entry] = {}

    # -- reads

    def read_below(self, key: str, corrupt: list[str] | None = None) -> tuple[Entry, str] | None:
        """Read ``key`` from disk, else from the store, without promoting it.

        Safe from a loader thread: it touches neither RAM nor the pending writes.

        :param corrupt: one line is appended for each corrupt value found (and deleted).
        """
        if self.disk is not None:
            entry = self.disk.get(key, corrupt)
            if entry is not None:
                return entry, "disk"
        if self.store is not None:
            entry = self.store.get(key, corrupt)
            if entry is not None:
                return entry, "store"
        return None

    def get(self, key: str, corrupt: list[str] | None = None) -> tuple[Entry, str] | None:
        """Find ``key``; a disk or store hit is promoted into RAM.

        :returns: ``(entry, tier name)`` or None.
        """
        entry = self.ram.get(key) or self._pending.get(key)
        if entry is not None:
            return entry, "ram"
        found = self.read_below(key, corrupt)
        if found is None:
            return None
        entry, tier = found
        if tier == "store" and self.write_disk and self.disk is not None:
            with contextlib.suppress(TierError):  # (too large or full: served from the store)
                self.disk.put(key, entry)
        self._spill(self.ram.put(key, entry))
        return entry, tier

    def in_memory(self, key: str) -> Entry | None:
        """The entry of ``key`` held in RAM or awaiting its write-behind, without counting."""
        return self.ram.peek(key) or self._pending.get(key)

    def has(self, key: str) -> str | None:
        """The name of the highest tier that holds ``key`` (no promotion, no decoding)."""
        if key in self.ram or key in self._pending:
            return "ram"
        if self.disk is not None and key in self.disk:
            return "disk"
        if self.store is not None and key in self.store:
            return "store"
        return None

    def is_current(self, key: str, entry: Entry) -> bool:
        """Whether a copy read from below is still the newest version (no PUT or install
        since gave the key a newer one, and RAM does not hold it)."""
        return entry.version >= self._versions.get(key, 0) and self.in_memory(key) is None

    def peek_below(self, key: str) -> tuple[str, int, int] | None:
        """``(tier, version, stored bytes)`` of ``key`` in the highest tier below RAM.

        Reads headers only, so the loop can size and check loads without reading payloads.
        """
        if self.disk is not None:
            found = self.disk.peek(key)
            if found is not None:
                return "disk", *found
        if self.store is not None:
            found = self.store.peek(key)
            if found is not None:
                return "store", *found
        return None

    def version(self, key: str) -> int:
        """The stored version of ``key``, 0 when no tier holds it (headers only)."""
        entry = self.in_memory(key)
        if entry is not None:
            return entry.version
        found = self.peek_below(key)
        return 0 if found is None else found[1]

    # -- writes

    def put(
        self,
        key: str,
        frames: Sequence[BufferLike],
        meta: Mapping[str, Any],
        expect_version: int | None = None,
        defer: list[Callable[[], None]] | None = None,
    ) -> int:
        """Store a new version of ``key`` in every tier it belongs to.

        :param expect_version: when given, the stored version (0: absent) must equal it.
        :param defer: when given, the RAM tier is written now and the writes to the lower
            tiers are appended here as one callable, for the server to run after it replied
            (write-behind: the writer does not wait for the disk). Until it has run, reads
            find the entry among the pending ones.
        :returns: the new version.
        :raises VersionConflict: when ``expect_version`` does not match.
        """
        current: int | None = None
        if expect_version is not None or key not in self._versions:
            current = self.version(key)  # headers only; 0 when absent (no existence probe first)
        if expect_version is not None and current != expect_version:
            raise VersionConflict(f"key {key[:80]!r} is at version {current}, not {expect_version}")
        new = max(self._versions.get(key, 0), current or 0) + 1
        entry = Entry(tuple(frames), dict(meta), new)
        self._check_fits(key, entry)
        self._keep(
            key,
            entry,
            ram=True,
            disk=self.write_disk,
            store=True,
            defer=defer,
        )
        return new

    def _check_fits(self, key: str, entry: Entry) -> None:
        """Refuse an entry no tier can hold, before anything is kept or evicted: a PUT is
        acknowledged only when its entry is held somewhere.

        :raises TooLarge: larger than the RAM budget and the disk limit, with no store.
        """
        if self.ram.fits(entry) or self.store is not None:
            return
        disk = self.disk if self.write_disk else None
        if disk is not None and disk.holds(key, entry):
            return
        limits = f"the RAM budget ({self.ram.budget_bytes} bytes)"
        if disk is not None:
            limits += f" and the disk tier's limit ({disk.size_limit_bytes} bytes)"
        raise TooLarge(
            f"put: the value of {key[:80]!r} ({entry.nbytes} bytes, meta {entry.meta_bytes}) "
            f"is larger than {limits}; not stored"
        )

    def max_entry_bytes(self) -> int | None:
        """The largest payload some tier could hold; None with a store (no limit)."""
        if self.store is not None:
            return None
        largest = self.ram.budget_bytes
        if self.disk is not None and self.write_disk:
            largest = max(largest, self.disk.size_limit_bytes)
        return largest

    def install(
        self,
        key: str,
        entry: Entry,
        *,
        ram: bool,
        disk: bool,
        migrated: bool = False,
        defer: list[Callable[[], None]] | None = None,
    ) -> bool:
        """Keep a copy read by a background load; never replace a newer version.

        A copy read from this agent's own lower tiers is kept unless a PUT (or another install)
        gave the key a newer version while it was read, or RAM already holds that version. A
        ``migrated`` copy (from a peer) is kept only when its version is greater than every
        copy this agent holds, lower tiers included, since it did not come from them.

        :param ram: keep it in RAM; otherwise only write it to disk.
        :param disk: write it to the disk tier too (after the reply, like a PUT); a
            migrated copy never goes to the store (it is the peer's, not a new value).
        :returns: whether the copy was kept.
        """
        in_memory = self.in_memory(key)
        held = max(self._versions.get(key, 0), 0 if in_memory is None else in_memory.version)
        if migrated:
            below = self.peek_below(key)
            held = max(held, below[1] if below is not None else 0)
        if entry.version < held or (entry.version == held and (migrated or in_memory is not None)):
            return False
        disk = disk and self.disk is not None and self.disk.holds(key, entry)
        if not disk and (not ram or not self.ram.fits(entry)):
            return False  # nowhere to keep it
        self._keep(key, entry, ram=ram, disk=disk, store=False, defer=defer)
        return True

    def _keep(
        self,
        key: str,
        entry: Entry,
        *,
        ram: bool,
        disk: bool,
        store: bool,
        defer: list[Callable[[], None]] | None,
    ) -> None:
        """Put ``entry`` in RAM (when ``ram``) and schedule its writes below RAM."""
        self._versions[key] = max(self._versions.get(key, 0), entry.version)
        # An entry too large for RAM comes back among the evicted: the write below stores it.
        evicted = [(k, e) for k, e in self.ram.put(key, entry) if k != key] if ram else []
        to_disk = disk and self.disk is not None
        to_store = store and self.store is not None

        def write_lower() -> None:
            try:
                if to_disk and self.disk is not None and self.disk.holds(key, entry):
                    self.disk.put(key, entry)
                elif (to_store or to_disk) and self.disk is not None:
                    # (or the disk tier cannot hold it: it is held in RAM, or the store)
                    # Reads look at disk before the store: a copy a spill left there must not
                    # outlive this newer version (the entry is pending, so reads meanwhile
                    # are served from memory).
                    self.disk.remove(key)
                if to_store and self.store is not None:
                    self.store.put(key, entry)
                self._spill(evicted)
            finally:
                if self._pending.get(key) is entry:
                    del self._pending[key]

        if defer is None:
            write_lower()
            return
        if to_disk or to_store:
            self._pending[key] = entry
        if to_disk or to_store or evicted:
            defer.append(write_lower)

    def _spill(self, evicted: list[tuple[str, Entry]]) -> None:
        for key, entry in evicted:
            if self._keep_below(key, entry):
                self.ram.counters.spills += 1
            # else: no lower tier; the entry is gone (counted as an eviction only)

    def _keep_below(self, key: str, entry: Entry) -> bool:
        """Make sure a tier below RAM holds ``entry``'s version (or a newer one): write it to
        disk when none does (the disk tier evicted it, or its write failed). False when there
        is no disk tier to write to, or it cannot hold the entry.

        :raises DiskFull: the disk tier has no room for it.
        """
        below = self.peek_below(key)
        if below is not None and below[1] >= entry.version:
            return True
        if self.disk is None or not self.disk.holds(key, entry):
            return False
        self.disk.put(key, entry)
        self.disk.counters.spills += 1
        return True

    def demote(self, key: str) -> bool:
        """Drop ``key`` from RAM only, keeping a copy below; call with no write pending.

        When no lower tier holds this version (its write-behind failed, or the disk tier
        evicted it), it is written to disk first: a demotion never loses the only copy.
        Without a disk tier that can hold it, such an entry stays in RAM.

        :returns: whether RAM dropped the entry.
        :raises DiskFull: the only copy could not be written (it stays in RAM).
        """
        entry = self.ram.peek(key)
        if entry is None or not self._keep_below(key, entry):
            return False
        self.ram.remove(key)
        self.ram.counters.evictions += 1
        self.ram.counters.spills += 1
        return True

    def evict(self, key: str) -> bool:
        """Remove ``key`` from every tier; True if any tier held it."""
        removed = self.ram.remove(key)
        if self.disk is not None:
            removed = self.disk.remove(key) or removed
        if self.store is not None:
            removed = self.store.remove(key) or removed
        return removed

    def clear(self) -> int:
        """Empty every tier.

        :returns: the number of entries removed, counted in the tier that held the most (a
            sum would count write-through copies twice).
        """
        counts = [self.ram.clear()]
        if self.disk is not None:
            counts.append(self.disk.clear())
        if self.store is not None:
            counts.append(self.store.clear())
        return max(counts)

    def stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"ram": self.ram.stats()}
        if self.disk is not None:
            out["disk"] = {**self.disk.stats(), "write_through": self.write_disk}
        if self.store is not None:
            out["store"] = self.store.stats()
        return out

    def stop_delays(self) -> None:
        """End the store's simulated delays (the agent is stopping)."""
        if self.store is not None:
            self.store.stop_delays()

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def close_thread(self) -> None:
        """Close the calling thread's own database connection to the disk tier (diskcache
        keeps one per thread): a worker thread calls it before it ends, so no connection is
        left for the garbage collector (a ResourceWarning on Python 3.13)."""
        if self.disk is not None:
            self.disk.close()  # diskcache closes the calling thread's connection only
