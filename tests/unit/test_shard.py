"""The shard plan: deterministic, every test exactly once, balanced, little duplicated state."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_statemigrate import shard
from pytest_statemigrate.shard import Workload


def clustered(clusters: int = 12, tests_per: int = 20, seed: int = 7) -> tuple[list[str], Workload]:
    """Tests in clusters that share expensive elements, a few tests crossing clusters."""
    rng = random.Random(seed)
    tests: list[str] = []
    needs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    cost: dict[str, float] = {}
    for c in range(clusters):
        own = [f"c{c}e{i}" for i in range(3)]
        for key in own:
            cost[key] = rng.uniform(0.5, 3.0)
        for t in range(tests_per):
            test = f"tests/test_c{c}.py::test_{t}"
            tests.append(test)
            used = rng.sample(own, rng.randint(1, 3))
            if rng.random() < 0.05:
                used.append(f"c{rng.randrange(clusters)}e0")
            needs[test] = used
            seconds[test] = rng.uniform(0.01, 0.2)
    return tests, Workload(needs, seconds, cost)


def test_every_test_exactly_once_in_collection_order() -> None:
    tests, work = clustered()
    plan = shard.split(tests, work, 4)
    flat = [t for p in plan.parts for t in p.tests]
    assert sorted(flat) == sorted(tests)
    for part in plan.parts:
        assert list(part.tests) == [t for t in tests if t in set(part.tests)]


def test_same_inputs_same_plan_in_any_dict_order() -> None:
    tests, work = clustered()
    shuffled = Workload(
        dict(reversed(list(work.needs.items()))),
        dict(reversed(list(work.seconds.items()))),
        dict(reversed(list(work.cost.items()))),
    )
    assert shard.split(tests, work, 4) == shard.split(tests, shuffled, 4)
    assert shard.split(tests, work, 4).digest() == shard.split(tests, shuffled, 4).digest()


def test_collection_order_does_not_change_which_tests_go_together() -> None:
    tests, work = clustered()
    shuffled = list(tests)
    random.Random(3).shuffle(shuffled)
    a, b = shard.split(tests, work, 4), shard.split(shuffled, work, 4)
    assert [set(p.tests) for p in a.parts] == [set(p.tests) for p in b.parts]
    assert [list(p.tests) for p in b.parts] == [
        [t for t in shuffled if t in set(p.tests)] for p in b.parts
    ]


def test_balanced_and_far_less_state_than_a_duration_split() -> None:
    tests, work = clustered()
    plan = shard.split(tests, work, 4)
    assert plan.imbalance <= 1.15
    # A duration-only split (round robin by test, as a naive splitter does) pays nearly every
    # element in every shard.
    naive = [tests[i::4] for i in range(4)]
    naive_state = sum(
        sum(work.element_cost(k) for k in {k for t in part for k in work.needs[t]})
        for part in naive
    )
    assert plan.state_s <= 0.6 * naive_state
    total = sum(work.element_cost(k) for k in work.cost)
    assert plan.state_s <= 1.2 * total  # little duplicated


def test_one_big_group_of_equal_footprints_is_still_balanced() -> None:
    """Most tests of a real suite use no managed value (or the same one): one footprint must
    not be one indivisible block."""
    tests = [f"t.py::test_{i}" for i in range(400)]
    needs = {t: (() if i % 10 else ("db",)) for i, t in enumerate(tests)}
    work = Workload(needs, dict.fromkeys(tests, 0.01), {"db": 0.5})
    plan = shard.split(tests, work, 4)
    assert plan.imbalance <= 1.15, [p.seconds for p in plan.parts]
    assert sorted(t for p in plan.parts for t in p.tests) == sorted(tests)
    assert sum("db" in p.elements for p in plan.parts) <= 2  # its 40 tests mostly together


def test_unseen_tests_spread_by_a_stable_hash() -> None:
    tests, work = clustered(clusters=2, tests_per=4)
    new = [f"tests/test_new.py::test_{i}" for i in range(40)]
    plan = shard.split(tests + new, work, 3)
    for i, part in enumerate(plan.parts):
        for test in new:
            assert (test in part.tests) == (shard.stable_bucket(test, 3) == i)
    assert all(any(t in p.tests for t in new) for p in plan.parts)  # spread over all


def test_one_part_and_more_parts_than_tests() -> None:
    tests, work = clustered(clusters=1, tests_per=3)
    assert shard.split(tests, work, 1).parts[0].tests == tuple(tests)
    plan = shard.split(tests, work, 8)
    assert sorted(t for p in plan.parts for t in p.tests) == sorted(tests)
    assert len(plan.parts) == 8


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        shard.split(["a"], Workload({}, {}, {}), 0)
    with pytest.raises(ValueError, match="twice"):
        shard.split(["a", "a"], Workload({}, {}, {}), 2)


def test_worker_queues_keep_state_together_in_collection_order() -> None:
    tests, work = clustered()
    unseen = ["tests/test_x.py::a", "tests/test_x.py::b"]
    collection = [*tests, *unseen]
    queues = shard.worker_queues(collection, work, workers=2)
    assert len(queues) == 2
    assert sorted(i for q in queues for i in q) == list(range(len(collection)))
    assert all(q == sorted(q) for q in queues)  # each worker: collection order
    plan = shard.split(tests, work, 2)  # the shard plan, one part per worker
    assert [[collection[i] for i in q if i < len(tests)] for q in queues] == [
        list(p.tests) for p in plan.parts
    ]
    x = [q for q in queues if len(tests) in q]
    assert len(tests) + 1 in x[0]  # a module the ESG never saw stays whole


def test_worker_queues_balance_tests_with_no_measured_duration() -> None:
    """Cold, from the workers' closures: no test has a duration yet. Each weighs the median
    of those measured (1 ms when none is), so tests that use no managed value still spread
    over the workers instead of all weighing nothing and landing on one."""
    tests = [f"t{m}.py::t{i}" for m in range(4) for i in range(50)]
    cold = Workload(dict.fromkeys(tests, ()), {}, {})
    assert sorted(map(len, shard.worker_queues(tests, cold, workers=2))) == [100, 100]
    # Half measured at 0.1 s: the other half weighs as much, not nothing.
    half = Workload(cold.needs, dict.fromkeys(tests[:100], 0.1), {})
    assert sorted(map(len, shard.worker_queues(tests, half, workers=2))) == [100, 100]
    by_file = shard.worker_queues(tests, Workload({}, {}, {}), workers=3)  # no closures
    assert sorted(map(len, by_file)) == [50, 50, 100]


footprints = st.lists(
    st.lists(st.sampled_from([f"k{i}" for i in range(12)]), max_size=4), min_size=1, max_size=60
)


@settings(max_examples=60, deadline=None)
@given(
    footprints,
    st.lists(st.floats(0, 5), min_size=12, max_size=12),
    st.integers(1, 6),
    st.integers(0, 2**16),
)
def test_any_input_covers_every_test_once_deterministically(
    fps: list[list[str]], costs: list[float], n: int, seed: int
) -> None:
    rng = random.Random(seed)
    tests = [f"t.py::test_{i}" for i in range(len(fps))]
    needs = {t: fp for t, fp in zip(tests, fps, strict=True) if rng.random() < 0.9}
    seconds = {t: rng.uniform(0, 1) for t in tests}
    work = Workload(needs, seconds, {f"k{i}": c for i, c in enumerate(costs)})
    plan = shard.split(tests, work, n)
    assert len(plan.parts) == n
    assert sorted(t for p in plan.parts for t in p.tests) == sorted(tests)
    assert shard.split(tests, work, n) == plan
    # No part pays more than a part that ran everything would.
    everything = shard.split(tests, work, 1)
    assert plan.longest <= everything.longest + 1e-6


# --------------------------------------------------------------------------- the xdist scheduler


class Worker:
    """A stand-in for xdist's WorkerController: records what the scheduler asks of it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: list[int] = []
        self.ran: list[int] = []
        self.shutting_down = False
        self.steal: list[int] | None = None

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def send_steal(self, indices: list[int]) -> None:
        self.steal = list(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def answer_steal(self, sched: shard.AffinityScheduling, refuse: bool = False) -> None:
        """As xdist's worker: all the tests asked for, or none when one of them has started or
        is the next (the worker holds the test it runs and the one after it)."""
        assert self.steal is not None
        asked, self.steal = self.steal, None
        given = [] if refuse or not set(asked) <= set(self.queue[2:]) else asked
        self.queue = [i for i in self.queue if i not in given]
        sched.remove_pending_tests_from_node(self, given)

    def can_run(self) -> bool:
        """A worker runs a test only while it knows the next one (or is shutting down)."""
        return bool(self.queue) and (len(self.queue) >= 2 or self.shutting_down)

    def run_one(self, sched: shard.AffinityScheduling) -> None:
        test = self.queue.pop(0)
        self.ran.append(test)
        sched.mark_test_complete(self, test)


def start(sched: shard.AffinityScheduling, workers: list[Worker], collection: list[str]) -> None:
    for w in workers:
        sched.add_node(w)
    for w in workers:
        sched.add_node_collection(w, collection)
    sched.schedule()


def done(workers: list[Worker]) -> bool:
    return all(w.shutting_down and not w.queue and w.steal is None for w in workers)


def simulate(
    sched: shard.AffinityScheduling,
    workers: list[Worker],
    collection: list[str],
    seed: int,
    crashes: int = 0,
) -> list[Worker]:
    """Drive the scheduler as xdist's DSession would: workers finish tests and answer steals
    in random turns (some steals refused, as when the tests have started meanwhile); up to
    ``crashes`` times a worker dies in the middle of a test and a fresh one replaces it. Returns
    every worker that took part, the crashed ones included (their last test counted as run)."""
    rng = random.Random(seed)
    start(sched, workers, collection)
    everyone = list(workers)
    for _ in range(40 * len(collection) + 200):
        if done(workers):
            return everyone
        w = rng.choice(workers)
        if crashes and w.can_run() and rng.random() < 0.05:
            crashes -= 1
            w.ran.append(w.queue[0])  # it was running this one
            assert sched.remove_node(w) == collection[w.queue[0]]
            w.queue, w.steal, w.shutting_down = [], None, True
            workers.remove(w)
            fresh = Worker(f"gw{len(everyone)}")
            everyone.append(fresh)
            workers.append(fresh)
            sched.add_node(fresh)
            sched.add_node_collection(fresh, collection)
            sched.schedule()
        elif w.steal is not None:
            w.answer_steal(sched, refuse=rng.random() < 0.2)
        elif w.can_run():
            w.run_one(sched)
    raise AssertionError("the workers were never all shut down")


def assert_in_collection_order(workers: list[Worker], size: int) -> None:
    """Every test ran exactly once, and each worker ran its tests in collection order."""
    assert sorted(i for w in workers for i in w.ran) == list(range(size))
    for w in workers:
        assert w.ran == sorted(w.ran), (w.name, w.ran)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**16), st.integers(1, 40))
