"""What a build does to the values of the fixtures it depends on.

A managed value is stored with references to its dependencies' values, and a hit resolves
them to the live objects those fixtures gave the loading test (DESIGN.md, invariant 5). That is
right only when the build left those objects as it found them and shares nothing else with
them. Two builds break it, and pytest would show the difference:

* a build that **changes a dependency in place** (``gdf["geometry"] = gdf.buffer(4)``, then
  ``return gdf``): on a hit the build does not run, so the dependency stays as it was;
* a value that **shares mutable parts** with a dependency's value other than the value itself
  (a numpy view ``base[:5]``, a shallow copy ``dict(config)`` holding the same lists): in plain
  pytest a write through one is seen through the other; a loaded value is a copy of them.

:func:`snapshot` pickles a dependency's value (all of it, no references) into a digest, and
keeps what it reached: its mutable containers and arrays. Digests taken before and after a
build tell whether the build changed it; :func:`shared_part` compares what the new value
reaches with what the dependencies reach. Both are exact for what pickling sees, which is what a
hit restores. Pure: no pytest; numpy and pandas are only looked at when the values hold them.

Rejected alternative: comparing with the write checks' digests (dependencies by reference).
They are cheaper, but miss a change made through a dependency's own dependency
(``model.corpus.append(...)``), which a full pickle sees.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import codec

#: The builtin containers whose identity a shared part is told by. Instances of other classes
#: share through their ``__dict__`` (a dict); objects with a ``__reduce__`` of their own (a
#: dtype, a pandas Index) make fresh state for each pickle, and are not mistaken for shared.
_CONTAINERS: Final = (dict, list, set, bytearray)
_NAMES: Final[dict[type, str]] = {
    dict: "a dict",
    list: "a list",
    set: "a set",
    bytearray: "a bytearray",
}


@dataclass
class Snapshot:
    """One value's state at one moment."""

    digest: str
    #: id → object for the mutable containers and arrays the value reaches (held: ids stay
    #: unique while the snapshot lives)
    reached: dict[int, Any] = field(default_factory=dict)
    #: ids of the arrays among them that pandas' copy-on-write protects
    protected: set[int] = field(default_factory=set)


def snapshot(value: Any, keep: bool = False) -> Snapshot:
    """The digest of ``value``'s whole pickle; with ``keep``, also what it reaches.

    :raises codec.Unpicklable: when it does not pickle.
    """
    memo: list[Any] = []
    try:
        frames = codec._pickle(value, (), {}, memo=memo if keep else None)
    except Exception as exc:
        raise codec.Unpicklable(f"{type(value).__name__} value cannot be pickled ({exc})") from None
    digest = codec.payload_digest(frames)
    if not keep:
        return Snapshot(digest)
    return Snapshot(digest, _mutable(memo[0]), _cow_protected(memo[0]))


def _mutable(memo: Mapping[int, tuple[int, Any]]) -> dict[int, Any]:
    """The containers and arrays of a pickler's memo, less those a class holds (a class
    attribute such as pandas' ``_metadata`` list is the same object in every instance)."""
    ndarray = _ndarray()
    out: dict[int, Any] = {}
    classes: set[type] = set()
    for ident, (_, obj) in memo.items():
        kind = type(obj)
        if kind in _CONTAINERS or (ndarray is not None and isinstance(obj, ndarray)):
            out[ident] = obj
        elif kind.__module__ != "builtins":
            classes.add(kind)
    for cls in classes:
        for klass in cls.__mro__:
            for attr in vars(klass).values():
                out.pop(id(attr), None)
    return out


def shared_part(
    memo: Mapping[int, tuple[int, Any]],
    roots: Sequence[Any],
    deps: Mapping[str, Snapshot],
) -> str | None:
    """Why a value whose pickler memo is ``memo`` shares mutable parts with a dependency's
    value (``"a list with corpus"``), or None.

    :param roots: the dependencies' values themselves: the value refers to them by reference,
        and a hit gives it the live objects, so they are not shared parts.
    """
    mine = _mutable(memo)
    for root in roots:
        mine.pop(id(root), None)
    if not mine:
        return None
    for name, snap in deps.items():
        for ident in mine.keys() & snap.reached.keys():
            obj = mine[ident]
            if type(obj) in _CONTAINERS:
                return f"{_NAMES[type(obj)]} with {name}"
    ndarray = _ndarray()
    if ndarray is None:
        return None
    arrays = [a for a in mine.values() if isinstance(a, ndarray)]
    if not arrays:
        return None
    mine_safe = _cow_protected(memo)
    for name, snap in deps.items():
        theirs = [a for a in snap.reached.values() if isinstance(a, ndarray)]
        if theirs and _overlap(arrays, mine_safe, theirs, snap.protected):
            return f"an array's memory with {name} (a view or a shallow copy)"
    return None


def _overlap(
    mine: list[Any], mine_safe: set[int], theirs: list[Any], theirs_safe: set[int]
) -> bool:
    """Whether an array of ``mine`` and one of ``theirs`` share bytes a write could change
    through one and show through the other (not when both are read-only or both are
    protected by pandas' copy-on-write)."""
    bounds = _bounds_of()
    spans = sorted((*bounds(a), a) for a in theirs if a.nbytes)
    starts = [s[0] for s in spans]
    for a in mine:
        if not a.nbytes:
            continue
        low, high = bounds(a)
        safe = not a.flags.writeable or id(a) in mine_safe
        # Every span starting before ``high`` may overlap; spans are few (one per array).
        for _start, end, other in spans[: bisect_right(starts, high - 1)]:
            if end <= low:
                continue
            if safe and (not other.flags.writeable or id(other) in theirs_safe):
                continue
            return True
    return False


def _ndarray() -> Any:
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def _bounds_of() -> Any:
    numpy = sys.modules["numpy"]
    utils = getattr(getattr(numpy, "lib", None), "array_utils", None)
    return getattr(utils, "byte_bounds", None) or numpy.byte_bounds


def _cow_protected(memo: Mapping[int, tuple[int, Any]]) -> set[int]:
    """Ids of the arrays pandas never lets a write reach through another object: those of an
    Index (immutable), and those of the blocks of frames and series when pandas copies on
    write (3.0 and later, or 2.x with ``mode.copy_on_write``)."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return set()
    import gc

    index = getattr(pandas, "Index", None)
    cow = _copies_on_write(pandas)
    out: set[int] = set()
    for _, obj in memo.values():
        if index is not None and isinstance(obj, index):
            values = getattr(obj, "_data", None)
        elif (
            cow
            and type(obj).__module__.startswith("pandas.core.internals")
            and hasattr(obj, "refs")
        ):
            values = getattr(obj, "values", None)
        else:
            continue
        out.add(id(values))
        # An extension array (strings, categoricals, geometries) keeps its arrays inside.
        out.update(id(part) for part in gc.get_referents(values))
    return out


def _copies_on_write(pandas: Any) -> bool:
    try:
        if int(str(pandas.__version__).split(".")[0]) >= 3:
            return True
        return bool(pandas.options.mode.copy_on_write is True)
    except Exception:
        return False
