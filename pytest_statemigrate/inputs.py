"""Dynamic inputs: what a value's build runs and reads, beyond what its key names.

While a managed value builds, :class:`BuildRecorder` notes every file opened for reading (an
audit hook, installed once and idle outside builds) and, on Python 3.12+, every code object
that starts (``sys.monitoring`` with a per-code ``DISABLE``: nearly free). :func:`fingerprint`
turns those into the entry's fingerprints: project files by content digest, installed packages
by distribution version. A stored value is valid only while :meth:`Fingerprints.changed` finds
nothing.

The recorder also notes the environment variables the build reads through ``os.environ`` (and
``os.getenv``), the current directory when it opens a relative path, and the global random
generators it draws from (``random``, numpy's legacy global state, Faker's and factory_boy's:
what pytest-randomly reseeds). A stored value is valid only while those variables and the
directory are what they were, and while each generator it drew from starts in the state it
started from then; a hit leaves each generator in the state the build left it in, as plain
pytest would. docs/keys.md lists what is recorded and what is left to the user.

Before Python 3.12 there is no cheap way to see which code runs: ``sys.settrace`` turns off the
specialising interpreter and made a build 3.5x slower (bench/, docs/benchmarks.md). There the
recorder takes a superset instead: every project module loaded when the build ends (test
modules and conftest files aside), the files of the project objects the fixture's code names,
and the packages it names. Over-invalidation costs a rebuild; it never serves a stale value.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any, Final

from . import effects
from .keys import FileDigests

_SKIP_DIRS: Final = ("__pycache__", ".git", ".tox", ".nox", ".venv", "node_modules")
_PKG_DIRS: Final = ("site-packages", "dist-packages")


#: Audit events that create or change a path: event → the index of that path in its args.
_WRITES: Final = {
    "os.mkdir": 0,
    "os.rename": 1,
    "os.symlink": 1,
    "os.link": 1,
    "os.truncate": 0,
    "os.chmod": 0,
    "os.utime": 0,
    "shutil.copyfile": 1,
    "shutil.copytree": 1,
    "sqlite3.connect": 0,
}
#: ... and that delete one.
_REMOVES: Final = {"os.remove": 0, "os.rmdir": 0, "shutil.rmtree": 0, "os.rename": 0}


class _Audit:
    """One audit hook for the whole process (they cannot be removed), idle unless recording."""

    installed = False
    sink: set[str] | None = None
    thread: int | None = None
    writes: Any = None  # a trees.Capture while a build with files is recorded

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        sink = cls.sink
        if sink is None or threading.get_ident() != cls.thread:
            return
        if event != "open":
            if cls.writes is not None:
                cls._changed(event, args)
            return
        path, mode, flags = args
        if not isinstance(path, str):
            return
        if not os.path.isabs(path):
            _Reads.relative = True
        if (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        ):
            # (A directory "opened" for writing is the name given to an ``opener``, as
            # tempfile.NamedTemporaryFile does: the opener's own open is the write.)
            if cls.writes is not None and not cls.writes.paused and not os.path.isdir(path):
                cls.writes.written.add(os.path.abspath(path))
            return
        sink.add(os.path.abspath(path))

    @classmethod
    def _changed(cls, event: str, args: tuple[Any, ...]) -> None:
        capture = cls.writes
        if capture.paused:
            return
        for table, into in ((_WRITES, capture.written), (_REMOVES, capture.removed)):
            index = table.get(event)
            if index is None or index >= len(args):
                continue
            try:
                path = os.fsdecode(os.fspath(args[index]))
            except TypeError:  # a file descriptor
                continue
            if path and path != ":memory:":
                into.add(os.path.abspath(path))


class BuildRecorder:
    """Context manager: the code objects that ran and the files opened while it was active."""

    _tool: int | None = None

    def __init__(self, writes: Any = None, modules: Callable[[], Any] | None = None) -> None:
        """:param writes: a :class:`trees.Capture` to note the paths the build writes and
        deletes in, or None.
        :param modules: the project's modules (an :class:`effects.ProjectModules`), whose
        globals a build must not rebind; None: effects are not looked for."""
        self.codes: set[CodeType] = set()
        self.opened: set[str] = set()
        self.traced = False
        self.writes = writes
        #: Environment variables read (name → value, None when unset; "*" → a digest of
        #: the whole environment when the build read all of it)
        self.env: dict[str, str | None] = {}
        self.cwd: str | None = None  # the current directory, when it opened a relative path
        #: Global generators the build drew from: name → (digest of the state it started
        #: from, the state it left)
        self.random: dict[str, tuple[str, Any]] = {}
        self._states: dict[str, Any] = {}
        self._modules = modules
        self._effects: effects.Snapshot | None = None
        #: What the build did to the process besides its value (``effects.py``), or None
        self.effect: str | None = None

    def __enter__(self) -> BuildRecorder:
        if self._modules is not None:  # (first: the environment is read before reads count)
            self._effects = effects.Snapshot.take(self._modules)
            self._made = effects.Made()
            self._watch = effects.watching(self._made)
            self._watch.__enter__()
        if not _Audit.installed:
            sys.addaudithook(_Audit.hook)
            _Audit.installed = True
        _Audit.sink, _Audit.thread = self.opened, threading.get_ident()
        _Audit.writes = self.writes
        _Reads.start(self.env)
        self._states = random_states()
        self.traced = self._start_monitoring()
        return self

    def __exit__(self, *exc: object) -> None:
        _Audit.sink = _Audit.thread = _Audit.writes = None
        self._stop()
        if _Reads.stop():
            self.cwd = os.getcwd()
        if self._effects is not None:
            self._watch.__exit__(None, None, None)
            self.effect = self._effects.changed(self._made)
            self._effects = None
        for name, state in random_states().items():
            before = self._states.get(name, state)
            if name == "random" and self._modules is not None and name not in self._made.drew:
                continue  # drawn while a module was imported (scikit-learn's): not the build
            if not _same_state(before, state):
                self.random[name] = (random_state_digest(before), _to_wire(state))
        self._states = {}

    # -- sys.monitoring (3.12+) ---------------------------------------------------------
    def _start_monitoring(self) -> bool:
        mon = getattr(sys, "monitoring", None)
        if mon is None:
            return False
        for tool in (4, 3):
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "statemigrate")
                break
        else:
            return False
        add, disable = self.codes.add, mon.DISABLE

        def on_start(code: CodeType, offset: int) -> Any:
            add(code)
            return disable

        mon.register_callback(tool, mon.events.PY_START, on_start)
        mon.set_events(tool, mon.events.PY_START)
        # Code that ran in an earlier build was disabled for this tool: turn it back on.
        mon.restart_events()
        self._tool = tool
        return True

    def _stop(self) -> None:
        if self._tool is not None:
            mon = sys.monitoring  # type: ignore[attr-defined]
            mon.set_events(self._tool, 0)
            mon.register_callback(self._tool, mon.events.PY_START, None)
            mon.free_tool_id(self._tool)
            self._tool = None


@dataclass
class Fingerprints:
    """Files (rootdir-relative path → digest), distributions (name → version), environment
    variables (name → digest of the value, None when unset; ``"*"``: the whole environment),
    the current directory's digest (when the build opened a relative path) and the global
    random generators it drew from (name → digest of the state it started from)."""

    files: dict[str, str] = field(default_factory=dict)
    dists: dict[str, str] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None
    random: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"files": self.files, "dists": self.dists}
        if self.env:
            wire["env"] = self.env
        if self.cwd is not None:
            wire["cwd"] = self.cwd
        if self.random:
            wire["random"] = self.random
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> Fingerprints:
        return cls(
            files=dict(data.get("files", {})),
            dists=dict(data.get("dists", {})),
            env=dict(data.get("env", {})),
            cwd=data.get("cwd"),
            random=dict(data.get("random", {})),
        )

    def changed(self, rootdir: Path, files: FileDigests, dists: Distributions) -> str | None:
        """The first input that differs now, as a short phrase, or None when all are unchanged."""
        for rel, want in self.files.items():
            if files.digest(str(rootdir / rel)) != want:
                return f"{rel} changed"
        for name, version in self.dists.items():
            if dists.version(name) != version:
                return f"package {name} is now {dists.version(name)}"
        for name, recorded in self.env.items():
            now = environment_digest() if name == "*" else value_digest(os.environ.get(name))
            if now != recorded:
                if name == "*":
                    return (
                        "the environment changed (its build read all of os.environ: "
                        "@state(env=[...]) names what counts)"
                    )
                return f"environment variable {name} changed"
        if self.cwd is not None and value_digest(os.getcwd()) != self.cwd:
            return "the current directory changed (its build opened a relative path)"
        states = random_states() if self.random else {}
        for name, start in self.random.items():
            if name not in states or random_state_digest(states[name]) != start:
                return f"the global random state of {name!r} is not the one it was built from"
        return None


# -- environment variables, the current directory ------------------------------------------
#: Set by pytest and xdist for each run or test: a build reading the whole environment is not
#: taken to depend on them (one that reads one of them by name is).
_PER_RUN_VARIABLES: Final = frozenset(
    {"PYTEST_CURRENT_TEST", "PYTEST_XDIST_TESTRUNUID", "PYTEST_XDIST_WORKER", "COV_CORE_CONTEXT"}
)


def value_digest(value: str | None) -> str | None:
    """An environment variable's value as an entry records it (its values may be secrets)."""
    if value is None:
        return None
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def environment_digest() -> str:
    """The whole environment, but the variables pytest sets per run or per test."""
    items = sorted((k, v) for k, v in os.environ.items() if k not in _PER_RUN_VARIABLES)
    return hashlib.sha256(repr(items).encode("utf-8", "surrogateescape")).hexdigest()[:32]