def test_scheduler_runs_every_test_once(nodes: int, seed: int, size: int) -> None:
    tests, work = clustered(clusters=4, tests_per=size, seed=seed)
    tests.append("tests/test_new.py::test_unseen")
    sched = shard.AffinityScheduling(nodes, lambda c, n: shard.worker_queues(c, work, n))
    workers = simulate(sched, [Worker(f"gw{i}") for i in range(nodes)], tests, seed)
    assert_in_collection_order(workers, len(tests))
    assert sched.tests_finished and not sched.has_pending


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(0, 2**32),
    st.integers(0, 3),
)
def test_no_worker_ever_runs_a_test_before_one_collected_earlier(
    size: int, nodes: int, queues: int, seed: int, crashes: int
) -> None:
    """Issue 18: whatever the plan (any tests in any queues, in any order, more or fewer
    queues than workers), wherever the steals and crashes fall, each worker runs a
    subsequence of the collection order, as with plain ``--dist load``: a test that mutates a
    value it shares with earlier tests (a session fixture, a module global) never runs before
    them on their worker."""
    rng = random.Random(seed)
    collection = [f"t{i % 5}.py::test_{i}" for i in range(size)]
    plan = [[] for _ in range(queues)]  # type: list[list[int]]
    for i in rng.sample(range(size), size):
        plan[rng.randrange(queues)].append(i)
    sched = shard.AffinityScheduling(nodes, lambda c, n: plan)
    workers = simulate(sched, [Worker(f"gw{i}") for i in range(nodes)], collection, seed, crashes)
    assert_in_collection_order(workers, size)
    assert sched.tests_finished and not sched.has_pending


