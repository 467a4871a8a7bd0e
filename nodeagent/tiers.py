"""Storage tiers of the node agent: T1 RAM, T2 local disk (diskcache), T3 persistent store.

An entry is ``(frames, meta, version)``: payload frames that stay opaque bytes (the agent never
unpickles), a small msgpack-able ``meta`` map, and a per-key version. Entries written to disk
use one ``bytes`` value in this module's own framing, so diskcache never pickles and never
unpickles (``_BytesOnlyDisk`` refuses both)::

    b"SMe1" | u32 header length (big endian) | msgpack header | frame 0 | frame 1 | ...
    header = {"key": str, "meta": map, "version": int, "sizes": [int, ...]}

A value that does not decode (or names another key) is corrupt: it is deleted, counted, and
the read is a miss. :func:`peek_entry` reads only the header, so the version and size of an
entry below RAM can be learnt without reading its payload.

Threads: the agent's ROUTER loop owns RAM, the pending writes and the version numbers; its
writer and loader threads only call the disk and store tiers (diskcache and plain files are
safe to use from several threads) and :meth:`TieredStore.read_below`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

import diskcache
import msgpack

__all__ = [
    "DiskTier",
    "Entry",
    "RamTier",
    "StoreTier",
    "TieredStore",
    "VersionConflict",
    "decode_entry",
    "encode_entry",
    "peek_entry",
    "write_raw_disk_value",
]

_MAGIC: Final = b"SMe1"
_LEN: Final = struct.Struct(">I")

BufferLike = bytes | bytearray | memoryview


def _nbytes(frame: BufferLike) -> int:
    return memoryview(frame).nbytes


@dataclass(frozen=True)
class Entry:
    """One stored value: payload frames, opaque meta and version."""

    frames: tuple[BufferLike, ...]
    meta: Mapping[str, Any]
    version: int
    nbytes: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", sum(_nbytes(f) for f in self.frames))


class VersionConflict(Exception):
    """A PUT's ``expect_version`` differs from the stored version."""

    error: Final = "version-conflict"


class CorruptEntry(ValueError):
    """Bytes that are not an entry in this module's framing."""


def _entry_parts(key: str, entry: Entry) -> list[BufferLike]:
    """The pieces of an encoded entry, in order: magic, header length, header, frames."""
    header = msgpack.packb(
        {
            "key": key,
            "meta": dict(entry.meta),
            "version": entry.version,
            "sizes": [_nbytes(f) for f in entry.frames],
        },
        use_bin_type=True,
    )
    return [_MAGIC, _LEN.pack(len(header)), header, *entry.frames]


def encode_entry(key: str, entry: Entry) -> bytes:
    """Serialise ``entry`` to one bytes value (one copy of the payload)."""
    return b"".join(_entry_parts(key, entry))


class _PartsReader:
    """A file-like ``read(n)`` over buffers, so that diskcache streams a large entry to its
    file in big chunks, with no joined copy of the payload."""

    def __init__(self, parts: Sequence[BufferLike]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts if _nbytes(p)]

    def read(self, size: int = -1) -> memoryview | bytes:
        """The next chunk (a view, not a copy), at most ``size`` bytes; b"" at the end."""
        if not self._parts:
            return b""
        head = self._parts[0]
        if size < 0 or size >= len(head):
            self._parts.pop(0)
            return head
        self._parts[0] = head[size:]
        return head[:size]


def _check_header(key: str, raw: BufferLike) -> tuple[Mapping[str, Any], int, list[int]]:
    """Validate an entry header: ``(meta, version, frame sizes)``."""
    try:
        header = msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        raise CorruptEntry(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptEntry("header is not a map")
    sizes, meta, version = header.get("sizes"), header.get("meta"), header.get("version")
    if header.get("key") != key:
        raise CorruptEntry("entry belongs to another key")
    if not isinstance(meta, dict) or isinstance(version, bool) or not isinstance(version, int):
        raise CorruptEntry("bad meta or version")
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes
    ):
        raise CorruptEntry("bad frame sizes")
    return meta, version, sizes


