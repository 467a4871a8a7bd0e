"""The setups the plugin wraps (plugin.py's ``pytest_fixture_setup``): for a managed fixture,
key → lookup → (hit: hand the value over, replay its warnings, coverage and random state) |
(miss: build under the recorders, refuse what a hit could not reproduce, store); for the
others, their setup time for the ESG. Each fixture's current value is a :class:`Current`.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import coverage_replay, effects, trees
from . import fixtures as fx
from .depchecks import DependencyChecks
from .esg import SessionRecord
from .fixturekeys import FixtureKeys
from .inputs import BuildRecorder, fingerprint, restore_random, static_paths, value_digest
from .keys import Unkeyable
from .proxy import BuildRecord, Hit, Miss, StateProxy, warning_to_wire, warnings_from_wire
from .recorder import AccessRecorder, fixture_label
from .report import RunStats
from .settings import Settings

__all__ = ["Current", "ManagedSetups", "collected_param_label", "recording"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_NOTHING = object()


@dataclass
class Current:
    """What the session knows about one fixture's current value, dropped at its teardown."""

    key: str | None = None  # its state key, once derived
    deps: dict[str, Any] | None = None  # its dependencies' values
    #: how it came: "loaded", "stored" (built and stored in this run) or "built" (in-process)
    origin: str | None = None
    entry: str | None = None  # the identity of the stored entry it is
    owned: trees.Owned | None = None  # the directories it owns (files it built)