def test_an_idle_worker_steals_no_test_collected_before_its_last() -> None:
    """Issue 18, the steal at the end: gw1 ran test 8; the tests gw0 still holds (0-7) were
    collected before it, so gw1 may not take them (the landed code stole 4-7 for gw1, to
    run after 8 and 9) and is shut down instead."""
    collection = [f"t.py::test_{i}" for i in range(10)]
    sched = shard.AffinityScheduling(2, lambda c, n: [list(range(8)), [8, 9]])
    a, b = Worker("gw0"), Worker("gw1")
    start(sched, [a, b], collection)
    assert (a.queue, b.queue) == (list(range(8)), [8, 9])
    b.run_one(sched)
    if a.steal is not None:
        a.answer_steal(sched)
    while runnable := [w for w in (b, a) if w.can_run()]:
        runnable[0].run_one(sched)
    assert b.ran == [8, 9] and a.ran == list(range(8))
    assert done([a, b]) and sched.tests_finished


def test_an_idle_worker_steals_the_tail_collected_after_its_last() -> None:
    collection = [f"t.py::test_{i}" for i in range(12)]
    sched = shard.AffinityScheduling(2, lambda c, n: [[0, 1], [2, *range(4, 12)], [3]])
    a, b = Worker("gw0"), Worker("gw1")
    start(sched, [a, b], collection)
    assert (a.queue, b.queue) == ([0, 1, 3], [2, *range(4, 12)])  # a third queue: merged
    a.run_one(sched)
    assert b.steal is None  # gw0 still holds two tests
    a.run_one(sched)  # frontier 3: half of gw1's tests, those after 3, from the end
    assert b.steal == [8, 9, 10, 11]
    b.answer_steal(sched)
    assert a.queue == [3, 8, 9, 10, 11] and b.queue == [2, 4, 5, 6, 7]


