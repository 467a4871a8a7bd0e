"""Predictive migration: which partitions each agent holds in RAM, before which test.

pytest knows the order in which tests will run, so the engine knows the future request stream
and can plan every agent's RAM ahead. This module is the pure planning core (no pytest, no zmq,
no agent calls): plain data in, plain data out.

* **Request stream** (:class:`Request`, :func:`requests_from`): for each test in run order, the
  partitions it needs.
* **Node selection** (:class:`AgentInfo`, :func:`score`, :func:`choose_agent`): the agent that
  holds a partition for the run; a ``pytest_statemigrate_select_node`` hook can choose instead.
* **The schedule** (:func:`schedule`, :class:`Schedule`): for one agent and its RAM budget,
  what to EVICT and what to load (PREFETCH ahead of the test, from disk, the store or a peer
  agent) before each test. Loads are those of demand paging under Belady's rule (evict the
  resident partition whose next use is farthest; never one the current test needs), or LRU
  for comparison; each load is then issued as early as a bounded lookahead allows (at most
  ``lookahead_tests`` tests ahead, at most ``lookahead_bytes`` loaded ahead of their use).
* **Measures** (:class:`Stats`, :func:`simulate`): hits, misses, loads hidden by prefetch,
  bytes loaded, prefetched and used; a replay of the schedule's actions computes them, and
  checks the budget and that each test finds its partitions in RAM.
* **The plan** (:func:`plan`, :class:`Plan`): a target agent for each partition (it stays there
  for the run), then one schedule per agent; ``Plan.to_json()`` is what ``--sm-plan`` writes,
  :func:`format_plan` what ``statemigrate plan`` shows.

What is guaranteed (and tested) is in docs/engine.md. Only the standard library is imported.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal, Protocol

from nodeagent.protocol import TIERS

Source = Literal["disk", "store", "migrate"]

POLICIES: Final = ("belady", "lru")  # demand paging; prefetch only moves their loads earlier
#: Next-use eviction that also evicts to prefetch early (see :func:`_aggressive`).
PREFETCHING_POLICIES: Final = ("aggressive",)
DEFAULT_LOOKAHEAD_TESTS: Final = 16  # tests ahead that a load may be issued
DEFAULT_READ_BANDWIDTH: Final = 2**30  # B/s assumed for queued loads when an agent has no figure
PLAN_FORMAT: Final = 1  # the version of Plan.to_json()'s layout

# score(): same host outweighs everything else, then holding the partition in RAM already; a
# partition that fits outweighs room and idleness
SAME_HOST_WEIGHT: Final = 8.0
HELD_WEIGHT: Final = {"ram": 4.0, "disk": 1.0}  # by the tier where the agent has it
FITS_WEIGHT: Final = 2.0


# --------------------------------------------------------------------------- request stream


@dataclass(frozen=True, slots=True)
class Request:
    """One test's setup: the partitions (ids, ascending, no repeats) it needs."""

    test: str  # node id
    partitions: tuple[int, ...]


def requests_from(
    tests: Sequence[tuple[str, Collection[str]]], partition_of: Mapping[str, int]
) -> list[Request]:
    """The request stream of ``tests`` (node id, state keys it needs) in run order.

    Each key is mapped to its partition by ``partition_of``. A key without a partition (an
    element the last partitioning did not see: new or changed fixtures) is ignored: the proxy
    loads or builds it on demand as it would without the engine. A test that needs no
    partitioned element still gets a request (with no partitions): it counts towards the
    lookahead in tests.
    """
    return [
        Request(test, tuple(sorted({partition_of[k] for k in keys if k in partition_of})))
        for test, keys in tests
    ]


def synthetic_requests(
    tests: int,
    partitions: int,
    *,
    seed: int = 0,
    module_tests: tuple[int, int] = (5, 30),
    module_partitions: tuple[int, int] = (2, 4),
    per_test: tuple[int, int] = (1, 3),
    stray: float = 0.1,
) -> list[Request]:
    """A synthetic request stream, for tests and benchmarks.

    Tests come in modules of ``module_tests`` tests (bounds inclusive); each module draws a
    working set of ``module_partitions`` partitions (popularity ~ 1 / rank: a few partitions
    serve many modules), and each of its tests needs ``per_test`` of them; with probability
    ``stray`` a test also needs one partition drawn from all of them. Test ids are
    ``m{module}::t{index}``.
    """
    if tests < 0 or partitions < 1:
        raise ValueError(f"need tests >= 0 and partitions >= 1, got {tests}, {partitions}")
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(partitions)]
    ids = list(range(partitions))
    rng.shuffle(ids)  # popularity does not follow the id
    out: list[Request] = []
    module = 0
    while len(out) < tests:
        want = min(rng.randint(*module_partitions), partitions)
        working: set[int] = set()
        while len(working) < want:
            working.add(ids[rng.choices(range(partitions), weights)[0]])
        members = sorted(working)
        for _ in range(min(rng.randint(*module_tests), tests - len(out))):
            needed = set(rng.sample(members, min(rng.randint(*per_test), len(members))))
            if rng.random() < stray:
                needed.add(rng.randrange(partitions))
            out.append(Request(f"m{module}::t{len(out)}", tuple(sorted(needed))))
        module += 1
    return out


