"""The agent choices (embedded, long-lived), the statemigrate command, opting in and out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.launcher import start_agent
from tests.conftest import DATASET_CONFTEST, Suite

pytestmark = pytest.mark.timeout(300)

CONFTEST = DATASET_CONFTEST


def _project(suite: Suite, ini: str = "statemigrate_fixtures = dataset\n") -> None:
    suite.pytester.makeini(f"[pytest]\nfilterwarnings = error\n{ini}")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile("def test_a(dataset):\n    assert dataset[-1] == 99\n")


def test_long_lived_agent_serves_from_ram(suite: Suite) -> None:
    _project(suite)
    disk = suite.pytester.path / "agent-disk"
    with start_agent(disk_dir=str(disk)) as agent:
        first = suite.same_as_plain("--sm-agent", agent.endpoint)
        second = suite.same_as_plain("--sm-agent", agent.endpoint)
    assert first.stats is not None and first.stats["builds"] == 1
    assert second.stats is not None and second.stats["hits"] == {"ram": 1}
    # The agent was the user's: the plugin did not start one in the store directory.
    assert not (suite.pytester.path / ".statemigrate" / "agent-disk").exists()


def test_ini_agent_endpoint(suite: Suite) -> None:
    with start_agent(disk_dir=str(suite.pytester.path / "agent-disk")) as agent:
        _project(
            suite, ini=f"statemigrate_fixtures = dataset\nstatemigrate_agent = {agent.endpoint}\n"
        )
        suite.run()
        run = suite.run()
    assert run.stats is not None and run.stats["hits"] == {"ram": 1}


def test_clear_empties_the_store(suite: Suite) -> None:
    _project(suite)
    suite.run()
    store = suite.pytester.path / ".statemigrate"
    done = subprocess.run(
        [sys.executable, "-m", "pytest_statemigrate.cli", "clear", "--dir", str(store)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cleared" in done.stdout
    (suite.pytester.path / "builds.log").unlink()
    suite.run()
    assert suite.builds() == ["dataset"]


def test_clear_a_running_agent(suite: Suite) -> None:
    _project(suite)
    with start_agent(disk_dir=str(suite.pytester.path / "agent-disk")) as agent:
        suite.run("--sm-agent", agent.endpoint)
        done = subprocess.run(
            [sys.executable, "-m", "pytest_statemigrate.cli", "clear", "--agent", agent.endpoint],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "cleared 1 entries" in done.stdout
        run = suite.run("--sm-agent", agent.endpoint)
    assert run.stats is not None and run.stats["builds"] == 1


def test_disabled_with_p_no(suite: Suite) -> None:
    _project(suite)
    run = suite.plain()
    run.result.assert_outcomes(passed=1)
    assert "- statemigrate -" not in run.text and run.stats is None
    assert not (suite.pytester.path / ".statemigrate").exists()


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "suite"


def test_the_off_switch_runs_the_bundled_example(tmp_path: Path) -> None:
    """README: `python -m pytest -p no:statemigrate examples/suite`. Its ini has the plugin's
    keys, which pytest then does not know, and filterwarnings = error."""
    shutil.copytree(
        EXAMPLE, tmp_path / "examples" / "suite", ignore=shutil.ignore_patterns(".*", "__py*")
    )
    # As from a shell: not an xdist worker's variables (pytest-benchmark, when installed, warns
    # under xdist, and the example's filterwarnings = error makes that an error).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:statemigrate", "examples/suite"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "warning" not in done.stdout
    assert not (tmp_path / "examples" / "suite" / ".statemigrate").exists()


def _demo(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest_statemigrate.cli", "demo", str(directory)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def test_demo_runs_the_bundled_example_cold_then_warm(tmp_path: Path) -> None:
    """`statemigrate demo DIR`: the example copied into DIR (from the wheel's
    pytest_statemigrate._example, or the checkout's examples/suite), run twice."""
    done = _demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    cold, warm = done.stdout.split("== statemigrate demo, warm")
    assert "hits: 0; builds: 6" in cold and "49 passed" in cold, done.stdout
    assert "hits: 6" in warm and "builds: 0" in warm and "49 passed" in warm, done.stdout
    assert (tmp_path / "suite" / ".statemigrate").is_dir()  # DIR given: kept
    again = _demo(tmp_path)
    assert again.returncode == 2 and "exists: name a new directory" in again.stderr


def test_nothing_selected_starts_no_agent(suite: Suite) -> None:
    _project(suite, ini="")
    run = suite.run()
    run.result.assert_outcomes(passed=1)
    assert "- statemigrate -" not in run.text
    assert not (suite.pytester.path / ".statemigrate").exists()


def test_decorated_in_a_test_module_and_async_refused(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\n")
    suite.pytester.makepyfile("""
import time
import pytest
from pytest_statemigrate import state

@state
@pytest.fixture(scope="module")
def local():
    time.sleep(0.05)
    return {"a": 1}

@state
@pytest.fixture
async def later():
    return 1

def test_local(local):
    assert local == {"a": 1}
""")
    suite.same_as_plain()
    warm = suite.same_as_plain()
    assert warm.stats is not None and warm.stats["hits_total"] == 1
    assert warm.stats["managed"] == ["local"]


def test_async_fixture_is_refused(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = later\n")
    suite.pytester.makepyfile("""
import pytest

@pytest.fixture
async def later():
    return 1

def test_uses(later):
    pass
""")
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines(["refused later: async fixture*; it runs unmanaged"])


def test_agent_command_refuses_non_loopback() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_statemigrate.cli",
            "agent",
            "--bind",
            "tcp://0.0.0.0:*",
            "--no-disk",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing tcp://0.0.0.0:*" in lines[0]


def test_cold_single_process_run_writes_the_disk_tier_itself(suite: Suite) -> None:
    """On an empty store an agent could serve nothing: none is started. Nor in a warm run
    until a key misses: this process reads the disk tier itself."""
    _project(suite)
    store = suite.pytester.path / ".statemigrate"
    first = suite.same_as_plain()
    assert first.stats is not None and first.stats["builds"] == 1
    assert (store / "agent-disk").is_dir() and not (store / "agent.log").exists()
    second = suite.same_as_plain()
    assert second.stats is not None and second.stats["builds"] == 0
    assert second.stats["hits"] == {"disk": 1}
    # Warm, every value stored: this process reads the disk tier, and no agent is started.
    assert not (store / "agent.log").exists()
    assert suite.builds() == ["dataset"] * 3  # two plain runs and the cold one
    # A key the disk tier lacks (the fixture's code changed) starts the agent, which stores
    # the new value; the next run loads it.
    suite.pytester.makeconftest(CONFTEST.replace("time.sleep(0.05)", "time.sleep(0.06)"))
    third = suite.same_as_plain()
    assert third.stats is not None and third.stats["builds"] == 1
    assert (store / "agent.log").exists()
    fourth = suite.run()
    assert fourth.stats is not None and fourth.stats["builds"] == 0
    assert fourth.stats["hits"] == {"disk": 1}
