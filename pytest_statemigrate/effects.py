"""What a build does to the process besides returning its value.

A hit hands a test the stored value without running the fixture, so anything else the build
did is not done: an environment variable it set, the directory it changed to, an entry it put
on ``sys.path``, a warnings filter, a signal handler, a logging handler or level, a global of a
project module it rebound. Plain pytest's later tests see those effects; with a hit they would
not (DESIGN.md, invariant 3). :class:`Snapshot` takes the process's state before a build and
names the first difference after it; the session refuses such a fixture, naming the effect.

Pure of pytest; each snapshot is a few shallow copies (the environment, ``sys.path``, the
filters, the handlers of every signal and logger, the globals of the project's modules).

What a library does while it is *imported* is not the build's: importing scikit-learn sets
``KMP_DUPLICATE_LIB_OK``, astropy and scipy add warnings filters, and a hit's unpickling
imports them again. So the changes :func:`watching` sees being made (environment writes,
filter, logger and signal calls) count only when no import is running on this thread; the
current directory, ``sys.path`` and the project's globals are compared as they are.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

_PKG_DIRS: Final = ("site-packages", "dist-packages")


def importing(depth: int = 2) -> bool:
    """A module is being imported on this thread (its frames are below ``depth``)."""
    try:
        frame = sys._getframe(depth)
    except ValueError:  # (a shallower stack)
        return False
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class Made:
    """What code that was not importing changed while a build was watched: the environment
    variables it wrote, the filters it added (or that it reset them), the loggers and
    signals it configured."""

    def __init__(self) -> None:
        self.env: set[str] = set()
        self.filters: set[Any] = set()  # entries a call added, removed or moved
        self.loggers: set[str] = set()
        self.signals: set[int] = set()
        #: global generators drawn from (``"random"``): an import's draws (scikit-learn's)
        #: do not make the value depend on the random state
        self.drew: set[str] = set()


class _Watch:
    """The builds being watched on one thread (nested: a change counts for each)."""

    made: list[Made] = []
    thread: int | None = None
    saved: list[tuple[Any, str, Any]] = []


def _counted() -> bool:
    return bool(_Watch.made) and threading.get_ident() == _Watch.thread and not importing(4)


def note(kind: str, what: Any = None) -> None:
    """A change is being made: counted for the watched builds unless an import makes it."""
    try:
        counted = _counted()
    except Exception:  # (noting never fails the call it watches)
        return
    if not counted:
        return
    for made in _Watch.made:
        if kind == "env":
            made.env.add(what)
        elif kind == "logger":
            made.loggers.add(what)
        elif kind == "signal":
            made.signals.add(what)
        elif kind == "draw":
            made.drew.add(what)


def _filter_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        counted = _counted()
        before = list(warnings.filters)
        try:
            return func(*args, **kwargs)
        finally:
            if counted:
                try:
                    moved = _moved(before, list(warnings.filters))
                except Exception:  # (never into the caller's call: an unhashable filter)
                    moved = {None}
                for made in _Watch.made:
                    made.filters.update(moved)

    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


def _logger_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: logging.Logger, *args: Any, **kwargs: Any) -> Any:
        note("logger", "" if self is logging.root else getattr(self, "name", ""))
        return func(self, *args, **kwargs)

    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


def _disable_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        note("logger", "")
        return func(*args, **kwargs)

    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


def _signal_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(number: Any, *args: Any, **kwargs: Any) -> Any:
        note("signal", number)
        return func(number, *args, **kwargs)

    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


_PATCHES: Final = (
    (warnings, "filterwarnings", _filter_call),
    (warnings, "simplefilter", _filter_call),
    (warnings, "resetwarnings", _filter_call),
    (logging.Logger, "addHandler", _logger_call),
    (logging.Logger, "removeHandler", _logger_call),
    (logging.Logger, "setLevel", _logger_call),
    (logging, "disable", _disable_call),
    (signal, "signal", _signal_call),
)


def _draw_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        note("draw", "random")
        return func(*args, **kwargs)

    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


def _random_functions() -> list[str]:
    """The ``random`` module's functions that draw from its global generator."""
    import random

    shared = random._inst
    return [
        n
        for n, f in vars(random).items()
        if getattr(f, "__self__", None) is shared and n != "getstate"  # (reading is no draw)
    ]


@contextmanager
def watching(made: Made) -> Iterator[None]:
    """Note into ``made`` the changes made while the block runs (see :func:`note`)."""
    if not _Watch.made:
        import random

        _Watch.thread = threading.get_ident()
        patches = [*_PATCHES, *((random, n, _draw_call) for n in _random_functions())]
        for owner, name, wrap in patches:
            original = getattr(owner, name)
            _Watch.saved.append((owner, name, original))
            setattr(owner, name, wrap(original))
    _Watch.made.append(made)
    try:
        yield
    finally:
        _Watch.made.remove(made)
        if not _Watch.made:
            for owner, name, original in reversed(_Watch.saved):
                setattr(owner, name, original)
            _Watch.saved.clear()
            _Watch.thread = None


