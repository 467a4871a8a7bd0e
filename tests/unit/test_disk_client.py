"""session.DiskClient: a cold single-process run writes its disk tier behind the tests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from nodeagent.tiers import DiskTier
from pytest_statemigrate.session import DiskClient


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
    client = DiskClient(disk)
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
    client = DiskClient(disk)
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

    client = DiskClient(Full(str(tmp_path / "disk"), 2**30))
    client.put("k", [b"meta", b"sig", b"body"], {})
    reply = client.stats()
    assert reply["write_errors"] == 1
    assert reply["writer"] == f"disk tier {tmp_path / 'disk'}"
    assert "No space left" in reply["last_write_error"]
    assert client.get("k") is None  # nothing pending is kept after a failure