class _Reads:
    """Environment reads of the recorded build's thread: ``os.environ`` gets a subclass of
    its own class while a build is recorded (so ``from os import environ`` and ``os.getenv``
    are seen too), and its own class back after."""

    sink: dict[str, str | None] | None = None
    thread: int | None = None
    relative = False  # the build opened a relative path (audit hook)
    _previous: list[tuple[dict[str, str | None] | None, int | None, bool]] = []

    @classmethod
    def start(cls, sink: dict[str, str | None]) -> None:
        cls._previous.append((cls.sink, cls.thread, cls.relative))
        cls.sink, cls.thread, cls.relative = sink, threading.get_ident(), False
        environ = os.environ
        if type(environ) is os._Environ:
            environ.__class__ = _ReadEnviron

    @classmethod
    def stop(cls) -> bool:
        """Stop recording (resuming an outer build's); whether a relative path was opened."""
        relative = cls.relative
        cls.sink, cls.thread, outer_relative = cls._previous.pop()
        cls.relative = outer_relative or relative
        if cls.sink is None and type(os.environ) is _ReadEnviron:
            os.environ.__class__ = os._Environ  # type: ignore[assignment]
        return relative

    busy = False  # noting (reading os.environ itself): not the build's reads

    @classmethod
    def note(cls, name: Any) -> None:
        sink = cls.sink
        if (
            sink is None
            or cls.busy
            or threading.get_ident() != cls.thread
            or not isinstance(name, str)
            or name in sink
            or "*" in sink  # (iterating reads each value too: the whole is noted already)
            or _importing()
        ):
            return
        cls.busy = True
        try:
            if name == "*":
                sink["*"] = environment_digest()
            else:
                try:
                    value: str | None = os._Environ.__getitem__(os.environ, name)
                except KeyError:
                    value = None
                sink[name] = value_digest(value)
        finally:
            cls.busy = False


