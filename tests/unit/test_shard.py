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


def test_units_more_than_workers_longest_first() -> None:
    tests, work = clustered()
    plan = shard.units([*tests, "tests/test_x.py::a", "tests/test_x.py::b"], work, workers=2)
    assert len(plan.parts) > 2
    seconds = [p.seconds for p in plan.parts]
    assert seconds == sorted(seconds, reverse=True)
    unseen = [p for p in plan.parts if "tests/test_x.py::a" in p.tests]
    assert unseen[0].tests == ("tests/test_x.py::a", "tests/test_x.py::b")  # one per module
    flat = [t for p in plan.parts for t in p.tests]
    assert sorted(flat) == sorted([*tests, "tests/test_x.py::a", "tests/test_x.py::b"])


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


def simulate(
    sched: shard.AffinityScheduling, workers: list[Worker], collection: list[str], seed: int
) -> None:
    """Drive the scheduler as xdist's DSession would, workers finishing tests in random turns.
    A worker runs a test only while it knows the next one (or is shutting down), as xdist's."""
    rng = random.Random(seed)
    for w in workers:
        sched.add_node(w)
    for w in workers:
        sched.add_node_collection(w, collection)
    sched.schedule()
    for _ in range(20 * len(collection) + 200):
        if all(w.shutting_down and not w.queue and w.steal is None for w in workers):
            return
        w = rng.choice(workers)
        if w.steal is not None:  # answer a steal: give back what has not started
            given = [i for i in w.steal if i in w.queue[1:]]
            w.queue = [i for i in w.queue if i not in given]
            w.steal = None
            sched.remove_pending_tests_from_node(w, given)
        elif w.queue and (len(w.queue) >= 2 or w.shutting_down):
            test = w.queue.pop(0)
            w.ran.append(test)
            sched.mark_test_complete(w, test)
    raise AssertionError("the workers were never all shut down")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**16), st.integers(1, 40))
def test_scheduler_runs_every_test_once(nodes: int, seed: int, size: int) -> None:
    tests, work = clustered(clusters=4, tests_per=size, seed=seed)
    tests.append("tests/test_new.py::test_unseen")
    sched = shard.AffinityScheduling(nodes, lambda c, n: shard.unit_indices(c, work, n))
    workers = [Worker(f"gw{i}") for i in range(nodes)]
    simulate(sched, workers, tests, seed)
    ran = sorted(i for w in workers for i in w.ran)
    assert ran == list(range(len(tests)))
    assert sched.tests_finished and not sched.has_pending


def test_scheduler_gives_whole_units_longest_first() -> None:
    tests, work = clustered(clusters=6, tests_per=10)
    planned = shard.unit_indices(tests, work, 2)
    sched = shard.AffinityScheduling(2, lambda c, n: planned)
    a, b = Worker("gw0"), Worker("gw1")
    for w in a, b:
        sched.add_node(w)
        sched.add_node_collection(w, tests)
    sched.schedule()
    assert a.queue == planned[0] and b.queue == planned[1]
    assert sched.unit_count == len(planned) > 2


def test_a_crashed_worker_s_tests_go_to_another() -> None:
    tests, _ = clustered(clusters=2, tests_per=5)
    sched = shard.AffinityScheduling(2, lambda c, n: [list(range(len(c)))])
    a, b = Worker("gw0"), Worker("gw1")
    for w in a, b:
        sched.add_node(w)
        sched.add_node_collection(w, tests)
    sched.schedule()
    assert a.queue == list(range(len(tests))) and not b.queue
    assert sched.remove_node(a) == tests[0]  # the test it was running crashed it
    assert b.queue == list(range(1, len(tests)))


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


def test_a_short_run_gets_two_units_per_worker() -> None:
    """Units shorter than UNIT_MIN_S would only pay their state twice: a warm run of a small
    suite (loads of hundredths of a second) gets two units per worker; a long one four each."""
    tests = [f"t{m}.py::t{i}" for m in range(4) for i in range(10)]
    needs = {t: (f"k{t[1]}",) for t in tests}
    warm = Workload(needs, dict.fromkeys(tests, 0.005), {f"k{m}": 0.02 for m in range(4)})
    assert len(shard.units(tests, warm, workers=2).parts) == 4
    cold = Workload(needs, dict.fromkeys(tests, 0.005), {f"k{m}": 3.0 for m in range(4)})
    assert len(shard.units(tests, cold, workers=2).parts) == 8


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
