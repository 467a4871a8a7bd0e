"""Sharding beside another splitter (issue 13): a shard plan never drops a test.

With another splitter active (pytest-split, pytest-shard, pytest-test-groups, CircleCI's test
splitting, a command-line selection that may differ between shards), ``auto`` does not shard
and the header says why; every shard's header says how many of how many tests it runs;
``statemigrate shard N --check`` checks that the shards add up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from pytest_statemigrate.shard import CI_VARIABLES
from tests.conftest import Run, Suite

pytestmark = pytest.mark.timeout(300)

INI = """[pytest]
filterwarnings = error
statemigrate_fixtures = data_*
"""

CONFTEST = """
import pytest

def _make(name):
    @pytest.fixture(scope="session", name=name)
    def fixture():
        return {"name": name, "rows": list(range(100))}
    return fixture

for _i in range(3):
    globals()[f"data_{_i}"] = _make(f"data_{_i}")
"""

# Eleven tests in three modules (the suite had eleven), all outcomes represented.
MODULES = {
    "test_m0": """
import pytest

def test_a(data_0):
    assert data_0["name"] == "data_0"

def test_b(data_1):
    assert len(data_1["rows"]) == 100

def test_fails(data_1):
    assert data_1["name"] == "other"

@pytest.mark.skip(reason="no")
def test_skipped(data_2):
    pass
""",
    "test_m1": """
import pytest

def test_a(data_0):
    assert data_0["rows"][5] == 5

def test_b(data_2):
    assert data_2["name"] == "data_2"

@pytest.mark.xfail(strict=True)
def test_xfail(data_0):
    assert 0

@pytest.mark.slow
def test_slow(data_1):
    assert data_1["rows"][-1] == 99
""",
    "test_m2": """
def test_a(data_2):
    assert data_2["rows"][0] == 0

def test_b(data_0):
    assert data_0["name"] == "data_0"

def test_c():
    assert True
""",
}

NOT_SHARDING = "statemigrate: not sharding"


def _clear_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for index_var, total_var, _ in CI_VARIABLES:  # this machine's CI must not shard these runs
        monkeypatch.delenv(index_var, raising=False)
        monkeypatch.delenv(total_var, raising=False)
    for name in ("TEST_SHARD_STATUS_FILE", "CIRCLECI", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> Suite:
    _clear_ci(monkeypatch)
    suite.pytester.makeini(INI + "markers =\n    slow: slow\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(**MODULES)
    return suite


def _gitlab(monkeypatch: pytest.MonkeyPatch, index: int, total: int = 2) -> None:
    monkeypatch.setenv("CI_NODE_INDEX", str(index))  # GitLab counts from 1
    monkeypatch.setenv("CI_NODE_TOTAL", str(total))


def _store(suite: Suite, name: str) -> str:
    """A store directory holding only the ESG recorded so far (if any): another CI machine's
    copy, which this run's own recording does not change for the next shard."""
    store = suite.pytester.path / name
    store.mkdir()
    esg = suite.pytester.path / ".statemigrate" / "esg.sqlite"
    if esg.exists():
        shutil.copy(esg, store / "esg.sqlite")
    return f"--sm-dir={store}"


def _shard_line(run: Run) -> str:
    lines = [line for line in run.text.splitlines() if line.startswith("statemigrate: ")]
    lines = [line for line in lines if "shard" in line]
    assert len(lines) == 1, run.text
    return lines[0]


def _ran_once(runs: list[Run]) -> dict[str, str]:
    """The union of the runs' outcomes; no test ran in two of them."""
    seen: dict[str, str] = {}
    for run in runs:
        assert not set(run.outcomes) & set(seen), "a test ran on two shards"
        seen.update(run.outcomes)
    return seen