class ProjectModules:
    """The project's modules (their file below the rootdir, not an installed package's nor
    one of ``exclude``), classified once per module name."""

    def __init__(self, rootdir: str, exclude: Sequence[str] = ()) -> None:
        self._root = os.path.join(os.path.abspath(rootdir), "")
        self._exclude = tuple(os.path.join(os.path.abspath(e), "") for e in exclude)
        self._known: dict[str, bool] = {}

    def __call__(self) -> list[ModuleType]:
        found = []
        for name, module in list(sys.modules.items()):
            mine = self._known.get(name)
            if mine is None:
                mine = self._known[name] = self._is_project(module)
            if mine and module is not None:
                found.append(module)
        return found

    def _is_project(self, module: ModuleType | None) -> bool:
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            return False
        path = os.path.abspath(path)
        if not path.startswith(self._root) or path.startswith(self._exclude):
            return False
        return not any(part in _PKG_DIRS for part in path[len(self._root) :].split(os.sep))


def _logger_state(logger: logging.Logger) -> tuple[Any, ...]:
    return (tuple(logger.handlers), logger.level, logger.propagate, logger.disabled)


@dataclass
class Snapshot:
    env: dict[Any, Any]  # os.environ's own encoded mapping (a C-level copy)
    cwd: str
    path: list[str]
    filters: list[Any]
    signals: dict[int, Any]
    loggers: dict[str, tuple[Any, ...]]
    disable: int
    modules: dict[str, tuple[ModuleType, dict[str, Any]]]
    #: the project's module-level containers, class dicts and instance dicts, shallow
    contents: list[tuple[str, Any, Any]]

    @classmethod
    def take(cls, modules: Callable[[], Sequence[ModuleType]] | None = None) -> Snapshot:
        manager = logging.Logger.manager
        loggers = {
            name: _logger_state(lg)
            for name, lg in list(manager.loggerDict.items())
            if isinstance(lg, logging.Logger)
        }
        loggers[""] = _logger_state(logging.root)
        found = list(modules()) if modules else []
        return cls(
            env=_environ_data(),
            cwd=_cwd(),
            path=list(sys.path),
            filters=list(warnings.filters),
            signals={s: signal.getsignal(s) for s in _signals()},
            loggers=loggers,
            disable=manager.disable,
            modules={m.__name__: (m, dict(vars(m))) for m in found},
            contents=_contents(found),
        )

    def changed(self, made: Made | None = None) -> str | None:
        """The first effect the process shows since this snapshot, in words (``"sets the
        environment variable SEED"``), or None. With ``made`` (:func:`watching`), changes of
        the environment, the filters, loggers and signals count only where ``made`` saw code
        that was not importing make them."""
        now = Snapshot.take()
        env, env_now = self.env, now.env
        signals, signals_now = self.signals, now.signals
        loggers, loggers_now = self.loggers, now.loggers
        filters_changed = now.filters != self.filters
        disabled = now.disable != self.disable
        if made is not None:
            names = {_encode_key(n) for n in made.env}
            env, env_now = _only(env, names), _only(env_now, names)
            signals, signals_now = _only(signals, made.signals), _only(signals_now, made.signals)
            loggers, loggers_now = _only(loggers, made.loggers), _only(loggers_now, made.loggers)
            filters_changed = bool(_moved(self.filters, now.filters) & made.filters)
            disabled = disabled and "" in made.loggers
        return (
            _env(env, env_now)
            or ("changes the current directory" if now.cwd != self.cwd else None)
            or ("changes sys.path" if now.path != self.path else None)
            or ("changes the warnings filters" if filters_changed else None)
            or _signal(signals, signals_now)
            or _logging(loggers, loggers_now)
            or ("calls logging.disable" if disabled else None)
            or _globals(self.modules)
            or _in_place(self.contents)
        )


_CONTAINERS: Final = (dict, list, set, bytearray)


def _contents(modules: Sequence[ModuleType]) -> list[tuple[str, Any, Any]]:
    """What a build may change in place without rebinding a global: the containers at module
    level, the attributes of the classes the project defines (and the containers among them),
    and those of module-level instances of its classes. A shallow copy of each, by name."""
    own = {m.__name__ for m in modules}
    found: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()

    def add(shown: str, obj: Any, depth: int) -> None:
        if id(obj) in seen:
            return
        if isinstance(obj, _CONTAINERS):
            seen.add(id(obj))
            found.append((shown, obj, _shallow(obj)))
            return
        if depth == 0:
            return
        if isinstance(obj, type):
            if obj.__module__ not in own:
                return
            attrs: Any = obj.__dict__
        elif type(obj).__module__ in own and not isinstance(obj, ModuleType):
            attrs = getattr(obj, "__dict__", None)
            if not isinstance(attrs, dict):
                return
        else:
            return
        seen.add(id(obj))
        found.append((shown, obj, dict(attrs)))
        for attr, member in list(attrs.items()):
            if not attr.startswith("__"):
                add(f"{shown}.{attr}", member, depth - 1)

    for module in modules:
        for attr, obj in list(vars(module).items()):
            if not attr.startswith("__"):
                add(f"{module.__name__}.{attr}", obj, 1)
    return found


