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
import errno
import gc
import hashlib
import io
import os
import re
import secrets
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol

import diskcache
import msgpack

from nodeagent.private import private_dir, private_file
from nodeagent.storeurl import is_url, open_fs

__all__ = [
    "DISK_ASIDE",
    "ENTRY_OVERHEAD",
    "DiskFull",
    "DiskTier",
    "Entry",
    "RamTier",
    "StoreTier",
    "TierError",
    "TieredStore",
    "TooLarge",
    "VersionConflict",
    "decode_entry",
    "encode_entry",
    "peek_entry",
    "peek_header",
    "write_raw_disk_value",
]

_MAGIC: Final = b"SMe1"
_LEN: Final = struct.Struct(">I")

BufferLike = bytes | bytearray | memoryview


def _nbytes(frame: BufferLike) -> int:
    return memoryview(frame).nbytes


#: Bytes of RAM an entry costs besides its payload and meta (its objects, its slot in the
#: LRU map): counted in the RAM budget, so that many empty entries cannot fill memory unseen.
ENTRY_OVERHEAD: Final = 512


@dataclass(frozen=True)
class Entry:
    """One stored value: payload frames, opaque meta and version.

    ``nbytes`` is the payload's size; ``meta_bytes`` the meta's (msgpack); ``held_bytes``
    what the entry costs the RAM budget.
    """

    frames: tuple[BufferLike, ...]
    meta: Mapping[str, Any]
    version: int
    nbytes: int = field(default=-1)
    meta_bytes: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", sum(_nbytes(f) for f in self.frames))
        if self.meta_bytes < 0:
            packed = msgpack.packb(dict(self.meta), use_bin_type=True)
            object.__setattr__(self, "meta_bytes", len(packed))

    @property
    def held_bytes(self) -> int:
        """What keeping the entry in RAM costs the budget: payload, meta and overhead."""
        return self.nbytes + self.meta_bytes + ENTRY_OVERHEAD


class VersionConflict(Exception):
    """A PUT's ``expect_version`` differs from the stored version."""

    error: Final = "version-conflict"


class TierError(OSError):
    """A tier cannot hold what it is asked to; ``error`` is the protocol's name for it.

    An OSError, so that a writer that survives a full disk survives these too."""

    error: str = "internal"


class TooLarge(TierError):
    """A value larger than every tier that could hold it: refused, never half-kept."""

    error = "too-large"


class DiskFull(TierError):
    """The disk tier's file system (or its database) has no room for a write."""

    error = "disk-full"


