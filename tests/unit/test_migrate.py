"""The executor's pure parts: what the ESG predicts, and which keys a plan sends when."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_statemigrate import engine
from pytest_statemigrate.agents.link import AgentLink
from pytest_statemigrate.esg import ESGStore, Prediction
from pytest_statemigrate.migrate import (
    HOME,
    Migrator,
    _due,
    _next_use,
    holders,
    migration_source,
    partition_locations,
)
from pytest_statemigrate.placement import Location
from pytest_statemigrate.proxy import StateProxy
from pytest_statemigrate.report import RunStats
from tests.unit.test_esg import rec


def test_prediction_takes_each_tests_latest_footprint(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(rec("s1", 1.0, {"t1": "ab", "t2": "c"}))
        store.add_session(rec("s2", 2.0, {"t1": "bd"}))  # t1 changed; t2 did not run
        store.save_partitions(store.generation(), {0: ["a", "b"], 1: ["c", "d"]})
        got = store.prediction()
    assert got.footprints == {"t1": ("b", "d"), "t2": ("c",)}
    assert got.latest["c.py::d"] == "d"
    assert got.partition_of == {"a": 0, "b": 0, "c": 1, "d": 1}
    assert got.members == {0: ("a", "b"), 1: ("c", "d")}
    assert got.nbytes == {"a": 100, "b": 200, "c": 300, "d": 400}


def test_next_use_and_due() -> None:
    uses = {"a": [0, 5, 9]}
    assert [_next_use(uses, "a", s) for s in (0, 1, 5, 6, 10)] == [0, 5, 5, 9, 10]
    assert _next_use(uses, "b", 3) == 3
    assert _due([("a", 2), ("b", 7), ("a", 9), ("c", 1)], 2) == ["a", "b"]


def _migrator(prediction: Prediction) -> Migrator:
    stats = RunStats()
    link = AgentLink(lambda: "ipc:///nowhere", 1.0)
    link.down = "not used: planning only"
    proxy = StateProxy(
        link=link,
        secret=lambda: b"s",
        rootdir=Path("."),
        stats=stats,
        refresh=False,
        max_value_bytes=2**30,
        lease_seconds=1.0,
    )
    return Migrator(proxy, prediction, ready=lambda: True, lookahead_tests=4)


def test_plan_moves_only_live_keys_each_due_at_its_first_use() -> None:
    prediction = Prediction(
        footprints={},
        latest={},
        partition_of={"old": 0, "a": 0, "b": 0, "c": 1},
        sizes={0: 10_000, 1: 300},  # the ESG's size of 0 counts the old key too
        members={0: ("a", "b", "old"), 1: ("c",)},
        nbytes={"old": 9_000, "a": 500, "b": 500, "c": 300},
    )
    migrator = _migrator(prediction)
    tests = [("t0", ["c"]), ("t1", ["a"]), ("t2", []), ("t3", ["b", "c"])]
    agent = engine.AgentInfo("embedded", "h", ram_budget=2_000, ram_free=2_000)
    plan = migrator.make_plan(
        tests, agent, "h", policy="belady", lookahead_bytes=None, select=None, on_disk=True
    )
    assert migrator.members == {0: ("a", "b"), 1: ("c",)}
    sched = plan.schedules["embedded"]
    assert sched.stats.peak_bytes == 1_300  # without the old key's 9,000 bytes
    assert all(set(by) == {HOME} for by in migrator._steps.values())  # one agent: by key
    sent = [(k, due) for by in migrator._steps.values() for k, due in by[HOME].prefetch]
    assert sorted(sent) == [("a", 1), ("b", 3), ("c", 0)]


def test_a_hook_naming_no_agent_is_one_line_and_the_engine_chooses() -> None:
    prediction = Prediction({}, {}, {"a": 0}, {0: 1}, {0: ("a",)}, {"a": 1})
    migrator = _migrator(prediction)
    agent = engine.AgentInfo("embedded", "h", ram_budget=10, ram_free=10)

    def override(**_: object) -> str:
        return "nowhere"

    plan = migrator.make_plan(
        [("t", ["a"])],
        agent,
        "h",
        policy="lru",
        lookahead_bytes=None,
        select=override,
        on_disk=True,
    )
    assert plan.assignment == {0: "embedded"}
    (message,) = migrator.proxy.stats.fallbacks
    assert "chose 'nowhere'" in message and "the engine chose instead" in message


@pytest.mark.parametrize("on_disk, source", [(True, "disk"), (False, "store")])
def test_loads_come_from_where_the_agent_keeps_values(on_disk: bool, source: str) -> None:
    prediction = Prediction({}, {}, {"a": 0}, {0: 1}, {0: ("a",)}, {"a": 1})
    migrator = _migrator(prediction)
    agent = engine.AgentInfo("x", "h", ram_budget=10, ram_free=10)
    plan = migrator.make_plan(
        [("t", ["a"])],
        agent,
        "h",
        policy="belady",
        lookahead_bytes=None,
        select=None,
        on_disk=on_disk,
    )
    (load,) = plan.schedules["x"].loads()
    assert load.source == source


# -- several agents: where the directories know copies to be, and where actions go


def test_holders_keep_the_newest_version_and_each_agents_fastest_tier() -> None:
    located = {
        "k": [
            Location("a", "disk", 2),
            Location("a", "ram", 2),
            Location("b", "ram", 1),  # older: never read, so no copy to plan with
            Location("c", "store", 2),
        ],
        "j": [],
    }
    assert holders(located) == {"k": {"a": "ram", "c": "store"}}


def test_partition_locations_need_every_live_element() -> None:
    where = {"x": {"a": "ram", "b": "disk"}, "y": {"a": "disk"}, "z": {"b": "ram"}}
    members = {0: ("x", "y"), 1: ("z",), 2: ("x", "z"), 3: ()}
    assert partition_locations(members, where) == {
        0: {"a": "disk"},  # the slowest of its elements' tiers
        1: {"b": "ram"},
        2: {"b": "disk"},  # a holds x only: it would have to load z anyway
    }


def test_migration_source_is_a_ram_holder_unless_the_target_has_a_copy() -> None:
    assert migration_source({"b": "ram", "a": "ram", "c": "disk"}, "x") == "a"
    assert migration_source({"b": "ram"}, "b") is None  # resident there already
    assert migration_source({"b": "ram", "x": "disk"}, "x") is None  # reads its own disk
    assert migration_source({"b": "disk"}, "x") is None  # no RAM copy: PREFETCH
    assert migration_source({}, "x") is None


def test_several_agents_each_step_goes_to_the_agent_the_plan_names() -> None:
    """Values one agent holds in RAM stay there; the override moves one partition to
    another agent, which then copies the value from the holder's RAM (MIGRATE)."""
    prediction = Prediction(
        {},
        {},
        {"a": 0, "b": 1, "c": 2},
        {},
        {0: ("a",), 1: ("b",), 2: ("c",)},
        {"a": 100, "b": 100, "c": 100},
    )
    tests = [("t0", ["a"]), ("t1", ["b"]), ("t2", ["c"])]
    agents = [engine.AgentInfo(n, "h", ram_budget=1_000, ram_free=1_000) for n in ("x", "y")]
    located = {"a": {"y": "ram"}, "c": {"y": "ram"}}  # y holds a and c in RAM

    def c_on_x(*, partition: int | None, **_: object) -> str | None:
        return "x" if partition == 2 else None

    migrator = _migrator(prediction)
    plan = migrator.make_plan(
        tests,
        agents,
        "h",
        policy="belady",
        lookahead_bytes=None,
        select=c_on_x,
        on_disk=True,
        located=located,
    )
    assert plan.assignment == {0: "y", 1: "x", 2: "x"}
    # y holds a in RAM: nothing to do there; every action goes to x
    assert all(set(by) == {"x"} for by in migrator._steps.values())
    loads = [by["x"] for by in migrator._steps.values()]
    assert sorted(k for a in loads for k in a.prefetch) == [("b", 1)]  # from x's own tiers
    assert [a.migrate for a in loads if a.migrate] == [{"y": [("c", 2)]}]  # from y's RAM