def test_steal_plan_takes_only_tests_after_the_thief_s_frontier() -> None:
    pending = {"gw0": [0, 1, 2, 3, 4, 5, 6, 7], "gw1": [10, 12, 14, 16]}
    assert shard.steal_plan(-1, pending) == ("gw0", [4, 5, 6, 7])  # the most: half of gw0's
    assert shard.steal_plan(5, pending) == ("gw0", [6, 7])  # a tie: the first
    assert shard.steal_plan(7, pending) == ("gw1", [14, 16])  # nothing after 7 on gw0
    assert shard.steal_plan(6, {"gw0": [0, 1, 2, 3, 4, 5, 6, 7]}) == ("gw0", [7])
    assert shard.steal_plan(15, pending) == ("gw1", [16])
    assert shard.steal_plan(16, pending) is None
    assert shard.steal_plan(-1, {"gw0": [0, 1]}) is None  # a worker keeps two
    assert shard.frontier(-1, []) == -1 and shard.frontier(4, [6, 9]) == 9
    assert shard.frontier(7, []) == 7
    assert shard.sendable(3, [5, 1, 4, 3]) == [4, 5]


def test_scheduler_sends_each_worker_its_queue() -> None:
    tests, work = clustered(clusters=6, tests_per=10)
    planned = shard.worker_queues(tests, work, 2)
    sched = shard.AffinityScheduling(2, lambda c, n: planned)
    a, b = Worker("gw0"), Worker("gw1")
    start(sched, [a, b], tests)
    assert a.queue == planned[0] and b.queue == planned[1]


def test_a_crashed_worker_s_tests_go_to_another() -> None:
    tests, _ = clustered(clusters=2, tests_per=5)
    sched = shard.AffinityScheduling(2, lambda c, n: [list(range(len(c)))])
    a, b = Worker("gw0"), Worker("gw1")
    start(sched, [a, b], tests)
    assert a.queue == list(range(len(tests))) and not b.queue
    assert a.steal is not None  # gw1 asks for the second half
    assert sched.remove_node(a) == tests[0]  # the test it was running crashed it
    assert b.queue == list(range(1, len(tests)))