def _is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (a file write, or SQLite's own words)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


class CorruptEntry(ValueError):
    """Bytes that are not an entry in this module's framing."""

    error: Final = "corrupt"  # (a reader's local name: it deleted the value, a miss)


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


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


def peek_header(key: str, fh: _Reader) -> tuple[int, int]:
    """``(version, encoded size)`` of the entry written by :func:`encode_entry` at the start of
    ``fh``, from its header only (a few hundred bytes, whatever the payload size).

    The size is the one the header declares (magic, header and frames); :func:`decode_entry`
    refuses a value of any other length.

    :raises CorruptEntry: when the header is not a well-formed entry header for ``key``.
    """
    start = len(_MAGIC) + _LEN.size
    prefix = fh.read(start)
    if len(prefix) < start or prefix[: len(_MAGIC)] != _MAGIC:
        raise CorruptEntry("bad magic")
    (hlen,) = _LEN.unpack(prefix[len(_MAGIC) :])
    raw = fh.read(hlen)
    if len(raw) != hlen:
        raise CorruptEntry("truncated header")
    _meta, version, sizes = _check_header(key, raw)
    return version, start + hlen + sum(sizes)


def peek_entry(key: str, fh: _Reader) -> int:
    """The version of the entry written by :func:`encode_entry` at the start of ``fh``.

    Reads the header only (a few hundred bytes, whatever the payload size).

    :raises CorruptEntry: when the header is not a well-formed entry header for ``key``.
    """
    return peek_header(key, fh)[0]


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


#: Where a disk tier whose database is not one goes: a folder in the tier's directory, with
#: the database and the files of its entries (``esg/store.py`` moves a bad ESG file aside the same
#: way). Deleting it loses nothing the new database knows.
DISK_ASIDE: Final = "cache.bad"
_DB: Final = "cache.db"  # diskcache's database file; its journal adds -wal and -shm
#: diskcache's entry files live in two levels of two-hex-digit folders (``ab/cd/....val``).
_ENTRY_DIR: Final = re.compile(r"[0-9a-f]{2}")


def _try_open(directory: str, settings: Mapping[str, Any]) -> diskcache.Cache | str:
    """The cache, or why its database is not one (SQLite's "file is not a database",
    "database disk image is malformed"). Locked, unreadable or full is not the file's
    fault: those errors go to the caller, and nothing is moved.

    diskcache connects before it fails; the connection of the half-built cache is dropped
    here, with its ResourceWarning silenced (Python 3.13 warns on unclosed connections, and a
    warning left for later surfaces inside a test of a suite that runs with warnings as
    errors). Warning filters are process-wide: they are touched only on the main thread, and
    only when it failed (a cold run opens its disk tier on a writer thread while a build on the
    main thread records its own warnings)."""
    try:
        return _open_cache(directory, **settings)
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
    if threading.current_thread() is threading.main_thread():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # (the connection sits in a thread-local: a cycle)
    else:
        gc.collect()
    return reason


@contextlib.contextmanager
def _repair_lock(directory: str) -> Iterator[None]:
    """Held while a process checks a damaged database again and moves it aside: another
    process that found it damaged too then opens the new one instead of moving it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the race is left open
        yield
        return
    fd = os.open(directory, os.O_RDONLY)  # the directory itself: no lock file left in it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _move_cache_aside(directory: str) -> str:
    """Move the database, its journal and its entries' folders to :data:`DISK_ASIDE` (an
    older one is replaced, as a second bad ESG file replaces the first); its path."""
    aside = os.path.join(directory, DISK_ASIDE)
    shutil.rmtree(aside, ignore_errors=True)
    os.mkdir(aside)
    for name in sorted(os.listdir(directory)):
        source = os.path.join(directory, name)
        if name in (_DB, f"{_DB}-wal", f"{_DB}-shm") or (
            _ENTRY_DIR.fullmatch(name) and os.path.isdir(source)
        ):
            os.replace(source, os.path.join(aside, name))
    return aside


def _open_or_move_aside(directory: str, **settings: Any) -> tuple[diskcache.Cache, str | None]:
    """Open the diskcache in ``directory``; when its database is not one, move it aside with
    its entries and start an empty one. Returns the cache and a one-line notice of the move
    (None when there was none)."""
    cache = _try_open(directory, settings)
    if not isinstance(cache, str):
        return cache, None
    with _repair_lock(directory):
        cache = _try_open(directory, settings)  # another process may have moved it meanwhile
        if not isinstance(cache, str):
            return cache, None
        reason = cache
        aside = _move_cache_aside(directory)
        cache = _try_open(directory, settings)
    if isinstance(cache, str):  # a new, empty file that is not a database: not ours to fix
        raise sqlite3.DatabaseError(f"{directory}: {cache}")
    notice = (
        f"disk tier {directory}: {_DB} is not a readable database ({reason}); moved it with "
        f"its entries' files to {aside} and started a new one"
    )
    return cache, notice


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
    """T2: a diskcache directory with an explicit size limit and LRU eviction.

    Eviction is this class's, not diskcache's (``cull_limit=0``): diskcache culls after it
    inserted, up to ten least recently used rows at once, the row just written among them
    when it is one of the oldest ten (two large PUTs into an empty tier: both gone). Here a
    write first evicts the least recently used *other* entries, one at a time, until the
    incoming value fits, and a value larger than the whole limit is refused
    (:class:`TooLarge`) before anything is evicted. Rejected alternative: check after the
    write and put the value back; it still evicted ten rows for one.

    A directory whose database is not one (overwritten, truncated to garbage) is not an
    error: its database and entries are moved to :data:`DISK_ASIDE` in the directory, an
    empty tier starts, and :attr:`notice` says so in one line (the agent logs it; STATS
    shows it). A locked or unreadable database still raises ``sqlite3.OperationalError``.
    """

    name: Final = "disk"

    def __init__(self, directory: str, size_limit_bytes: int) -> None:
        # 0700 (diskcache makes it 0755 and its files 0644, by the umask): other users of
        # the machine must not read the values, nor their keys in cache.db. The files inside
        # keep the umask of the process that writes them (a test process's is not ours to
        # change); the directory is what keeps others out.
        private_dir(directory)
        self.directory = directory
        self.size_limit_bytes = size_limit_bytes
        # size_limit is always explicit: diskcache's default silently evicts beyond 1 GiB.
        self._cache, self.notice = _open_or_move_aside(
            directory,
            size_limit=size_limit_bytes,
            eviction_policy="least-recently-used",
            cull_limit=0,  # never culls on its own: see _make_room
        )
        private_file(os.path.join(directory, "cache.db"))
        self.counters = _Counters()

    @staticmethod
    def internal_key(key: str) -> str:
        """The diskcache key under which ``key`` is stored."""
        return key

    def __contains__(self, key: str) -> bool:
        return self.internal_key(key) in self._cache

    def get(self, key: str, corrupt: list[str] | None = None) -> Entry | None:
        """The entry of ``key``, or None. A corrupt value is deleted and is a miss; with
        ``corrupt`` given, one line saying why is appended to it."""
        ikey = self.internal_key(key)
        try:
            blob = self._cache.get(ikey, default=None)
            if blob is None:
                self.counters.misses += 1
                return None
            if not isinstance(blob, bytes):
                raise CorruptEntry("value is not bytes")
            entry = decode_entry(key, blob)
        except CorruptEntry as exc:
            self.counters.corrupt += 1
            self.counters.misses += 1
            self._cache.delete(ikey)
            if corrupt is not None:
                corrupt.append(f"disk tier {self.directory}: corrupt value ({exc}), deleted")
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

    def stored_size(self, key: str, entry: Entry) -> int:
        """The bytes ``entry`` takes in this tier (its framing included)."""
        return sum(_nbytes(p) for p in _entry_parts(key, entry))

    def holds(self, key: str, entry: Entry) -> bool:
        """Whether ``entry`` fits this tier's size limit at all."""
        return self.stored_size(key, entry) <= self.size_limit_bytes

    def put(self, key: str, entry: Entry) -> None:
        """Write ``entry``, evicting least recently used other entries to make room.

        :raises TooLarge: when it is larger than the size limit (nothing is evicted).
        :raises DiskFull: when the file system or the database has no room.
        """
        parts = _entry_parts(key, entry)
        size = sum(_nbytes(p) for p in parts)
        if size > self.size_limit_bytes:
            raise TooLarge(
                f"disk tier {self.directory}: an entry of {size} bytes exceeds its size limit "
                f"({self.size_limit_bytes} bytes)"
            )
        try:
            self._make_room(key, size)
            if size < self._cache.disk.min_file_size:
                self._cache.set(self.internal_key(key), b"".join(parts))
            else:  # streamed to its file: no joined copy of a large payload
                self._cache.set(self.internal_key(key), _PartsReader(parts), read=True)
        except (OSError, sqlite3.OperationalError) as exc:
            if isinstance(exc, TierError) or not _is_full(exc):
                raise
            raise DiskFull(f"disk tier {self.directory} is full ({exc})") from None

    #: Rows read at a time when looking for entries to evict.
    _EVICT_BATCH: Final = 16

    def _make_room(self, key: str, incoming: int) -> None:
        """Evict least recently used entries other than ``key`` until ``incoming`` more bytes
        fit the size limit (``key``'s own old value, replaced by the write, counts as free).

        The rows are chosen with diskcache's own LRU order (its ``access_time`` index, which
        reads update); deleting goes through its public ``delete``, which removes files too.
        """
        ikey = self.internal_key(key)
        sql = self._cache._sql  # (diskcache's query helper: the LRU order has no public API)
        rows = sql("SELECT size FROM Cache WHERE key = ? AND raw = 1", (ikey,)).fetchall()
        freed = sum(int(size or 0) for (size,) in rows)
        while self._cache.volume() + incoming - freed > self.size_limit_bytes:
            victims = sql(
                "SELECT key FROM Cache WHERE raw = 1 AND key != ? ORDER BY access_time LIMIT ?",
                (ikey, self._EVICT_BATCH),
            ).fetchall()
            if not victims:
                return  # only this key's own value is left: the write goes ahead
            for (victim,) in victims:
                if self._cache.delete(victim):
                    self.counters.evictions += 1
                if self._cache.volume() + incoming - freed <= self.size_limit_bytes:
                    return

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
            **({"notice": self.notice} if self.notice else {}),
            **self.counters.as_dict(),
        }