def test_auto_shards_add_up_to_plain_pytest(
    project: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitLab's variables, the plugin's own split: the union of the shards is the plain run,
    with the same outcomes, and each header says how many of how many tests it runs."""
    plain = project.plain()
    assert len(plain.outcomes) == 11
    assert set(plain.outcomes.values()) == {"passed", "failed", "skipped", "xfailed"}
    project.same_as_plain()  # the ESG every shard reads
    runs = []
    for index in (1, 2):
        _gitlab(monkeypatch, index)
        run = project.run(_store(project, f"shard{index}"))
        runs.append(run)
        line = _shard_line(run)
        count = len(run.outcomes)
        assert f"shard {index}/2 (CI_NODE_INDEX/CI_NODE_TOTAL): {count} of 11 tests" in line
    assert _ran_once(runs) == plain.outcomes


# The other splitters: (pytest-split's, pytest-shard's, pytest-test-groups') arguments for
# group ``i`` of 2, and what the header names.
SPLITTERS = {
    "pytest-split": (lambda i: ["--splits=2", f"--group={i}"], "pytest-split's --splits/--group"),
    "pytest-shard": (
        lambda i: ["--num-shards=2", f"--shard-id={i - 1}"],
        "pytest-shard's --shard-id/--num-shards",
    ),
    "pytest-test-groups": (
        lambda i: ["--test-group-count=2", f"--test-group={i}"],
        "pytest-test-groups' --test-group-count/--test-group",
    ),
}


@pytest.mark.parametrize("splitter", sorted(SPLITTERS))
def test_auto_does_not_split_another_splitter_s_group_again(
    project: Suite, monkeypatch: pytest.MonkeyPatch, splitter: str
) -> None:
    """The issue: CI_NODE_INDEX/CI_NODE_TOTAL and pytest-split's --splits 2 --group N; the
    default auto split each group again and the two nodes ran 1 + 5 of 11 tests, both green.
    Now each group runs exactly what the splitter alone selects, and the header says why."""
    args, named = SPLITTERS[splitter]
    everything = project.plain().outcomes
    project.run()  # an ESG, so that the plugin would plan by affinity
    runs = []
    for index in (1, 2):
        _gitlab(monkeypatch, index)
        alone = project.plain(*args(index))  # the splitter without the plugin
        run = project.run(*args(index))
        assert run.outcomes == alone.outcomes, run.text
        line = _shard_line(run)
        assert line.startswith(f"{NOT_SHARDING} (CI_NODE_INDEX/CI_NODE_TOTAL name shard {index}/2)")
        assert named in line
        runs.append(run)
    assert _ran_once(runs) == everything


def test_circleci_test_splitting_by_files_is_not_split_again(
    project: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`circleci tests run --split-by=timings` / `circleci tests split` hand each node its own
    test files on the command line: with CIRCLECI set and file arguments, auto does not shard."""
    everything = project.plain().outcomes
    project.run()
    monkeypatch.setenv("CIRCLECI", "true")
    monkeypatch.setenv("CIRCLE_NODE_TOTAL", "2")
    runs = []
    for index, files in ((0, ["test_m0.py"]), (1, ["test_m2.py", "test_m1.py"])):
        monkeypatch.setenv("CIRCLE_NODE_INDEX", str(index))
        alone = project.plain(*files)
        run = project.run(*files)
        assert run.outcomes == alone.outcomes, run.text
        line = _shard_line(run)
        assert line.startswith(f"{NOT_SHARDING} (CIRCLE_NODE_INDEX/CIRCLE_NODE_TOTAL")
        assert "CircleCI" in line
        runs.append(run)
    assert _ran_once(runs) == everything
    # Every node given the same directory: CircleCI's variables shard it.
    monkeypatch.setenv("CIRCLE_NODE_INDEX", "0")
    same = project.run(".")
    assert "shard 1/2 (CIRCLE_NODE_INDEX/CIRCLE_NODE_TOTAL)" in _shard_line(same)
    assert 0 < len(same.outcomes) < len(everything)


@pytest.mark.parametrize(
    "selections",
    [
        (["-k", "m0"], ["-k", "not m0"]),
        (["--deselect=test_m0.py", "--deselect=test_m1.py"], ["--deselect=test_m2.py"]),
        (["test_m0.py::test_a", "test_m2.py::test_c"], ["test_m1.py::test_b"]),
        (["-m", "slow"], ["-m", "not slow"]),
    ],
    ids=["-k", "--deselect", "node-ids", "-m"],
)
def test_a_command_line_selection_is_not_sharded_by_auto(
    project: Suite, monkeypatch: pytest.MonkeyPatch, selections: tuple[list[str], list[str]]
) -> None:
    """A selection on the command line may differ between shards (a splitter that passes
    each node its own -k or ids): auto runs it whole, and says so."""
    project.run()
    for index, selection in enumerate(selections, 1):
        _gitlab(monkeypatch, index)
        alone = project.plain(*selection)
        run = project.run(*selection)
        assert run.outcomes == alone.outcomes, run.text
        line = _shard_line(run)
        assert line.startswith(NOT_SHARDING), line
        assert "--sm-shard=I/N" in line  # how to shard the same selection on every shard


def test_a_selection_in_pytest_addopts_is_not_sharded_by_auto(
    project: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTEST_ADDOPTS is the environment, which a splitter may set per node."""
    project.run()
    _gitlab(monkeypatch, 1)
    monkeypatch.setenv("PYTEST_ADDOPTS", "-k m1")
    alone = project.plain()
    run = project.run()
    assert run.outcomes == alone.outcomes and len(run.outcomes) == 4, run.text
    assert _shard_line(run).startswith(NOT_SHARDING)
    assert "-k" in _shard_line(run)


def test_a_selection_in_the_ini_file_is_the_same_on_every_shard(
    project: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """addopts in the ini file are the same on every shard (one checkout): auto shards."""
    project.pytester.makeini(INI + "markers =\n    slow: slow\naddopts = -m 'not slow'\n")
    selected = project.plain().outcomes
    assert len(selected) == 10
    runs = []
    for index in (1, 2):
        _gitlab(monkeypatch, index)
        run = project.run(_store(project, f"shard{index}"))
        assert f"shard {index}/2" in _shard_line(run)
        assert f"{len(run.outcomes)} of 10 tests" in _shard_line(run)
        runs.append(run)
    assert _ran_once(runs) == selected


def test_an_explicit_shard_beside_another_splitter_is_a_usage_error(project: Suite) -> None:
    run = project.run("--sm-shard=1/2", "--splits=2", "--group=1")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in run.text.splitlines() if "--sm-shard" in line]
    assert errors == [
        "ERROR: statemigrate: --sm-shard=1/2 and pytest-split's --splits/--group both split "
        "the tests, so a test one keeps the other may drop: use one of them "
        "(--sm-shard=off keeps pytest-split's split)"
    ], run.text
    # The ini key too; and --sm-shard=off beside the splitter runs the splitter's group.
    project.pytester.makeini(INI + "statemigrate_shard = 2/2\n")
    ini = project.run("--num-shards=2")
    assert ini.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytest-shard's --shard-id/--num-shards both split" in ini.text
    off = project.run("--sm-shard=off", "--num-shards=2")
    assert off.outcomes == project.plain("--num-shards=2").outcomes


def test_an_explicit_shard_of_a_selection_is_obeyed(project: Suite) -> None:
    """--sm-shard=I/N with -k: the user gives every shard the same selection; its shards add
    up to the selection."""
    project.run()
    selected = project.plain("-k", "test_a or test_b").outcomes
    runs = [
        project.run(f"--sm-shard={i}/2", "-k", "test_a or test_b", _store(project, f"s{i}"))
        for i in (1, 2)
    ]
    for i, run in enumerate(runs, 1):
        assert f"shard {i}/2 (--sm-shard): {len(run.outcomes)} of 6 tests" in _shard_line(run)
    assert _ran_once(runs) == selected


def test_a_shard_under_xdist_says_how_many_tests_it_runs(project: Suite) -> None:
    project.run()
    alone = project.run("--sm-shard=2/2", _store(project, "alone"))
    spread = project.run("--sm-shard=2/2", "-n", "2", _store(project, "spread"))
    assert spread.outcomes == alone.outcomes
    line = _shard_line(spread)
    assert f"shard 2/2 (--sm-shard): {len(alone.outcomes)} of 11 tests" in line, spread.text
    assert _shard_line(alone).split(" plan ")[1] == line.split(" plan ")[1]  # the same plan
    assert not list((project.pytester.path / "spread").glob("shard-*"))  # the workers' notes


# ------------------------------------------------------------- statemigrate shard --check


def _cli(suite: Suite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_statemigrate.cli", "shard", *args],
        cwd=suite.pytester.path,
        # not this run's xdist worker (plugins such as pytest-benchmark look for it)
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        capture_output=True,
        text=True,
        timeout=240,
    )


QUIET = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:benchmark")


def test_check_says_the_shards_add_up(project: Suite) -> None:
    project.run()  # the ESG the shards plan with
    runs = [project.run(f"--sm-shard={i}/3", _store(project, f"s{i}")) for i in (1, 2, 3)]
    cli = _cli(project, "3", "--check", "--", *QUIET)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    lines = cli.stdout.splitlines()
    for i, run in enumerate(runs, 1):
        digest = _shard_line(run).split(" plan ")[1]
        shown = f"shard {i}/3: {len(run.outcomes)} of 11 tests (plan {digest})"
        assert shown in lines, cli.stdout
    assert "the 3 shards add up: each of the 11 tests is in exactly one shard" in lines


UNSTABLE = """
import uuid
import pytest

@pytest.mark.parametrize("token", [uuid.uuid4().hex[:8]])
def test_named_at_random(token):
    pass
"""


def test_check_names_the_tests_that_do_not_add_up(project: Suite) -> None:
    """A test id that differs in every process (a random param) is in no shard's plan the
    way the full collection names it: --check lists it and exits 1."""
    project.pytester.makepyfile(test_unstable=UNSTABLE)
    cli = _cli(project, "2", "--check", "--", *QUIET)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    missing = re.findall(r"^missing: (\S+)$", cli.stdout, re.M)
    assert len(missing) == 1 and missing[0].startswith("test_unstable.py::test_named_at_random[")
    # Each shard named it its own way, and kept that id when its hash fell on that shard.
    extra = re.findall(r"^not in the full collection: (\S+)$", cli.stdout, re.M)
    assert len(extra) <= 2 and missing[0] not in extra, cli.stdout
    digests = re.findall(r"^shard \d/2: \d+ of 12 tests \(plan ([0-9a-f]{12})\)$", cli.stdout, re.M)
    assert len(set(digests)) == 2, cli.stdout  # the shards planned over other collections
    assert "statemigrate shard --check: the 2 shards do not add up" in cli.stderr
    # A splitter among the arguments stops every shard's collection: said in one line.
    clash = _cli(project, "2", "--check", "--", *QUIET, "--splits=2", "--group=1")
    assert clash.returncode == 1
    assert "--sm-shard=1/2 and pytest-split's --splits/--group both split" in clash.stdout
