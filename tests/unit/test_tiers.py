"""nodeagent.tiers: RAM LRU, disk and store tiers, the tiered store against a dict model."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from nodeagent.tiers import (
    DISK_ASIDE,
    ENTRY_OVERHEAD,
    CorruptEntry,
    DiskTier,
    Entry,
    RamTier,
    StoreTier,
    TieredStore,
    TooLarge,
    VersionConflict,
    decode_entry,
    encode_entry,
    peek_entry,
    write_raw_disk_value,
)


def entry(*frames: bytes | memoryview, version: int = 1, **meta: object) -> Entry:
    return Entry(tuple(frames), meta, version)


def payload(e: Entry) -> list[bytes]:
    return [bytes(f) for f in e.frames]


#: What an entry with empty meta costs the RAM budget besides its payload.
HELD: int = ENTRY_OVERHEAD + 1  # (msgpack of {} is one byte)


# --------------------------------------------------------------------------- framing


def test_entry_nbytes_sums_frames() -> None:
    assert entry(b"ab", memoryview(b"cde"), b"").nbytes == 5


def test_encode_decode_round_trip() -> None:
    e = entry(b"head", b"", b"x" * 1000, version=9, a=1, b=[1, "x"])
    got = decode_entry("k", encode_entry("k", e))
    assert payload(got) == payload(e) and got.version == 9 and got.meta == {"a": 1, "b": [1, "x"]}


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b + b"x",
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:6],
        lambda b: b"",
        lambda b: b[:8] + b"\xc1" + b[9:],
    ],
)
def test_decode_refuses_mangled(mangle: object) -> None:
    blob = encode_entry("k", entry(b"abc", b"def"))
    with pytest.raises(CorruptEntry):
        decode_entry("k", mangle(blob))  # type: ignore[operator]


def test_peek_reads_the_version_from_the_header_only() -> None:
    blob = encode_entry("k", entry(b"x" * 10_000, version=7, m=1))
    fh = io.BytesIO(blob)
    assert peek_entry("k", fh) == 7
    assert fh.tell() < 100  # the payload was not read
    with pytest.raises(CorruptEntry):
        peek_entry("other", io.BytesIO(blob))
    with pytest.raises(CorruptEntry):
        peek_entry("k", io.BytesIO(blob[:10]))


def test_decode_refuses_other_key() -> None:
    with pytest.raises(CorruptEntry, match="another key"):
        decode_entry("b", encode_entry("a", entry(b"x")))


# --------------------------------------------------------------------------- RAM


def test_ram_lru_eviction_and_budget() -> None:
    ram = RamTier(10 + 2 * HELD)
    assert ram.put("a", entry(b"1234")) == []
    assert ram.put("b", entry(b"1234")) == []
    assert ram.get("a") is not None  # a is now most recently used
    evicted = ram.put("c", entry(b"1234"))
    assert [k for k, _ in evicted] == ["b"]
    assert "a" in ram and "c" in ram and "b" not in ram
    assert ram.bytes == 8 <= ram.budget_bytes
    stats = ram.stats()
    assert stats["evictions"] == 1 and stats["hits"] == 1 and stats["entries"] == 2


def test_ram_replacing_a_key_does_not_evict_it() -> None:
    ram = RamTier(10 + HELD)
    ram.put("a", entry(b"12345678"))
    assert ram.put("a", entry(b"87654321")) == []
    assert ram.bytes == 8 and payload(ram.get("a") or entry()) == [b"87654321"]


def test_ram_refuses_entry_larger_than_budget() -> None:
    ram = RamTier(4 + HELD)
    ram.put("a", entry(b"12"))
    assert ram.put("big", entry(b"12345")) == []
    assert "big" not in ram and "a" in ram and ram.bytes == 2


def test_ram_keeps_frames_without_copy() -> None:
    buf = bytearray(b"abcd")
    ram = RamTier(100 + HELD)
    ram.put("a", entry(memoryview(buf)))
    buf[0] = ord("z")
    got = ram.get("a")
    assert got is not None and bytes(got.frames[0]) == b"zbcd"


# --------------------------------------------------------------------------- disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskTier]:
    tier = DiskTier(str(tmp_path / "disk"), 1 << 24)
    yield tier
    tier.close()


def test_disk_round_trip_and_reopen(tmp_path: Path) -> None:
    d = str(tmp_path / "disk")
    tier = DiskTier(d, 1 << 24)
    tier.put("k", entry(b"a", b"b" * 100_000, version=3, m=1))
    tier.close()
    tier = DiskTier(d, 1 << 24)
    try:
        got = tier.get("k")
        assert got is not None and payload(got) == [b"a", b"b" * 100_000] and got.version == 3
        assert tier.stats()["entries"] == 1 and tier.stats()["limit"] == 1 << 24
    finally:
        tier.close()


def test_disk_corrupt_entry_is_a_miss_and_deleted(disk: DiskTier) -> None:
    disk.put("k", entry(b"abc"))
    write_raw_disk_value(disk.directory, "k", b"garbage")
    assert disk.get("k") is None
    assert "k" not in disk
    assert disk.stats()["corrupt"] == 1


def test_disk_never_unpickles(disk: DiskTier) -> None:
    cache = diskcache.Cache(disk.directory)  # a plain Cache pickles non-bytes values
    try:
        cache.set("k", {"pickled": True})
    finally:
        cache.close()
    assert disk.get("k") is None
    assert disk.stats()["corrupt"] == 1


def test_disk_refuses_non_bytes_values(disk: DiskTier) -> None:
    with pytest.raises(TypeError):
        disk._cache.set("k", {"x": 1})
    with pytest.raises(TypeError):
        disk._cache.set(("tuple", "key"), b"x")


def test_disk_size_limit_is_explicit(disk: DiskTier) -> None:
    assert disk._cache.size_limit == 1 << 24
    assert disk._cache.eviction_policy == "least-recently-used"


MiB = 2**20


def test_disk_eviction_never_removes_the_entry_it_makes_room_for(tmp_path: Path) -> None:
    """Two values of 60% of the limit each: the second evicts the first, and stays. diskcache
    culled both (ten least recently used rows after the insert, the new one among them)."""
    disk = DiskTier(str(tmp_path / "disk"), 4 * MiB)
    try:
        big = int(2.4 * MiB)
        disk.put("a", entry(b"a" * big))
        disk.put("b", entry(b"b" * big))
        got = disk.get("b")
        assert got is not None and payload(got) == [b"b" * big]
        assert "a" not in disk and disk.stats()["evictions"] == 1
        assert disk.stats()["bytes"] <= 4 * MiB
    finally:
        disk.close()


def test_disk_evicts_only_what_the_incoming_value_needs(tmp_path: Path) -> None:
    """Twelve values of 1/8 of the limit: the tier keeps all but what one more cannot fit
    beside, least recently used first (diskcache culled ten at a time: it kept far fewer)."""
    limit, size = 8 * MiB, MiB
    disk = DiskTier(str(tmp_path / "disk"), limit)
    try:
        for i in range(12):
            disk.put(f"k{i}", entry(bytes([i]) * size))
        kept = [i for i in range(12) if f"k{i}" in disk]
        assert kept == list(range(12 - len(kept), 12))  # the most recent ones
        volume = disk.stats()["bytes"]
        assert volume <= limit
        assert volume + size > limit  # one more would not fit: nothing was evicted for nothing
    finally:
        disk.close()


def test_disk_refuses_a_value_larger_than_its_limit_and_evicts_nothing(tmp_path: Path) -> None:
    disk = DiskTier(str(tmp_path / "disk"), MiB)
    try:
        disk.put("small", entry(b"s" * 1000))
        with pytest.raises(TooLarge, match="exceeds its size limit"):
            disk.put("big", entry(b"b" * (MiB + 1)))
        assert "small" in disk and "big" not in disk
    finally:
        disk.close()


def test_a_put_no_tier_can_hold_is_refused_before_anything_is_kept(tmp_path: Path) -> None:
    ts = TieredStore(RamTier(64 * 1024), DiskTier(str(tmp_path / "disk"), MiB))
    try:
        ts.put("old", [b"o" * 1000], {})
        with pytest.raises(TooLarge, match=r"larger than the RAM budget .* disk tier's limit"):
            ts.put("big", [b"b" * (2 * MiB)], {})
        assert ts.has("big") is None and ts.has("old") == "ram"
        assert ts.put("fits-disk", [b"d" * (MiB // 2)], {}) == 1  # larger than RAM: disk only
        assert ts.has("fits-disk") == "disk"
    finally:
        ts.close()
    with_store = TieredStore(RamTier(0), None, StoreTier(str(tmp_path / "store")))
    assert with_store.put("big", [b"b" * (2 * MiB)], {}) == 1  # the store has no limit
    assert with_store.has("big") == "store"


def test_ram_budget_counts_meta_and_overhead() -> None:
    """Entries with no payload and a large meta cannot fill memory past the budget."""
    ram = RamTier(MiB)
    for i in range(200):
        ram.put(f"k{i}", entry(blob="x" * 20_000))
    assert len(ram) <= MiB // 20_000
    assert ram.bytes + ram.meta_bytes <= MiB and ram.bytes == 0
    ram.put("empty", entry())
    assert ram.peek("empty") is not None and ram.peek("empty").held_bytes == HELD  # type: ignore[union-attr]


def test_a_corrupt_value_says_why(disk: DiskTier) -> None:
    disk.put("k", entry(b"abc"))
    write_raw_disk_value(disk.directory, "k", b"garbage")
    why: list[str] = []
    assert disk.get("k", why) is None
    assert len(why) == 1 and "corrupt value (bad magic), deleted" in why[0], why


def test_a_disk_database_that_is_not_one_is_moved_aside(tmp_path: Path) -> None:
    d = tmp_path / "disk"
    tier = DiskTier(str(d), 1 << 24)
    tier.put("small", entry(b"a"))
    tier.put("large", entry(b"b" * 200_000))  # in a file of its own, beside the database
    tier.close()
    garbage = b"this is not a database" * 100
    (d / "cache.db").write_bytes(garbage)
    tier = DiskTier(str(d), 1 << 24)
    try:
        assert tier.notice is not None
        assert "\n" not in tier.notice
        assert f"disk tier {d}: cache.db is not a readable database" in tier.notice
        assert f"moved it with its entries' files to {d / DISK_ASIDE}" in tier.notice
        assert tier.get("small") is None and len(tier._cache) == 0
        tier.put("k", entry(b"c"))
        got = tier.get("k")
        assert got is not None and payload(got) == [b"c"]
    finally:
        tier.close()
    aside = d / DISK_ASIDE
    assert (aside / "cache.db").read_bytes() == garbage
    # The old entries' files went with it: the new database does not know them.
    assert len(list(aside.rglob("*.val"))) == 1
    assert [p for p in d.rglob("*.val") if aside not in p.parents] == []
    again = DiskTier(str(d), 1 << 24)
    try:
        assert again.notice is None and again.get("k") is not None
    finally:
        again.close()


# --------------------------------------------------------------------------- store


def test_store_round_trip_atomic_and_corrupt(tmp_path: Path) -> None:
    store = StoreTier(str(tmp_path / "store"))
    store.put("k", entry(b"xyz", version=2))
    assert os.listdir(store.directory) == [os.path.basename(store.path("k"))]
    got = store.get("k")
    assert got is not None and payload(got) == [b"xyz"] and got.version == 2
    Path(store.path("k")).write_bytes(b"garbage")
    assert store.get("k") is None and "k" not in store
    assert store.stats()["corrupt"] == 1
    store.put("a", entry(b"1"))
    store.put("b", entry(b"2"))
    assert store.clear() == 2 and store.stats()["entries"] == 0


# --------------------------------------------------------------------------- tiered store


def make_store(tmp_path: Path, ram: int = 10, store: bool = False) -> TieredStore:
    """``ram``: the payload bytes RAM holds (with room for one entry's meta and overhead)."""
    return TieredStore(
        RamTier(ram + HELD if ram else 0),
        DiskTier(str(tmp_path / "disk"), 1 << 24),
        StoreTier(str(tmp_path / "store")) if store else None,
    )


def test_spill_ram_to_disk(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=10)
    try:
        ts.put("a", [b"123456"], {})
        ts.put("b", [b"123456"], {})  # evicts a from RAM; it is on disk already
        assert ts.has("a") == "disk" and ts.has("b") == "ram"
        ts.disk.remove("b")  # type: ignore[union-attr]  # as if diskcache had culled it
        found = ts.get("a")  # promotes a, evicts b, which must be spilled to disk
        assert found is not None and found[1] == "disk" and payload(found[0]) == [b"123456"]
        assert ts.has("a") == "ram" and ts.has("b") == "disk"
        stats = ts.stats()
        assert stats["ram"]["evictions"] == 2 and stats["ram"]["spills"] == 2
        assert stats["disk"]["spills"] == 1
    finally:
        ts.close()


def test_versions_and_conflicts(tmp_path: Path) -> None:
    ts = make_store(tmp_path)
    try:
        assert ts.put("k", [b"1"], {}, expect_version=0) == 1
        assert ts.put("k", [b"2"], {}) == 2
        with pytest.raises(VersionConflict):
            ts.put("k", [b"3"], {}, expect_version=1)
        assert ts.put("k", [b"3"], {}, expect_version=2) == 3
        ts.evict("k")
        assert ts.put("k", [b"4"], {}) == 4  # never reused within the process
    finally:
        ts.close()


def test_version_survives_a_restart(tmp_path: Path) -> None:
    ts = make_store(tmp_path)
    ts.put("k", [b"1"], {})
    ts.put("k", [b"2"], {})
    ts.close()
    ts = make_store(tmp_path)
    try:
        assert ts.put("k", [b"3"], {}) == 3
    finally:
        ts.close()


def test_same_device_store_skips_the_disk_tier(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=4, store=True)
    try:
        assert ts.write_disk is False
        ts.put("k", [b"12345"], {})  # too big for RAM
        assert ts.has("k") == "store" and "k" not in ts.disk  # type: ignore[operator]
        found = ts.get("k")
        assert found is not None and found[1] == "store"
        assert ts.evict("k") and ts.has("k") is None
    finally:
        ts.close()


def test_same_device_store_put_removes_a_stale_disk_copy(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=100, store=True)
    try:
        assert ts.disk is not None
        ts.put("k", [b"v1"], {})
        ts.disk.put("k", entry(b"v1", version=1))  # as a spill leaves it
        ts.put("k", [b"v2"], {})
        ts.ram.remove("k")
        found = ts.get("k")
        assert found is not None and found[1] == "store" and payload(found[0]) == [b"v2"]
    finally:
        ts.close()


def test_other_device_store_writes_both(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    store_dir = tempfile.mkdtemp(dir="/dev/shm", prefix="sm-test-")
    ts = TieredStore(
        RamTier(4 + HELD), DiskTier(str(tmp_path / "disk"), 1 << 24), StoreTier(store_dir)
    )
    try:
        assert ts.write_disk is True
        ts.put("k", [b"12345"], {})
        assert "k" in ts.disk and "k" in ts.store  # type: ignore[operator]
    finally:
        ts.close()
        shutil.rmtree(store_dir)


def test_clear_counts_and_empties(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=100)
    try:
        for k in "abc":
            ts.put(k, [k.encode()], {})
        assert ts.clear() == 3
        assert all(ts.has(k) is None for k in "abc")
    finally:
        ts.close()


def test_tiers_never_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "dumps", refuse)
    monkeypatch.setattr(pickle, "dump", refuse)
    ts = make_store(tmp_path, ram=3, store=True)
    try:
        ts.put("k", [b"1234"], {"m": 1})
        assert ts.get("k") is not None
    finally:
        ts.close()


def test_disk_and_store_peek(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=0, store=True)
    try:
        assert ts.disk is not None and ts.store is not None
        ts.disk.put("small", entry(b"s", version=3))
        ts.disk.put("large", entry(b"L" * 100_000, version=4))  # a file, not a row
        ts.store.put("far", entry(b"f", version=5))
        assert ts.disk.peek("small") == (3, len(encode_entry("small", entry(b"s"))))
        assert ts.peek_below("large") == (
            "disk",
            4,
            len(encode_entry("large", entry(b"L" * 100_000))),
        )
        far = ts.peek_below("far")
        assert far is not None and far[:2] == ("store", 5)
        assert ts.peek_below("none") is None and ts.version("far") == 5
        write_raw_disk_value(ts.disk.directory, "small", b"garbage")
        assert ts.disk.peek("small") is None
    finally:
        ts.close()


def test_demote_keeps_a_copy_below(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=100)
    try:
        assert ts.disk is not None
        ts.put("k", [b"abc"], {"m": 1})
        assert ts.demote("k") is True
        assert ts.has("k") == "disk" and ts.demote("k") is False
        found = ts.get("k")  # promoted again
        assert found is not None and found[1] == "disk" and payload(found[0]) == [b"abc"]
        ts.disk.remove("k")  # the only copy is in RAM now
        assert ts.demote("k") is True
        found = ts.get("k")
        assert found is not None and payload(found[0]) == [b"abc"] and found[0].meta == {"m": 1}
        ts.put("k", [b"v2"], {})  # RAM at version 2
        ts.disk.put("k", entry(b"stale", version=1))  # as if the write of v2 had failed
        assert ts.demote("k") is True
        found = ts.get("k")
        assert found is not None and found[0].version == 2 and payload(found[0]) == [b"v2"]
    finally:
        ts.close()


def test_spill_replaces_a_stale_lower_copy(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=10)
    try:
        assert ts.disk is not None
        ts.put("a", [b"v1"], {})
        ts.put("a", [b"v2"], {})
        ts.disk.put("a", entry(b"v1", version=1))  # as if the write of v2 had failed
        ts.put("b", [b"12345678"], {})  # pushes a out of RAM: v2 must not be lost
        found = ts.get("a")
        assert found is not None and found[0].version == 2 and payload(found[0]) == [b"v2"]
    finally:
        ts.close()


def test_demote_without_a_disk_tier_keeps_the_only_copy(tmp_path: Path) -> None:
    ts = TieredStore(RamTier(100 + HELD), None)
    ts.put("k", [b"abc"], {})
    assert ts.demote("k") is False and ts.has("k") == "ram"
    with_store = TieredStore(RamTier(100 + HELD), None, StoreTier(str(tmp_path / "store")))
    with_store.put("k", [b"abc"], {})
    assert with_store.demote("k") is True and with_store.has("k") == "store"


def test_install_never_replaces_a_newer_version(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=100)
    try:
        ts.put("k", [b"v1"], {})
        ts.put("k", [b"v2"], {})
        ts.demote("k")
        assert not ts.install("k", entry(b"v1", version=1), ram=True, disk=False)  # older
        assert ts.install("k", entry(b"v2", version=2), ram=True, disk=False)  # the current one
        assert ts.has("k") == "ram"
        assert not ts.install("k", entry(b"v2", version=2), ram=True, disk=False)  # held
        found = ts.get("k")
        assert found is not None and payload(found[0]) == [b"v2"]
        # a migrated copy must be newer than every copy, the disk's included
        ts.demote("k")
        assert not ts.install("k", entry(b"peer", version=2), ram=True, disk=True, migrated=True)
        assert ts.install("k", entry(b"peer", version=5), ram=True, disk=True, migrated=True)
        assert ts.put("k", [b"local"], {}) == 6  # versions go on from the installed copy
        assert ts.disk is not None
        peeked = ts.disk.peek("k")
        assert peeked is not None and peeked[0] == 6
    finally:
        ts.close()


def test_install_is_refused_when_nothing_can_hold_it(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=4)
    try:
        big = entry(b"123456", version=1)
        assert not ts.install("k", big, ram=True, disk=False)
        assert ts.install("k", big, ram=True, disk=True)  # too big for RAM: disk only
        assert ts.has("k") == "disk"
        assert ts.is_current("k", big)
        ts.put("k", [b"x"], {})
        assert not ts.is_current("k", big)
    finally:
        ts.close()


def test_install_defers_its_disk_write(tmp_path: Path) -> None:
    ts = make_store(tmp_path, ram=0)
    try:
        writes: list[Callable[[], None]] = []
        assert ts.install("k", entry(b"abc", version=3), ram=False, disk=True, defer=writes)
        assert len(writes) == 1 and ts.has("k") == "ram"  # pending: served from memory
        writes[0]()
        assert ts.has("k") == "disk" and ts.version("k") == 3
    finally:
        ts.close()


def test_store_latency_and_bandwidth(tmp_path: Path) -> None:
    slow = StoreTier(str(tmp_path / "store"), latency=0.2)
    slow.put("k", entry(b"x"))
    began = time.monotonic()
    assert slow.get("k") is not None
    assert time.monotonic() - began >= 0.2
    began = time.monotonic()
    assert slow.get("missing") is None and slow.peek("k") is not None  # no delay for these
    assert time.monotonic() - began < 0.2
    capped = StoreTier(str(tmp_path / "store"), bandwidth=10 * 2**20)
    capped.put("big", entry(b"x" * 2**20))
    began = time.monotonic()
    assert capped.get("big") is not None and capped.get("big") is not None
    assert time.monotonic() - began >= 0.2  # 2 MiB at 10 MiB/s
    assert slow.stats()["latency"] == 0.2 and capped.stats()["bandwidth"] == 10 * 2**20
    stopping = StoreTier(str(tmp_path / "store"), latency=30.0)
    stopping.stop_delays()  # the agent stops: no more simulated waits
    began = time.monotonic()
    assert stopping.get("k") is not None
    assert time.monotonic() - began < 15
    with pytest.raises(ValueError):
        StoreTier(str(tmp_path / "store"), latency=-1)


# --------------------------------------------------------------------------- model test

frames_st = st.lists(st.binary(max_size=12), max_size=3)


class TieredStoreModel(RuleBasedStateMachine):
    """Every get returns exactly the last put for that key; RAM never exceeds its budget."""

    keys = st.sampled_from(["a", "b", "c", "d", "e"])

    @initialize(ram=st.integers(0, 4 * HELD), with_store=st.booleans())
    def setup(self, ram: int, with_store: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="sm-model-")
        self.ts = TieredStore(
            RamTier(ram),
            DiskTier(os.path.join(self.dir, "disk"), 1 << 24),
            StoreTier(os.path.join(self.dir, "store")) if with_store else None,
        )
        self.model: dict[str, tuple[list[bytes], dict[str, int], int]] = {}

    def teardown(self) -> None:
        if hasattr(self, "ts"):
            self.ts.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(key=keys, frames=frames_st, n=st.integers(0, 9))
    def put(self, key: str, frames: list[bytes], n: int) -> None:
        version = self.ts.put(key, [memoryview(f) for f in frames], {"n": n})
        assert version > (self.model[key][2] if key in self.model else 0)
        self.model[key] = (frames, {"n": n}, version)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def put_expecting(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        frames, meta, version = self.model[key]
        new = self.ts.put(key, frames, meta, expect_version=version)
        self.model[key] = (frames, meta, new)
        with pytest.raises(VersionConflict):
            self.ts.put(key, frames, meta, expect_version=version)

    @rule(key=keys)
    def get(self, key: str) -> None:
        found = self.ts.get(key)
        if key not in self.model:
            assert found is None
            return
        assert found is not None
        got, _tier = found
        frames, meta, version = self.model[key]
        assert [bytes(f) for f in got.frames] == frames
        assert dict(got.meta) == meta and got.version == version

    @rule(key=keys)
    def has(self, key: str) -> None:
        assert (self.ts.has(key) is not None) == (key in self.model)

    @rule(key=keys)
    def evict(self, key: str) -> None:
        assert self.ts.evict(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(key=keys)
    def demote(self, key: str) -> None:
        in_ram = key in self.ts.ram
        assert self.ts.demote(key) == in_ram  # a disk tier always takes the only copy
        assert key not in self.ts.ram

    @rule()
    def clear(self) -> None:
        self.ts.clear()
        self.model.clear()

    @invariant()
    def ram_within_budget(self) -> None:
        if hasattr(self, "ts"):
            ram = self.ts.ram
            assert ram.bytes + ram.meta_bytes <= ram.budget_bytes
            assert ram.bytes == sum(e.nbytes for e in ram._entries.values())
            assert ram.bytes + ram.meta_bytes == sum(e.held_bytes for e in ram._entries.values())


TieredStoreModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tiered_store_against_dict_model = TieredStoreModel.TestCase