# --------------------------------------------------------------------------- T3 store


_TMP_PREFIX: Final = ".tmp-"  # temporary files of atomic writes; never entries


class _LocalFiles:
    """Store files in a local directory, with plain os calls (the fast path: no fsspec)."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as fh:
            return fh.read()

    def peek(self, key: str, name: str) -> tuple[int, int]:
        with open(self.path(name), "rb") as fh:
            return peek_entry(key, fh), os.fstat(fh.fileno()).st_size

    def write(self, name: str, blob: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, self.path(name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def delete(self, name: str) -> bool:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return False
        return True

    def listing(self) -> list[tuple[str, int]]:
        """``(name, size)`` of every entry file (temporary files left out)."""
        out = []
        with os.scandir(self.directory) as it:
            for item in it:
                if item.is_file() and not item.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        out.append((item.name, item.stat().st_size))
        return out


class _RangeReader:
    """``read(n)`` from the start of a remote object: the first ``first`` bytes come in one
    ranged request (an entry header fits, whatever the payload size); more, if asked for,
    in one more."""

    def __init__(self, fetch: Callable[[int, int], bytes], first: int) -> None:
        self._fetch = fetch
        self._buf = bytes(fetch(0, first))
        self._complete = len(self._buf) < first  # the object is shorter: we hold all of it
        self._pos = 0

    def read(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._buf) and not self._complete:
            self._buf += bytes(self._fetch(len(self._buf), end))
            self._complete = len(self._buf) < end
        out = self._buf[self._pos : end]
        self._pos += len(out)
        return out


class _FsspecFiles:
    """Store files under ``root`` of an fsspec filesystem (object store or remote file system).

    Writes are atomic for readers: on an object store one PUT of the whole object
    (``pipe_file``); elsewhere a temporary file and a rename. A header read is one ranged
    request. Listing is left to :meth:`StoreTier.clear`: on a large bucket it is slow.
    """

    _HEAD_BYTES: Final = 4096  # an entry header (key, meta, sizes) fits in one ranged read

    def __init__(self, fs: Any, root: str) -> None:
        from nodeagent.storeurl import single_put

        self.fs = fs
        self.root = root.rstrip("/")
        self.single_put = single_put(fs)
        if not self.single_put:
            fs.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        # One ranged GET of one byte: s3fs's exists() costs a HEAD and, for a missing key,
        # a listing too (it checks for a "directory" of that name).
        try:
            self._range(self.path(name), 0, 1)
        except FileNotFoundError:
            return False
        return True

    def read(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(name)))

    def peek(self, key: str, name: str) -> tuple[int, int]:
        path = self.path(name)
        return peek_header(key, _RangeReader(partial(self._range, path), self._HEAD_BYTES))

    def _range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of ``path``; fewer (or none) past its end."""
        try:
            return bytes(self.fs.cat_file(path, start=start, end=end))
        except OSError as exc:
            # S3 answers a range that starts at or past the end (an empty or truncated
            # object) with 416, which s3fs raises as EINVAL: that is a short read, not an error.
            if exc.errno == errno.EINVAL and not isinstance(exc, FileNotFoundError):
                return b""
            raise

    def write(self, name: str, blob: bytes) -> None:
        path = self.path(name)
        if self.single_put:
            self.fs.pipe_file(path, blob)
            return
        tmp = self.path(f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        try:
            self.fs.pipe_file(tmp, blob)
            self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(tmp)
            raise

    def delete(self, name: str) -> bool:
        path = self.path(name)
        if not self.exists(name):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        return True

    def listing(self) -> list[tuple[str, int]]:
        """``(name, size)`` of every entry object: names that are a sha256, nothing else (a
        prefix may be shared with other data)."""
        try:
            found = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            found = []
        finally:
            # Listings are cached by some backends (s3fs): a later exists() must not answer
            # from a listing made before another agent wrote.
            self.fs.invalidate_cache(self.root)
        out = []
        for item in found:
            name = str(item["name"]).rstrip("/").rsplit("/", 1)[-1]
            if item.get("type") == "file" and _is_entry_name(name):
                out.append((name, int(item.get("size") or 0)))
        return out


def _is_entry_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class StoreTier:
    """T3: one file per key (``sha256(key).hex()``), written atomically, never evicted.

    :param location: a local directory (plain os calls) or an fsspec URL (``s3://bucket/prefix``,
        ``gs://...``, ``memory://...``; a ``file://`` URL is served as a local directory). See
        :mod:`nodeagent.storeurl` for credentials and options.
    :param latency: seconds added to every value read (a benchmark aid that makes a local
        directory behave like a remote store; a miss or a :meth:`peek` costs nothing).
    :param bandwidth: bytes per second all value reads together may take (a benchmark aid;
        None: no cap). A read of N bytes ends no earlier than N / bandwidth seconds after the
        previous capped read ended, so concurrent readers share the cap.
    :raises nodeagent.storeurl.StoreError: for a URL fsspec cannot open (one line, with the fix).

    ``stats()`` counts the entries and bytes of a local directory by listing it; for a remote
    store it reports None for both (listing a large bucket on every STATS call would take
    seconds) and counts this agent's own ``writes`` and ``written_bytes`` instead.
    """

    name: Final = "store"
    _TMP_PREFIX: Final = _TMP_PREFIX

    def __init__(self, location: str, latency: float = 0.0, bandwidth: int | None = None) -> None:
        if latency < 0 or (bandwidth is not None and bandwidth <= 0):
            raise ValueError("latency must be >= 0 and bandwidth > 0")
        self.location = location
        files: _LocalFiles | _FsspecFiles
        #: The local directory of the store; None for a remote one.
        self.directory: str | None
        if is_url(location):
            fs, root = open_fs(location)
            if "file" in ({fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)):
                files = _LocalFiles(root)  # file:// is a directory: keep the fast path
            else:
                files = _FsspecFiles(fs, root)
        else:
            files = _LocalFiles(location)
        self._files = files
        self.directory = files.directory if isinstance(files, _LocalFiles) else None
        self.latency = latency
        self.bandwidth = bandwidth
        self.counters = _Counters()
        self.writes = 0
        self.written_bytes = 0
        self._throttle_lock = threading.Lock()
        self._free_at = 0.0  # monotonic time at which the bandwidth cap is free again
        self._no_delays = threading.Event()  # set when the agent stops: delays end at once

    @staticmethod
    def file_name(key: str) -> str:
        """The name of ``key``'s file or object in the store."""
        return hashlib.sha256(key.encode()).hexdigest()

    def path(self, key: str) -> str:
        """Where ``key``'s entry lives: a local path, or a path on the store's filesystem."""
        return self._files.path(self.file_name(key))

    def __contains__(self, key: str) -> bool:
        return self._files.exists(self.file_name(key))

    def stop_delays(self) -> None:
        """End the simulated latency and bandwidth waits (now and later): the agent stops."""
        self._no_delays.set()

    def _delay(self, seconds: float) -> None:
        if seconds > 0:
            self._no_delays.wait(seconds)

    def _read(self, name: str) -> bytes:
        began = time.monotonic()
        blob = self._files.read(name)  # a miss raises here: it costs no simulated delay
        took = time.monotonic() - began
        self._delay(self.latency)
        if self.bandwidth is not None:
            started = time.monotonic() - took  # the read itself counts towards the cap
            with self._throttle_lock:
                self._free_at = max(started, self._free_at) + len(blob) / self.bandwidth
                until = self._free_at
            self._delay(until - time.monotonic())
        return blob

    def get(self, key: str, corrupt: list[str] | None = None) -> Entry | None:
        """The entry of ``key``, or None; a corrupt value is deleted (see DiskTier.get)."""
        name = self.file_name(key)
        try:
            blob = self._read(name)
        except FileNotFoundError:
            self.counters.misses += 1
            return None
        try:
            entry = decode_entry(key, blob)
        except CorruptEntry as exc:
            self.counters.corrupt += 1
            self.counters.misses += 1
            self._files.delete(name)
            if corrupt is not None:
                corrupt.append(f"store {self.location}: corrupt value ({exc}), deleted")
            return None
        self.counters.hits += 1
        return entry

    def peek(self, key: str) -> tuple[int, int] | None:
        """``(version, stored size)`` of ``key``, reading only the header; None when absent
        or unreadable (a later :meth:`get` deletes a corrupt entry)."""
        try:
            return self._files.peek(key, self.file_name(key))
        except (FileNotFoundError, CorruptEntry):
            return None

    def put(self, key: str, entry: Entry) -> None:
        blob = encode_entry(key, entry)
        self._files.write(self.file_name(key), blob)
        self.writes += 1
        self.written_bytes += len(blob)

    def remove(self, key: str) -> bool:
        return self._files.delete(self.file_name(key))

    def clear(self) -> int:
        count = 0
        for name, _size in self._files.listing():
            count += self._files.delete(name)
        return count

    def stats(self) -> dict[str, Any]:
        entries: int | None = None
        total: int | None = None
        if isinstance(self._files, _LocalFiles):
            listing = self._files.listing()
            entries, total = len(listing), sum(size for _name, size in listing)
        return {
            "entries": entries,
            "bytes": total,
            "limit": None,
            "directory": self.directory,
            "location": self.location,
            "writes": self.writes,
            "written_bytes": self.written_bytes,
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
