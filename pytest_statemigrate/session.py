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

from . import codec, coverage_replay, depstate, effects, trees
from . import fixtures as fx
from .agents.embedded import EmbeddedAgent
from .agents.link import FIRST_PING_SECONDS, AgentLink
from .codec import IMMUTABLE, Unpicklable, load_secret, state_digest
from .esg import ESGStore, SessionRecord
from .inputs import BuildRecorder, fingerprint, restore_random, static_paths, value_digest
from .keys import (
    PARTS_FILE,
    KeyParts,
    Unkeyable,
    code_digest,
    digest,
    env_digest,
    inputs_digest,
    load_parts,
    make_key,
    param_token,
    part_digests,
    save_parts,
    what_changed,
)
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
        self._analysis: dict[Any, fx.Analysis | None] = {}
        self._keys: dict[Any, str] = {}  # fixturedef → key of its current value
        self._unmanaged: dict[Any, tuple[str | None, str]] = {}  # fixturedef → (refusal, code)
        self._pending: dict[Any, Any] = {}  # fixturedef → loaded value, for the tryfirst impl
        self._deps: dict[Any, dict[str, Any]] = {}  # fixturedef → its dependencies' values
        #: id(value) → (value, digest) of dependencies' values checked in this test's setup
        #: (emptied whenever code the plugin does not watch may have run: a test, a setup)
        self._dep_digests: dict[int, tuple[Any, depstate.Snapshot]] = {}
        self._placed: dict[int, tuple[Any, str]] = {}  # ... their codec.placed_digest
        #: fixturedefs set up since then: no code the plugin does not watch ran since
        self._fresh: set[Any] = set()
        #: fixturedef → the identity of the stored entry its current value is
        self._entry: dict[Any, str] = {}
        #: fixturedef → the directories its current value owns (files it built)
        self._owned: dict[Any, trees.Owned] = {}
        #: fixturedef → how its current value came: "loaded", "stored" (built and stored in
        #: this run) or "built" (built in-process only).
        self._origin: dict[Any, str] = {}
        self._nbytes: dict[str, int] = {}  # key → size of its pickle
        self._exclude = (str(settings.store_dir), _PACKAGE_DIR)
        #: ``auto``: the fixture labels to manage besides those the patterns select
        self.auto_labels: frozenset[str] = frozenset()
        #: stats name → ESG label of the fixtures managed setups met (for refusals)
        self._labels: dict[str, str] = {}
        self._project_modules = effects.ProjectModules(str(rootdir), self._exclude)
        self.prefetch: Prefetcher | None = None  # made when there is something to plan
        #: key → (its variant, its parts' digests), for the keys made in this run
        self._key_parts: dict[str, tuple[str, dict[str, Any]]] = {}
        self._parts_then: dict[str, dict[str, Any]] | None = None  # PARTS_FILE, once read
        self._parts_now: dict[str, dict[str, Any]] = {}  # variant → parts of the key it built
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

    # -- analysis --------------------------------------------------------------------------
    def analysis(self, fixturedef: Any) -> fx.Analysis | None:
        """The analysis of a managed fixturedef; None when it is not selected."""
        try:
            return self._analysis[fixturedef]
        except KeyError:
            pass
        result: fx.Analysis | None = None
        # (``auto``: the ESG names unmanaged setups by label, stored values by id)
        chosen = bool(self.auto_labels) and (
            fixture_label(fixturedef, self.rootdir) in self.auto_labels
            or fx.id_of(fixturedef.argname, fixturedef.func, self.rootdir) in self.auto_labels
        )
        if fx.is_selected(fixturedef.argname, fixturedef.func, self.settings.patterns, chosen):
            result = fx.analyse(
                fixturedef.argname, fixturedef.func, fixturedef.argnames, self.rootdir
            )
        self._analysis[fixturedef] = result
        return result

    def _dep_token(
        self, request: Any, argname: str, seen: frozenset[str], via: str | None = None
    ) -> str:
        """Key material for one dependency: its key if managed, else its code and param."""
        dep = request._get_active_fixturedef(argname)
        if dep in self._keys:
            return self._keys[dep]
        if trees.is_factory(argname, fx.unwrap(dep.func)):
            if via is not None:  # asked for by a fixture that is not managed
                raise Unkeyable(
                    f"depends on {via}, which makes files with {argname} and is not managed: "
                    f"manage {via} too, and its files are stored with its value"
                )
            return argname  # the directories it makes are captured with the value
        managed = self.analysis(dep)
        if managed is not None and managed.refused is None:
            # Selected and manageable, yet this setup found no key for it.
            why = self.stats.refused.get(managed.fixture_id, "no key")
            raise Unkeyable(f"depends on {argname}, which runs unmanaged ({why})")
        # Not selected, or refused by the rules: the rules for unmanaged dependencies apply.
        static = self._unmanaged.get(dep)
        if static is None:  # parsing source is costly: once per definition
            static = self._unmanaged[dep] = (
                fx.unmanaged_dependency_refusal(argname, dep.func, self.rootdir),
                # pytest's parametrize stand-in: the same token wherever pytest is installed
                "direct-param"
                if fx.is_direct_param(dep.func)
                else code_digest(fx.unwrap(dep.func), self.rootdir),
            )
        refusal, code = static
        if refusal is not None:
            raise Unkeyable(refusal)
        if argname in seen:
            return "cycle"
        parts = [code]
        cached = dep.cached_result
        if cached is not None and cached[1] is not None:
            parts.append(param_token(cached[1]))
        for sub in dep.argnames:
            if sub != "request":
                parts.append(self._dep_token(request, sub, seen | {argname}, argname))
        return digest(*parts)

    def key_for(self, fixturedef: Any, request: Any, analysis: fx.Analysis) -> str:
        param = fx.param_part(request, fixturedef)
        deps = tuple(
            (name, self._dep_token(request, name, frozenset({analysis.name})))
            for name in fixturedef.argnames
            if name != "request"
        )
        spec = analysis.spec
        inputs = env = None
        if spec is not None and spec.inputs:
            inputs = inputs_digest(spec.inputs, self.rootdir, self.proxy.files)
        if spec is not None and spec.env:
            env = env_digest(spec.env)
        node = request.node.nodeid if analysis.uses_node else None
        parts = KeyParts(
            # Where it is registered too: one function may serve under several names, or
            # under one name in several modules (a factory's fixtures).
            fixture=f"{analysis.fixture_id}|{fixturedef.argname}|{fixturedef.baseid}",
            code=analysis.code,
            param=param,
            deps=deps,
            inputs=inputs,
            env=env,
            node=node,
        )
        key = make_key(parts)
        if node is None:  # (a key per test: no value of it is rebuilt for another reason)
            self._key_parts[key] = (self._variant(request, parts), part_digests(parts))
        return key

    def _variant(self, request: Any, parts: KeyParts) -> str:
        """Which value of the fixture ``parts`` names, the same from run to run whatever the
        code: where it is defined, its param, and which value each dependency gave (a
        dependency's param), so that a changed key is told from another value's."""
        given = []
        for name, token in parts.deps:
            if token in self._key_parts:  # a managed dependency: its own variant
                given.append(self._key_parts[token][0])
                continue
            cached = request._get_active_fixturedef(name).cached_result
            given.append("" if cached is None else param_token(cached[1]))
        return digest(parts.fixture, parts.param or "", *given)[:24]

    def _why_rebuilt(self, key: str) -> str | None:
        """Why ``key`` is built when its fixture's last build had another key (its code
        changed, a dependency's...), from the parts of the keys last built (PARTS_FILE in the
        store directory); None when nothing is known or it is the same key."""
        if key not in self._key_parts or self.settings.refresh:
            return None
        if self._parts_then is None:
            self._parts_then = load_parts(self.settings.store_dir / PARTS_FILE)
        variant, now = self._key_parts[key]
        self._parts_now[variant] = {**now, "key": key}
        then = self._parts_then.get(variant)
        if then is None or then.get("key") == key:
            return None
        return what_changed(then, now)

    # -- the setup of one managed fixture --------------------------------------------------
    def setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
        """Body of the ``pytest_fixture_setup`` wrapper (see plugin.py)."""
        start, own = time.perf_counter(), self._own_s
        analysis = self.analysis(fixturedef)
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
        # The key of this setup's value, once known: never the key of an earlier param's value
        # (a dependent fixture would take that key for this value's).
        self._keys.pop(fixturedef, None)
        if analysis.refused is not None:
            self.stats.refused[name] = analysis.refused
            return (yield from self._unmanaged_setup(fixturedef, record=False))
        try:
            key = self.key_for(fixturedef, request, analysis)
        except Unkeyable as exc:
            self.stats.refused[name] = str(exc)
            return (yield from self._unmanaged_setup(fixturedef, record=False))
        self._keys[fixturedef] = key
        deps = {n: request.getfixturevalue(n) for n in fixturedef.argnames if n != "request"}
        defs = {n: request._get_active_fixturedef(n) for n in deps}
        self._deps[fixturedef] = deps
        label = analysis.fixture_id + _param_label(request, fixturedef)
        self._origin.pop(fixturedef, None)
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
                    functools.partial(self._deps_unchanged, defs, deps),
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
            self._entry.pop(fixturedef, None)
            self._owned.pop(fixturedef, None)
            if isinstance(found, Miss) and name not in self.stats.stale:
                why = self._why_rebuilt(key)
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
                self._origin[fixturedef] = "loaded"
                self._entry[fixturedef] = found.entry
                if found.owned is not None:
                    self._owned[fixturedef] = found.owned
                self._element(key, label, fixturedef.scope, found.nbytes, load_s=found.load_s)
                self._fresh.add(fixturedef)
                return (yield)
            param = getattr(request, "param", fx.NO_PARAM)
            value = yield from self._build(
                fixturedef, key, name, deps, defs, found, analysis, label, param
            )
            stored = isinstance(found, Miss) and found.store and self.proxy.stored_now(key)
            self._origin[fixturedef] = "stored" if stored else "built"
            if stored:
                self._entry[fixturedef] = self.proxy.entries[key]
            self._fresh.add(fixturedef)
            return value
        finally:
            self.proxy.close_link()

    def _forget_states(self) -> None:
        """Code the plugin does not watch may run (a test, a setup): any value may change."""
        self._dep_digests.clear()
        self._placed.clear()
        self._fresh.clear()

    def _fresh_dependency(self, fixturedef: Any, request: Any) -> tuple[str, bool] | None:
        """A managed dependency whose current value was built in this setup chain rather
        than loaded: (its name, whether it was stored); None when every one was loaded."""
        for argname in fixturedef.argnames:
            if argname == "request":
                continue
            origin = self._origin.get(request._get_active_fixturedef(argname))
            if origin in ("built", "stored"):
                return argname, origin == "stored"
        return None

    def _unmanaged_setup(self, fixturedef: Any, record: bool = True) -> Generator[None, Any, Any]:
        start = time.perf_counter()
        value = yield from self._fixture_code()
        self._forget_states()  # it may have changed any value
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
            analysis = self.analysis(defs[-1])
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
        self._forget_states()  # the last test ran since
        if self.prefetch is not None:
            self.prefetch.before_test(item)

    # -- the tests that use managed values ------------------------------------------------
    @_plugin_time
    def test_ready(self, item: Any) -> None:
        """``item``'s fixtures are set up: note the digests of the values it may mutate."""
        self._forget_states()  # the test body runs next
        with self._recording():
            self._note_digests(item)

    def _note_digests(self, item: Any) -> None:
        recorder = self.recorder
        for fixturedef in used_fixturedefs(item):
            key = self._keys.get(fixturedef)
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
                self._keys,
                self._digest_of,
                self.proxy.refused_keys,
            )

    def fixture_gone(self, fixturedef: Any) -> None:
        """A fixture was torn down: drop what was kept about its value."""
        self.recorder.forget(fixturedef)
        self._deps.pop(fixturedef, None)
        self._origin.pop(fixturedef, None)
        self._keys.pop(fixturedef, None)
        self._entry.pop(fixturedef, None)
        self._owned.pop(fixturedef, None)
        self._fresh.discard(fixturedef)

    def _digest_of(self, fixturedef: Any) -> tuple[str, int] | None:
        cached = fixturedef.cached_result
        deps = self._deps.get(fixturedef)
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
            self._forget_states()  # unchecked: it may have changed a dependency
            self._made(key, files)
            if files is not None:
                self._owned[fixturedef] = trees.Owned(files.made, None)
            return self._built(fixturedef, key, name, label, value, deps, record, miss)
        before, trouble = self._deps_before(
            {n: v for n, v in deps.items() if not trees.is_factory_value(v)}
        )
        entries = self._fresh_entries(defs, deps)
        prints = {
            n: trees.print_of(self._owned[d].made) for n, d in defs.items() if d in self._owned
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
        changed, shares = self._deps_after(deps, before)
        for dep, earlier in prints.items():
            if changed is None and trees.print_of(self._owned[defs[dep]].made, earlier) != earlier:
                changed = (
                    f"its build changes the files of {dep}: a loaded value would leave them "
                    "as they were"
                )
        if changed is not None or trouble is not None:
            self.proxy.refuse(key, name, trouble or str(changed), record)
            return value
        states = self._states(defs, deps, before, entries)
        tree = None
        if files is not None:
            try:
                tree = trees.capture(files, self._exclude, self.settings.max_value_bytes)
            except trees.Refused as exc:
                self.proxy.refuse(key, name, str(exc), record)
                return value
            self._owned[fixturedef] = trees.Owned(files.made, tree.digest)
        return self._built(
            fixturedef, key, name, label, value, deps, record, miss, shares, tree, states
        )

    def _made(self, key: str, files: trees.Capture | None) -> None:
        """Paths into the directories a build made are placed relative to them, whether or
        not its value is stored (a dependent's stored value may hold one)."""
        if files is not None and files.made:
            self.proxy.paths.add(key, files.made, trees.basetemp(files.factory))

    def _fresh_entries(self, defs: Mapping[str, Any], deps: Mapping[str, Any]) -> dict[str, str]:
        """Which stored value each fresh stored dependency is, before a build (for
        :meth:`_deps_unchanged`)."""
        return {
            name: self._entry[defs[name]]
            for name in deps
            if defs[name] in self._fresh and defs[name] in self._entry
        }

    def _states(
        self,
        defs: Mapping[str, Any],
        deps: Mapping[str, Any],
        before: Mapping[str, depstate.Snapshot],
        entries: Mapping[str, str],
    ) -> dict[str, Any]:
        """What a value was built from, for :meth:`_deps_unchanged`: each dependency's state
        (its value's digest, with its files' digest), taken after a build that changed none
        of them, and ``entries`` (:meth:`_fresh_entries`)."""
        states: dict[str, str] = {}
        for name, value in deps.items():
            dep = defs[name]
            owned = self._owned.get(dep)
            snap = before.get(name)
            if snap is None and owned is None:
                continue  # a number, a string: it cannot change
            try:
                states[name] = self._state(dep, value, snap.digest if snap else None)
            except Unpicklable:
                entries = {n: e for n, e in entries.items() if n != name}
                continue  # (then no stored value of it serves: it is built)
        return {"states": states, "entries": dict(entries)}

    def _state(self, dep: Any, value: Any, value_digest: str | None = None) -> str:
        """One dependency's state now: its value's digest, and its files' if it has some.

        With files in the session, the value's paths into them are placed (a value holding
        a path into this session's copy is the same value as one holding a path into the copy
        it was built with).

        :raises Unpicklable: when the value does not pickle or holds a path that cannot be
            placed.
        """
        paths = self.proxy.paths
        if isinstance(value, IMMUTABLE):
            part = "immutable"
        elif paths.active:
            known = self._placed.get(id(value))
            if known is None or known[0] is not value:
                known = self._placed[id(value)] = (value, codec.placed_digest(value, paths))
            part = known[1]
        else:
            part = value_digest or self._value_digest(value)
        owned = self._owned.get(dep)
        if owned is None:
            return part
        return digest(part, owned.digest_now())

    def _deps_unchanged(
        self, defs: Mapping[str, Any], deps: Mapping[str, Any], built_from: Mapping[str, Any]
    ) -> str | None:
        """Why a stored value cannot serve now: a dependency differs from the state it was
        built from (a test changed it, or its files, first); None when none does.

        A dependency set up in this chain from the same stored value needs no check."""
        states = built_from.get("states") or {}
        entries = built_from.get("entries") or {}
        for name, value in deps.items():
            dep = defs[name]
            if isinstance(value, IMMUTABLE) and dep not in self._owned:
                continue
            if trees.is_factory_value(value):
                continue
            if name not in states:
                return f"it was stored without the state of {name}"
            entry = entries.get(name)
            if entry is not None and dep in self._fresh and self._entry.get(dep) == entry:
                continue
            try:
                now = self._state(dep, value)
            except Unpicklable:
                return f"{name} does not pickle: whether a test changed it cannot be checked"
            if now != states[name]:
                return (
                    f"{name} is not in the state it was built from (a test changed it or its "
                    "files, or it was built anew)"
                )
        return None

    def _deps_before(
        self, deps: Mapping[str, Any]
    ) -> tuple[dict[str, depstate.Snapshot], str | None]:
        """Snapshots of the mutable dependencies' values before a build (see depstate.py),
        and why the build cannot be checked, if it cannot."""
        snaps: dict[str, depstate.Snapshot] = {}
        for dep, value in deps.items():
            if isinstance(value, IMMUTABLE):
                continue
            known = self._dep_digests.get(id(value))
            if known is not None and known[0] is value:
                snaps[dep] = known[1]
                continue
            try:
                snaps[dep] = depstate.snapshot(value, retain=True)
            except Unpicklable:
                return snaps, (
                    f"depends on {dep}, whose value does not pickle: what building changes in "
                    f"{dep} cannot be checked"
                )
        return snaps, None

    def _value_digest(self, value: Any) -> str:
        """The digest of a dependency's value (depstate.py), once per value while no code
        the plugin does not watch runs."""
        known = self._dep_digests.get(id(value))
        if known is None or known[0] is not value:
            known = self._dep_digests[id(value)] = (value, depstate.snapshot(value))
        return known[1].digest

    def _deps_after(
        self, deps: Mapping[str, Any], before: Mapping[str, depstate.Snapshot]
    ) -> tuple[str | None, Any]:
        """After a build: why its value must not be stored (it changed a dependency in place),
        or None and the check of what the value shares with the dependencies' values (for
        :meth:`StateProxy.store`)."""
        snaps: dict[str, depstate.Snapshot] = {}
        for dep, earlier in before.items():
            value = deps[dep]
            try:
                snap = depstate.unchanged(earlier, value)
            except Unpicklable:
                return f"its build leaves {dep} unpicklable", None
            finally:
                earlier.release()
            if snap is None:
                self._dep_digests.pop(id(value), None)
                return (
                    f"its build changes {dep} in place: a loaded value would leave {dep} as it was"
                ), None
            self._dep_digests[id(value)] = (value, earlier)
            snaps[dep] = snap
        if not snaps:
            return None, None
        return None, depstate.SharingCheck(list(deps.values()), snaps)

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
        if self._parts_now:
            try:
                save_parts(self.settings.store_dir / PARTS_FILE, self._parts_now)
            except OSError as exc:  # only the reason a later rebuild is given depends on it
                self.stats.fallback(f"could not write {PARTS_FILE} ({exc})")
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
