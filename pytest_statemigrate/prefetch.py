"""Predictive migration for one run: from the ESG's prediction and the collected order, plan
which partitions to load where before which test (engine.py, migrate.py), send those loads as
the tests go, and report what was loaded ahead and used.

Made by the session only when prefetching can do something (a stored ESG, an agent holding
values): a cold run never imports this module, nor the planner.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .esg import ESGStore, Prediction
from .proxy import StateProxy
from .report import RunStats
from .settings import Settings

if TYPE_CHECKING:
    from .agents.embedded import EmbeddedAgent
    from .engine import SelectNode
    from .migrate import Migrator

__all__ = ["Prefetcher"]


class Prefetcher:
    """The run's plan and the migrations it sends (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        proxy: StateProxy,
        embedded: EmbeddedAgent | None,
        stats: RunStats,
        closure_labels: Callable[[Any], list[str]],
    ) -> None:
        """:param closure_labels: an item's managed fixtures, as ESG element labels."""
        self.settings = settings
        self.proxy = proxy
        self.embedded = embedded
        self.stats = stats
        self._closure_labels = closure_labels
        self.migrator: Migrator | None = None
        self._run_index: dict[int, int] = {}  # id(item) → its index in the planned order
        self._queue: Any = None  # xdist's worker queue, when this process is a worker
        self._needs: dict[str, tuple[str, ...]] = {}  # node id → predicted keys
        self._base: tuple[int, int] | None = None  # the agents' prefetch counters at start
        self._on_disk = True  # the agent keeps values in its disk tier (else only its store)
        self._predicted: Prediction | None = None
        self._early: set[str] = set()  # keys prefetched before collection

    def plan_run(
        self,
        items: list[Any],
        select: SelectNode | None = None,
        worker: bool = False,
        selection: list[str] | None = None,
    ) -> None:
        """After collection (after any reordering or deselection): plan what to prefetch
        before which test, from the tests' predicted state and the ESG's partitions."""
        s = self.settings
        embedded = self.embedded
        if not s.prefetch or not items or (embedded is not None and embedded.empty):
            return  # nothing stored yet: nothing to prefetch
        prediction = self.prediction()
        if prediction is None or not prediction.partition_of:
            return
        from .migrate import Migrator, write_plan

        ready = embedded.up if embedded is not None else (lambda: True)
        migrator = Migrator(self.proxy, prediction, ready=ready, lookahead_tests=s.lookahead_tests)
        self.migrator = migrator
        if worker:  # xdist: the queue is handed out while the run goes: a rolling window
            self._queue = _worker_queue(items[0].config)
            return
        tests = [(item.nodeid, self.predicted(item, prediction)) for item in items]
        if self.proxy.ring is not None:
            plan = self._plan_agents(migrator, tests, select)
        else:
            agent = self._agent_info()
            plan = None
            if agent is not None:
                plan = self._make_plan(migrator, tests, agent, select, on_disk=self._on_disk)
        if plan is None:
            self.migrator = None
            return
        self._run_index = {id(item): i for i, item in enumerate(items)}
        # The embedded agent's disk tier is on this machine and this process reads it
        # directly (local_get): a prefetch into the agent's RAM would only add a copy through
        # the agent (measured: +0.07 s and +5% CPU on the example suite's warm run). Its plan
        # is still made and written; it is carried out where values come from an agent.
        local = embedded is not None and s.store is None
        if local:
            self.migrator = None
        self.stats.planned = {
            "partitions": len(plan.assignment),
            "loads": sum(len(sc.loads()) for sc in plan.schedules.values()),
            "hit_rate": round(plan.stats.hit_rate, 4),
            "ready_rate": round(plan.stats.ready_rate, 4),
            "sent": not local,
        }
        for target in (s.store_dir / "plan.json", s.plan_json):  # the last one; --sm-plan
            if target is not None:
                try:
                    write_plan(plan, target, {"selection": selection})
                except OSError as exc:
                    self.stats.fallback(f"could not write the plan to {target} ({exc})")

    def prediction(self) -> Prediction | None:
        """The ESG's prediction (read once per run), or None without an ESG."""
        if self._predicted is None:
            path = self.settings.store_dir / "esg.sqlite"
            if not path.exists():
                return None
            try:
                with ESGStore(path, self.settings.history) as store:
                    self._predicted = store.prediction()
            except Exception as exc:  # planning is an optimisation
                self.stats.fallback(f"could not plan prefetching ({exc})")
                return None
        return self._predicted

    def early(self, selection: list[str]) -> None:
        """Before collection, with a long-lived agent: prefetch what the first tests of the
        last run's plan used, when this run selects tests as that one did (same paths, -k and
        -m), so that loading overlaps collecting. The real plan follows once the order is
        known; what it asks again is already there or on its way."""
        s = self.settings
        if not s.prefetch or self.embedded is not None:
            return  # an embedded agent is still booting now: the plan starts when it answers
        try:
            last = json.loads((s.store_dir / "plan.json").read_text())
            first = [str(t) for t in last["tests"][: s.lookahead_tests]]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if last.get("selection") != selection:
            return
        prediction = self.prediction()
        if prediction is None:
            return
        room = s.lookahead_bytes or s.ram_bytes
        keys: list[str] = []
        for test in first:
            for key in prediction.footprints.get(test, ()):
                size = prediction.nbytes.get(key, 0)
                if key in keys or key not in prediction.partition_of or size > room:
                    continue
                keys.append(key)
                room -= size
        if keys:
            before = self.proxy.each_agent(lambda c: c.stats())
            if before:
                self._note_base(before)
                if self.proxy.each_home(keys, lambda c, share: c.prefetch(share)):
                    self._early.update(keys)
            self.proxy.close_link()

    def _plan_agents(
        self,
        migrator: Migrator,
        tests: list[tuple[str, tuple[str, ...]]],
        select: SelectNode | None,
    ) -> Any:
        """Several agents: plan with every live agent's STATS and where the directories know
        the predicted values to be (one LOCATE per directory); each partition goes to the
        agent node selection picks. None when no agent answered, or planning failed (one
        summary line: prefetching stops, the tests load on demand)."""
        from .engine import AgentInfo
        from .migrate import holders

        proxy = self.proxy
        try:
            infos: list[AgentInfo] = []
            replies: list[dict[str, Any]] = []
            for name, link in proxy.links.items():
                if link.down is not None:
                    continue
                reply = proxy.call(lambda c: c.stats(), link)
                if reply is not None:  # an agent that failed is down: left out
                    replies.append(reply)
                    infos.append(AgentInfo.from_stats(name, reply))
            if not infos:
                return None
            self._note_base(replies)
            live = {a.name for a in infos}
            wanted = [k for _, keys in tests for k in keys if k in migrator.prediction.partition_of]
            located = {
                key: {a: tier for a, tier in where.items() if a in live}
                for key, where in holders(proxy.locate_many(wanted)).items()
            }
            return self._make_plan(migrator, tests, infos, select, on_disk=True, located=located)
        except Exception as exc:  # planning is an optimisation: never a failed test
            self.stats.fallback(f"prefetching stopped ({type(exc).__name__}: {exc})")
            return None
        finally:
            proxy.close_link()

    def _make_plan(
        self,
        migrator: Migrator,
        tests: list[tuple[str, tuple[str, ...]]],
        agents: Any,
        select: SelectNode | None,
        *,
        on_disk: bool,
        located: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Any:
        """:meth:`Migrator.make_plan` with this run's settings and host."""
        s = self.settings
        return migrator.make_plan(
            tests,
            agents,
            socket.gethostname(),
            policy=s.eviction,
            lookahead_bytes=s.lookahead_bytes or None,
            select=select,
            on_disk=on_disk,
            located=located,
        )

    def _agent_info(self) -> Any:
        from .engine import AgentInfo

        s = self.settings
        host = socket.gethostname()
        if self.embedded is not None:  # started for this run: its RAM is empty
            self._on_disk = s.store is None
            return AgentInfo("embedded", host, s.ram_bytes, s.ram_bytes)
        replies = self.proxy.each_agent(lambda c: c.stats())
        self.proxy.close_link()
        if not replies:
            return None
        reply = replies[0]
        disk: dict[str, Any] = (reply.get("tiers") or {}).get("disk") or {}
        self._on_disk = bool(disk) and bool(disk.get("write_through", True))
        self._note_base(replies)
        return AgentInfo.from_stats(str(self.settings.agent or "agent"), reply)

    def _note_base(self, replies: list[dict[str, Any]]) -> None:
        """The agents' prefetch counters before this run asked for anything (a long-lived
        agent counts since it started)."""
        if self._base is None:
            self._base = _prefetch_counters(replies)

    def predicted(self, item: Any, prediction: Prediction) -> tuple[str, ...]:
        """The keys ``item`` will need: what it used when it last ran (dynamic requests
        included), else the latest keys of the managed fixtures in its closure."""
        known = self._needs.get(item.nodeid)
        if known is not None:
            return known
        keys = prediction.footprints.get(item.nodeid)
        if keys is None:
            latest = prediction.latest
            keys = tuple(latest[label] for label in self._closure_labels(item) if label in latest)
        self._needs[item.nodeid] = keys
        return keys

    def before_test(self, item: Any) -> None:
        """``item`` is about to be set up: send the migrations due now."""
        migrator = self.migrator
        if migrator is None:
            return
        try:
            if self._queue is not None:
                session = item.session
                upcoming = [item, *_peek(self._queue, session.items, migrator.lookahead_tests)]
                migrator.window([self.predicted(i, migrator.prediction) for i in upcoming])
            else:
                index = self._run_index.get(id(item))
                if index is not None:
                    migrator.before(index)
        except Exception as exc:  # prefetching never costs a test
            self.stats.fallback(f"prefetching stopped ({type(exc).__name__}: {exc})")
            self.migrator = None

    def report(self) -> None:
        """The summary's prefetch figures: what was sent, loaded ahead and used."""
        migrator = self.migrator
        sent = self._early | (migrator.sent if migrator is not None else set())
        if not sent:
            return
        self.stats.prefetched += len(sent)
        if self._queue is not None or self.proxy.down:
            return  # an xdist worker: the shared agent's counters are not this worker's
        loaded, used = _prefetch_counters(self.proxy.each_agent(lambda c: c.stats()))
        base_bytes, base_used = self._base or (0, 0)
        self.stats.prefetch_bytes += max(0, loaded - base_bytes)
        self.stats.prefetch_used_bytes += max(0, used - base_used)


def _prefetch_counters(replies: list[dict[str, Any]]) -> tuple[int, int]:
    """(bytes loaded, bytes of them used) summed over the agents' STATS replies."""
    loaded = used = 0
    for reply in replies:
        counters = reply.get("prefetch") or {}
        loaded += int(counters.get("bytes", 0))
        used += int(counters.get("used_bytes", 0))
    return loaded, used


def _worker_queue(config: Any) -> Any:
    """pytest-xdist's queue of this worker's next test indices (its ``TestQueue``), or None."""
    for plugin in config.pluginmanager.get_plugins():
        queue = getattr(plugin, "torun", None)
        if queue is not None and hasattr(queue, "lock"):
            return queue
    return None


def _peek(queue: Any, items: list[Any], count: int) -> list[Any]:
    """The next ``count`` items in xdist's queue, without taking them."""
    with queue.lock() as indices:
        upcoming = list(itertools.islice(indices, count))
    return [items[i] for i in upcoming if isinstance(i, int) and 0 <= i < len(items)]