# --------------------------------------------------------------------------- node selection


@dataclass(frozen=True)
class AgentInfo:
    """What an agent reports in STATS, as node selection reads it.

    ``ram_budget``: bytes of its RAM tier the engine may plan with; ``ram_free``: bytes of it
    free now; ``cpu_load``: the 1-minute load average (None: unknown, read as 0);
    ``queued_bytes``: bytes of loads queued or running; ``read_bandwidth``: measured bytes/s
    per tier name (``"disk"``, ``"store"``, ...).
    """

    name: str
    host: str
    ram_budget: int
    ram_free: int
    cpu_load: float | None = None
    queued_bytes: int = 0
    read_bandwidth: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, name: str, stats: Mapping[str, Any]) -> AgentInfo:
        """From an agent's STATS reply: ``host``, ``tiers["ram"]`` (``budget``, ``bytes``),
        ``mem_available``, ``cpu_load``, and, when the agent reports them, ``queued_bytes`` and
        ``read_bandwidth``. Free RAM is the budget's unused part, capped by the host's
        available memory."""
        ram = stats.get("tiers", {}).get("ram", {})
        budget = int(ram.get("budget") or 0)
        free = max(0, budget - int(ram.get("bytes") or 0))
        available = stats.get("mem_available")
        if available is not None:
            free = min(free, int(available))
        return cls(
            name=name,
            host=str(stats.get("host", "")),
            ram_budget=budget,
            ram_free=free,
            cpu_load=stats.get("cpu_load"),
            queued_bytes=int(stats.get("queued_bytes") or 0),
            read_bandwidth=dict(stats.get("read_bandwidth") or {}),
        )


def score(
    agent: AgentInfo, partition_bytes: int, client_host: str, held: str | None = None
) -> float:
    """How well ``agent`` suits a partition of ``partition_bytes`` for a test process on
    ``client_host`` (higher is better)::

        score = 8 * same_host + held + 2 * fits + room + idle

    * ``same_host``: 1 when the agent runs on ``client_host`` (no network between them);
    * ``held``: 4 when the agent holds the partition in RAM already (``held="ram"``: nothing to
      load, and it costs no free RAM, so it also fits), 1 when on its disk (a local read
      instead of the store or a peer), else 0;
    * ``fits``: 1 when the partition fits in the agent's free RAM (and its budget);
    * ``room``: the part of the budget still free after taking the partition, in [0, 1];
    * ``idle``: ``(1 / (1 + queued_s) + 1 / (1 + cpu_load)) / 2`` in (0, 1], where
      ``queued_s`` is the queued bytes over the agent's disk read bandwidth
      (:data:`DEFAULT_READ_BANDWIDTH` when unknown).

    ``held + fits + room + idle`` lies in (0, 8], not above the same-host weight (and a
    same-host agent's score exceeds 8, since idle > 0); without the host, a RAM holder scores
    above 6 and any other agent at most 5; an agent that does not fit scores at most 2 even
    with the partition on disk (its room is 0), one that fits above 2. So: same host first,
    then holding it in RAM, then fitting in free memory, then a copy on disk and free room
    traded against queued work and load.
    """
    same = agent.host == client_host
    cost = 0 if held == "ram" else partition_bytes  # a RAM holder loads nothing
    fits = cost <= min(agent.ram_free, agent.ram_budget)
    room = 0.0
    if agent.ram_budget > 0:
        room = min(1.0, max(0.0, (agent.ram_free - cost) / agent.ram_budget))
    bandwidth = agent.read_bandwidth.get("disk", 0.0)
    if not (bandwidth > 0 and math.isfinite(bandwidth)):
        bandwidth = DEFAULT_READ_BANDWIDTH
    queued_s = max(0, agent.queued_bytes) / bandwidth
    load = agent.cpu_load if agent.cpu_load is not None and agent.cpu_load > 0 else 0.0
    idle = (1.0 / (1.0 + queued_s) + 1.0 / (1.0 + load)) / 2.0
    bonus = HELD_WEIGHT.get(held or "", 0.0)
    return SAME_HOST_WEIGHT * same + bonus + FITS_WEIGHT * fits + room + idle


