"""The disk tier of this machine used from this process: :class:`DiskClient` (a run with no
agent writes it here, behind the tests) and :func:`open_disk_tier` (a warm run reads it here
while an agent boots, or instead of one)."""

from __future__ import annotations

import gc
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from nodeagent.protocol import Fetched, LeaseReply
from pytest_statemigrate import codec
from pytest_statemigrate.settings import Settings

__all__ = ["DiskClient", "open_disk_tier"]


class DiskClient:
    """The disk tier of this machine, written and read in-process with the agent's entry
    format: the subset of ``AgentClient`` the proxy uses, for a run with no agent (see
    :meth:`EmbeddedAgent.local_client`). Leases are always granted: nobody else builds.

    One thread opens the disk tier (creating it is ~15 ms of SQLite) while pytest collects,
    and writes behind, as the agent does: an entry whose frames nothing can change (bytes, the
    pickle body) is sealed (its payload hashed, :class:`codec.Unsealed`) and written while the
    tests run, and read from memory until then; one holding an array's live memory is written
    at once. A write that fails is counted, and the run's summary says so (:meth:`stats` waits
    for the writes first).
    """

    seals_later = True  # put takes a codec.Unsealed

    def __init__(self, opener: Callable[[], Any], directory: str) -> None:
        """:param opener: opens the disk tier at ``directory`` (called on the writer thread)."""
        self.write_errors = 0
        self._last_error: str | None = None
        self._pending: dict[str, tuple[Any, Any, int]] = {}  # key → (frames, meta, version)
        self._lock = threading.Lock()
        self._opener = opener
        self._disk: Any = None
        self._opened = threading.Event()
        self._failure: BaseException | None = None  # why it could not be opened
        self._directory = directory
        self._queue: queue.SimpleQueue[Any] | None = None
        self._writer: threading.Thread | None = None
        self._start()

    @property
    def disk(self) -> Any:
        """The disk tier, once the writer opened it (on the tests' thread only).

        :raises OSError: when it could not be opened."""
        self._opened.wait()
        if self._disk is None:
            self._collect_failure()
            raise OSError(self._last_error)
        return self._disk

    def _collect_failure(self) -> None:
        """diskcache opens its SQLite database before it fails: the half-built cache (held by
        the failure's traceback) is collected here, on the tests' thread, with its
        ResourceWarning silenced (warning filters are process-wide: a thread must not change
        them), so that the warning does not surface later inside a test (Python 3.13 warns on
        unclosed connections, and suites run with warnings as errors)."""
        if self._failure is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._failure = None
            gc.collect()

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        return {"write_errors": 0}

    def stats(self) -> dict[str, Any]:
        self.flush()
        reply: dict[str, Any] = {"write_errors": self.write_errors}
        if self._last_error is not None:
            reply["last_write_error"] = self._last_error
            reply["writer"] = f"disk tier {self._directory}"
        return reply

    def get(self, key: str) -> Fetched | None:
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            frames, meta, version = pending
            frames = _frames(frames)
        else:
            try:
                entry = self.disk.get(key)
            except OSError:  # it could not be opened: nothing is stored
                return None
            if entry is None:
                return None
            frames, meta, version = entry.frames, entry.meta, entry.version
        return Fetched([memoryview(f) for f in frames], dict(meta), version, "disk")

    def put(self, key: str, frames: Any, meta: Any, expect_version: int | None = None) -> int:
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            version = pending[2] + 1
        else:
            try:
                old = self.disk.peek(key)
            except OSError as exc:  # it could not be opened: this run builds
                raise _full(self._directory, exc) from None
            version = 1 if old is None else old[0] + 1
        if not _settled(frames.payload[1:] if isinstance(frames, codec.Unsealed) else frames[3:]):
            self.flush()  # (in order with what is queued)
            try:
                self.disk.put(key, self._entry(frames, meta, version))
            except OSError as exc:  # a full disk: this run builds; it never fails a test
                raise _full(self._directory, exc) from None
            return version
        pending = (frames, meta, version)
        with self._lock:
            self._pending[key] = pending
        if self._queue is None:
            self._start()
        assert self._queue is not None
        self._queue.put((key, pending))
        return version

    @staticmethod
    def _entry(frames: Any, meta: Any, version: int) -> Any:
        from nodeagent.tiers import Entry

        return Entry(tuple(_frames(frames)), dict(meta), version)

    def _start(self) -> None:
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write, args=(self._queue,), name="statemigrate-disk", daemon=True
        )
        self._writer.start()

    def _write(self, jobs: queue.SimpleQueue[Any]) -> None:
        if not self._opened.is_set():
            try:
                self._disk = self._opener()
            except Exception as exc:  # (OSError: a full disk) every write then fails
                self._last_error = f"cannot open it ({exc})"
                self._failure = exc
            finally:
                self._opened.set()
        try:
            while (job := jobs.get()) is not None:
                key, pending = job
                try:
                    if self._disk is None:
                        raise OSError(self._last_error)
                    self._disk.put(key, self._entry(*pending))
                except Exception as exc:  # (OSError: a full disk) counted, reported at the end
                    self.write_errors += 1
                    self._last_error = str(exc)
                finally:
                    with self._lock:
                        if self._pending.get(key) is pending:
                            del self._pending[key]
        finally:
            if self._disk is not None:
                self._disk.close()  # this thread's connection (diskcache keeps one per thread)

    def flush(self) -> None:
        """Wait for the queued writes."""
        jobs, writer = self._queue, self._writer
        if jobs is None or writer is None:
            return
        self._queue = self._writer = None
        jobs.put(None)
        writer.join()

    def lease(self, key: str, holder: str, ttl: float, **_: Any) -> LeaseReply:
        return LeaseReply(granted=True, present=False, holder=holder, expires_in=ttl)

    def release(self, key: str, holder: str) -> bool:
        return True

    def close(self) -> None:
        pass  # the disk tier stays open for the run; EmbeddedAgent closes it

    def shut(self) -> None:
        """Write what is queued and close the disk tier (the end of the run)."""
        self.flush()
        if self._disk is not None:
            self._disk.close()
        self._collect_failure()


def _frames(frames: Any) -> Sequence[Any]:
    return frames.frames() if isinstance(frames, codec.Unsealed) else frames


def _settled(buffers: Sequence[Any]) -> bool:
    """Whether no code can change these frames (a payload's after its pickle body, which is
    the plugin's own, as meta and signature are) before a later write: they must be ``bytes``
    (an out-of-band buffer is a view of a live array a test may write)."""
    return all(
        isinstance(f, bytes) or (isinstance(f, memoryview) and isinstance(f.obj, bytes))
        for f in buffers
    )


def _full(directory: str, exc: BaseException) -> Exception:
    """The agent's error for a write the disk tier cannot take: this operation fails, not
    the link (the proxy tells them apart by the protocol's error name)."""
    from nodeagent.tiers import DiskFull

    return DiskFull(f"disk tier {directory}: cannot write ({exc})")


def open_disk_tier(settings: Settings) -> Any:
    """The disk tier opened in this process, or None when it cannot be (a full disk).

    diskcache opens its SQLite database before it fails; the half-built cache is collected
    here, with its ResourceWarning silenced, so that the warning does not surface later inside
    a test (Python 3.13 warns on unclosed connections, and suites run with warnings as errors).
    """
    from nodeagent.tiers import DiskTier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return DiskTier(str(settings.disk_dir), settings.disk_bytes)
        except Exception:
            pass
        gc.collect()
    return None
