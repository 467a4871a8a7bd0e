"""The entry format of every tier below RAM: ``(frames, meta, version)`` framed as one bytes
value (see the package's docstring), its codec, header peeks, and the tiers' errors."""

from __future__ import annotations

import errno
import sqlite3
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgpack

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
