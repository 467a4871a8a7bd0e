"""Large disk-tier entries are streamed to their file in chunks, byte for byte."""

from __future__ import annotations

from pathlib import Path

import diskcache

from nodeagent.tiers import DiskTier, Entry, encode_entry


def test_large_entry_streams_in_few_writes(tmp_path: Path, monkeypatch: object) -> None:
    # Newline-dense bytes: diskcache's own path writes these one line at a time.
    frames = (b"\n" * 3_000_000, memoryview(bytearray(b"a\nb" * 700_000)), b"")
    writes: list[int] = []
    real_write = diskcache.Disk._write

    def counting_write(self: diskcache.Disk, full_path: str, iterator: object, *a: object) -> int:
        def chunks() -> object:
            for chunk in iterator:  # type: ignore[attr-defined]
                writes.append(len(chunk))
                yield chunk

        return int(real_write(self, full_path, chunks(), *a))

    monkeypatch.setattr(diskcache.Disk, "_write", counting_write)  # type: ignore[attr-defined]
    tier = DiskTier(str(tmp_path / "disk"), 2**30)
    entry = Entry(frames, {"fixture": "big"}, 3)
    tier.put("k", entry)
    assert len(writes) <= 8  # 5.1 MB in 4 MiB chunks and the small header parts
    got = tier.get("k")
    assert got is not None and got.version == 3 and got.meta == {"fixture": "big"}
    assert [bytes(f) for f in got.frames] == [bytes(f) for f in frames]
    files = [p for p in (tmp_path / "disk").rglob("*.val")]
    assert len(files) == 1 and files[0].read_bytes() == encode_entry("k", entry)
    tier.close()


def test_small_entry_stays_in_the_database(tmp_path: Path) -> None:
    tier = DiskTier(str(tmp_path / "disk"), 2**20)
    tier.put("k", Entry((b"abc",), {}, 1))
    assert not list((tmp_path / "disk").rglob("*.val"))
    got = tier.get("k")
    assert got is not None and [bytes(f) for f in got.frames] == [b"abc"]
    tier.close()