def _shallow(obj: Any) -> Any:
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, set):
        return frozenset(obj)
    return bytes(obj)


def _same(before: Any, now: Any) -> bool:
    """A container holds the very members it held (values by identity)."""
    if isinstance(before, dict):
        return len(before) == len(now) and all(k in now and now[k] is v for k, v in before.items())
    if isinstance(before, list):
        return len(before) == len(now) and all(a is b for a, b in zip(before, now, strict=True))
    return bool(before == now)


def _in_place(contents: Sequence[tuple[str, Any, Any]]) -> str | None:
    for shown, obj, before in contents:
        try:
            if isinstance(obj, _CONTAINERS):
                if not _same(before, obj):
                    return f"changes {shown} in place"
                continue
            now = obj.__dict__
            for attr in sorted(before.keys() | now.keys()):
                if attr.startswith("__"):
                    continue
                if attr not in now:
                    return f"deletes {shown}.{attr}"
                if attr not in before:
                    return f"sets {shown}.{attr}"
                if now[attr] is not before[attr]:
                    return f"rebinds {shown}.{attr}"
        except Exception:  # (a set member whose __eq__ raises: taken as changed)
            return f"changes {shown} in place"
    return None


def _moved(before: Sequence[Any], after: Sequence[Any]) -> set[Any]:
    """The filters added, removed, or moved among those both lists hold (filters are
    matched first to last: the order is what they mean)."""
    old, new = set(before), set(after)
    common_before = [f for f in before if f in new]
    common_after = [f for f in after if f in old]
    # (not strict: a list may hold an entry twice, then the two differ in length)
    moved = {a for a, b in zip(common_before, common_after, strict=False) if a != b}
    return (old ^ new) | moved


def _only(mapping: Mapping[Any, Any], keys: set[Any]) -> dict[Any, Any]:
    return {k: v for k, v in mapping.items() if k in keys}


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # (removed under us)
        return ""


def _signals() -> list[int]:
    valid = getattr(signal, "valid_signals", None)
    return sorted(int(s) for s in valid()) if valid is not None else []


def _environ_data() -> dict[Any, Any]:
    """The environment as ``os.environ`` keeps it (encoded keys and values), copied in C:
    iterating ``os.environ`` decodes every item in Python."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _encode_key(name: str) -> Any:
    encode = getattr(os.environ, "encodekey", None)
    try:
        return encode(name) if encode is not None else name
    except Exception:  # (a name the platform cannot encode: compared as it is)
        return name


def _decode_key(key: Any) -> str:
    return os.fsdecode(key) if isinstance(key, bytes) else str(key)


def _env(before: Mapping[Any, Any], after: Mapping[Any, Any]) -> str | None:
    for key in sorted(before.keys() | after.keys(), key=_decode_key):
        if before.get(key) == after.get(key):
            continue
        if key not in after:
            return f"unsets the environment variable {_decode_key(key)}"
        return f"sets the environment variable {_decode_key(key)}"
    return None


def _signal(before: Mapping[int, Any], after: Mapping[int, Any]) -> str | None:
    for number, handler in after.items():
        if handler != before.get(number, handler):
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = str(number)
            return f"sets a handler for {name}"
    return None


def _logging(
    before: Mapping[str, tuple[Any, ...]], after: Mapping[str, tuple[Any, ...]]
) -> str | None:
    fresh = ((), logging.NOTSET, True, False)  # a logger made since: as getLogger makes it
    for name, state in after.items():
        old = before.get(name, fresh)
        if state == old:
            continue
        shown = repr(name) if name else "the root logger"
        if state[0] != old[0]:
            return f"changes the handlers of {shown}"
        if state[1] != old[1]:
            return f"changes the level of {shown}"
        return f"configures {shown}"
    return None


def _globals(before: Mapping[str, tuple[ModuleType, dict[str, Any]]]) -> str | None:
    for name, (module, names) in before.items():
        now = vars(module)
        for attr in sorted(names.keys() | now.keys()):
            if attr.startswith("__"):  # (__warningregistry__, __builtins__, ...)
                continue
            if attr not in now:
                return f"deletes {name}.{attr}"
            if attr not in names:
                if isinstance(now[attr], ModuleType):
                    continue  # a submodule the build imported: the import system binds it
                return f"sets {name}.{attr}"
            if now[attr] is not names[attr]:
                return f"rebinds {name}.{attr}"
    return None