def test_a_crashed_worker_s_earlier_tests_wait_for_its_replacement() -> None:
    collection = [f"t.py::test_{i}" for i in range(8)]
    sched = shard.AffinityScheduling(2, lambda c, n: [[0, 1, 2, 3], [4, 5, 6, 7]])
    a, b = Worker("gw0"), Worker("gw1")
    start(sched, [a, b], collection)
    assert sched.remove_node(a) == collection[0]
    assert b.queue == [4, 5, 6, 7] and sched.loose == [1, 2, 3]  # before gw1's frontier
    assert not sched.tests_finished
    fresh = Worker("gw2")  # xdist replaces a crashed worker
    sched.add_node(fresh)
    sched.add_node_collection(fresh, collection)
    sched.schedule()
    assert fresh.queue == [1, 2, 3] and not sched.loose


def test_different_collections_are_reported() -> None:
    reported: list[tuple[list[str], list[str]]] = []
    sched = shard.AffinityScheduling(
        2, lambda c, n: [[0]], report_diff=lambda x, y: reported.append((x, y))
    )
    a, b = Worker("gw0"), Worker("gw1")
    for w in a, b:
        sched.add_node(w)
    sched.add_node_collection(a, ["t1"])
    sched.add_node_collection(b, ["t2"])
    sched.schedule()
    assert reported == [(["t1"], ["t2"])]
    assert not a.queue and not b.queue


def test_values_an_agent_holds_are_charged_their_load() -> None:
    cost = {"a": 2.0, "b": 1.0, "c": 0.001, "d": 3.0}
    nbytes = {"a": 1000, "b": 4000, "c": 10_000, "d": 0}
    loads = {"a": 0.01, "c": 0.05}  # 10 µs/B and 5 µs/B: median 7.5 µs/B
    charged = shard.charge_loads(cost, nbytes, loads, ["a", "b", "c"])
    # a: its measured load; b: its size at the median rate; c: its build is cheaper
    assert charged == {"a": 0.01, "b": pytest.approx(0.03), "c": 0.001, "d": 3.0}
    assert shard.charge_loads(cost, nbytes, {}, ["d"])["d"] == 0.0  # no rate: a load is ~free


def test_units_balance_on_what_this_run_pays(tmp_path: Path) -> None:
    """Warm, a value that took 4 s to build loads in 0.01 s: a unit that uses it is no longer
    the longest, and the esg workload says so only when told what the agent holds."""
    from pytest_statemigrate.esg import ESGStore, SessionRecord

    record = SessionRecord("s", 1.0, "h")
    for i, key in enumerate(("big", "small")):
        record.element(key, "f", "session", 1000, build_s=4.0 if key == "big" else 1.0)
        record.element(key, "f", "session", 1000, load_s=0.01)
        for j in range(3):
            record.read(f"t{i}{j}", key)
            record.duration(f"t{i}{j}", 0.1)
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(record)
    tests = [f"t{i}{j}" for i in range(2) for j in range(3)]
    path = tmp_path / "esg.sqlite"
    cold = shard.esg_workload(path, 20)
    assert sorted(cold.needs) == tests
    assert cold.cost == {"big": 4.0, "small": 1.0}
    asked: list[list[str]] = []

    def stored(keys: list[str]) -> set[str]:
        asked.append(sorted(keys))
        return {"big"}

    warm = shard.esg_workload(path, 20, stored=stored)
    assert asked == [["big", "small"]]  # the keys of every known test
    assert warm.cost == {"big": 0.01, "small": 1.0}


# --------------------------------------------------------------------------- other splitters

GITLAB = shard.ShardSpec(0, 2, "CI_NODE_INDEX/CI_NODE_TOTAL")

#: config.option of a run with every splitter plugin installed and none of them splitting.
IDLE = {
    "splits": None,
    "group": None,
    "shard_id": 0,
    "num_shards": 1,
    "test-group-count": None,
    "test-group": None,
    "circleci_parallelize": False,
    "keyword": "",
    "markexpr": "",
    "deselect": None,
}


