"""T3: the persistent store, a local directory or an fsspec URL, written atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from nodeagent.storeurl import is_url, open_fs

from .entry import (
    CorruptEntry,
    Entry,
    _Counters,
    decode_entry,
    encode_entry,
    peek_entry,
    peek_header,
)

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