class ManagedSetups:
    """Each fixture setup the plugin wraps: a managed one is keyed, looked up, served on a hit
    or built, checked and stored on a miss; an unmanaged one is timed for the ESG.

    :param records: the session's fixturedef → :class:`Current`, written here.
    """

    def __init__(
        self,
        settings: Settings,
        rootdir: Path,
        stats: RunStats,
        proxy: StateProxy,
        keys: FixtureKeys,
        records: dict[Any, Current],
        esg: SessionRecord,
        recorder: AccessRecorder,
    ) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.stats = stats
        self.proxy = proxy
        self.keys = keys
        self._current = records
        self.esg = esg
        self.recorder = recorder
        self.checks = DependencyChecks(records, proxy.paths)
        self._pending: dict[Any, Any] = {}  # fixturedef → loaded value, for the tryfirst impl
        self.nbytes: dict[str, int] = {}  # key → size of its pickle
        self._exclude = (str(settings.store_dir), _PACKAGE_DIR)
        #: stats name → ESG label of the fixtures managed setups met (for refusals)
        self.labels: dict[str, str] = {}
        self._project_modules = effects.ProjectModules(str(rootdir), self._exclude)
        #: seconds the managed setups took since the last test report (builds, loads, stores):
        #: not the test's own time, which the shard plan needs apart from the state's
        self._state_s = 0.0
        self._depth = 0  # managed setups in progress (one may request another dynamically)
        self._own_s = 0.0  # seconds fixture functions ran inside setups the plugin wraps

    def setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
        """Body of the ``pytest_fixture_setup`` wrapper (see plugin.py)."""
        start, own = time.perf_counter(), self._own_s
        analysis = self.keys.analysis(fixturedef)
        managed = analysis is not None
        self._depth += managed
        try:
            if analysis is None:
                return (yield from self._unmanaged_setup(fixturedef))
            return (yield from self._managed_setup(fixturedef, request, analysis))
        finally:
            self._depth -= managed
            if not self._depth:  # (a setup inside a managed one is counted by that one)
                spent = time.perf_counter() - start
                if managed:
                    self._state_s += spent
                # What the plugin itself cost: keys, lookups, loads, checks, stores.
                self.stats.plugin_seconds += max(0.0, spent - (self._own_s - own))

    def _fixture_code(self) -> Generator[None, Any, Any]:
        """Let pytest run the fixture function; its seconds are the fixture's own."""
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            self._own_s += time.perf_counter() - start

    def test_report(self, nodeid: str, when: str, duration: float) -> None:
        """One phase of a test ended: its own seconds are the phase's less its managed setups."""
        own, self._state_s = duration - self._state_s, 0.0
        if when in ("setup", "call", "teardown"):
            self.esg.duration(nodeid, own)

    def _managed_setup(
        self, fixturedef: Any, request: Any, analysis: fx.Analysis
    ) -> Generator[None, Any, Any]:
        # Stats and messages name the fixture by where it is defined (report.py labels it).
        name = self.stats.fixture(analysis.fixture_id, analysis.name)
        self.labels.setdefault(name, fixture_label(fixturedef, self.rootdir))
        # A new value: nothing known of an earlier one (an earlier param's key would be
        # taken by a dependent for this value's).
        current = self._current[fixturedef] = Current()
        if analysis.refused is not None:
            self.stats.refused[name] = analysis.refused
            return (yield from self._unmanaged_setup(fixturedef, record=False))
        try:
            key = self.keys.key_for(fixturedef, request, analysis)
        except Unkeyable as exc:
            self.stats.refused[name] = str(exc)
            return (yield from self._unmanaged_setup(fixturedef, record=False))
        current.key = key
        deps = {n: request.getfixturevalue(n) for n in fixturedef.argnames if n != "request"}
        defs = {n: request._get_active_fixturedef(n) for n in deps}
        current.deps = deps
        label = analysis.fixture_id + param_label(request, fixturedef)
        try:
            fresh_dep = self._fresh_dependency(fixturedef, request)
            measured = coverage_replay.measuring()
            found: Hit | Miss
            if measured is not None and coverage_replay.unsupported(measured) is not None:
                found = Miss(store=False)  # it would be served without what its build ran
                self.stats.built_instead[name] = coverage_replay.why_not_served(measured)
            elif fresh_dep is None or (fresh_dep[1] and self.proxy.stored_now(key)):
                # (Stored by this run: made from the dependency's current instance.)
                found = self.proxy.lookup(
                    key,
                    name,
                    deps.__getitem__,
                    _factory(deps),
                    functools.partial(self.checks.unchanged, defs, deps),
                    coverage_replay.checker(measured, self.rootdir, self.proxy.files),
                )
            else:
                # A stored value of this fixture was made from another instance of that
                # dependency: what it derived from it (an id, a count) may differ.
                dep_name, stored = fresh_dep
                if stored:
                    found = self.proxy.rebuild(key)
                else:
                    found = Miss(store=False)
                    self.stats.built_instead[name] = f"depends on {dep_name}, built in-process"
            if isinstance(found, Miss) and name not in self.stats.stale:
                why = self.keys.why_rebuilt(key)
                if why is not None:
                    self.stats.stale[name] = why
            if isinstance(found, Hit):
                self.stats.managed.add(name)
                _replay(found.warnings)
                restore_random(found.random_after)
                trouble = coverage_replay.replay(found.coverage, self.rootdir)
                if trouble is not None:
                    self.stats.fallback(trouble)
                self._pending[fixturedef] = found.value
                current.origin, current.entry, current.owned = "loaded", found.entry, found.owned
                self._element(key, label, fixturedef.scope, found.nbytes, load_s=found.load_s)
                self.checks.fresh.add(fixturedef)
                return (yield)
            param = getattr(request, "param", fx.NO_PARAM)
            value = yield from self._build(
                fixturedef, key, name, deps, defs, found, analysis, label, param
            )
            stored = isinstance(found, Miss) and found.store and self.proxy.stored_now(key)
            current.origin = "stored" if stored else "built"
            if stored:
                current.entry = self.proxy.entries[key]
            self.checks.fresh.add(fixturedef)
            return value
        finally:
            self.proxy.close_link()

    def _fresh_dependency(self, fixturedef: Any, request: Any) -> tuple[str, bool] | None:
        """A managed dependency whose current value was built in this setup chain rather
        than loaded: (its name, whether it was stored); None when every one was loaded."""
        for argname in fixturedef.argnames:
            if argname == "request":
                continue
            known = self._current.get(request._get_active_fixturedef(argname))
            origin = known.origin if known is not None else None
            if origin in ("built", "stored"):
                return argname, origin == "stored"
        return None

    def _unmanaged_setup(self, fixturedef: Any, record: bool = True) -> Generator[None, Any, Any]:
        start = time.perf_counter()
        value = yield from self._fixture_code()
        self.checks.forget()  # it may have changed any value
        if not record:
            return value
        with recording(self.stats):
            self.recorder.unmanaged_setup(fixturedef, time.perf_counter() - start, value)
        return value

    def _element(
        self,
        key: str,
        label: str,
        scope: str,
        nbytes: int,
        build_s: float | None = None,
        load_s: float | None = None,
    ) -> None:
        self.nbytes[key] = nbytes
        self.esg.element(key, label, scope, nbytes, build_s=build_s, load_s=load_s)

    def _build(
        self,
        fixturedef: Any,
        key: str,
        name: str,
        deps: dict[str, Any],
        defs: Mapping[str, Any],
        miss: Miss,
        analysis: fx.Analysis,
        label: str,
        param: Any,
    ) -> Generator[None, Any, Any]:
        factory = _factory(deps)
        files = trees.Capture(factory) if factory is not None else None
        if not miss.store:  # built in-process by decision: nothing to record for a store
            start = time.perf_counter()
            try:
                with files.watching() if files else contextlib.nullcontext():
                    value = yield from self._fixture_code()
            except BaseException:
                self.proxy.abandon(key, miss)
                raise
            record = BuildRecord(seconds=time.perf_counter() - start)
            self.checks.forget()  # unchecked: it may have changed a dependency
            self._made(key, files)
            if files is not None:
                self._current[fixturedef].owned = trees.Owned(files.made, None)
            return self._built(fixturedef, key, name, label, value, deps, record, miss)
        before, trouble = self.checks.before(
            {n: v for n, v in deps.items() if not trees.is_factory_value(v)}
        )
        entries = self.checks.fresh_entries(defs, deps)
        prints = {
            n: trees.print_of(owned.made)
            for n, d in defs.items()
            if (owned := self.checks.owned(d)) is not None
        }
        recorder = BuildRecorder(files, self._project_modules)
        # (Outermost: what coverage reads and writes is not the build's reading or writing.)
        covering = coverage_replay.recording(label, self.rootdir, self.proxy.files)
        try:
            watching = files.watching() if files else contextlib.nullcontext()
            with covering as covered, _recording_warnings() as log, recorder, watching:
                # The build's own time: what recording it costs is not what loading must beat.
                start = time.perf_counter()
                value = yield from self._fixture_code()
                seconds = time.perf_counter() - start
        except BaseException:
            self.proxy.abandon(key, miss)
            raise
        self._made(key, files)
        record = _build_record(
            recorder,
            log,
            covered.record,
            seconds,
            analysis,
            fixturedef.func,
            self.proxy,
            self._exclude,
        )
        if covered.trouble is not None:
            self.stats.fallback(covered.trouble)
        # What a hit could not reproduce (a file kept open before the container holding it:
        # the more telling reason; effects.py for the process).
        why = (
            fx.identity_refusal(fixturedef.func, value, param)
            or (trees.kept_open(files) if files is not None else None)
            or (f"its build {recorder.effect}: a hit would not" if recorder.effect else None)
        )
        if why is not None:
            self.proxy.refuse(key, name, why, record)
            return value
        changed, shares = self.checks.after(deps, before)
        for dep, earlier in prints.items():
            owned = self.checks.owned(defs[dep])
            if changed is None and owned and trees.print_of(owned.made, earlier) != earlier:
                changed = (
                    f"its build changes the files of {dep}: a loaded value would leave them "
                    "as they were"
                )
        if changed is not None or trouble is not None:
            self.proxy.refuse(key, name, trouble or str(changed), record)
            return value
        states = self.checks.states(defs, deps, before, entries)
        tree = None
        if files is not None:
            try:
                tree = trees.capture(files, self._exclude, self.settings.max_value_bytes)
            except trees.Refused as exc:
                self.proxy.refuse(key, name, str(exc), record)
                return value
            self._current[fixturedef].owned = trees.Owned(files.made, tree.digest)
        return self._built(
            fixturedef, key, name, label, value, deps, record, miss, shares, tree, states
        )

    def _made(self, key: str, files: trees.Capture | None) -> None:
        """Paths into the directories a build made are placed relative to them, whether or
        not its value is stored (a dependent's stored value may hold one)."""
        if files is not None and files.made:
            self.proxy.paths.add(key, files.made, trees.basetemp(files.factory))

    def _built(
        self,
        fixturedef: Any,
        key: str,
        name: str,
        label: str,
        value: Any,
        deps: dict[str, Any],
        record: BuildRecord,
        miss: Miss,
        shares: Any = None,
        tree: trees.Tree | None = None,
        states: Mapping[str, Any] | None = None,
    ) -> Any:
        """Store a built value (or note why not); a value not refused is a state element."""
        nbytes = self.proxy.store(key, name, value, deps, record, miss, shares, tree, states)
        if key not in self.proxy.refused_keys:
            self.stats.managed.add(name)
            self._element(key, label, fixturedef.scope, nbytes, build_s=record.seconds)
        return value

    def take_pending(self, fixturedef: Any) -> tuple[bool, Any]:
        """(True, value) when the wrapper loaded a value for this setup."""
        value = self._pending.pop(fixturedef, _NOTHING)
        return (value is not _NOTHING, value)