class SelectNode(Protocol):
    """The ``pytest_statemigrate_select_node`` hook as :func:`choose_agent` calls it (keyword
    arguments, like a pluggy hook caller): the name of the chosen agent (or the AgentInfo),
    or None to leave the choice to :func:`best_agent`. ``partition`` is None when the choice
    is not for a known partition; ``held`` maps agent names to the tier where each has it."""

    def __call__(
        self,
        *,
        partition: int | None,
        partition_bytes: int,
        agents: tuple[AgentInfo, ...],
        client_host: str,
        held: Mapping[str, str],
    ) -> str | AgentInfo | None: ...


def best_agent(
    agents: Sequence[AgentInfo],
    partition_bytes: int,
    client_host: str,
    held: Mapping[str, str] | None = None,
) -> AgentInfo:
    """The agent with the best :func:`score` (ties: the smallest name, whatever the order of
    ``agents``): the choice of the select-node hook's default implementation."""
    held = held or {}
    ordered = sorted(agents, key=lambda a: a.name)
    return max(ordered, key=lambda a: score(a, partition_bytes, client_host, held.get(a.name)))


def choose_agent(
    agents: Sequence[AgentInfo],
    partition_bytes: int,
    client_host: str,
    select: SelectNode | None = None,
    *,
    partition: int | None = None,
    held: Mapping[str, str] | None = None,
) -> AgentInfo:
    """The agent to hold a partition: ``select``'s answer (the hook: a conftest's first, else
    the plugin's default, :func:`best_agent`), or :func:`best_agent` when it answers None.

    :param held: agent name -> the tier where that agent has the partition (``"ram"``,
        ``"disk"`` or ``"store"``), as the location directories know it.

    :raises ValueError: no agents, two agents of one name, or an answer naming none of them.
    """
    if not agents:
        raise ValueError("no agents to choose from")
    by_name = {a.name: a for a in agents}
    if len(by_name) != len(agents):
        raise ValueError(f"agent names must be unique, got {sorted(a.name for a in agents)}")
    held = held or {}
    if select is not None:
        answer = select(
            partition=partition,
            partition_bytes=partition_bytes,
            agents=tuple(agents),
            client_host=client_host,
            held=dict(held),
        )
        if answer is not None:
            name = answer.name if isinstance(answer, AgentInfo) else answer
            if name not in by_name:
                raise ValueError(
                    f"pytest_statemigrate_select_node chose {name!r}, which is none of the "
                    f"agents ({', '.join(sorted(by_name))})"
                )
            return by_name[name]
    return best_agent(agents, partition_bytes, client_host, held)


# --------------------------------------------------------------------------- schedule data


@dataclass(frozen=True, slots=True)
class Load:
    """Bring ``partition`` into an agent's RAM, for test ``due`` (an index in the stream).

    Issued before test ``issue`` starts: ``issue < due`` is a PREFETCH (the test does not
    wait, if the load finishes in time); ``issue == due`` is a load the test waits for.
    ``source`` is where it comes from: the agent's ``"disk"`` tier, the shared ``"store"``, or
    ``"migrate"`` from ``peer``, an agent that holds it in RAM.
    """

    partition: int
    issue: int
    due: int
    source: Source
    nbytes: int
    peer: str | None = None

    @property
    def prefetch(self) -> bool:
        return self.issue < self.due

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "partition": self.partition,
            "for": self.due,
            "source": self.source,
            "bytes": self.nbytes,
        }
        if self.peer is not None:
            data["peer"] = self.peer
        return data


@dataclass(frozen=True, slots=True)
class Step:
    """What an agent does before test ``index`` starts, and what it holds while it runs.

    The agent first evicts ``evict``, then issues ``load`` (in this order). ``ram``: the
    partitions of this agent the test needs in RAM; ``direct``: those it needs but that are not
    held in RAM for it (larger than the budget, or the test's partitions exceed the budget
    together): read from disk or the store on demand. ``resident``: the partitions in RAM
    while the test runs (ascending), ``resident_bytes`` their size.
    """

    index: int
    ram: tuple[int, ...]
    direct: tuple[int, ...]
    evict: tuple[int, ...]
    load: tuple[Load, ...]
    resident: tuple[int, ...]
    resident_bytes: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Measures of a schedule, over the uses of partitions (one per test and partition).

    ``hits + misses + direct == uses``:

    * ``hits``: the partition was in RAM with no load for this use (since an earlier use, or
      since the start);
    * ``misses``: a load brought it into RAM for this use; ``prefetched`` of them were issued
      before the test (the rest the test waits for);
    * ``direct``: not held in RAM for this test (see :class:`Step`).

    ``bytes_prefetch_used`` counts prefetched bytes that a test used before they were evicted.
    """

    uses: int = 0
    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    direct: int = 0
    bytes_loaded: int = 0
    bytes_prefetched: int = 0
    bytes_prefetch_used: int = 0
    bytes_direct: int = 0
    evictions: int = 0
    peak_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over uses (1.0 for no uses): what the eviction policy decides."""
        return self.hits / self.uses if self.uses else 1.0

    @property
    def ready_rate(self) -> float:
        """Uses found in RAM without waiting for a load (hits and prefetched misses)."""
        return (self.hits + self.prefetched) / self.uses if self.uses else 1.0

    @property
    def prefetch_use(self) -> float:
        """Prefetched bytes used over prefetched bytes (1.0 when nothing was prefetched)."""
        return self.bytes_prefetch_used / self.bytes_prefetched if self.bytes_prefetched else 1.0

    def __add__(self, other: Stats) -> Stats:
        """The measures of two agents together (counts summed; the larger peak)."""
        mine, theirs = asdict(self), asdict(other)
        total = {name: mine[name] + theirs[name] for name in mine}
        total["peak_bytes"] = max(self.peak_bytes, other.peak_bytes)
        return Stats(**total)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data.update(
            hit_rate=self.hit_rate, ready_rate=self.ready_rate, prefetch_use=self.prefetch_use
        )
        return data


