"""Predictive migration over three real agents (``--sm-agent a,b,c``): the plan places each
partition on the agent node selection picks, the prefetch lands there, the directories learn
it and the tests read it from that agent's RAM; a value another agent holds in RAM is copied
from it (MIGRATE). Every run's outcomes equal a plain run's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from nodeagent.client import AgentClient
from nodeagent.launcher import AgentProcess, start_agent
from nodeagent.placement import HashRing
from pytest_statemigrate.esg import ESGStore
from tests.conftest import Suite
from tests.plugin.test_prefetch import CONFTEST, MODULES

pytestmark = pytest.mark.timeout(300)

INI = """[pytest]
filterwarnings = error
statemigrate_timeout = 2
statemigrate_fixtures =
    table_*
    shared
statemigrate_partition_bytes = 1K
"""

# The hook the MIGRATE case uses to put every partition on one agent (optional: the conftest
# also runs without the plugin).
CHOOSE = """
import os

@pytest.hookimpl(optionalhook=True)
def pytest_statemigrate_select_node(partition, partition_bytes, agents, client_host):
    return os.environ.get("SM_TARGET")
"""


@pytest.fixture
def project(suite: Suite) -> Suite:
    suite.pytester.makeini(INI)
    suite.pytester.makeconftest(CONFTEST + CHOOSE)
    suite.pytester.makepyfile(**MODULES)
    return suite


def _three(tmp: Path, stack: ExitStack, **kwargs: Any) -> list[AgentProcess]:
    """Three agents, each with its own disk tier (kept across restarts) and log."""
    return [
        stack.enter_context(
            start_agent(
                disk_dir=str(tmp / f"disk{i}"), log_file=str(tmp / f"agent{i}.log"), **kwargs
            )
        )
        for i in range(3)
    ]


def _flag(agents: list[AgentProcess]) -> str:
    return ",".join(a.endpoint for a in agents)


def _stats(endpoint: str) -> dict[str, Any]:
    with AgentClient(endpoint, timeout=10) as c:
        return c.stats()


def _locate(endpoint: str, keys: list[str]) -> dict[str, list[list[Any]]]:
    with AgentClient(endpoint, timeout=10) as c:
        return c.locate(keys)


def _members(suite: Suite) -> dict[int, tuple[str, ...]]:
    with ESGStore(suite.pytester.path / ".statemigrate" / "esg.sqlite") as store:
        return store.prediction().members


def _plan(suite: Suite) -> dict[str, Any]:
    data = json.loads((suite.pytester.path / "plan.json").read_text())
    assert isinstance(data, dict)
    return data


def _ram_hits(stats: dict[str, Any] | None, total: int) -> None:
    """Every value was a hit, none was built, and most came from some agent's RAM (the first
    test's loads may still be under way when it starts: then it reads through the home, from
    its disk or, when the home holds no copy, from the shared store: seen under load)."""
    assert stats is not None
    hits = stats["hits"]
    assert sum(hits.values()) == total and set(hits) <= {"ram", "disk", "store"}, hits
    assert hits.get("ram", 0) >= total // 2, hits
    assert stats["builds"] == 0


@pytest.fixture
def filled(project: Suite, tmp_path: Path) -> Iterator[Path]:
    """A shared store and the agents' disk tiers filled by a cold run over three agents
    (which also partitioned the ESG); the agents are stopped again."""
    with ExitStack() as stack:
        agents = _three(tmp_path, stack, store=str(tmp_path / "store"))
        cold = project.same_as_plain("--sm-agent", _flag(agents))
    assert cold.stats is not None and cold.stats["builds"] == 4
    assert not cold.stats["fallbacks"], cold.text
    yield tmp_path


def test_prefetches_land_on_the_agents_the_plan_chose(project: Suite, filled: Path) -> None:
    with ExitStack() as stack:  # fresh agents: empty RAM, empty directories
        agents = _three(filled, stack, store=str(filled / "store"))
        endpoints = [a.endpoint for a in agents]
        run = project.same_as_plain("--sm-agent", _flag(agents), "--sm-plan=plan.json")
        assert run.stats is not None and not run.stats["fallbacks"], run.text
        _ram_hits(run.stats, 4)
        plan = _plan(project)
        assert set(plan["agents"]) == set(endpoints)  # every agent was planned with
        assignment = {int(p): a for p, a in plan["assignment"].items()}
        assert len(set(assignment.values())) >= 2  # node selection spread the partitions
        members = _members(project)
        placed = {
            key: assignment[p] for p, keys in members.items() if p in assignment for key in keys
        }
        assert len(placed) == 4
        ring = HashRing(endpoints)
        # Each value was loaded into the RAM of the agent the plan named (not necessarily its
        # home), that agent told the key's directory, and the tests read that copy.
        for key, agent in placed.items():
            located = _locate(ring.home(key), [key])[key]
            assert any(holder == agent and tier == "ram" for holder, tier, _ in located), (
                key,
                agent,
                located,
            )
        per_agent = {e: _stats(e)["prefetch"] for e in endpoints}
        for endpoint, counters in per_agent.items():
            mine = sum(1 for a in placed.values() if a == endpoint)
            assert counters["loads"] == mine, (endpoint, counters, mine)
        loaded = sum(c["bytes"] for c in per_agent.values())
        used = sum(c["used_bytes"] for c in per_agent.values())
        # Read from the RAM they went to (all of them, unless the first test started before
        # its values' loads were announced: it then read them at their homes).
        assert loaded >= used > 0
        assert run.stats["prefetched"] == 4
        assert run.stats["prefetch_bytes"] == loaded
        assert run.stats["prefetch_used_bytes"] == used


def test_migrate_copies_a_value_from_the_agent_holding_it_in_ram(
    project: Suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shared store: after a cold run each value is in its home's RAM. The hook puts
    every partition on one agent B: B copies the values it lacks from their holders' RAM."""
    with ExitStack() as stack:
        agents = _three(tmp_path, stack)
        endpoints = [a.endpoint for a in agents]
        cold = project.same_as_plain("--sm-agent", _flag(agents))
        assert cold.stats is not None and cold.stats["builds"] == 4
        held = {e: int(_stats(e)["tiers"]["ram"]["entries"]) for e in endpoints}
        assert sum(held.values()) == 4
        target = min(endpoints, key=lambda e: (held[e], e))
        moved = 4 - held[target]
        assert moved >= 1
        before = {e: _stats(e) for e in endpoints}
        monkeypatch.setenv("SM_TARGET", target)
        run = project.same_as_plain("--sm-agent", _flag(agents), "--sm-plan=plan.json")
        assert run.stats is not None and not run.stats["fallbacks"], run.text
        assert set(_plan(project)["assignment"].values()) == {target}
        hits = run.stats["hits"]
        assert hits == {"ram": 4} and run.stats["builds"] == 0  # every value was in some RAM
        after = {e: _stats(e) for e in endpoints}
        # B copied exactly the values it lacked, from peers (the "migrate" bandwidth), and
        # now holds all four in RAM; the holders still hold theirs (copy, not move).
        loads = after[target]["prefetch"]["loads"] - before[target]["prefetch"]["loads"]
        assert loads == moved
        assert "migrate" in after[target]["read_bandwidth"]
        assert after[target]["tiers"]["ram"]["entries"] == 4
        for e in endpoints:
            if e != target:
                assert after[e]["prefetch"]["loads"] == before[e]["prefetch"]["loads"]
                assert after[e]["tiers"]["ram"]["entries"] == held[e]
        ring = HashRing(endpoints)
        for key in [k for keys in _members(project).values() for k in keys]:
            located = _locate(ring.home(key), [key]).get(key, [])
            assert [target, "ram"] in [loc[:2] for loc in located], (key, located)


def test_an_agent_down_at_plan_time_is_left_out(project: Suite, filled: Path) -> None:
    with ExitStack() as stack:
        agents = _three(filled, stack, store=str(filled / "store"))[:2]
        dead = f"ipc://{filled}/nobody.sock"  # never started
        flag = f"{_flag(agents)},{dead}"
        run = project.same_as_plain("--sm-agent", flag, "--sm-plan=plan.json")
    assert run.stats is not None and run.stats["builds"] == 0
    assert set(_plan(project)["agents"]) == {a.endpoint for a in agents}
    down = [line for line in run.result.stdout.lines if " down (" in line]
    assert len(down) == 1 and dead in down[0], run.text
    assert sum(run.stats["hits"].values()) == 4


def test_xdist_with_three_agents_keeps_outcomes(project: Suite, filled: Path) -> None:
    with ExitStack() as stack:
        agents = _three(filled, stack, store=str(filled / "store"))
        run = project.same_as_plain("--sm-agent", _flag(agents), "-n", "2")
    assert run.stats is not None and run.stats["builds"] == 0
    assert run.stats["prefetched"] >= 4
    assert not run.stats["fallbacks"], run.text