def _build_record(
    recorder: BuildRecorder,
    log: list[warnings.WarningMessage],
    coverage: dict[str, Any] | None,
    seconds: float,
    analysis: fx.Analysis,
    func: Any,
    proxy: StateProxy,
    exclude: Sequence[str],
) -> BuildRecord:
    """What a build was seen to run, read and raise, as stored with its value."""
    rootdir = proxy.rootdir
    seen = fingerprint(
        codes=recorder.codes,
        opened=recorder.opened
        if recorder.traced
        else recorder.opened | static_paths(fx.unwrap(func), rootdir),
        rootdir=rootdir,
        exclude=exclude,
        own_code=analysis.own_code,
        files=proxy.files,
        dists=proxy.dists,
    )
    seen.env = dict(recorder.env)
    declared = analysis.spec.env if analysis.spec is not None else ()
    if declared:  # in the key already; and they say what of the whole environment counts
        seen.env = {n: v for n, v in seen.env.items() if n != "*" and n not in declared}
    seen.cwd = value_digest(recorder.cwd)
    seen.random = {name: start for name, (start, _) in recorder.random.items()}
    return BuildRecord(
        seconds=seconds,
        warnings=[warning_to_wire(w) for w in log],
        fingerprints=seen,
        random_after={name: left for name, (_, left) in recorder.random.items()},
        coverage=coverage,
    )


