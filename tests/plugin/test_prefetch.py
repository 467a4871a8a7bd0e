"""Predictive migration through real runs: the plan follows the run order, and what it
prefetches is served from the agent's RAM although the agent started with an empty RAM tier."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.launcher import AgentProcess, start_agent
from tests.conftest import Suite

pytestmark = pytest.mark.timeout(300)

# Three modules, each with its own module-scoped value (~20 KB each) and a session value the
# first two share; 1K partitions keep every element in a partition of its own or its pair.
INI = """[pytest]
filterwarnings = error
statemigrate_fixtures =
    table_*
    shared
statemigrate_partition_bytes = 1K
"""

CONFTEST = """
import time
import pytest

def _make(name):
    @pytest.fixture(scope="module", name=name)
    def fixture():
        time.sleep(0.08)  # well above a load's cost, even on a loaded machine
        return {"name": name, "rows": list(range(5000))}
    return fixture

table_a = _make("table_a")
table_b = _make("table_b")
table_c = _make("table_c")

@pytest.fixture(scope="session")
def shared():
    time.sleep(0.08)  # well above a load's cost, even on a loaded machine
    return bytes(30000)
"""

MODULES = {
    "test_a": "def test_a1(table_a, shared):\n    assert table_a['name'] == 'table_a'\n"
    "def test_a2(table_a):\n    assert len(table_a['rows']) == 5000\n",
    "test_b": "def test_b1(table_b, shared):\n    assert len(shared) == 30000\n"
    "def test_b2(table_b):\n    assert table_b['rows'][-1] == 4999\n",
    "test_c": "def test_c1(table_c):\n    assert table_c['name'] == 'table_c'\n"
    "def test_c2(table_c):\n    assert 'nope' == 'nope'\n",
}


@pytest.fixture
def project(suite: Suite) -> Suite:
    suite.pytester.makeini(INI)
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(**MODULES)
    return suite


@pytest.fixture
def disk(project: Suite) -> Iterator[Path]:
    """A disk tier filled by a first run (which also partitioned the ESG)."""
    path = project.pytester.path / "agent-disk"
    with start_agent(disk_dir=str(path)) as agent:
        first = project.same_as_plain("--sm-agent", agent.endpoint)
    assert first.stats is not None and first.stats["builds"] == 4
    yield path


def _fresh_agent(disk: Path) -> AgentProcess:
    """A new agent on the filled disk tier: its RAM tier is empty."""
    return start_agent(disk_dir=str(disk))


def _plan(suite: Suite) -> dict[str, object]:
    data = json.loads((suite.pytester.path / "plan.json").read_text())
    assert isinstance(data, dict)
    return data


def _order(run_outcomes: dict[str, str]) -> list[str]:
    return list(run_outcomes)


def _prefetched(stats: dict[str, object] | None, total: int) -> None:
    """Every value was a hit; each was in RAM, or loaded into RAM by a prefetch the test then
    waited for (the agent then names the tier the load read), and every prefetched byte was
    used. With prefetching off, the same fresh agent serves all from its disk tier."""
    assert stats is not None
    hits = stats["hits"]
    assert isinstance(hits, dict) and sum(hits.values()) == total and set(hits) <= {"ram", "disk"}
    assert hits.get("ram", 0) >= total // 2
    assert stats["builds"] == 0


def test_prefetched_hits_come_from_ram(project: Suite, disk: Path) -> None:
    with _fresh_agent(disk) as agent:
        run = project.same_as_plain("--sm-agent", agent.endpoint, "--sm-plan=plan.json")
    assert run.stats is not None
    _prefetched(run.stats, 4)
    assert run.stats["prefetched"] == 4
    assert run.stats["prefetch_used_bytes"] == run.stats["prefetch_bytes"] > 0
    run.result.stdout.fnmatch_lines(["prefetched 4 value(s) *100% of it used"])
    plan = _plan(project)
    assert plan["tests"] == _order(run.outcomes)
    # Without prefetching, the same fresh agent serves the same values from its disk tier.
    with _fresh_agent(disk) as agent:
        off = project.same_as_plain("--sm-agent", agent.endpoint, "--sm-prefetch=off")
    assert off.stats is not None and off.stats["hits"] == {"disk": 4}
    assert off.stats["prefetched"] == 0


def test_plan_follows_randomly_and_deselection(project: Suite, disk: Path) -> None:
    with _fresh_agent(disk) as agent:
        shuffled = project.same_as_plain(
            *("--sm-agent", agent.endpoint, "--sm-plan=plan.json"),
            *("-p", "randomly", "--randomly-seed=3"),
        )
    order = _order(shuffled.outcomes)
    assert order != sorted(order)  # the seed reorders modules and tests
    assert _plan(project)["tests"] == order
    _prefetched(shuffled.stats, 4)
    with _fresh_agent(disk) as agent:
        picked = project.same_as_plain(
            "--sm-agent", agent.endpoint, "--sm-plan=plan.json", "-k", "b1 or c"
        )
    assert _plan(project)["tests"] == _order(picked.outcomes)
    assert len(picked.outcomes) == 3
    # Only what the selected tests need: table_b, shared and table_c, not table_a.
    assert picked.stats is not None and picked.stats["prefetched"] == 3
    _prefetched(picked.stats, 3)


def test_xdist_workers_prefetch_their_queue(project: Suite, disk: Path) -> None:
    with _fresh_agent(disk) as agent:
        run = project.same_as_plain("--sm-agent", agent.endpoint, "-n", "2")
    assert run.stats is not None and run.stats["builds"] == 0
    assert run.stats["prefetched"] >= 4
    _prefetched(run.stats, sum(run.stats["hits"].values()))


def test_select_node_hook_is_asked_and_a_bad_answer_is_one_line(
    project: Suite, disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.pytester.makeconftest(
        CONFTEST
        + """
