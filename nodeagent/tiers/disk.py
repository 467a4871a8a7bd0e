"""T2: the local disk tier (diskcache holding only this package's framed bytes), its own LRU
eviction within a size limit, and a corrupt database moved aside."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import shutil
import sqlite3
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Final

import diskcache

from nodeagent.private import private_dir, private_file

from .entry import (
    CorruptEntry,
    DiskFull,
    Entry,
    TierError,
    TooLarge,
    _Counters,
    _entry_parts,
    _is_full,
    _nbytes,
    _PartsReader,
    decode_entry,
    peek_entry,
)


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


def open_cache(directory: str, **settings: Any) -> diskcache.Cache:
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
        return open_cache(directory, **settings)
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
    cache = open_cache(directory)
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
