"""depstate: what a build changed in its dependencies, and what its value shares with them."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_statemigrate import codec, depstate


def _shared(value: Any, **deps: Any) -> str | None:
    """What the store's sharing check says of ``value`` (dependencies by reference)."""
    snaps = {name: depstate.snapshot(v, keep=True) for name, v in deps.items()}
    check = depstate.SharingCheck(list(deps.values()), snaps)
    codec._pickle(value, list(deps), deps, set(), check.watch)
    return check.verdict(value)


plain = st.recursive(
    st.none() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@given(plain)
def test_a_snapshot_is_stable_while_nothing_changes(value: Any) -> None:
    assert depstate.snapshot(value).digest == depstate.snapshot(value).digest


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["rows"].append(4),
        lambda d: d.__setitem__("type", "plot"),
        lambda d: d["nested"]["deep"].pop(),
        lambda d: d["array"].__setitem__(0, 99),
        lambda d: d["obj"].__setattr__("seen", True),
    ],
    ids=["list-item", "new-key", "nested", "array-buffer", "attribute"],
)
def test_any_change_in_place_changes_the_digest(change: Any) -> None:
    value = {
        "rows": [1, 2, 3],
        "nested": {"deep": [1]},
        "array": np.arange(4),
        "obj": Box(),
    }
    before = depstate.snapshot(value).digest
    change(value)
    assert depstate.snapshot(value).digest != before


@given(plain)
def test_a_kept_pickle_hashes_to_the_streamed_digest(value: Any) -> None:
    kept = depstate.snapshot(value, retain=True)
    assert kept.kept is not None
    assert kept.digest == depstate.snapshot(value).digest
    assert depstate.unchanged(kept, value) is not None


CHANGES = [
    lambda d: d["rows"].append(4),
    lambda d: d.__setitem__("type", "plot"),
    lambda d: d["nested"]["deep"].pop(),
    lambda d: d["array"].__setitem__(0, 99),
    lambda d: d["obj"].__setattr__("seen", True),
    lambda d: d["big"].__setitem__(150_000, "changed"),  # deep inside one of many frames
    lambda d: d["big"].pop(),  # the pickle ends early
    lambda d: d["rows"].append(d),  # a cycle now: the fast pickle gives up
]
CHANGE_IDS = [
    "list-item",
    "new-key",
    "nested",
    "array-buffer",
    "attribute",
    "mid-stream",
    "shorter",
    "cycle",
]


def _dependency() -> dict[str, Any]:
    return {
        "rows": [1, 2, 3],
        "nested": {"deep": [1]},
        "array": np.arange(4),
        "obj": Box(),
        "big": [f"sentence {i}" for i in range(300_000)],
    }


@pytest.mark.parametrize("change", CHANGES, ids=CHANGE_IDS)
def test_a_kept_pickle_tells_any_change_in_place(change: Any) -> None:
    value = _dependency()
    before = depstate.snapshot(value, retain=True)
    digest = depstate.snapshot(value).digest
    assert depstate.unchanged(before, value) is not None
    change(value)
    assert depstate.unchanged(before, value) is None
    assert before.digest == digest  # hashed on its thread from what was kept, not from now


