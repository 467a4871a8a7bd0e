"""The executor's pure parts: what the ESG predicts, and which keys a plan sends when."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_statemigrate import engine
from pytest_statemigrate.esg import ESGStore, Prediction
from pytest_statemigrate.migrate import Migrator, _due, _next_use
from pytest_statemigrate.proxy import AgentLink, StateProxy
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
        tests, agent, "h", policy="belady", lookahead_bytes=None, override=None, on_disk=True
    )
    assert migrator.members == {0: ("a", "b"), 1: ("c",)}
    sched = plan.schedules["embedded"]
    assert sched.stats.peak_bytes == 1_300  # without the old key's 9,000 bytes
    sent = [(k, due) for actions in migrator._steps.values() for k, due in actions.prefetch]
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
        override=override,
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
        override=None,
        on_disk=on_disk,
    )
    (load,) = plan.schedules["x"].loads()
    assert load.source == source
