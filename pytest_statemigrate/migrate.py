"""Carrying the engine's plan out: PREFETCH, EVICT and MIGRATE sent before the tests.

:mod:`engine` plans from plain data; this module turns a run's tests and the ESG's prediction
into that data, keeps the plan, and before each test sends the actions due then through the
proxy's agent link. Pure of pytest: the session hands it node ids and state keys.

Nothing here can fail or slow a test beyond loading on demand: every agent call goes through
the proxy's error handling (a miss, one summary line), actions are sent only when an agent is
up and never waited for beyond the request's acknowledgement, and the link is closed again
before the test body runs (invariant 6).

Single process: one plan for the whole run (Belady within the agent's RAM budget). Under
xdist each worker only learns its tests as the scheduler hands them out, so it prefetches a
rolling window of its queue (no evictions: the shared agent's own budget evicts).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import engine
from .esg import Prediction
from .proxy import StateProxy


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
        self._steps: dict[int, _Actions] = {}
        self._pending = _Actions()  # due while no agent was up yet: sent at the next chance
        self._window: set[str] = set()  # xdist: keys this worker asked for already
        self.sent: set[str] = set()  # keys asked for in PREFETCH or MIGRATE

    # -- planning ------------------------------------------------------------------------
    def make_plan(
        self,
        tests: Sequence[tuple[str, Iterable[str]]],
        agent: engine.AgentInfo,
        client_host: str,
        *,
        policy: str,
        lookahead_bytes: int | None,
        override: engine.SelectNode | None,
        on_disk: bool,
    ) -> engine.Plan:
        """Plan the whole run for one agent (``on_disk``: the partitions are in its disk tier,
        else only in its store)."""
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
        tier = "disk" if on_disk else "store"
        kwargs: dict[str, Any] = dict(
            policy=policy,
            lookahead_tests=self.lookahead_tests,
            lookahead_bytes=lookahead_bytes,
            locations={p: {agent.name: tier} for p in sizes},
        )
        try:
            plan = engine.plan(requests, sizes, [agent], client_host, override=override, **kwargs)
        except ValueError as exc:  # the hook named no agent: the engine's choice stands
            self.proxy.stats.fallback(f"{exc}; the engine chose instead")
            plan = engine.plan(requests, sizes, [agent], client_host, **kwargs)
        self.plan = plan
        self.members = members
        uses: dict[str, list[int]] = {}  # key → the tests that use it, in order
        for index, (_, needed) in enumerate(listed):
            for key in needed:
                uses.setdefault(key, []).append(index)
        for sched in plan.schedules.values():
            for step in sched.steps:
                if not (step.evict or step.load):
                    continue
                actions = self._steps.setdefault(step.index, _Actions())
                for p in step.evict:
                    actions.evict.extend(members.get(p, ()))
                for load in step.load:
                    due = [(k, _next_use(uses, k, load.due)) for k in members[load.partition]]
                    if load.source == "migrate" and load.peer is not None:
                        actions.migrate.setdefault(load.peer, []).extend(due)
                    else:
                        actions.prefetch.extend(due)
        return plan

    # -- carrying it out -----------------------------------------------------------------
    def before(self, index: int) -> None:
        """Test ``index`` of the plan is about to start: send what is due."""
        due = self._steps.pop(index, None)
        if due is not None:
            self._pending.add(due)
        self._flush(index)

    def window(self, upcoming: Sequence[Iterable[str]]) -> None:
        """xdist: the keys of this worker's next tests (the current one first): prefetch the
        partitions among them, as far as those tests use them, without asking twice."""
        part_of = self.prediction.partition_of
        ahead = [tuple(keys) for keys in upcoming[: self.lookahead_tests + 1]]
        live = {key for keys in ahead for key in keys}
        for keys in ahead:
            for key in keys:
                p = part_of.get(key)
                if p is None or key in self._window:
                    continue
                members = [k for k in self.prediction.members.get(p, ()) if k in live]
                fresh = [k for k in members if k not in self._window]
                self._window.update(fresh)
                self._pending.prefetch.extend((k, 0) for k in fresh)
        self._flush(0)

    def _flush(self, now: int) -> None:
        pending = self._pending
        if not pending or self.proxy.down or not self.ready():
            return
        self._pending = _Actions()
        call = self.proxy.call
        homes = self.proxy.each_home  # several agents: each key's share goes to its home
        try:
            if pending.evict:
                evict = list(dict.fromkeys(pending.evict))
                homes(evict, lambda c, share: c.evict_many(share, tier="ram"))
            keys = _due(pending.prefetch, now)
            if keys and homes(keys, lambda c, share: c.prefetch(share)):
                self.sent.update(keys)
            for peer, pairs in pending.migrate.items():
                moved = _due(pairs, now)
                if moved and call(lambda c, p=peer, k=moved: c.migrate(k, p)) is not None:  # type: ignore[misc]
                    self.sent.update(moved)
        finally:
            self.proxy.close_link()  # no zmq thread while the test body runs


def write_plan(plan: engine.Plan, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """``--sm-plan``: the plan as JSON (:meth:`engine.Plan.to_json`)."""
    data = plan.to_json()
    if extra:
        data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