import os

@pytest.hookimpl(optionalhook=True)  # the conftest also runs without the plugin
def pytest_statemigrate_select_node(partition, partition_bytes, agents, client_host):
    with open("asked.log", "a") as fh:
        fh.write(f"{partition} {partition_bytes} {len(agents)}\\n")
    return os.environ.get("SM_CHOICE")
"""
    )
    with _fresh_agent(disk) as agent:
        run = project.same_as_plain("--sm-agent", agent.endpoint)
    asked = (project.pytester.path / "asked.log").read_text().splitlines()
    assert len(asked) >= 2 and len(asked) == len(set(asked))  # once per partition
    _prefetched(run.stats, 4)
    monkeypatch.setenv("SM_CHOICE", "nowhere")
    with _fresh_agent(disk) as agent:
        run = project.same_as_plain("--sm-agent", agent.endpoint)
    run.result.stdout.fnmatch_lines(
        ["fallback: pytest_statemigrate_select_node chose 'nowhere'*the engine chose instead"]
    )
    _prefetched(run.stats, 4)


def test_cold_and_warm_with_the_embedded_agent_keep_outcomes(project: Suite) -> None:
    """The default setup (an agent per run, started while pytest collects)."""
    cold = project.same_as_plain("--sm-plan=plan.json")
    assert cold.stats is not None and cold.stats["builds"] == 4
    assert not (project.pytester.path / "plan.json").exists()  # nothing stored: no plan
    warm = project.same_as_plain("--sm-plan=plan.json")
    assert warm.stats is not None and warm.stats["builds"] == 0
    assert sum(warm.stats["hits"].values()) == 4
    assert _plan(project)["tests"] == _order(warm.outcomes)
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_statemigrate.cli", "plan"],
        cwd=project.pytester.path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown[0].startswith("6 tests, client host ")
    assert shown[1].startswith("agent embedded: ") and "aggressive" in shown[1]
    assert any(line.startswith("  before 0 test_a.py::test_a1: load ") for line in shown)
    parallel = project.same_as_plain("-n", "2")
    assert parallel.stats is not None and parallel.stats["builds"] == 0


def test_a_test_never_seen_is_planned_from_its_fixture_closure(project: Suite, disk: Path) -> None:
    """The ESG has no footprint for a new test: the managed fixtures it requests (their
    latest keys) stand in, so its value is prefetched too."""
    project.pytester.makepyfile(
        test_new="def test_new(table_b):\n    assert table_b['name'] == 'table_b'\n"
    )
    with _fresh_agent(disk) as agent:
        run = project.same_as_plain("--sm-agent", agent.endpoint, "test_new.py")
    assert run.stats is not None and run.stats["builds"] == 0
    assert run.stats["prefetched"] == 1 and run.stats["prefetch_used_bytes"] > 0
    with _fresh_agent(disk) as agent:  # without the plan: the same value, from disk
        off = project.same_as_plain(
            "--sm-agent", agent.endpoint, "--sm-prefetch=off", "test_new.py"
        )
    assert off.stats is not None and off.stats["hits"] == {"disk": 1}