@dataclass(frozen=True)
class Schedule:
    """One agent's plan: a :class:`Step` per test of the stream, and its measures."""

    agent: str
    budget: int
    policy: str
    lookahead_tests: int
    lookahead_bytes: int
    steps: tuple[Step, ...]
    stats: Stats

    @property
    def peak_bytes(self) -> int:
        return self.stats.peak_bytes

    @property
    def resident_bytes(self) -> list[int]:
        """Bytes in RAM while each test runs: the agent's allocation over time."""
        return [s.resident_bytes for s in self.steps]

    def loads(self) -> list[Load]:
        return [load for step in self.steps for load in step.load]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: the actions of the steps that have any, the allocation of every
        step, the measures."""
        return {
            "agent": self.agent,
            "budget": self.budget,
            "policy": self.policy,
            "lookahead_tests": self.lookahead_tests,
            "lookahead_bytes": self.lookahead_bytes,
            "peak_bytes": self.peak_bytes,
            "resident_bytes": self.resident_bytes,
            "steps": [
                {
                    "test": s.index,
                    "evict": list(s.evict),
                    "load": [load.to_json() for load in s.load],
                    "direct": list(s.direct),
                }
                for s in self.steps
                if s.evict or s.load or s.direct
            ],
            "stats": self.stats.to_json(),
        }


# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True, slots=True)
class _Demand:
    """A load of demand paging: ``partition`` for test ``due``, after evicting ``victims``,
    whose last use before ``due`` was at ``victims_used`` (-1: none)."""

    partition: int
    due: int
    victims: tuple[int, ...]
    victims_used: int


def ram_sets(
    needs: Sequence[Collection[int]], sizes: Mapping[int, int], budget: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Split each test's partitions into those held in RAM for it and those read directly.

    A test keeps in RAM, smallest first (ties: lowest id), each partition that still fits in
    ``budget`` with those taken before it; the others are direct. The split depends on sizes
    and budget only, so every policy pages the same RAM sets.
    """
    ram: list[tuple[int, ...]] = []
    direct: list[tuple[int, ...]] = []
    for parts in needs:
        kept: list[int] = []
        rest: list[int] = []
        total = 0
        for p in sorted(set(parts), key=lambda p: (sizes[p], p)):
            if total + sizes[p] <= budget:
                kept.append(p)
                total += sizes[p]
            else:
                rest.append(p)
        ram.append(tuple(sorted(kept)))
        direct.append(tuple(sorted(rest)))
    return ram, direct