def decode_entry(key: str, blob: bytes) -> Entry:
    """Parse a value written by :func:`encode_entry`; frames are zero-copy slices of ``blob``.

    :raises CorruptEntry: when ``blob`` is not a well-formed entry for ``key``.
    """
    view = memoryview(blob)
    start = len(_MAGIC) + _LEN.size
    if len(view) < start or bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise CorruptEntry("bad magic")
    (hlen,) = _LEN.unpack(view[len(_MAGIC) : start])
    if start + hlen > len(view):
        raise CorruptEntry("truncated header")
    meta, version, sizes = _check_header(key, view[start : start + hlen])
    offset = start + hlen
    if offset + sum(sizes) != len(view):
        raise CorruptEntry("frame sizes do not match the value length")
    frames = []
    for size in sizes:
        frames.append(view[offset : offset + size])
        offset += size
    return Entry(tuple(frames), meta, version)


def peek_entry(key: str, fh: IO[bytes]) -> int:
    """The version of the entry written by :func:`encode_entry` at the start of ``fh``.

    Reads the header only (a few hundred bytes, whatever the payload size).

    :raises CorruptEntry: when the header is not a well-formed entry header for ``key``.
    """
    prefix = fh.read(len(_MAGIC) + _LEN.size)
    if len(prefix) < len(_MAGIC) + _LEN.size or prefix[: len(_MAGIC)] != _MAGIC:
        raise CorruptEntry("bad magic")
    (hlen,) = _LEN.unpack(prefix[len(_MAGIC) :])
    raw = fh.read(hlen)
    if len(raw) != hlen:
        raise CorruptEntry("truncated header")
    return _check_header(key, raw)[1]


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evictions: int = 0
    spills: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "evictions": self.evictions,
            "spills": self.spills,
        }


# --------------------------------------------------------------------------- T1 RAM


class RamTier:
    """Entries in a dict, least recently used first, within ``budget_bytes``.

    Frames are kept as received (zmq frame memoryviews), never copied.
    """

    name: Final = "ram"

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget_bytes = budget_bytes
        self.bytes = 0
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

        An entry larger than the whole budget is not kept (and evicts nothing).

        :returns: the evicted ``(key, entry)`` pairs, for the caller to spill.
        """
        self.remove(key)
        if entry.nbytes > self.budget_bytes:
            return []
        evicted: list[tuple[str, Entry]] = []
        while self.bytes + entry.nbytes > self.budget_bytes:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            evicted.append((old_key, old))
        self._entries[key] = entry
        self.bytes += entry.nbytes
        self.counters.evictions += len(evicted)
        return evicted

    def remove(self, key: str) -> bool:
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self.bytes -= old.nbytes
        return True

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return count

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "budget": self.budget_bytes,
            **self.counters.as_dict(),
        }


# --------------------------------------------------------------------------- T2 disk


class _BytesOnlyDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache Disk that stores and returns ``bytes`` and ``str`` only.

    diskcache pickles any other value and unpickles it on read; the agent must never unpickle
    (invariant 4), so a pickled value found in the directory is refused, not loaded.
    """

    def put(self, key: Any) -> Any:
        if type(key) is not str:
            raise TypeError("disk tier keys must be str")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise CorruptEntry("pickled key in the disk tier")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if read and isinstance(value, _PartsReader):
            return super().store(value, True, key=key)
        if type(value) is not bytes:
            raise TypeError("disk tier values must be bytes")
        if len(value) >= self.min_file_size:
            # diskcache writes large bytes by iterating a BytesIO, which yields *lines*: one
            # write() per newline byte, ~100k writes (90 ms) for 26 MiB of pickle. Stream it.
            return super().store(_PartsReader([value]), True, key=key)
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise CorruptEntry("pickled value in the disk tier")
        return super().fetch(mode, filename, value, read)


def _open_cache(directory: str, **settings: Any) -> diskcache.Cache:
    return diskcache.Cache(directory, disk=_BytesOnlyDisk, **settings)


def write_raw_disk_value(directory: str, key: str, raw: bytes) -> None:
    """Store ``raw`` as the disk tier value of ``key`` in ``directory``, bypassing the framing.

    For tests and fault injection (a corrupt entry); safe while an agent uses the directory.
    """
    cache = _open_cache(directory)
    try:
        cache.set(DiskTier.internal_key(key), raw)
    finally:
        cache.close()


