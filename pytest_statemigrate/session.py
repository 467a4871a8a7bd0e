"""The run's state: one object per pytest process, registered by plugin.py.

It owns the agent (embedded or external), the proxy and the run's stats, and turns each managed
fixture setup into: key → lookup → (hit: hand the value over) | (miss: build, record, store).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .agents.embedded import EmbeddedAgent
from .agents.link import FIRST_PING_SECONDS, AgentLink
from .codec import load_secret, state_digest
from .esg import ESGStore, SessionRecord
from .fixturekeys import FixtureKeys
from .managed import Current, ManagedSetups, collected_param_label, recording
from .proxy import (
    StateProxy,
)
from .recorder import AccessRecorder, used_fixturedefs
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
        self.keys = FixtureKeys(settings, rootdir, self.stats, self.proxy.files, self._current)
        self.prefetch: Prefetcher | None = None  # made when there is something to plan
        self.esg = SessionRecord.new()
        self.recorder = AccessRecorder(
            self.esg, rootdir, settings.write_check_bytes, settings.max_value_bytes
        )
        self.setups = ManagedSetups(
            settings,
            rootdir,
            self.stats,
            self.proxy,
            self.keys,
            self._current,
            self.esg,
            self.recorder,
        )
        self.checks = self.setups.checks

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
            labels.append(analysis.fixture_id + collected_param_label(callspec, name, defs[-1]))
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
        with recording(self.stats):
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
            nbytes = self.setups.nbytes.get(key, 0)  # 0: not pickled yet (a value built in-process)
            if recorder.checks_writes(nbytes) or (nbytes == 0 and recorder.write_check_bytes):
                digest = self._digest_of(fixturedef)
                if digest is not None and nbytes == 0:
                    # Learnt its size: checked on only if small enough, and the ESG knows it.
                    self.setups.nbytes[key] = digest[1]
                    self.esg.element(key, "", fixturedef.scope, digest[1])
                    if not recorder.checks_writes(digest[1]):
                        digest = None
                recorder.before_test(fixturedef, key, None if digest is None else digest[0])

    @_plugin_time
    def test_done(self, item: Any) -> None:
        """``item`` ran; its fixtures are still set up: record what it read and wrote."""
        with recording(self.stats):
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

    @_plugin_time
    def _note_refusals(self) -> None:
        """The refused fixtures go into the ESG record (``auto`` declines them later)."""
        self.esg.refused = {
            self.setups.labels.get(n, n): why for n, why in self.stats.refused.items()
        }

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