@pytest.mark.parametrize("change", CHANGES[:3], ids=CHANGE_IDS[:3])
def test_too_large_to_keep_is_compared_by_digest(
    change: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(depstate, "RETAIN_LIMIT", 1000)
    value = _dependency()
    before = depstate.snapshot(value, retain=True)
    assert before.kept is None
    assert before.digest == depstate.snapshot(value).digest
    after = depstate.unchanged(before, value)
    assert after is not None and after.value is value
    change(value)
    assert depstate.unchanged(before, value) is None


def test_unchanged_notes_what_the_sharing_check_needs() -> None:
    array = np.arange(10)
    dep = {"rows": [1, 2], "array": array}
    after = depstate.unchanged(depstate.snapshot(dep, retain=True), dep)
    assert after is not None and after.value is dep and len(after.arrays) == 1
    check = depstate.SharingCheck([dep], {"dep": after})
    with pytest.raises(codec.Shared, match="shares a list with dep"):
        codec.dump({"rows": dep["rows"]}, {"dep": dep}, check)


class Box:
    def __init__(self) -> None:
        self.items = [1, 2]


class Point:
    def __init__(self) -> None:
        self.x = 1


@dataclass
class Holder:
    kind: ClassVar[list[str]] = ["shared by every instance"]
    source: Any = None
    parts: list[Any] = field(default_factory=list)


def test_the_dependency_itself_is_not_a_shared_part() -> None:
    dep = {"rows": [1, 2]}
    assert _shared({"dep": dep, "n": 2}, dep=dep) is None
    assert _shared(dep, dep=dep) is None
    assert _shared(Holder(source=dep), dep=dep) is None


def test_shared_containers_are_named() -> None:
    dep = {"rows": [1, 2], "meta": {"a": 1}}
    assert _shared({"rows": dep["rows"]}, dep=dep) == "a list with dep"
    assert _shared({"meta": dep["meta"]}, dep=dep) == "a dict with dep"
    assert _shared(dict(dep), dep=dep) in ("a list with dep", "a dict with dep")
    point = Point()
    # an instance shares through its __dict__
    assert _shared({"point": point}, dep={"point": point}) == "a dict with dep"


def test_shared_containers_are_found_among_many_atoms() -> None:
    # Tracked targets (a list) are compared with the tracked referents only, untracked ones
    # (a dict of atoms) with all of them.
    atoms = {"a": 1}
    rows = [1, 2]
    assert not gc.is_tracked(atoms) and gc.is_tracked(rows)
    dep = [*(f"s{i}" for i in range(1000)), atoms, *range(1000), rows]
    assert _shared({"atoms": atoms, "x": [3]}, dep=dep) == "a dict with dep"
    assert _shared({"rows": rows, "x": [3]}, dep=dep) == "a list with dep"
    assert _shared({"rows": list(rows), "atoms": dict(atoms)}, dep=dep) is None


def test_copies_and_class_attributes_are_not_shared() -> None:
    dep = {"rows": [1, 2]}
    assert _shared({"rows": list(dep["rows"])}, dep=dep) is None
    # Holder.kind is reached from both pickles, yet it belongs to the class
    assert _shared(Holder(parts=[1]), dep=Holder(parts=[2])) is None


def test_numpy_views_and_shallow_copies_share_memory() -> None:
    base = np.arange(10)
    assert _shared(base[2:6], base=base) is not None
    assert _shared(base[::2], base=base) is not None  # not contiguous: pickled in-band
    arrays = {"x": np.arange(5)}
    assert "an array's memory with arrays" in str(_shared(dict(arrays), arrays=arrays))
    assert _shared(base[2:6].copy(), base=base) is None
    assert _shared(np.arange(3), base=base) is None


def test_read_only_on_both_sides_is_not_shared() -> None:
    base = np.arange(10)
    base.flags.writeable = False
    assert _shared(base[2:6], base=base) is None


def test_pandas_copy_on_write_frames_are_not_shared() -> None:
    pd = pytest.importorskip("pandas")
    if not depstate._copies_on_write(pd):
        pytest.skip("this pandas does not copy on write")
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [1.0, 2.0, 3.0]})
    assert _shared(frame[["a"]], frame=frame) is None
    assert _shared(frame.copy(deep=False), frame=frame) is None
    # ... but a numpy array taken out of it and written to is
    raw = frame["a"].to_numpy().copy()
    assert _shared({"raw": raw}, frame=frame) is None


def test_unpicklable_dependencies_are_reported() -> None:
    with pytest.raises(codec.Unpicklable):
        depstate.snapshot(lambda: 1)


def test_dump_refuses_a_shared_value() -> None:
    dep = {"rows": [1, 2]}
    snaps = {"dep": depstate.snapshot(dep, keep=True)}

    shares = depstate.SharingCheck([dep], snaps)
    with pytest.raises(codec.Shared, match="shares a list with dep"):
        codec.dump(dict(dep), {"dep": dep}, shares)
    frames = codec.dump({"dep": dep}, {"dep": dep}, shares)
    loaded = codec.load(frames, {"dep": dep}.__getitem__)
    assert loaded["dep"] is dep


def test_the_digest_survives_cycles_and_heavy_sharing() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    first = depstate.snapshot(cyclic).digest
    assert depstate.snapshot(cyclic).digest == first
    cyclic.append(2)
    assert depstate.snapshot(cyclic).digest != first
    part = list(range(1000))
    shared = [part] * 50  # written 50 times in fast mode: still one digest each time
    assert depstate.snapshot(shared).digest == depstate.snapshot(shared).digest