class DiskTier:
    """T2: a diskcache directory with an explicit size limit and LRU eviction."""

    name: Final = "disk"

    def __init__(self, directory: str, size_limit_bytes: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.size_limit_bytes = size_limit_bytes
        # size_limit is always explicit: diskcache's default silently evicts beyond 1 GiB.
        self._cache = _open_cache(
            directory, size_limit=size_limit_bytes, eviction_policy="least-recently-used"
        )
        self.counters = _Counters()

    @staticmethod
    def internal_key(key: str) -> str:
        """The diskcache key under which ``key`` is stored."""
        return key

    def __contains__(self, key: str) -> bool:
        return self.internal_key(key) in self._cache

    def get(self, key: str) -> Entry | None:
        ikey = self.internal_key(key)
        try:
            blob = self._cache.get(ikey, default=None)
            if blob is None:
                self.counters.misses += 1
                return None
            if not isinstance(blob, bytes):
                raise CorruptEntry("value is not bytes")
            entry = decode_entry(key, blob)
        except CorruptEntry:
            self.counters.corrupt += 1
            self.counters.misses += 1
            self._cache.delete(ikey)
            return None
        self.counters.hits += 1
        return entry

    def peek(self, key: str) -> tuple[int, int] | None:
        """``(version, stored size in bytes)`` of ``key``, reading only the entry's header.

        None when absent or unreadable (a later :meth:`get` deletes a corrupt value).
        """
        try:
            value = self._cache.get(self.internal_key(key), default=None, read=True)
        except CorruptEntry:
            return None
        if value is None:
            return None
        try:
            if isinstance(value, bytes):  # small values live in diskcache's database
                return peek_entry(key, io.BytesIO(value)), len(value)
            with value:  # an open file of a larger value
                return peek_entry(key, value), os.fstat(value.fileno()).st_size
        except CorruptEntry:
            return None

    def put(self, key: str, entry: Entry) -> None:
        parts = _entry_parts(key, entry)
        if sum(_nbytes(p) for p in parts) < self._cache.disk.min_file_size:
            self._cache.set(self.internal_key(key), b"".join(parts))
        else:  # streamed to its file: no joined copy of a large payload
            self._cache.set(self.internal_key(key), _PartsReader(parts), read=True)

    def remove(self, key: str) -> bool:
        return bool(self._cache.delete(self.internal_key(key)))

    def clear(self) -> int:
        return int(self._cache.clear())

    def close(self) -> None:
        self._cache.close()

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._cache),
            "bytes": int(self._cache.volume()),
            "limit": self.size_limit_bytes,
            "directory": self.directory,
            **self.counters.as_dict(),
        }


# --------------------------------------------------------------------------- T3 store


