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

from .disk import DISK_ASIDE, DiskTier, write_raw_disk_value
from .entry import (
    ENTRY_OVERHEAD,
    CorruptEntry,
    DiskFull,
    Entry,
    TierError,
    TooLarge,
    VersionConflict,
    decode_entry,
    encode_entry,
    peek_entry,
    peek_header,
)
from .ram import RamTier
from .store import StoreTier
from .tiered import TieredStore

__all__ = [
    "DISK_ASIDE",
    "ENTRY_OVERHEAD",
    "CorruptEntry",
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