def _importing() -> bool:
    """A module is being imported on this thread (its import-time reads configure the library,
    which a hit's unpickling imports again, with this run's environment: networkx scans every
    ``NETWORKX_*`` variable so)."""
    return effects.importing(3)


class _ReadEnviron(os._Environ[str]):
    """``os.environ`` while a build is recorded: notes the names read."""

    def __getitem__(self, key: str) -> str:
        _Reads.note(key)
        value: str = super().__getitem__(key)
        return value

    def __iter__(self) -> Iterator[str]:
        _Reads.note("*")
        return super().__iter__()

    def __setitem__(self, key: str, value: str) -> None:
        effects.note("env", key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        effects.note("env", key)
        super().__delitem__(key)


# -- the global random generators -----------------------------------------------------------
def _generators() -> dict[str, Any]:
    """The global generators imported now: name → an object with getstate/setstate."""
    found: dict[str, Any] = {"random": sys.modules["random"]}
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        legacy = getattr(getattr(numpy_random, "mtrand", None), "_rand", None)
        if legacy is not None:
            found["numpy.random"] = _NumpyLegacy(legacy)
    faker = sys.modules.get("faker.generator")
    if faker is not None and hasattr(getattr(faker, "random", None), "getstate"):
        found["faker"] = faker.random
    factory = sys.modules.get("factory.random")
    if factory is not None and hasattr(getattr(factory, "randgen", None), "getstate"):
        found["factory_boy"] = factory.randgen
    return found


class _NumpyLegacy:
    """numpy's legacy global ``RandomState`` with random's getstate/setstate names."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def getstate(self) -> Any:
        return self.state.get_state(legacy=True)

    def setstate(self, state: Any) -> None:
        self.state.set_state(state)


def random_states() -> dict[str, Any]:
    """Each imported global generator's state now."""
    return {name: gen.getstate() for name, gen in _generators().items()}


def _same_state(a: Any, b: Any) -> bool:
    return (
        bool(random_state_digest(a) == random_state_digest(b)) if _has_arrays(a) else bool(a == b)
    )


def _has_arrays(state: Any) -> bool:
    return isinstance(state, tuple) and any(hasattr(part, "tobytes") for part in state)


def _to_wire(state: Any) -> Any:
    """A generator's state in the types msgpack keeps (lists for tuples and arrays)."""
    if hasattr(state, "tolist"):
        return ["__array__", str(state.dtype), state.tolist()]
    if isinstance(state, tuple | list):
        return [_to_wire(part) for part in state]
    return state


def _from_wire(wire: Any) -> Any:
    if isinstance(wire, list):
        if len(wire) == 3 and wire[0] == "__array__":
            import numpy

            return numpy.array(wire[2], dtype=wire[1])
        return tuple(_from_wire(part) for part in wire)
    return wire


def random_state_digest(state: Any) -> str:
    """A generator's state as an entry records it (numpy arrays by their bytes)."""
    return hashlib.sha256(repr(_to_wire(state)).encode()).hexdigest()[:32]


def restore_random(after: dict[str, Any]) -> None:
    """On a hit: leave each global generator the build drew from in the state the build left
    it in (an unknown generator, not imported in this process, is skipped)."""
    if not after:  # (most values: nothing to look up on the hit path)
        return
    generators = _generators()
    for name, wire in after.items():
        gen = generators.get(name)
        if gen is not None:
            gen.setstate(_from_wire(wire))


class Distributions:
    """Installed distributions: import name → distribution, and their versions (memoised)."""

    def __init__(self) -> None:
        self._by_top: dict[str, list[str]] | None = None
        self._versions: dict[str, str] = {}

    def for_top_level(self, name: str) -> list[str]:
        """The distributions that install the import name ``name``.

        Most distributions are named like their top-level package (``_pytest`` aside), and
        asking for one version is ~1 ms; ``packages_distributions()`` reads every installed
        distribution (0.3 s here), so it is the fallback, once per process.
        """
        for guess in dict.fromkeys((name, name.lstrip("_"))):
            if guess and self.version(guess) != "absent":
                return [guess]
        if self._by_top is None:
            from importlib.metadata import packages_distributions

            self._by_top = {k: list(v) for k, v in packages_distributions().items()}
        return self._by_top.get(name, [])

    def version(self, dist: str) -> str:
        if dist not in self._versions:
            from importlib.metadata import PackageNotFoundError, version

            try:
                self._versions[dist] = version(dist)
            except PackageNotFoundError:
                self._versions[dist] = "absent"
        return self._versions[dist]


_STDLIB: Final = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
)


