"""agents.disk.DiskClient: a cold single-process run writes its disk tier behind the tests."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodeagent.tiers import DiskTier
from pytest_statemigrate import codec
from pytest_statemigrate.agents.disk import DiskClient


class SlowDisk(DiskTier):
    """A disk tier whose writes wait for a signal: what is read meanwhile comes from memory."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, 2**30)
        self.go = threading.Event()
        self.writers: set[str] = set()

    def put(self, key: str, entry: object) -> None:
        self.writers.add(threading.current_thread().name)
        assert self.go.wait(10)
        super().put(key, entry)  # type: ignore[arg-type]


def test_settled_entries_are_written_behind_and_read_from_memory(tmp_path: Path) -> None:
    disk = SlowDisk(str(tmp_path / "disk"))
    client = DiskClient(lambda: disk, disk.directory)
    frames = [b"meta", b"sig", memoryview(b"body"), b"blob"]
    assert client.put("k", frames, {"fixture": "f"}) == 1
    assert client.put("k", frames, {"fixture": "f"}) == 2  # the pending version counts
    got = client.get("k")
    assert got is not None and bytes(got.frames[2]) == b"body" and got.version == 2
    assert DiskTier(str(tmp_path / "disk"), 2**30).get("k") is None  # not on disk yet
    disk.go.set()
    assert client.stats() == {"write_errors": 0}  # waits for the writes
    on_disk = DiskTier(str(tmp_path / "disk"), 2**30).get("k")
    assert on_disk is not None and on_disk.version == 2
    assert disk.writers == {"statemigrate-disk"}


def test_an_array_buffer_is_written_at_once(tmp_path: Path) -> None:
    """An out-of-band buffer is the live array's memory: a test could write it before a
    deferred write, and the entry would no longer match its digest."""
    disk = SlowDisk(str(tmp_path / "disk"))
    disk.go.set()
    client = DiskClient(lambda: disk, disk.directory)
    array = np.arange(10)
    client.put("k", [b"meta", b"sig", b"body", memoryview(array)], {})
    assert disk.writers == {threading.current_thread().name}
    array[0] = 99
    entry = DiskTier(str(tmp_path / "disk"), 2**30).get("k")
    assert entry is not None and bytes(entry.frames[3])[:1] == b"\x00"


def test_a_failed_write_is_counted_and_named(tmp_path: Path) -> None:
    class Full(DiskTier):
        def put(self, key: str, entry: object) -> None:
            raise OSError(28, "No space left on device")

    full = Full(str(tmp_path / "disk"), 2**30)
    client = DiskClient(lambda: full, full.directory)
    client.put("k", [b"meta", b"sig", b"body"], {})
    reply = client.stats()
    assert reply["write_errors"] == 1
    assert reply["writer"] == f"disk tier {tmp_path / 'disk'}"
    assert "No space left" in reply["last_write_error"]
    assert client.get("k") is None  # nothing pending is kept after a failure


def test_the_disk_tier_is_opened_and_entries_sealed_on_the_writer_thread(tmp_path: Path) -> None:
    """Creating the disk tier and hashing a value's payload are the cold run's own costs:
    both happen on the writer thread while the tests run."""
    opened_by: list[str] = []
    directory = str(tmp_path / "disk")

    def opener() -> DiskTier:
        opened_by.append(threading.current_thread().name)
        return DiskTier(directory, 2**30)

    sealed_by: list[str] = []

    class Watched(codec.Unsealed):
        def frames(self) -> list[object]:
            sealed_by.append(threading.current_thread().name)
            return super().frames()

    client = DiskClient(opener, directory)
    entry = Watched(b"s" * 32, "k", {"fixture": "f"}, [b"body", b"blob"])
    assert client.put("k", entry, {"fixture": "f"}) == 1
    assert client.stats() == {"write_errors": 0}
    assert opened_by == ["statemigrate-disk"]
    assert sealed_by[0] == "statemigrate-disk"
    stored = DiskTier(directory, 2**30).get("k")
    assert stored is not None
    opened = codec.open_sealed(b"s" * 32, "k", stored.frames)
    codec.verify(opened)  # the digest the writer computed is the payload's
    assert [bytes(f) for f in opened.payload] == [b"body", b"blob"]
    got = client.get("k")  # from the disk now, read on this thread
    assert got is not None and bytes(got.frames[2]) == b"body"


def test_a_pending_unsealed_entry_is_sealed_when_read(tmp_path: Path) -> None:
    disk = SlowDisk(str(tmp_path / "disk"))
    client = DiskClient(lambda: disk, disk.directory)
    client.put("k", codec.Unsealed(b"s" * 32, "k", {}, [b"body"]), {})
    got = client.get("k")  # still pending: sealed here, once
    assert got is not None
    codec.verify(codec.open_sealed(b"s" * 32, "k", [bytes(f) for f in got.frames]))
    disk.go.set()
    assert client.stats() == {"write_errors": 0}


def test_a_disk_tier_that_cannot_be_opened_fails_each_write_with_its_reason(
    tmp_path: Path,
) -> None:
    def opener() -> DiskTier:
        raise OSError("disk I/O error")

    client = DiskClient(opener, str(tmp_path / "disk"))
    with pytest.raises(Exception, match=r"disk tier .*disk: cannot write .*disk I/O error") as exc:
        client.put("k", codec.Unsealed(b"s" * 32, "k", {}, [b"body"]), {})
    assert getattr(exc.value, "error", None) == "disk-full"  # this operation fails, not the run
    assert client.get("k") is None
    assert client.stats() == {
        "write_errors": 0,
        "last_write_error": "cannot open it (disk I/O error)",
        "writer": f"disk tier {tmp_path / 'disk'}",
    }


def test_opening_on_the_writer_thread_leaves_the_warning_filters_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filters are process-wide: a writer thread that entered warnings.catch_warnings() before
    a build began recording its warnings (itself a catch_warnings) and left it after undid the
    build's recording, and its warnings were lost (a cold run's summary missed them)."""
    from nodeagent.tiers import disk as tiers

    started, go = threading.Event(), threading.Event()
    real_open = tiers.open_cache

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert go.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tiers, "open_cache", slow_open)
    directory = str(tmp_path / "disk")
    client = DiskClient(lambda: DiskTier(directory, 2**30), directory)
    assert started.wait(10)  # the writer is opening the disk tier...
    with warnings.catch_warnings(record=True) as log:  # ... when a build starts recording
        warnings.simplefilter("always")
        go.set()
        assert client.disk is not None  # the writer has opened it
        warnings.warn("the build's own", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in log] == ["the build's own"]
    client.shut()
