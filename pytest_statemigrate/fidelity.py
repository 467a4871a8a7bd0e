"""Whether a value comes back from pickling as it was: the classes that may silently not.

Pickling is faithful for builtin types and for classes that follow its protocol. A few
designs make a round trip lose or change state *without an error*:

* a ``__getattr__`` (or ``__getattribute__``) written in Python that answers for
  ``__setstate__`` (and, before Python 3.11, for ``__getstate__``): unpickling calls what it
  returns instead of restoring ``__dict__``, and the loaded object has lost its attributes;
* a dict subclass whose ``__setitem__``, or a list subclass whose ``append``/``extend``, is
  written in Python: unpickling restores the items through them, and they may transform,
  drop or log what they get.

A class that designs its own pickling (a ``__reduce__``, ``__reduce_ex__``, ``__setstate__``
or ``__getnewargs(_ex)__`` of its own) is trusted: that is the library's contract, and it may
well rebuild caches or reopen files on load. So only instances of the other, *fragile*,
classes are checked, and only for their own state: their ``__dict__``, their dict or list
items and their slots, compared shallowly (atoms by value, containers by length, other
objects by type) between the value and its round trip. A reader or a cache elsewhere in the
value that loads differently is its own class's business. Pure: no pytest.

Rejected: comparing a pickle of the whole value's state before and after the round trip (the
check until issue 12). One reader that reopens its file on load, or a lazily rebuilt cache
anywhere in the value, made every such value "lossy": real suites' central objects were all
refused.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any, Final

#: Methods that make a class's pickling its own design.
_OWN_PROTOCOL: Final = (
    "__reduce__",
    "__reduce_ex__",
    "__setstate__",
    "__getnewargs__",
    "__getnewargs_ex__",
)
_ATOMS: Final = (str, bytes, int, float, complex, bool, type(None))


def _defined_in_python(cls: type, name: str, stop: tuple[type, ...] = (object,)) -> bool:
    """``name`` is defined as a Python function by ``cls`` or a base before ``stop``."""
    for klass in cls.__mro__:
        if klass in stop:
            return False
        member = vars(klass).get(name)
        if member is not None:
            func = getattr(member, "__func__", member)
            return isinstance(func, types.FunctionType)
    return False


def fragile(cls: type) -> str | None:
    """Why instances of ``cls`` may come back from pickling changed without an error, or
    None when its pickling is faithful or its own design."""
    if issubclass(cls, type) or cls.__module__ == "builtins":
        return None
    # Its own protocol: trusted (copyreg's and object's defaults are not "its own").
    if any(_defined_in_python(cls, name) for name in _OWN_PROTOCOL):
        return None
    if _defined_in_python(cls, "__getattr__") or _defined_in_python(cls, "__getattribute__"):
        return "__getattr__ without __setstate__"
    if issubclass(cls, dict) and _defined_in_python(cls, "__setitem__", (dict, object)):
        return "a dict subclass that restores its items through its own __setitem__"
    if issubclass(cls, list) and (
        _defined_in_python(cls, "append", (list, object))
        or _defined_in_python(cls, "extend", (list, object))
    ):
        return "a list subclass that restores its items through its own append/extend"
    return None


def _shallow(value: Any) -> Any:
    if isinstance(value, _ATOMS):
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple, dict, set, frozenset, bytearray)):
        return (type(value).__name__, len(value))
    return type(value).__qualname__


def _key(value: Any) -> Any:
    return (type(value).__name__, value) if isinstance(value, _ATOMS) else type(value).__name__


def own_state(obj: Any) -> tuple[Any, ...]:
    """An instance's own state, read past any ``__getattr__``: its ``__dict__``, its dict or
    list items and its slots, each shallowly."""
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        attrs = {}
    state: list[Any] = [sorted((str(k), _shallow(v)) for k, v in dict(attrs).items())]
    if isinstance(obj, dict):
        state.append(sorted(((_key(k), _shallow(v)) for k, v in dict.items(obj)), key=repr))
    if isinstance(obj, list):
        state.append([_shallow(v) for v in list.__iter__(obj)])
    slots: list[Any] = []
    for klass in type(obj).__mro__:
        names = vars(klass).get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                slots.append((name, _shallow(object.__getattribute__(obj, name))))
            except AttributeError:
                slots.append((name, "<unset>"))
    state.append(slots)
    return tuple(state)


def first_difference(
    before: Iterable[Any], after: Iterable[Any], why: Callable[[type], str | None]
) -> str | None:
    """The first fragile instance (in pickling order) whose own state differs between a value
    and its round trip, as ``"Cls: reason"``; None when all kept their state."""
    old, new = list(before), list(after)
    for a, b in zip(old, new, strict=False):
        if type(a) is not type(b) or own_state(a) != own_state(b):
            return f"{type(a).__qualname__}: {why(type(a))}"
    if len(old) != len(new):
        cls = type(old[len(new)] if len(old) > len(new) else new[len(old)])
        return f"{cls.__qualname__}: {why(cls)}"
    return None