@contextmanager
def recording(stats: RunStats) -> Iterator[None]:
    """Recording the ESG never changes an outcome: trouble is one summary line."""
    try:
        yield
    except Exception as exc:
        stats.fallback(f"could not record a test's state accesses ({exc!r})")


def _factory(deps: Mapping[str, Any]) -> Any:
    """The ``TempPathFactory`` among a fixture's dependencies' values, or None."""
    for value in deps.values():
        if trees.is_factory_value(value):
            return trees.path_factory(value)
    return None


@contextmanager
def _recording_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record warnings a build raises, under the filters in force, then raise them again.

    The filters are kept (an ``error`` filter still turns the warning into the exception plain
    pytest would see); after the build every recorded warning is re-issued, so pytest's own
    capture sees the same warnings as without the plugin.
    """
    catcher = warnings.catch_warnings(record=True)
    log = catcher.__enter__()
    before = list(warnings.filters)
    try:
        yield log
    finally:
        after = list(warnings.filters)
        catcher.__exit__(None, None, None)
        if after != before:  # the build's own filters stay, as without the plugin
            warnings.filters[:] = after  # type: ignore[index]
            for name in ("_filters_mutated", "_filters_mutated_lock_held"):  # (3.14: renamed)
                mutated = getattr(warnings, name, None)
                if mutated is not None:
                    mutated()
                    break
        for w in log:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def collected_param_label(callspec: Any, name: str, fixturedef: Any) -> str:
    """:func:`param_label` from a collected item's callspec (no request yet)."""
    params = getattr(callspec, "params", {})
    if name not in params:
        return ""
    at = SimpleNamespace(param=params[name], param_index=callspec.indices.get(name, 0))
    return param_label(at, fixturedef)


def param_label(request: Any, fixturedef: Any) -> str:
    """``"[short]"`` for a parametrized fixture's value (its id, else its index); else ``""``."""
    if not hasattr(request, "param"):
        return ""
    given = fx.given_id(request, fixturedef)
    return f"[{given if given is not None else getattr(request, 'param_index', 0)}]"


def _replay(items: list[Any]) -> None:
    """Raise again the warnings stored with a value, as its build raised them."""
    for category, text, filename, lineno in warnings_from_wire(items):
        warnings.warn_explicit(text, category, filename, lineno)