def _demand(
    ram: Sequence[tuple[int, ...]],
    sizes: Mapping[int, int],
    budget: int,
    policy: str,
    initial: Collection[int],
) -> tuple[list[_Demand], list[int], list[int]]:
    """Demand paging of the RAM sets: the loads, the initial partitions evicted at once (they
    do not fit together), and the bytes in RAM after each step.

    Belady: the victim is the resident partition not needed by the current test whose next
    use is farthest (never used again counts as farthest), then the largest, then the lowest
    id. LRU: the one used least recently (never used: first), then the largest, then the
    lowest id.
    """
    n = len(ram)
    uses: dict[int, list[int]] = defaultdict(list)
    for i, parts in enumerate(ram):
        for p in parts:
            uses[p].append(i)
    position = dict.fromkeys(uses, 0)
    next_use: dict[int, int] = {p: u[0] for p, u in uses.items()}
    last_use: dict[int, int] = {}
    resident: dict[int, None] = {}
    used = 0
    trimmed: list[int] = []
    for p in sorted(initial, key=lambda p: (next_use.get(p, n), p)):
        if used + sizes[p] <= budget:
            resident[p] = None
            used += sizes[p]
            last_use[p] = -1
        else:
            trimmed.append(p)
    belady = policy == "belady"
    loads: list[_Demand] = []
    after: list[int] = []
    for i, parts in enumerate(ram):
        current = set(parts)
        for p in parts:
            position[p] += 1
            later = uses[p]
            next_use[p] = later[position[p]] if position[p] < len(later) else n
        for p in parts:
            if p in resident:
                continue
            victims: list[int] = []
            while used + sizes[p] > budget:
                candidates = [v for v in resident if v not in current]
                if belady:
                    victim = max(candidates, key=lambda v: (next_use.get(v, n), sizes[v], -v))
                else:
                    victim = min(candidates, key=lambda v: (last_use[v], -sizes[v], v))
                del resident[victim]
                used -= sizes[victim]
                victims.append(victim)
            resident[p] = None
            used += sizes[p]
            last = max((last_use[v] for v in victims), default=-1)
            loads.append(_Demand(p, i, tuple(victims), last))
        for p in parts:
            last_use[p] = i
        after.append(used)
    return loads, trimmed, after


def _hoist(
    demand: Sequence[_Demand],
    trimmed: Sequence[int],
    after: Sequence[int],
    sizes: Mapping[int, int],
    budget: int,
    lookahead_tests: int,
    lookahead_bytes: int,
) -> list[tuple[int, _Demand]]:
    """Issue each demand load as early as allowed: ``(issue step, load)`` in due order.

    Loads are taken in due order; each moves back one step at a time while, at that step, its
    victims are no longer used (they are evicted when it is issued), the partition is no
    longer resident from before (it was evicted at an earlier issue), the RAM stays within the
    budget and the bytes loaded ahead of their use stay within ``lookahead_bytes``; and at most
    ``lookahead_tests`` steps. The set of loads is the demand policy's: prefetching changes when
    a load happens, never how many there are.
    """
    resident = list(after)
    ahead = [0] * len(after)
    evicted_at: dict[int, int] = dict.fromkeys(trimmed, 0)
    issued: list[tuple[int, _Demand]] = []
    for d in demand:
        size = sizes[d.partition]
        delta = size - sum(sizes[v] for v in d.victims)
        lowest = max(
            0,
            d.due - lookahead_tests,
            d.victims_used + 1,
            evicted_at.get(d.partition, -1) + 1,
        )
        issue = d.due
        if size <= lookahead_bytes:
            while (
                issue - 1 >= lowest
                and resident[issue - 1] + delta <= budget
                and ahead[issue - 1] + size <= lookahead_bytes
            ):
                issue -= 1
        for t in range(issue, d.due):
            resident[t] += delta
            ahead[t] += size
        for v in d.victims:
            evicted_at[v] = issue
        issued.append((issue, d))
    return issued


def _aggressive(
    ram: Sequence[tuple[int, ...]],
    sizes: Mapping[int, int],
    budget: int,
    initial: Collection[int],
    lookahead_tests: int,
    lookahead_bytes: int,
) -> tuple[list[tuple[int, _Demand]], list[int]]:
    """Next-use eviction with aggressive prefetching (Cao, Felten, Karlin, Li 1995).

    Before each test: first the loads it cannot start without (victims by next use, as
    Belady); then, while the lookahead allows, the partition next needed (within
    ``lookahead_tests`` tests) that is not resident is loaded now, into free room or in place
    of the resident partition whose next use is farthest, but only if that use comes after the
    loaded partition's (so nothing needed sooner is pushed out). More loads than Belady's in a
    cycle, but each is issued while the partitions it replaces are idle, not at the test that
    needs it. Returns ``(issue step, load)`` pairs and the initial partitions evicted at once.
    """
    n = len(ram)
    uses: dict[int, list[int]] = defaultdict(list)
    for i, parts in enumerate(ram):
        for p in parts:
            uses[p].append(i)

    def next_use(p: int, i: int) -> int:
        found = uses.get(p, [])
        at = bisect.bisect_left(found, i)
        return found[at] if at < len(found) else n

    resident: dict[int, None] = {}
    used = 0
    trimmed: list[int] = []
    for p in sorted(initial, key=lambda p: (next_use(p, 0), p)):
        if used + sizes[p] <= budget:
            resident[p] = None
            used += sizes[p]
        else:
            trimmed.append(p)
    ahead: dict[int, int] = {}  # partition loaded ahead → the test it is for
    issued: list[tuple[int, _Demand]] = []

    def make_room(size: int, i: int, keep: Collection[int], before: int) -> list[int] | None:
        """Victims (farthest next use, used after ``before``) freeing ``size`` bytes."""
        nonlocal used
        free, victims = budget - used, []
        order = sorted(
            (v for v in resident if v not in keep),
            key=lambda v: (-next_use(v, i), -sizes[v], v),
        )
        for v in order:
            if free >= size:
                break
            if next_use(v, i) <= before:
                return None
            victims.append(v)
            free += sizes[v]
        return victims if free >= size else None

    for i, parts in enumerate(ram):
        for p in [p for p, due in ahead.items() if due <= i]:
            del ahead[p]
        current = set(parts)
        for p in parts:  # the loads this test waits for
            if p in resident:
                continue
            victims = make_room(sizes[p], i, current, i) or []
            for v in victims:
                del resident[v]
                used -= sizes[v]
                ahead.pop(v, None)
            resident[p] = None
            used += sizes[p]
            issued.append((i, _Demand(p, i, tuple(victims), -1)))
        while True:  # prefetch the next partition needed, while it pays
            window = range(i + 1, min(n, i + 1 + lookahead_tests))
            wanted = [
                (t, q) for t in window for q in ram[t] if q not in resident and q not in current
            ]
            if not wanted:
                break
            due, q = min(wanted)
            if sum(sizes[a] for a in ahead) + sizes[q] > lookahead_bytes:
                break
            victims_q = make_room(sizes[q], i, current | set(ahead), due)
            if victims_q is None:
                break
            for v in victims_q:
                del resident[v]
                used -= sizes[v]
            resident[q] = None
            used += sizes[q]
            ahead[q] = due
            issued.append((i, _Demand(q, due, tuple(victims_q), -1)))
    return issued, trimmed