class StoreTier:
    """T3: one file per key (``sha256(key).hex()``), written atomically, never evicted.

    :param latency: seconds added to every value read (a benchmark aid that makes a local
        directory behave like a remote store; a miss or a :meth:`peek` costs nothing).
    :param bandwidth: bytes per second all value reads together may take (a benchmark aid;
        None: no cap). A read of N bytes ends no earlier than N / bandwidth seconds after the
        previous capped read ended, so concurrent readers share the cap.
    """

    name: Final = "store"
    _TMP_PREFIX: Final = ".tmp-"

    def __init__(self, directory: str, latency: float = 0.0, bandwidth: int | None = None) -> None:
        if latency < 0 or (bandwidth is not None and bandwidth <= 0):
            raise ValueError("latency must be >= 0 and bandwidth > 0")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.latency = latency
        self.bandwidth = bandwidth
        self.counters = _Counters()
        self._throttle_lock = threading.Lock()
        self._free_at = 0.0  # monotonic time at which the bandwidth cap is free again
        self._no_delays = threading.Event()  # set when the agent stops: delays end at once

    def path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest())

    def __contains__(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def stop_delays(self) -> None:
        """End the simulated latency and bandwidth waits (now and later): the agent stops."""
        self._no_delays.set()

    def _delay(self, seconds: float) -> None:
        if seconds > 0:
            self._no_delays.wait(seconds)

    def _read(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            self._delay(self.latency)
            started = time.monotonic()
            blob = fh.read()
        if self.bandwidth is not None:
            with self._throttle_lock:
                self._free_at = max(started, self._free_at) + len(blob) / self.bandwidth
                until = self._free_at
            self._delay(until - time.monotonic())
        return blob

    def get(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            blob = self._read(path)
        except FileNotFoundError:
            self.counters.misses += 1
            return None
        try:
            entry = decode_entry(key, blob)
        except CorruptEntry:
            self.counters.corrupt += 1
            self.counters.misses += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        self.counters.hits += 1
        return entry

    def peek(self, key: str) -> tuple[int, int] | None:
        """``(version, file size)`` of ``key``, reading only the header; None when absent."""
        try:
            with open(self.path(key), "rb") as fh:
                return peek_entry(key, fh), os.fstat(fh.fileno()).st_size
        except (FileNotFoundError, CorruptEntry):
            return None

    def put(self, key: str, entry: Entry) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=self._TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(encode_entry(key, entry))
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return False
        return True

    def _files(self) -> Iterable[os.DirEntry[str]]:
        with os.scandir(self.directory) as it:
            return [e for e in it if e.is_file() and not e.name.startswith(self._TMP_PREFIX)]

    def clear(self) -> int:
        count = 0
        for item in self._files():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
                count += 1
        return count

    def stats(self) -> dict[str, Any]:
        files = list(self._files())
        total = 0
        for item in files:
            with contextlib.suppress(FileNotFoundError):
                total += item.stat().st_size
        return {
            "entries": len(files),
            "bytes": total,
            "limit": None,
            "directory": self.directory,
            "latency": self.latency,
            "bandwidth": self.bandwidth,
            **self.counters.as_dict(),
        }


# --------------------------------------------------------------------------- the tiers together


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
            store is not None and os.stat(store.directory).st_dev == os.stat(disk.directory).st_dev
        )
        # Highest version handed out or installed per key in this process; kept after
        # evict/clear so a version number is never reused for different bytes while the agent
        # runs, and so a load that read an older version can tell it is outdated.
        self._versions: dict[str, int] = {}
        # Entries acknowledged but not yet written below RAM (write-behind); read here too,
        # so an entry too large for RAM is served while its disk write is under way.
        self._pending: dict[str, Entry] = {}

    # -- reads

    def read_below(self, key: str) -> tuple[Entry, str] | None:
        """Read ``key`` from disk, else from the store, without promoting it.

        Safe from a loader thread: it touches neither RAM nor the pending writes.
        """
        if self.disk is not None:
            entry = self.disk.get(key)
            if entry is not None:
                return entry, "disk"
        if self.store is not None:
            entry = self.store.get(key)
            if entry is not None:
                return entry, "store"
        return None

    def get(self, key: str) -> tuple[Entry, str] | None:
        """Find ``key``; a disk or store hit is promoted into RAM.

        :returns: ``(entry, tier name)`` or None.
        """
        entry = self.ram.get(key) or self._pending.get(key)
        if entry is not None:
            return entry, "ram"
        found = self.read_below(key)
        if found is None:
            return None
        entry, tier = found
        if tier == "store" and self.write_disk and self.disk is not None:
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
            current = self.version(key) if self.has(key) is not None else 0
        if expect_version is not None and current != expect_version:
            raise VersionConflict(f"key {key[:80]!r} is at version {current}, not {expect_version}")
        new = max(self._versions.get(key, 0), current or 0) + 1
        self._keep(
            key,
            Entry(tuple(frames), dict(meta), new),
            ram=True,
            disk=self.write_disk,
            store=True,
            defer=defer,
        )
        return new

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
        disk = disk and self.disk is not None
        if not disk and (not ram or entry.nbytes > self.ram.budget_bytes):
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
                if to_disk and self.disk is not None:
                    self.disk.put(key, entry)
                elif to_store and self.disk is not None:
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
        disk when none does (the disk tier culled it, or its write failed). False when there
        is no disk tier to write to."""
        below = self.peek_below(key)
        if below is not None and below[1] >= entry.version:
            return True
        if self.disk is None:
            return False
        self.disk.put(key, entry)
        self.disk.counters.spills += 1
        return True

    def demote(self, key: str) -> bool:
        """Drop ``key`` from RAM only, keeping a copy below; call with no write pending.

        When no lower tier holds this version (its write-behind failed, or the disk tier
        culled it), it is written to disk first: a demotion never loses the only copy. Without
        a disk tier such an entry stays in RAM.

        :returns: whether RAM dropped the entry.
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