def _package_top(path: str) -> str | None:
    parts = Path(path).parts
    for marker in _PKG_DIRS:
        if marker in parts:
            idx = len(parts) - 1 - parts[::-1].index(marker)
            if idx + 1 < len(parts):
                return parts[idx + 1].split(".")[0]
    return None


def _is_test_file(path: str) -> bool:
    base = os.path.basename(path)
    return base == "conftest.py" or base.startswith("test_") or base.endswith("_test.py")


def _named_objects(code: CodeType, namespace: dict[str, Any]) -> Iterator[Any]:
    """Objects the code (and the code nested in it) names from its module's namespace."""
    stack = [code]
    while stack:
        current = stack.pop()
        for name in current.co_names:
            if name in namespace:
                yield namespace[name]
        stack.extend(c for c in current.co_consts if isinstance(c, CodeType))


def static_paths(func: Any, rootdir: Path) -> set[str]:
    """The superset of what a build may run, for interpreters that cannot trace it cheaply.

    Every project module loaded now (test modules and conftest files aside), plus the source
    files of the project functions, classes and modules the fixture's code names.
    """
    root = str(rootdir) + os.sep
    paths: set[str] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(root) and not _is_test_file(path):
            paths.add(path)
    code = getattr(func, "__code__", None)
    namespace = getattr(func, "__globals__", None)
    if code is None or namespace is None:
        return paths
    for obj in _named_objects(code, namespace):
        target = obj if inspect.ismodule(obj) else inspect.getmodule(obj)
        if target is None and callable(obj):
            continue
        path = getattr(target, "__file__", None) or ""
        if inspect.isfunction(obj) or inspect.isclass(obj):
            with contextlib.suppress(TypeError):
                path = inspect.getsourcefile(obj) or path
        if path:
            paths.add(path)
    return paths