def schedule(
    requests: Sequence[Request],
    sizes: Mapping[int, int],
    budget: int,
    *,
    policy: str = "belady",
    lookahead_tests: int = DEFAULT_LOOKAHEAD_TESTS,
    lookahead_bytes: int | None = None,
    present: Mapping[int, str] | None = None,
    peers: Mapping[int, str] | None = None,
    agent: str = "",
) -> Schedule:
    """One agent's schedule for the partitions of ``requests`` (all of them are this agent's).

    :param sizes: bytes of each partition (every requested partition must have one).
    :param budget: bytes of RAM the agent may fill with partitions.
    :param policy: ``"belady"`` (next use) or ``"lru"``.
    :param lookahead_tests: how many tests ahead a load may be issued (0: never ahead).
    :param lookahead_bytes: bytes that may be loaded ahead of their use at any time (None: the
        budget).
    :param present: where partitions are on this agent: ``"ram"`` (resident at the start),
        ``"disk"`` or ``"store"``; absent means only the shared store may have it.
    :param peers: partitions another agent holds in RAM, and that agent's name: a first load
        of such a partition not on this agent's disk is a MIGRATE from it.
    :raises ValueError: an unknown policy or tier, a negative budget, bound or size, a
        requested partition without a size.
    """
    lookahead_bytes = budget if lookahead_bytes is None else lookahead_bytes
    present = present or {}
    peers = peers or {}
    _check(requests, sizes, policy, budget, lookahead_tests, lookahead_bytes, present)
    ram, direct = ram_sets([r.partitions for r in requests], sizes, budget)
    initial = sorted(p for p, tier in present.items() if tier == "ram" and p in sizes)
    if policy in PREFETCHING_POLICIES:
        issued, trimmed = _aggressive(ram, sizes, budget, initial, lookahead_tests, lookahead_bytes)
    else:
        demand, trimmed, after = _demand(ram, sizes, budget, policy, initial)
        issued = _hoist(demand, trimmed, after, sizes, budget, lookahead_tests, lookahead_bytes)

    on_disk = {p for p, tier in present.items() if tier in ("ram", "disk")}
    evict: list[list[int]] = [[] for _ in requests]
    load: list[list[Load]] = [[] for _ in requests]
    if requests:
        evict[0].extend(trimmed)
    for issue, d in sorted(issued, key=lambda item: (item[0], item[1].due, item[1].partition)):
        p = d.partition
        source: Source = "disk" if p in on_disk else "migrate" if p in peers else "store"
        peer = peers[p] if source == "migrate" else None
        on_disk.add(p)  # the agent writes what it loads through to its disk tier
        evict[issue].extend(d.victims)
        load[issue].append(Load(p, issue, d.due, source, sizes[p], peer))
    steps, stats = _replay(ram, direct, evict, load, sizes, budget, initial)
    return Schedule(agent, budget, policy, lookahead_tests, lookahead_bytes, steps, stats)


