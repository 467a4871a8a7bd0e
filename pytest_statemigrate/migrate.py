"""Carrying the engine's plan out: PREFETCH, EVICT and MIGRATE sent before the tests.

:mod:`engine` plans from plain data; this module turns a run's tests and the ESG's prediction
into that data, keeps the plan, and before each test sends the actions due then through the
proxy's agent link. Pure of pytest: the session hands it node ids and state keys.

Nothing here can fail or slow a test beyond loading on demand: every agent call goes through
the proxy's error handling (a miss, one summary line), actions are sent only when an agent is
up and never waited for beyond the request's acknowledgement, and the link is closed again
before the test body runs (invariant 6).

Single process: one plan for the whole run (within each agent's RAM budget). With one agent
every action goes to it; with several (``--sm-agent a,b,c``) the plan places each partition on
one agent (:func:`engine.plan` with every agent's STATS and the directories' records), and
each step's EVICT and PREFETCH go to the agent the plan names, or a MIGRATE when another agent
holds the value in RAM (:func:`migration_source`). Under xdist each worker only learns its
tests as the scheduler hands them out, so it prefetches a rolling window of its queue to each
key's home (no evictions: the agents' own budgets evict).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nodeagent.protocol import TIER_RANK

from . import engine
from .esg import Prediction
from .placement import Location
from .proxy import StateProxy

#: The target of actions routed by key (one agent, or each key's home on the ring).
HOME: Final = ""


@dataclass
class _Actions:
    evict: list[str] = field(default_factory=list)
    prefetch: list[tuple[str, int]] = field(default_factory=list)  # (key, index of its use)
    migrate: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # by peer endpoint

    def __bool__(self) -> bool:
        return bool(self.evict or self.prefetch or self.migrate)

    def add(self, other: _Actions) -> None:
        self.evict += other.evict
        self.prefetch += other.prefetch
        for peer, keys in other.migrate.items():
            self.migrate.setdefault(peer, []).extend(keys)


def holders(located: Mapping[str, Sequence[Location]]) -> dict[str, dict[str, str]]:
    """Key -> agent -> tier, from the directories' records: only holders of each key's newest
    located version (an older copy is never read, so it is no copy to plan with); an agent
    with several records keeps its fastest tier."""
    out: dict[str, dict[str, str]] = {}
    for key, locs in located.items():
        newest = max((loc.version for loc in locs), default=0)
        where: dict[str, str] = {}
        for loc in sorted(locs, key=lambda loc: -TIER_RANK[loc.tier]):  # the fastest last
            if loc.version == newest:
                where[loc.agent] = loc.tier
        if where:
            out[key] = where
    return out


def partition_locations(
    members: Mapping[int, Sequence[str]], where: Mapping[str, Mapping[str, str]]
) -> dict[int, dict[str, str]]:
    """Partition -> agent -> tier for :func:`engine.plan`: an agent has a partition when it
    holds every live element of it, in the slowest of their tiers (a partition is loaded as
    a whole; one element missing makes a load anyway)."""
    out: dict[int, dict[str, str]] = {}
    for p, keys in members.items():
        if not keys:
            continue
        common = set(where.get(keys[0], {}))
        for key in keys[1:]:
            common &= set(where.get(key, {}))
        if common:
            out[p] = {
                agent: max((where[k][agent] for k in keys), key=TIER_RANK.__getitem__)
                for agent in sorted(common)
            }
    return out


def migration_source(where: Mapping[str, str], target: str) -> str | None:
    """The agent to copy a value from when the plan puts it on ``target``: one holding it in
    RAM (the smallest name, as the engine picks), unless ``target`` has a copy itself (then
    it reads its own disk or store: PREFETCH)."""
    if target in where:
        return None
    in_ram = sorted(agent for agent, tier in where.items() if tier == "ram" and agent != target)
    return in_ram[0] if in_ram else None


def _due(pairs: Iterable[tuple[str, int]], now: int) -> list[str]:
    """The keys still worth loading before test ``now`` (a load for an earlier test came too
    late: that test read the value on demand), without repeats."""
    return list(dict.fromkeys(key for key, due in pairs if due >= now))


def _next_use(uses: Mapping[str, list[int]], key: str, start: int) -> int:
    """The first test at or after ``start`` that uses ``key`` (``start`` if none does): an
    element of a partition loaded for test ``start`` may be needed only later."""
    found = uses.get(key, [])
    at = bisect.bisect_left(found, start)
    return found[at] if at < len(found) else start


class Migrator:
    """The run's plan and its execution; see the module docstring."""

    def __init__(
        self,
        proxy: StateProxy,
        prediction: Prediction,
        *,
        ready: Callable[[], bool],
        lookahead_tests: int,
    ) -> None:
        self.proxy = proxy
        self.prediction = prediction
        self.ready = ready  # an agent is up: sending now costs no waiting for its boot
        self.lookahead_tests = lookahead_tests
        self.plan: engine.Plan | None = None
        self.members: dict[int, tuple[str, ...]] = {}  # partition → the keys this run uses
        #: step → target agent (HOME: route by key) → actions
        self._steps: dict[int, dict[str, _Actions]] = {}
        #: due while no agent was up yet: sent at the next chance
        self._pending: dict[str, _Actions] = {}
        self._window: set[str] = set()  # xdist: keys this worker asked for already
        self.sent: set[str] = set()  # keys asked for in PREFETCH or MIGRATE

    # -- planning ------------------------------------------------------------------------
    def make_plan(
        self,
        tests: Sequence[tuple[str, Iterable[str]]],
        agent: engine.AgentInfo | Sequence[engine.AgentInfo],
        client_host: str,
        *,
        policy: str,
        lookahead_bytes: int | None,
        select: engine.SelectNode | None,
        on_disk: bool,
        located: Mapping[str, Mapping[str, str]] | None = None,
    ) -> engine.Plan:
        """Plan the whole run.

        :param agent: one agent (every action goes to it, or to each key's home: ``on_disk``
            says whether the partitions are in its disk tier, else only in its store), or
            several, named as the proxy's links: each action goes to the agent the plan
            names.
        :param located: several agents: key -> agent -> tier (:func:`holders`), where the
            directories know copies to be.
        """
        listed = [(t, tuple(keys)) for t, keys in tests]
        requests = engine.requests_from(listed, self.prediction.partition_of)
        # A partition moves as the elements this run is predicted to use: the ESG also keeps
        # elements of earlier code (old keys) that no test asks for again.
        live = {key for _, keys in listed for key in keys}
        members = {
            p: tuple(k for k in keys if k in live) for p, keys in self.prediction.members.items()
        }
        nbytes = self.prediction.nbytes
        sizes = {
            p: sum(nbytes.get(k, 0) for k in members.get(p, ()))
            for r in requests
            for p in r.partitions
        }
        located = located or {}
        if isinstance(agent, engine.AgentInfo):
            agents = [agent]
            tier = "disk" if on_disk else "store"
            locations = {p: {agent.name: tier} for p in sizes}
        else:
            agents = list(agent)
            used = {p: members.get(p, ()) for p in sizes}
            locations = partition_locations(used, located)
        kwargs: dict[str, Any] = dict(
            policy=policy,
            lookahead_tests=self.lookahead_tests,
            lookahead_bytes=lookahead_bytes,
            locations=locations,
        )
        try:
            plan = engine.plan(requests, sizes, agents, client_host, select=select, **kwargs)
        except ValueError as exc:  # the hook named no agent: the engine's choice stands
            self.proxy.stats.fallback(f"{exc}; the engine chose instead")
            plan = engine.plan(requests, sizes, agents, client_host, **kwargs)
        self.plan = plan
        self.members = members
        uses: dict[str, list[int]] = {}  # key → the tests that use it, in order
        for index, (_, needed) in enumerate(listed):
            for key in needed:
                uses.setdefault(key, []).append(index)
        single = isinstance(agent, engine.AgentInfo)
        for name, sched in plan.schedules.items():
            target = HOME if single else name
            for step in sched.steps:
                if not (step.evict or step.load):
                    continue
                actions = self._steps.setdefault(step.index, {}).setdefault(target, _Actions())
                for p in step.evict:
                    actions.evict.extend(members.get(p, ()))
                for load in step.load:
                    for k in members[load.partition]:
                        due = (k, _next_use(uses, k, load.due))
                        peer = migration_source(located.get(k, {}), name)
                        if peer is not None:
                            actions.migrate.setdefault(peer, []).append(due)
                        else:
                            actions.prefetch.append(due)
        return plan

    # -- carrying it out -----------------------------------------------------------------
    def before(self, index: int) -> None:
        """Test ``index`` of the plan is about to start: send what is due."""
        for target, due in self._steps.pop(index, {}).items():
            self._pending.setdefault(target, _Actions()).add(due)
        self._flush(index)

    def window(self, upcoming: Sequence[Iterable[str]]) -> None:
        """xdist: the keys of this worker's next tests (the current one first): prefetch the
        partitions among them, as far as those tests use them, without asking twice."""
        part_of = self.prediction.partition_of
        ahead = [tuple(keys) for keys in upcoming[: self.lookahead_tests + 1]]
        live = {key for keys in ahead for key in keys}
        pending = self._pending.setdefault(HOME, _Actions())
        for keys in ahead:
            for key in keys:
                p = part_of.get(key)
                if p is None or key in self._window:
                    continue
                members = [k for k in self.prediction.members.get(p, ()) if k in live]
                fresh = [k for k in members if k not in self._window]
                self._window.update(fresh)
                pending.prefetch.extend((k, 0) for k in fresh)
        self._flush(0)

    def _flush(self, now: int) -> None:
        pending = {target: a for target, a in self._pending.items() if a}
        if not pending or self.proxy.down or not self.ready():
            return
        self._pending = {}
        try:
            for target, actions in pending.items():
                self._send(target, actions, now)
        finally:
            self.proxy.close_link()  # no zmq thread while the test body runs

    def _send(self, target: str, pending: _Actions, now: int) -> None:
        """``target``'s actions: HOME (one agent, or xdist's window) sends each key's share to
        its home; an agent's name (several agents) is the agent the plan gave them to. A copy
        whose source agent is down in this run is read from the target's own tiers instead;
        nothing is sent to an agent that is down (its tests read on demand from the others)."""
        proxy = self.proxy
        send: Callable[[Sequence[str], Callable[[Any, list[str]], Any]], bool] = proxy.each_home
        if target != HOME:
            link = proxy.links.get(target)
            if link is None or link.down is not None:
                return

            def to_target(keys: Sequence[str], what: Callable[[Any, list[str]], Any]) -> bool:
                return proxy.call(lambda c: what(c, list(keys)), link) is not None

            send = to_target
        if pending.evict:
            evict = list(dict.fromkeys(pending.evict))
            send(evict, lambda c, share: c.evict_many(share, tier="ram"))
        prefetch = list(pending.prefetch)
        migrate: dict[str, list[str]] = {}
        for peer, pairs in pending.migrate.items():
            source = proxy.links.get(peer)
            if source is None or source.down is not None:
                prefetch += pairs
            elif moved := _due(pairs, now):
                migrate[peer] = moved
        keys = _due(prefetch, now)
        if keys and send(keys, lambda c, share: c.prefetch(share)):
            self.sent.update(keys)
        for peer, moved in migrate.items():
            if send(moved, lambda c, share, p=peer: c.migrate(share, p)):  # type: ignore[misc]
                self.sent.update(moved)


def write_plan(plan: engine.Plan, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """``--sm-plan``: the plan as JSON (:meth:`engine.Plan.to_json`)."""
    data = plan.to_json()
    if extra:
        data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