def fingerprint(
    *,
    codes: Iterable[CodeType],
    opened: Iterable[str],
    rootdir: Path,
    exclude: Iterable[str],
    own_code: CodeType | None,
    files: FileDigests,
    dists: Distributions,
) -> Fingerprints:
    """Fingerprints of what a build ran and read.

    :param exclude: directories whose files never count (the store directory).
    :param own_code: the fixture function's code: its own file counts only when code other
        than the fixture itself ran from it (the fixture's source is already in the key).
    """
    root = str(rootdir) + os.sep
    skip = tuple(str(p) + os.sep for p in exclude)
    own_file = own_code.co_filename if own_code is not None else None
    own_lines = _line_span(own_code)
    paths: set[str] = set()
    for code in codes:
        filename = code.co_filename
        if filename == own_file and own_lines[0] <= code.co_firstlineno <= own_lines[1]:
            continue
        paths.add(filename)
    paths.update(opened)
    result = Fingerprints()
    for path in sorted(paths):
        if not path or path.startswith("<") or path.endswith((".pyc", ".pyo")):
            continue
        top = _package_top(path)
        if top is not None:
            for dist in dists.for_top_level(top):
                result.dists[dist] = dists.version(dist)
            continue
        real = os.path.realpath(path)
        if real.startswith(_STDLIB) or path.startswith(skip):
            continue
        if not path.startswith(root):
            continue
        rel = path[len(root) :]
        if any(part in _SKIP_DIRS for part in rel.split(os.sep)):
            continue
        if os.path.isfile(path):
            result.files[rel.replace(os.sep, "/")] = files.digest(path)
    return result


def _line_span(code: CodeType | None) -> tuple[int, int]:
    if code is None:
        return (0, -1)
    lines = [line for _, _, line in code.co_lines() if line is not None]
    last = max(lines, default=code.co_firstlineno)
    return (code.co_firstlineno, last)