def _why(
    options: dict[str, object] | None = None,
    command_line: dict[str, object] | None = None,
    paths: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> str | None:
    return shard.not_sharding(
        GITLAB,
        {**IDLE, **(options or {})},
        {**IDLE, **(command_line or {})},
        paths,
        env or {},
        lambda path: path.endswith(".py"),
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"splits": 2, "group": 1}, "pytest-split's --splits/--group"),
        ({"num_shards": 3}, "pytest-shard's --shard-id/--num-shards"),
        ({"num_shards": 2, "shard_id": 1}, "pytest-shard's --shard-id/--num-shards"),
        (
            {"test-group-count": 2, "test-group": 2},
            "pytest-test-groups' --test-group-count/--test-group",
        ),
        ({"circleci_parallelize": True}, "pytest-circleci-parallelized's --circleci-parallelize"),
    ],
)
def test_each_splitter_plugin_is_named_by_its_options(
    options: dict[str, object], named: str
) -> None:
    why = _why(options)
    assert why == (
        f"statemigrate: not sharding (CI_NODE_INDEX/CI_NODE_TOTAL name shard 1/2): {named} "
        f"splits the tests already; to shard by state affinity instead, drop {named.split()[1]}"
    )
    error = shard.clash(GITLAB, {**IDLE, **options})
    assert error is not None and error.startswith(f"statemigrate: --sm-shard=1/2 and {named} ")


@pytest.mark.parametrize(
    "options",
    [
        {},  # installed, not splitting
        {"splits": 1, "group": 1},  # one group: everything
        {"splits": 2},  # no group: pytest-split stops the run itself
        {"test-group-count": 2},  # no group: pytest-test-groups does nothing
        {"num_shards": 1, "shard_id": 0},
    ],
)
def test_a_splitter_that_does_not_split_is_no_splitter(options: dict[str, object]) -> None:
    assert _why(options) is None
    assert shard.clash(GITLAB, {**IDLE, **options}) is None
    assert shard.splitter_of({}) is None  # none installed: no options at all


@pytest.mark.parametrize(
    ("command_line", "paths", "shown"),
    [
        ({"keyword": "slow"}, (), "-k outside the ini file"),
        ({"markexpr": "not gpu"}, (), "-m outside the ini file"),
        ({"deselect": ["t.py::test_a"]}, (), "--deselect outside the ini file"),
        ({"lf": True}, (), "--lf outside the ini file"),
        ({"stepwise": True}, (), "--sw outside the ini file"),
        ({}, ("tests", "t.py::test_a", "t.py::test_b"), "test ids (t.py::test_a, ...)"),
    ],
)
def test_a_selection_on_the_command_line_is_not_sharded(
    command_line: dict[str, object], paths: tuple[str, ...], shown: str
) -> None:
    why = _why(command_line=command_line, paths=paths)
    assert why is not None and shown in why and "pass --sm-shard=I/N" in why
    # The same options from the ini file's addopts (in options only) are the same everywhere.
    assert _why(options=command_line) is None


def test_circleci_splitting_is_file_arguments_under_circleci() -> None:
    circle = {"CIRCLECI": "true"}
    why = _why(paths=("tests/test_a.py", "tests/test_b.py"), env=circle)
    assert why is not None and "CircleCI's test splitting" in why
    assert _why(paths=("tests",), env=circle) is None  # the same directory on every node
    assert _why(paths=(), env=circle) is None  # testpaths from the ini file
    assert _why(paths=("tests/test_a.py",)) is None  # file arguments elsewhere: the same


def test_tally_names_what_is_missing_duplicated_or_unknown() -> None:
    full = ["a", "b", "c", "d"]
    assert shard.tally(full, [["a", "c"], ["d", "b"]]).ok
    result = shard.tally(full, [["a", "b"], ["b", "x"], []])
    assert not result.ok
    assert result.missing == ("c", "d")
    assert result.duplicated == (("b", (1, 2)),)
    assert result.unknown == ("x",)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 40), st.integers(1, 6), st.integers(0, 2**16))
def test_every_plan_tallies(size: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    tests = [f"t.py::test_{i}" for i in range(size)]
    needs = {t: [f"k{rng.randrange(5)}"] for t in tests if rng.random() < 0.7}
    plan = shard.split(tests, Workload(needs, {}, {f"k{i}": 1.0 for i in range(5)}), n)
    assert shard.tally(tests, [p.tests for p in plan.parts]).ok
