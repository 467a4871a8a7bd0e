"""fidelity: the classes whose instances may come back from pickling changed, and the check."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from pytest_statemigrate import codec, fidelity


class Namespace(dict):  # type: ignore[type-arg]
    """Munch/Box/addict-style: attribute access to the items, KeyError as AttributeError."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class DefaultBox(dict):  # type: ignore[type-arg]
    """addict-style: a missing attribute is a new empty box (it answers for __setstate__)."""

    def __getattr__(self, name: str) -> Any:
        return self.setdefault(name, DefaultBox())


class Reader:
    """A reader that reopens its file when unpickled (its own __reduce__), with a cache."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cache: dict[str, Any] = {}
        self.handle = Path(path).read_bytes()

    def __reduce__(self) -> Any:
        return (Reader, (self.path,))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.cache.setdefault(name, len(self.handle))


class Lazy:
    """A cache rebuilt lazily: its state after a round trip is smaller, by design."""

    def __init__(self) -> None:
        self.data = [1, 2, 3]
        self._sum: int | None = None

    @property
    def total(self) -> int:
        if self._sum is None:
            self._sum = sum(self.data)
        return self._sum

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "_sum": None}


class Swallows:
    """Its __getattr__ answers for __setstate__: the loaded instance has lost its items."""

    def __init__(self) -> None:
        self.items = [1]

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class Shouting(dict):  # type: ignore[type-arg]
    """Transforms what it is given, so restoring its items through it changes them."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, f"{value}!")


class Doubling(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        super().append(item)
        super().append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)


def _round_trip(value: Any) -> Any:
    return codec.load(codec.dump(value, {}), {}.__getitem__)


def test_classes_with_their_own_protocol_are_trusted() -> None:
    assert fidelity.fragile(Reader) is None
    assert fidelity.fragile(Lazy) is None
    assert fidelity.fragile(dict) is None
    assert fidelity.fragile(Namespace) == "__getattr__ without __setstate__"
    assert fidelity.fragile(Shouting) is not None
    assert fidelity.fragile(Doubling) is not None


def test_faithful_values_are_stored(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"12345")
    ns = Namespace(rows=[1, 2], name="n")
    reader = Reader(str(path))
    assert reader.size == 5  # fills the cache, which a loaded reader rebuilds
    lazy = Lazy()
    assert lazy.total == 6
    value = {"ns": ns, "reader": reader, "lazy": lazy, "boxed": DefaultBox(a=1)}
    loaded = _round_trip(value)
    assert loaded["ns"] == ns and loaded["ns"].rows == [1, 2]
    assert loaded["reader"].path == str(path) and loaded["reader"].size == 5
    assert loaded["lazy"].total == 6
    assert loaded["boxed"] == {"a": 1}


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        (Swallows(), "Swallows"),
        ({"x": [Swallows()]}, "Swallows"),
        (Shouting(a="1"), "Shouting"),
        (Doubling([1, 2]), "Doubling"),
    ],
)
def test_lossy_values_are_refused_with_the_class(value: Any, cls: str) -> None:
    with pytest.raises(codec.Unpicklable, match=rf"does not survive pickling \({cls}: "):
        codec.dump(value, {})


def test_the_check_compares_each_instance_in_order() -> None:
    a, b = Namespace(x=1), Namespace(x=[1, 2])
    same = [Namespace(x=1), Namespace(x=[3, 4])]  # containers by length: their items are theirs
    assert fidelity.first_difference([a, b], same, fidelity.fragile) is None
    changed = fidelity.first_difference([a, b], [a, Namespace(x=[1])], fidelity.fragile)
    assert changed == "Namespace: __getattr__ without __setstate__"
    assert fidelity.first_difference([a, b], [a, Namespace(y=1)], fidelity.fragile)
    shorter = fidelity.first_difference([a, b], [a], fidelity.fragile)
    assert shorter is not None and shorter.startswith("Namespace: ")


def test_suggest_calls_a_value_that_loses_state_not_picklable() -> None:
    """``statemigrate suggest`` said "pickles: yes" for sunpy's maps, which a store refuses
    (a MetaDict that restores its items through its own __setitem__)."""
    from pytest_statemigrate.recorder import pickles

    lossy = Shouting()
    dict.__setitem__(lossy, "a", "x")  # as built; loading it runs __setitem__: "x!"
    assert pickle.loads(pickle.dumps(lossy)) != lossy  # it does pickle, and changes
    assert not pickles([lossy], 2**20)
    assert pickles([{"a": "x"}], 2**20)
    assert not pickles(list(range(1000)), 100)  # over the size limit
