"""The run's state: one object per pytest process, registered by plugin.py.

It owns the agent (embedded or external), the proxy and the run's stats, and turns each managed
fixture setup into: key → lookup → (hit: hand the value over) | (miss: build, record, store).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from . import coverage_replay, effects, trees
from . import fixtures as fx
from .agents.embedded import EmbeddedAgent
from .agents.link import FIRST_PING_SECONDS, AgentLink
from .codec import load_secret, state_digest
from .esg import ESGStore, SessionRecord
from .fixturekeys import FixtureKeys
from .inputs import BuildRecorder, fingerprint, restore_random, static_paths, value_digest
from .keys import (
    Unkeyable,
)
from .managed import Current, DependencyChecks
from .proxy import (
    BuildRecord,
    Hit,
    Miss,
    StateProxy,
    warning_to_wire,
    warnings_from_wire,
)
from .recorder import AccessRecorder, fixture_label, used_fixturedefs
from .report import RunStats
from .settings import Settings, parse_endpoints

if TYPE_CHECKING:
    # Imported where a plan is made (a run with a stored ESG): a cold run never needs
    # migrate.py nor engine.py (~20 ms of imports in every pytest process).
    from .prefetch import Prefetcher

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_NOTHING = object()
#: --dist statemigrate: seconds the controller spends at most asking which values are stored
STORED_QUERY_S = 0.5


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _plugin_time(method: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """Count a session method's wall seconds as the plugin's own (``RunStats.plugin_seconds``),
    which the summary's "saved" claim pays for."""

    def timed(self: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.stats.plugin_seconds += time.perf_counter() - start

    functools.update_wrapper(timed, method)
    return timed


class StateMigrateSession:
    """Registered as plugin ``statemigrate-session``; see plugin.py for the hooks."""

    def __init__(self, settings: Settings, rootdir: Path, agent_endpoint: str | None) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.stats = RunStats()
        self.embedded: EmbeddedAgent | None = None
        self._agent_endpoint = agent_endpoint
        peers: list[AgentLink] = []
        if agent_endpoint is None:
            self.embedded = EmbeddedAgent(settings)
            link = AgentLink(self.embedded.endpoint, settings.timeout, local=self.embedded)
        else:
            # Several endpoints: one link each, placed by a hash ring (placement.py). One:
            # the link as it always was (no ring, no LOCATE).
            # A long-lived agent's connection is made within FIRST_PING_SECONDS or never (the
            # agent is gone, its host cut off): that costs seconds, not statemigrate_timeout.
            first, *others = parse_endpoints(agent_endpoint) or (agent_endpoint,)
            many = bool(others)
            curve, connect = settings.curve, FIRST_PING_SECONDS
            link = AgentLink(
                lambda: first,
                settings.timeout,
                name=first if many else "",
                curve=curve,
                connect_timeout=connect,
            )
            peers = [
                AgentLink(
                    lambda e=e: e,  # type: ignore[misc]
                    settings.timeout,
                    name=e,
                    curve=curve,
                    connect_timeout=connect,
                )
                for e in others
            ]
        self.proxy = StateProxy(
            link=link,
            peers=peers,
            secret=lambda: load_secret(settings.store_dir),
            rootdir=rootdir,
            stats=self.stats,
            refresh=settings.refresh,
            max_value_bytes=settings.max_value_bytes,
            lease_seconds=settings.lease_seconds,
        )
        self._current: dict[Any, Current] = {}  # fixturedef → what its current value is
        self.checks = DependencyChecks(self._current, self.proxy.paths)
        self.keys = FixtureKeys(settings, rootdir, self.stats, self.proxy.files, self._current)
        self._pending: dict[Any, Any] = {}  # fixturedef → loaded value, for the tryfirst impl
        self._nbytes: dict[str, int] = {}  # key → size of its pickle
        self._exclude = (str(settings.store_dir), _PACKAGE_DIR)
        #: stats name → ESG label of the fixtures managed setups met (for refusals)
        self._labels: dict[str, str] = {}
        self._project_modules = effects.ProjectModules(str(rootdir), self._exclude)
        self.prefetch: Prefetcher | None = None  # made when there is something to plan
        self.esg = SessionRecord.new()
        #: seconds the managed setups took since the last test report (builds, loads, stores):
        #: not the test's own time, which the shard plan needs apart from the state's
        self._state_s = 0.0
        self._depth = 0  # managed setups in progress (one may request another dynamically)
        self._own_s = 0.0  # seconds fixture functions ran inside setups the plugin wraps
        self.recorder = AccessRecorder(
            self.esg, rootdir, settings.write_check_bytes, settings.max_value_bytes
        )

    @_plugin_time
    def prelaunch(self, local: bool = True) -> None:
        """Start the embedded agent now, so that it boots while pytest collects; with
        ``local``, also open its disk tier here (this process will read values)."""
        if self.embedded is not None:
            self.embedded.single = local
            try:
                self.embedded.spawn(direct=local)
            except Exception:  # kept in .failed: each user of the agent reports it, builds here
                return
            if local:
                self.embedded.open_disk()

    # -- the setup of one managed fixture --------------------------------------------------
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
        self._labels.setdefault(name, fixture_label(fixturedef, self.rootdir))
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
        label = analysis.fixture_id + _param_label(request, fixturedef)
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
        with self._recording():
            self.recorder.unmanaged_setup(fixturedef, time.perf_counter() - start, value)
        return value

    @contextmanager
    def _recording(self) -> Iterator[None]:
        """Recording the ESG never changes an outcome: trouble is one summary line."""
        try:
            yield
        except Exception as exc:
            self.stats.fallback(f"could not record a test's state accesses ({exc!r})")

    def _element(
        self,
        key: str,
        label: str,
        scope: str,
        nbytes: int,
        build_s: float | None = None,
        load_s: float | None = None,
    ) -> None:
        self._nbytes[key] = nbytes
        self.esg.element(key, label, scope, nbytes, build_s=build_s, load_s=load_s)

    # -- predictive migration (prefetch.py) ------------------------------------------------
    @_plugin_time
    def plan_run(
        self,
        items: list[Any],
        select: Any = None,
        worker: bool = False,
        selection: list[str] | None = None,
    ) -> None:
        """After collection: plan what to prefetch before which test (:mod:`.prefetch`)."""
        prefetcher = self._prefetcher() if self.settings.prefetch and items else None
        if prefetcher is not None:
            prefetcher.plan_run(items, select, worker, selection)

    @_plugin_time
    def early_prefetch(self, selection: list[str]) -> None:
        """Before collection, with a long-lived agent: what the last run's first tests used."""
        long_lived = self.embedded is None  # an embedded one boots now: the plan starts later
        prefetcher = self._prefetcher() if self.settings.prefetch and long_lived else None
        if prefetcher is not None:
            prefetcher.early(selection)

    def _prefetcher(self) -> Prefetcher | None:
        """The run's prefetcher, made (and its module imported) once there is an ESG."""
        if self.prefetch is None:
            if not (self.settings.store_dir / "esg.sqlite").exists():
                return None
            from .prefetch import Prefetcher

            self.prefetch = Prefetcher(
                self.settings, self.proxy, self.embedded, self.stats, self.closure_labels
            )
        return self.prefetch

    def closure_labels(self, item: Any) -> list[str]:
        """The managed fixtures in ``item``'s closure, as element labels (fixture id and param
        label): what it will use, known before it runs, even in a run with no ESG."""
        labels: list[str] = []
        infos = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        callspec = getattr(item, "callspec", None)
        for name in getattr(item, "fixturenames", ()):
            defs = infos.get(name)
            if not defs:
                continue
            analysis = self.keys.analysis(defs[-1])
            if analysis is None or analysis.refused is not None:
                continue
            labels.append(analysis.fixture_id + _collected_param_label(callspec, name, defs[-1]))
        return labels

    def write_closures(self, items: list[Any], path: Path) -> None:
        """For ``--dist statemigrate`` in a run the ESG cannot plan (a worker writes it, the
        controller's scheduler reads it): each test's closure labels, written atomically."""
        try:
            data = {item.nodeid: self.closure_labels(item) for item in items}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except Exception as exc:  # the scheduler then groups such tests by module
            self.stats.fallback(f"--dist statemigrate: closures not written ({exc!r})")

    @_plugin_time
    def before_test(self, item: Any) -> None:
        """``item`` is about to be set up: send the migrations due now."""
        self.checks.forget()  # the last test ran since
        if self.prefetch is not None:
            self.prefetch.before_test(item)

    # -- the tests that use managed values ------------------------------------------------
    @_plugin_time
    def test_ready(self, item: Any) -> None:
        """``item``'s fixtures are set up: note the digests of the values it may mutate."""
        self.checks.forget()  # the test body runs next
        with self._recording():
            self._note_digests(item)

    def _note_digests(self, item: Any) -> None:
        recorder = self.recorder
        for fixturedef in used_fixturedefs(item):
            key = self._key_of(fixturedef)
            # A function-scoped value is the test's own: what it does to it reaches no one.
            if (
                key is None
                or fixturedef.scope == "function"
                or recorder.has_before(fixturedef, key)
            ):
                continue
            nbytes = self._nbytes.get(key, 0)  # 0: not pickled yet (a value built in-process)
            if recorder.checks_writes(nbytes) or (nbytes == 0 and recorder.write_check_bytes):
                digest = self._digest_of(fixturedef)
                if digest is not None and nbytes == 0:
                    # Learnt its size: checked on only if small enough, and the ESG knows it.
                    self._nbytes[key] = digest[1]
                    self.esg.element(key, "", fixturedef.scope, digest[1])
                    if not recorder.checks_writes(digest[1]):
                        digest = None
                recorder.before_test(fixturedef, key, None if digest is None else digest[0])

    @_plugin_time
    def test_done(self, item: Any) -> None:
        """``item`` ran; its fixtures are still set up: record what it read and wrote."""
        with self._recording():
            self.recorder.after_test(
                item.nodeid,
                list(used_fixturedefs(item)),
                {fd: c.key for fd, c in self._current.items() if c.key is not None},
                self._digest_of,
                self.proxy.refused_keys,
            )

    def fixture_gone(self, fixturedef: Any) -> None:
        """A fixture was torn down: drop what was kept about its value."""
        self.recorder.forget(fixturedef)
        self._current.pop(fixturedef, None)
        self.checks.fresh.discard(fixturedef)

    def _key_of(self, fixturedef: Any) -> str | None:
        known = self._current.get(fixturedef)
        return known.key if known is not None else None

    def _digest_of(self, fixturedef: Any) -> tuple[str, int] | None:
        cached = fixturedef.cached_result
        known = self._current.get(fixturedef)
        deps = known.deps if known is not None else None
        if cached is None or cached[2] is not None or deps is None:
            return None
        return state_digest(cached[0], deps)

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
        seen = fingerprint(
            codes=recorder.codes,
            opened=recorder.opened
            if recorder.traced
            else recorder.opened | static_paths(fx.unwrap(fixturedef.func), self.rootdir),
            rootdir=self.rootdir,
            exclude=self._exclude,
            own_code=analysis.own_code,
            files=self.proxy.files,
            dists=self.proxy.dists,
        )
        seen.env = dict(recorder.env)
        declared = analysis.spec.env if analysis.spec is not None else ()
        if declared:  # in the key already; and they say what of the whole environment counts
            seen.env = {n: v for n, v in seen.env.items() if n != "*" and n not in declared}
        seen.cwd = value_digest(recorder.cwd)
        seen.random = {name: start for name, (start, _) in recorder.random.items()}
        record = BuildRecord(
            seconds=seconds,
            warnings=[warning_to_wire(w) for w in log],
            fingerprints=seen,
            random_after={name: left for name, (_, left) in recorder.random.items()},
            coverage=covered.record,
        )
        if covered.trouble is not None:
            self.stats.fallback(covered.trouble)
        shared = fx.identity_refusal(fixturedef.func, value, param)
        if shared is not None:
            self.proxy.refuse(key, name, shared, record)
            return value
        held = trees.kept_open(files) if files is not None else None
        if held is not None:  # the more telling reason than the container holding the file
            self.proxy.refuse(key, name, held, record)
            return value
        if recorder.effect is not None:  # (effects.py) a hit would not do it
            self.proxy.refuse(key, name, f"its build {recorder.effect}: a hit would not", record)
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

    def stored(self, keys: Sequence[str], seconds: float = STORED_QUERY_S) -> set[str]:
        """Which of ``keys`` an agent holds now, in any tier: this run loads them. One HAS
        each, for at most ``seconds`` in all; keys not asked count as not held (built)."""
        if self.embedded is not None and self.embedded.empty:
            return set()  # nothing was stored when this run's agent started
        deadline = time.monotonic() + seconds
        held: set[str] = set()
        for key in keys:
            if time.monotonic() >= deadline:
                break
            if self.proxy.call_home(key, lambda c, k=key: c.has(k)):  # type: ignore[misc]
                held.add(key)
        return held

    def shared_endpoint(self) -> str | None:
        """The endpoint xdist workers should use: started here, once, on the first call."""
        try:
            if self.embedded is not None:
                return self.embedded.planned_endpoint()
            return self._agent_endpoint  # all of them: workers place keys on the same ring
        except Exception as exc:
            self.stats.fallback(f"agent could not start ({exc}); workers build in-process")
            return None

    def merge_worker(self, data: dict[str, Any], esg: dict[str, Any] | None = None) -> None:
        self.stats.merge(RunStats.from_json(data))
        if esg is not None:
            self.esg.merge(SessionRecord.from_json(esg))

    @_plugin_time
    def save_esg(self) -> None:
        """Add this run to the ESG file and re-partition it when it changed (not in workers:
        the controller saves what they recorded)."""
        record = self.esg
        self._note_refusals()
        if not (record.elements or record.accesses or record.setups or record.refused):
            return
        try:
            store = ESGStore(self.settings.store_dir / "esg.sqlite", self.settings.history)
            with store:
                if store.notice:
                    self.stats.fallback(store.notice)
                store.add_session(record)
                if store.needs_partitioning():
                    self._repartition(store)
        except Exception as exc:  # the run's outcome never depends on its recording
            self.stats.fallback(f"could not record the execution state graph ({exc})")

    def _repartition(self, store: ESGStore) -> None:
        """Partition the ESG by the configured method; one line when it cannot run here (the
        spectral partitioner without its extra: METIS then partitions)."""
        from .partition import Unavailable, repartition

        asked = self.settings.partitioner
        for method in dict.fromkeys((asked, "metis")):
            try:
                repartition(
                    store,
                    partition_bytes=self.settings.partition_bytes,
                    agents=1,
                    method=method,
                )
                return
            except Unavailable as exc:
                if method == "metis":
                    self.stats.fallback(f"the ESG was not partitioned: {exc}")
                    return
                self.stats.fallback(f"statemigrate_partitioner = {asked}: {exc}; METIS partitions")

    def take_pending(self, fixturedef: Any) -> tuple[bool, Any]:
        """(True, value) when the wrapper loaded a value for this setup."""
        value = self._pending.pop(fixturedef, _NOTHING)
        return (value is not _NOTHING, value)

    @_plugin_time
    def _note_refusals(self) -> None:
        """The refused fixtures go into the ESG record (``auto`` declines them later)."""
        self.esg.refused = {self._labels.get(n, n): why for n, why in self.stats.refused.items()}

    def finish(self) -> None:
        """At the end of the session, before the summary: what the agent failed to keep."""
        self._note_refusals()
        if self.prefetch is not None:
            self.prefetch.report()
        self.keys.save_parts()
        self.proxy.check_writes()
        self.proxy.close_link()
        if self.embedded is not None:
            for line in self.embedded.notices:
                self.stats.fallback(line)
            self.embedded.close_disk()

    def close(self) -> None:
        self.proxy.close_link()
        if self.embedded is not None:
            self.embedded.stop()


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


def _collected_param_label(callspec: Any, name: str, fixturedef: Any) -> str:
    """:func:`_param_label` from a collected item's callspec (no request yet)."""
    params = getattr(callspec, "params", {})
    if name not in params:
        return ""
    at = SimpleNamespace(param=params[name], param_index=callspec.indices.get(name, 0))
    return _param_label(at, fixturedef)


def _param_label(request: Any, fixturedef: Any) -> str:
    """``"[short]"`` for a parametrized fixture's value (its id, else its index); else ``""``."""
    if not hasattr(request, "param"):
        return ""
    given = fx.given_id(request, fixturedef)
    return f"[{given if given is not None else getattr(request, 'param_index', 0)}]"


def _replay(items: list[Any]) -> None:
    """Raise again the warnings stored with a value, as its build raised them."""
    for category, text, filename, lineno in warnings_from_wire(items):
        warnings.warn_explicit(text, category, filename, lineno)