def _check(
    requests: Sequence[Request],
    sizes: Mapping[int, int],
    policy: str,
    budget: int,
    lookahead_tests: int,
    lookahead_bytes: int,
    present: Mapping[int, str],
) -> None:
    if policy not in POLICIES + PREFETCHING_POLICIES:
        known = ", ".join(POLICIES + PREFETCHING_POLICIES)
        raise ValueError(f"policy must be one of {known}, got {policy!r}")
    for name, value in (
        ("budget", budget),
        ("lookahead_tests", lookahead_tests),
        ("lookahead_bytes", lookahead_bytes),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for p, size in sizes.items():
        if size < 0:
            raise ValueError(f"partition {p} has a negative size: {size}")
    for r in requests:
        for p in r.partitions:
            if p not in sizes:
                raise ValueError(f"partition {p}, needed by {r.test}, has no size")
    for p, tier in present.items():
        if tier not in TIERS:
            raise ValueError(f"partition {p} is in tier {tier!r}, not one of {', '.join(TIERS)}")


def _replay(
    ram: Sequence[tuple[int, ...]],
    direct: Sequence[tuple[int, ...]],
    evict: Sequence[Sequence[int]],
    load: Sequence[Sequence[Load]],
    sizes: Mapping[int, int],
    budget: int,
    initial: Collection[int],
) -> tuple[tuple[Step, ...], Stats]:
    """Carry out the actions step by step: the steps, and the measures taken on them.

    Checks what the schedule promises (an error here is a bug in this module): a partition
    is evicted only when resident and loaded only when not, the RAM never exceeds the budget,
    every partition of a test's RAM set is resident when it starts.
    """
    resident = set(initial)
    used = sum(sizes[p] for p in resident)
    ahead: dict[int, Load] = {}  # loaded, not used yet
    counts = dict.fromkeys((f.name for f in fields(Stats)), 0)
    steps: list[Step] = []
    for i, parts in enumerate(ram):
        for v in evict[i]:
            if v not in resident:
                raise RuntimeError(f"engine bug: evicting {v}, which is not resident")
            resident.remove(v)
            used -= sizes[v]
            ahead.pop(v, None)
            counts["evictions"] += 1
        for ld in load[i]:
            if ld.partition in resident:
                raise RuntimeError(f"engine bug: loading {ld.partition}, which is resident")
            resident.add(ld.partition)
            used += ld.nbytes
            ahead[ld.partition] = ld
            counts["bytes_loaded"] += ld.nbytes
            if ld.prefetch:
                counts["bytes_prefetched"] += ld.nbytes
        if used > budget:
            raise RuntimeError(f"engine bug: {used} bytes in RAM at test {i}, budget {budget}")
        for p in parts:
            if p not in resident:
                raise RuntimeError(f"engine bug: partition {p} not in RAM for test {i}")
            loaded = ahead.pop(p, None)
            if loaded is None:
                counts["hits"] += 1
            else:
                counts["misses"] += 1
                if loaded.prefetch:
                    counts["prefetched"] += 1
                    counts["bytes_prefetch_used"] += loaded.nbytes
        counts["direct"] += len(direct[i])
        counts["bytes_direct"] += sum(sizes[p] for p in direct[i])
        counts["uses"] += len(parts) + len(direct[i])
        counts["peak_bytes"] = max(counts["peak_bytes"], used)
        steps.append(
            Step(
                i, parts, direct[i], tuple(evict[i]), tuple(load[i]), tuple(sorted(resident)), used
            )
        )
    return tuple(steps), Stats(**counts)


def simulate(
    stream: Sequence[Request],
    sizes: Mapping[int, int],
    budget: int,
    policy: str = "belady",
    *,
    lookahead_tests: int = DEFAULT_LOOKAHEAD_TESTS,
    lookahead_bytes: int | None = None,
) -> Stats:
    """The measures of :func:`schedule` for one agent holding every partition of ``stream``."""
    return schedule(
        stream,
        sizes,
        budget,
        policy=policy,
        lookahead_tests=lookahead_tests,
        lookahead_bytes=lookahead_bytes,
    ).stats


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Where each partition lives for the run, and each agent's schedule."""

    tests: tuple[str, ...]
    client_host: str
    assignment: Mapping[int, str]  # partition -> agent name
    schedules: Mapping[str, Schedule]  # agent name -> its schedule (every agent, by name)

    @property
    def stats(self) -> Stats:
        total = Stats()
        for s in self.schedules.values():
            total = total + s.stats
        return total

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, what ``--sm-plan PATH`` writes (keys are strings; partition ids
        appear as numbers in the schedules and as strings in ``assignment``)."""
        return {
            "format": PLAN_FORMAT,
            "client_host": self.client_host,
            "tests": list(self.tests),
            "assignment": {str(p): a for p, a in sorted(self.assignment.items())},
            "agents": {name: s.to_json() for name, s in sorted(self.schedules.items())},
            "stats": self.stats.to_json(),
        }


def plan(
    requests: Sequence[Request],
    sizes: Mapping[int, int],
    agents: Sequence[AgentInfo],
    client_host: str,
    *,
    policy: str = "belady",
    lookahead_tests: int = DEFAULT_LOOKAHEAD_TESTS,
    lookahead_bytes: int | None = None,
    locations: Mapping[int, Mapping[str, str]] | None = None,
    select: SelectNode | None = None,
) -> Plan:
    """Assign every requested partition to an agent, then schedule each agent.

    Partitions are assigned in the order of their first use (ties: lowest id) with
    :func:`choose_agent`, which sees where each agent has the partition (``locations``);
    after each choice, unless the chosen agent holds the partition in RAM (its reported free
    RAM already counts it), its free RAM shrinks by the partition's size and its queued bytes
    grow by it, so that later choices see it. Each agent is then scheduled with its ``ram_budget``
    over the whole stream (its own partitions only: the lookahead counts every test).

    :param locations: partition -> agent name -> tier where that agent has it.
    :param lookahead_bytes: per agent (None: each agent's budget).
    """
    locations = locations or {}
    for r in requests:
        for p in r.partitions:
            if p not in sizes:
                raise ValueError(f"partition {p}, needed by {r.test}, has no size")
    first: dict[int, int] = {}
    for i, r in enumerate(requests):
        for p in r.partitions:
            first.setdefault(p, i)
    infos = {a.name: a for a in agents}
    if not infos and first:
        raise ValueError("no agents to plan for")
    if len(infos) != len(agents):
        raise ValueError(f"agent names must be unique, got {sorted(a.name for a in agents)}")
    assignment: dict[int, str] = {}
    for p in sorted(first, key=lambda p: (first[p], p)):
        where = locations.get(p, {})
        chosen = choose_agent(
            list(infos.values()), sizes[p], client_host, select, partition=p, held=where
        )
        if where.get(chosen.name) != "ram":
            infos[chosen.name] = replace(
                chosen,
                ram_free=max(0, chosen.ram_free - sizes[p]),
                queued_bytes=chosen.queued_bytes + sizes[p],
            )
        assignment[p] = chosen.name
    schedules: dict[str, Schedule] = {}
    for a in sorted(agents, key=lambda a: a.name):
        mine = [
            Request(r.test, tuple(p for p in r.partitions if assignment[p] == a.name))
            for r in requests
        ]
        present: dict[int, str] = {}
        peers: dict[int, str] = {}
        for p, where in locations.items():
            if assignment.get(p) != a.name:
                continue
            if a.name in where:
                present[p] = where[a.name]
            holders = sorted(n for n, tier in where.items() if tier == "ram" and n != a.name)
            if holders:
                peers[p] = holders[0]
        schedules[a.name] = schedule(
            mine,
            sizes,
            a.ram_budget,
            policy=policy,
            lookahead_tests=lookahead_tests,
            lookahead_bytes=lookahead_bytes,
            present=present,
            peers=peers,
            agent=a.name,
        )
    return Plan(tuple(r.test for r in requests), client_host, assignment, schedules)


# --------------------------------------------------------------------------- reading a plan


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_plan(data: Mapping[str, Any], *, actions: bool = True) -> list[str]:
    """Readable lines for a plan written by ``--sm-plan`` (:meth:`Plan.to_json`): a summary
    per agent, then, with ``actions``, what each agent does before each test."""
    tests: list[str] = data["tests"]
    lines = [f"{len(tests)} tests, client host {data['client_host']}"]
    for name, agent in data["agents"].items():
        st = agent["stats"]
        count = sum(1 for a in data["assignment"].values() if a == name)
        lines.append(
            f"agent {name}: {count} partitions, budget {_size(agent['budget'])}, peak "
            f"{_size(agent['peak_bytes'])}; {agent['policy']}, lookahead "
            f"{agent['lookahead_tests']} tests / {_size(agent['lookahead_bytes'])}; hits "
            f"{st['hit_rate']:.0%}, ready {st['ready_rate']:.0%}, prefetch used "
            f"{st['prefetch_use']:.0%}, {_size(st['bytes_loaded'])} loaded"
        )
        if not actions:
            continue
        for step in agent["steps"]:
            parts = []
            if step["evict"]:
                parts.append("evict " + ", ".join(map(str, step["evict"])))
            for ld in step["load"]:
                when = "now" if ld["for"] == step["test"] else f"for test {ld['for']}"
                via = f"{ld['source']} {ld['peer']}" if "peer" in ld else ld["source"]
                parts.append(f"load {ld['partition']} ({_size(ld['bytes'])}, {via}, {when})")
            if step["direct"]:
                parts.append("direct " + ", ".join(map(str, step["direct"])))
            lines.append(f"  before {step['test']} {tests[step['test']]}: " + "; ".join(parts))
    return lines
