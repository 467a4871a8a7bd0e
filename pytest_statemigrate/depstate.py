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

:func:`snapshot` digests a dependency's whole pickle (no references); digests taken before and
after a build tell whether the build changed it. After the build it also notes the arrays the
pickle reached, and :func:`shared_part` compares the new value with the dependencies: the same
mutable container reached from both, or array memory both reach. Pure: no pytest; numpy and
pandas are only looked at when the values hold them.

Costs, measured on the example suite's 150,000-sentence corpus (10.8 MB pickled): the digest
pickles in fast mode (no memo: 2.8 ms, against 29 ms with the memo and 77 ms more to copy it
out). Before a build the pickle is kept (up to :data:`RETAIN_LIMIT`) and hashed on a thread
while the build runs (5.6 ms of SHA-256 off the tests' thread); after it, the new pickle is
compared with the kept one as it is written, so an unchanged dependency is hashed once, not
twice. Rejected: the pickler memo as the set of what a
value reaches (exact, but that copy cost more than the build it guards); the write checks'
digests (dependencies by reference: cheaper, but blind to a change made through a dependency's
own dependency, ``model.corpus.append(...)``).
"""

from __future__ import annotations

import gc
import hashlib
import operator
import pickle
import sys
import threading
import types
from collections import deque
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, Final

from . import codec

#: Containers whose identity a shared part is told by. An instance shares through its
#: ``__dict__`` (a dict); objects with a ``__reduce__`` of their own (a dtype, a pandas Index)
#: are compared by the arrays they hold.
_CONTAINERS: Final = (dict, list, set, bytearray)
_NAMES: Final[dict[type, str]] = {
    dict: "a dict",
    list: "a list",
    set: "a set",
    bytearray: "a bytearray",
}
#: Never walked into: code and classes are not a value's state, atoms hold nothing.
_OPAQUE: Final = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
)
#: Objects looked at, at most, when walking a new value / a dependency for shared containers
#: (a value larger than that is checked in part; docs/keys.md says so).
VALUE_BUDGET: Final = 20_000
DEPENDENCY_BUDGET: Final = 2_000_000
#: Up to this many containers of a new value are looked for by identity, not by id().
FEW_TARGETS: Final = 32
#: A fast-mode pickle (shared objects written again each time) larger than this falls back
#: to the memo: a value that shares many large parts must not blow the digest up.
FAST_LIMIT: Final = 1 << 30


#: A dependency's pickle up to this size is kept from before a build until after it: compared
#: then instead of hashed again. Larger ones are hashed as they are written.
RETAIN_LIMIT: Final = 256 << 20


class Snapshot:
    """One dependency's value at one moment.

    ``digest`` is the SHA-256 of its pickle; a snapshot taken with ``retain`` keeps the pickle
    (see :func:`snapshot`) and hashes it on a thread, so reading ``digest`` may wait for that.
    """

    def __init__(
        self,
        digest: str | None,
        value: Any = None,
        arrays: list[tuple[int, int, bool]] | None = None,
        kept: list[bytes] | None = None,
        fast: bool = True,
    ) -> None:
        self._digest = digest
        self.value = value  # kept with ``keep``: walked by the sharing check
        #: (start, end, safe) of the memory of the arrays the pickle reached; safe: a write
        #: cannot reach it through another object (read-only, or protected by pandas' copy-on-
        #: write)
        self.arrays = arrays or []
        #: The pickle's bytes as hashed, while kept (:func:`snapshot`'s ``retain``).
        self.kept = kept
        self.fast = fast  # pickled without the memo (else a cycle made it use one)
        self._hashing: threading.Thread | None = None
        if digest is None:
            self._hashing = threading.Thread(
                target=self._hash, args=(kept or [],), name="statemigrate-digest", daemon=True
            )
            self._hashing.start()

    def _hash(self, kept: list[bytes]) -> None:
        # One update of one buffer: hashlib lets the tests' thread run meanwhile.
        self._digest = hashlib.sha256(b"".join(kept)).hexdigest()

    @property
    def digest(self) -> str:
        if self._hashing is not None:
            self._hashing.join()
            self._hashing = None
        assert self._digest is not None
        return self._digest

    def release(self) -> None:
        """Drop the kept pickle (the hash, if still running, holds it until it is done)."""
        self.kept = None


class _Differs(Exception):
    """The pickle being compared is not the kept one."""


class _Sink:
    """A file that hashes what the pickler writes (or, with ``keep``, keeps it to be hashed and
    compared later, up to :data:`RETAIN_LIMIT`), and gives up past a size."""

    def __init__(self, limit: int, keep: bool = False) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.kept: list[bytes] | None = [] if keep else None

    def _add(self, data: Any) -> None:
        kept = self.kept
        if kept is not None:
            if self.size <= RETAIN_LIMIT:
                # The pickler's own frames are fresh bytes; anything else may change: copied.
                kept.append(data if type(data) is bytes else bytes(data))
                return
            for chunk in kept:  # too large to keep: hashed from here on
                self.hash.update(chunk)
            self.kept = None
        self.hash.update(data)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.size += view.nbytes
        if self.size > self.limit:
            raise OverflowError("fast pickle too large")
        self._add(data if type(data) is bytes else view)
        return view.nbytes

    def buffer(self, buf: pickle.PickleBuffer) -> None:
        raw = buf.raw()
        self.size += raw.nbytes
        self._add(raw.nbytes.to_bytes(8, "little"))
        self._add(raw if raw.contiguous else bytes(raw))

    def digest(self) -> str:
        return self.hash.hexdigest()


class _Compare:
    """A file that checks what the pickler writes against a kept pickle, and stops it at the
    first difference (:class:`_Differs`)."""

    def __init__(self, kept: list[bytes]) -> None:
        self.kept = kept
        self.at = 0  # the kept chunk being compared
        self.offset = 0  # how much of it was compared

    def _eat(self, data: Any) -> None:
        kept = self.kept
        if self.offset == 0 and self.at < len(kept) and kept[self.at] == data:
            self.at += 1  # the usual case: the same frames, compared in C
            return
        view = memoryview(data).cast("B")
        while view.nbytes:
            if self.at >= len(kept):
                raise _Differs
            chunk = memoryview(kept[self.at])[self.offset :]
            n = min(chunk.nbytes, view.nbytes)
            if chunk[:n] != view[:n]:
                raise _Differs
            view = view[n:]
            self.offset += n
            if self.offset == len(kept[self.at]):
                self.at, self.offset = self.at + 1, 0

    def write(self, data: Any) -> int:
        self._eat(data)
        return memoryview(data).nbytes

    def buffer(self, buf: pickle.PickleBuffer) -> None:
        raw = buf.raw()
        self._eat(raw.nbytes.to_bytes(8, "little"))
        self._eat(raw if raw.contiguous else bytes(raw))

    def complete(self) -> bool:
        return self.at == len(self.kept) and self.offset == 0


class _Arrays:
    """The arrays a pickle reaches, and the ids of those pandas protects (:func:`_protect`):
    shown every object a pickler's ``reducer_override`` sees."""

    def __init__(self) -> None:
        self.ndarray = _ndarray()
        self.pandas = _pandas()
        self.arrays: list[Any] = []
        self.protected: set[int] = set()

    def watch(self, obj: Any) -> None:
        if self.ndarray is not None and isinstance(obj, self.ndarray):
            self.arrays.append(obj)
        elif self.pandas is not None:
            _protect(obj, self.pandas, self.protected)

    def spans(self) -> list[tuple[int, int, bool]]:
        return _spans(self.arrays, self.protected)


class _ArrayPickler(pickle.Pickler):
    def __init__(self, file: Any, buffer_callback: Any, seen: _Arrays) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.seen = seen

    def reducer_override(self, obj: Any) -> Any:
        self.seen.watch(obj)
        return NotImplemented


def snapshot(value: Any, keep: bool = False, retain: bool = False) -> Snapshot:
    """The digest of ``value``'s whole pickle; with ``keep``, also what the sharing check needs;
    with ``retain``, the pickle is kept for :func:`unchanged` and hashed on a thread.

    :raises codec.Unpicklable: when it does not pickle.
    """
    seen = _Arrays() if keep else None
    for fast in (True, False):
        sink = _Sink(FAST_LIMIT if fast else sys.maxsize, keep=retain)
        if _dump(value, sink, seen, fast):
            break
    arrays = seen.spans() if seen is not None else None
    kept_value = value if keep else None
    if sink.kept is not None:
        return Snapshot(None, kept_value, arrays, sink.kept, fast)
    return Snapshot(sink.digest(), kept_value, arrays, None, fast)


def unchanged(before: Snapshot, value: Any) -> Snapshot | None:
    """A snapshot of ``value`` now with what the sharing check needs (as ``snapshot(value,
    keep=True)``), when its pickle is still the one ``before`` kept; None when it differs. A
    ``before`` that kept nothing is compared by digest."""
    if before.kept is None:
        now = snapshot(value, keep=True)
        return now if now.digest == before.digest else None
    seen = _Arrays()
    compare = _Compare(before.kept)
    try:
        if not _dump(value, compare, seen, before.fast):
            return None  # a fast pickle meets a cycle now: not the kept one
    except _Differs:
        return None
    if not compare.complete():
        return None
    return Snapshot(before.digest, value, seen.spans())


def _dump(value: Any, sink: Any, seen: _Arrays | None, fast: bool) -> bool:
    """Pickle ``value`` into ``sink``, showing ``seen`` the arrays; False when a fast pickle
    met a cycle or too much sharing (then pickle it with the memo).

    :raises codec.Unpicklable: when it does not pickle.
    """
    pickler: Any
    if seen is not None and seen.ndarray is not None:
        seen.arrays.clear()
        pickler = _ArrayPickler(sink, sink.buffer, seen)
    else:
        pickler = pickle.Pickler(sink, protocol=5, buffer_callback=sink.buffer)
    pickler.fast = fast
    try:
        with codec.quiet():
            pickler.dump(value)
    except _Differs:
        raise
    except (ValueError, OverflowError, RecursionError):
        if fast:
            return False
        raise codec.Unpicklable(f"{type(value).__name__} value cannot be pickled") from None
    except Exception as exc:
        raise codec.Unpicklable(f"{type(value).__name__} value cannot be pickled ({exc})") from None
    return True


class SharingCheck:
    """:func:`shared_part` for :func:`codec.dump`: it watches the value's pickle for arrays
    (pandas objects that protect theirs too), then walks the value."""

    def __init__(self, roots: Sequence[Any], deps: Mapping[str, Snapshot]) -> None:
        self.roots = roots
        self.deps = deps
        self.seen = _Arrays()
        self.watch = self.seen.watch

    def verdict(self, value: Any) -> str | None:
        return shared_part(value, self.roots, self.deps, self.seen.spans())


def shared_part(
    value: Any,
    roots: Sequence[Any],
    deps: Mapping[str, Snapshot],
    spans: Sequence[tuple[int, int, bool]] = (),
) -> str | None:
    """Why ``value`` shares mutable parts with a dependency's value (``"a list with corpus"``),
    or None.

    :param roots: the dependencies' values themselves: the value refers to them by reference,
        and a hit gives it the live objects, so they are not shared parts.
    :param spans: the memory of the arrays the value's pickle reached (:class:`_Arrays`,
        shown them by :class:`codec._Pickler` while storing it).
    """
    mine = _containers(value, {id(root) for root in roots}, VALUE_BUDGET)
    for name, snap in deps.items() if mine else ():
        obj = _reaches(snap.value, mine, DEPENDENCY_BUDGET)
        if obj is not None:
            kind = next(k for k in _CONTAINERS if isinstance(obj, k))
            return f"{_NAMES[kind]} with {name}"
    if spans:
        for name, snap in deps.items():
            if snap.arrays and _overlap(spans, snap.arrays):
                return f"an array's memory with {name} (a view or a shallow copy)"
    return None


def _containers(root: Any, skip: set[int], budget: int) -> dict[int, Any]:
    """The mutable containers reachable from ``root`` (root included), breadth first through
    ``gc.get_referents``; not into ``skip``, code, classes or objects that pickle themselves;
    at most ``budget`` objects looked at."""
    found: dict[int, Any] = {}
    if id(root) in skip or isinstance(root, _OPAQUE):
        return found
    seen = {id(root)}
    queue = deque([root])
    looked = 0
    while queue and looked <= budget:
        obj = queue.popleft()
        if isinstance(obj, _CONTAINERS):
            found[id(obj)] = obj
        if _pickles_itself(type(obj)):
            continue
        refs = gc.get_referents(obj)
        looked += len(refs)
        for ref in refs:
            if isinstance(ref, _OPAQUE):  # (first: id() is an audit event, a Python call)
                continue
            ident = id(ref)
            if ident not in seen and ident not in skip:
                seen.add(ident)
                queue.append(ref)
    return found


def _reaches(root: Any, targets: Mapping[int, Any], budget: int) -> Any:
    """One of ``targets`` (id → object) reachable from ``root``, or None; at most ``budget``
    referents looked at. The membership test and the choice of what to walk next run in C
    (objects the collector does not track hold no containers worth walking)."""
    if id(root) in targets:
        return root
    wanted = targets.keys()
    # id() raises an audit event, and the build recorder's audit hook makes each one a Python
    # call (82 ms for the corpus's 150,000 strings): a few targets are compared by identity.
    # An object the collector tracks is identical only to a tracked referent: those targets
    # are compared with the tracked referents alone (none of the corpus's strings; 17 ms of
    # its 21 ms for three targets), the others (a dict of atoms, a bytearray) with all.
    few = list(targets.values()) if len(targets) <= FEW_TARGETS else None
    tracked_few = [t for t in few if gc.is_tracked(t)] if few is not None else []
    untracked_few = [t for t in few if not gc.is_tracked(t)] if few is not None else []
    seen = {id(root)}
    queue = deque([root])
    looked = 0
    while queue and looked <= budget:
        obj = queue.popleft()
        if _pickles_itself(type(obj)):
            continue
        refs = gc.get_referents(obj)
        looked += len(refs)
        tracked = list(filter(gc.is_tracked, refs))
        if few is not None:
            for target in untracked_few:
                if any(map(operator.is_, refs, repeat(target))):
                    return target
            for target in tracked_few:
                if any(map(operator.is_, tracked, repeat(target))):
                    return target
        elif not wanted.isdisjoint(map(id, refs)):
            return next(targets[id(r)] for r in refs if id(r) in wanted)
        for ref in tracked:
            ident = id(ref)
            if ident not in seen and not isinstance(ref, _OPAQUE):
                seen.add(ident)
                queue.append(ref)
    return None


_OWN_PICKLING: dict[type, bool] = {}
_OBJECT_HOOKS: Final = tuple(
    getattr(object, name, None) for name in ("__reduce__", "__reduce_ex__", "__getstate__")
)


def _pickles_itself(cls: type) -> bool:
    """Whether instances of ``cls`` decide their own pickled state (a ``__reduce__``,
    ``__reduce_ex__`` or ``__getstate__`` of their own, as pandas, numpy and most libraries
    define): what is inside them beyond that state (caches, an Index shared by design) is not
    walked; what they pickle is still compared by its arrays. Builtin containers and their
    subclasses (``Counter``, ``defaultdict``) are walked."""
    known = _OWN_PICKLING.get(cls)
    if known is None:
        if issubclass(cls, _CONTAINERS) or cls.__module__ == "builtins":
            known = False
        else:
            hooks = (getattr(cls, n, None) for n in ("__reduce__", "__reduce_ex__", "__getstate__"))
            known = any(h is not o for h, o in zip(hooks, _OBJECT_HOOKS, strict=True))
        _OWN_PICKLING[cls] = known
    return known


def _overlap(
    mine: Sequence[tuple[int, int, bool]], theirs: Sequence[tuple[int, int, bool]]
) -> bool:
    """Whether two arrays share bytes a write could change through one and show through the
    other (not when both are safe)."""
    theirs = sorted(theirs)
    for low, high, safe in mine:
        for start, end, other_safe in theirs:
            if start >= high:
                break
            if end > low and not (safe and other_safe):
                return True
    return False


def _spans(arrays: list[Any], protected: set[int]) -> list[tuple[int, int, bool]]:
    if not arrays:
        return []
    bounds = _bounds_of()
    out = []
    for a in arrays:
        if a.nbytes:
            low, high = bounds(a)
            out.append((low, high, not a.flags.writeable or id(a) in protected))
    return out


def _ndarray() -> Any:
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def _pandas() -> Any:
    return sys.modules.get("pandas")


def _bounds_of() -> Any:
    numpy = sys.modules["numpy"]
    utils = getattr(getattr(numpy, "lib", None), "array_utils", None)
    return getattr(utils, "byte_bounds", None) or numpy.byte_bounds


def _protect(obj: Any, pandas: Any, out: set[int]) -> None:
    """Note the arrays of ``obj`` that pandas never lets a write reach through another object:
    an Index's (immutable), and a block's of a frame or series when pandas copies on write
    (3.0 and later, or 2.x with ``mode.copy_on_write``)."""
    index = getattr(pandas, "Index", None)
    if index is not None and isinstance(obj, index):
        values = getattr(obj, "_data", None)
    elif (
        type(obj).__module__.startswith("pandas.core.internals")
        and hasattr(obj, "refs")
        and _copies_on_write(pandas)
    ):
        values = getattr(obj, "values", None)
    else:
        return
    out.add(id(values))
    # An extension array (strings, categoricals, geometries) keeps its arrays inside.
    out.update(id(part) for part in gc.get_referents(values))


def _copies_on_write(pandas: Any) -> bool:
    try:
        if int(str(pandas.__version__).split(".")[0]) >= 3:
            return True
        return bool(pandas.options.mode.copy_on_write is True)
    except Exception:
        return False
