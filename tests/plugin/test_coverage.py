"""Coverage: a hit replays the lines its build ran, so a report equals plain pytest's.

Real coverage.py and pytest-cov in pytester subprocesses: plain pytest, then the plugin cold
(it builds and stores), then warm (every managed value is a hit), compared report by report.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import QUIET, Run, Suite

pytest.importorskip("pytest_cov")
coverage = pytest.importorskip("coverage")

pytestmark = pytest.mark.timeout(300)

# Builds run lines in conftest.py (a helper, a loop, a branch) and in a project module (a
# branch, one arm never taken); one line of each is never run, and so is `unused`.
CONFTEST = """
import time

import pytest

import shapes


def helper(n):
    total = 0
    for i in range(n):
        total += i
    return total


@pytest.fixture(scope="session")
def table():
    time.sleep(0.05)  # building costs more than loading
    rows = [helper(i) for i in range(5)]
    return shapes.shape(rows)


@pytest.fixture(scope="session")
def summary(table):
    time.sleep(0.05)
    if len(table) > 3:
        kind = "long"
    else:
        kind = "short"
    return {"kind": kind, "n": len(table)}


@pytest.fixture
def row(table):
    time.sleep(0.05)
    first = table[0]
    return [first, shapes.double(first)]
"""

SHAPES = """
def shape(rows):
    if rows:
        out = list(rows)
    else:
        out = []
    return out


def double(x):
    return 2 * x


def unused():
    return 1
"""

TESTS = """
def test_table(table):
    assert len(table) == 5


def test_summary(summary):
    assert summary["kind"] == "long"


def test_row(row):
    assert row == [0, 0]


def test_row_again(row, summary):
    assert row[1] == 0 and summary["n"] == 5
"""

#: More tests, for -n 2: both workers need the values.
TEST_MORE = """
def test_a(summary):
    assert summary


def test_b(row):
    assert row
"""

INI = "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    table\n    summary\n    row\n"


def _project(suite: Suite) -> None:
    suite.pytester.makeini(INI)
    # (Suite's outcomes plugin is imported before pytest-cov starts: not the project's.)
    (suite.pytester.path / ".coveragerc").write_text("[run]\nomit = sm_outcomes.py\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(shapes=SHAPES, test_it=TESTS)


def _table(text: str) -> list[str]:
    """The rows of a coverage report: one per file (statements, missed, branches, missing
    lines) and the total, without the rulers."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Name "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("TOTAL"))
    return [line for line in lines[start : end + 1] if not line.startswith("---")]


def _total(table: list[str]) -> str:
    return table[-1].split()[-1]


def _hits(run: Run) -> int:
    assert run.stats is not None, run.text
    return int(run.stats["hits_total"])


def _plain_cold_warm(suite: Suite, *args: str) -> tuple[Run, Run, Run]:
    plain = suite.plain(*args)
    cold = suite.run(*args)
    warm = suite.run(*args)
    for run in (plain, cold, warm):
        assert run.outcomes == plain.outcomes and set(plain.outcomes.values()) == {"passed"}, (
            run.text
        )
    assert _hits(warm) >= 3, warm.text  # table, summary and row were not built
    return plain, cold, warm


def test_pytest_cov_report_equals_plain(suite: Suite) -> None:
    """(a) --cov=. --cov-report=term-missing: per-file missing lines and the total."""
    _project(suite)
    plain, cold, warm = _plain_cold_warm(suite, "--cov=.", "--cov-report=term-missing")
    expected = _table(plain.text)
    assert _total(expected) == "93%", plain.text  # what the assertions below compare
    assert _table(cold.text) == expected, cold.text
    assert _table(warm.text) == expected, warm.text
    assert "statemigrate" not in "".join(_table(warm.text))  # no file of the plugin


def test_cov_fail_under_outcome_equals_plain(suite: Suite) -> None:
    """(b) --cov-fail-under: reached in plain, so reached warm; missed in plain, missed warm."""
    _project(suite)
    for threshold, ret in (("92", pytest.ExitCode.OK), ("94", pytest.ExitCode.TESTS_FAILED)):
        args = ("--cov=.", f"--cov-fail-under={threshold}")
        plain, cold, warm = _plain_cold_warm(suite, *args)
        for run in (plain, cold, warm):
            assert run.result.ret == ret, run.text
        warm.result.stdout.fnmatch_lines([f"*Required test coverage of {threshold}%*"])


def _coverage_run(suite: Suite, *args: str, plugin: bool) -> tuple[pytest.RunResult, str]:
    """``coverage run --source=. -m pytest ARGS`` and then ``coverage report -m``."""
    flags = ["-p", "statemigrate"] if plugin else ["-p", "no:statemigrate"]
    tail = [] if plugin else ["-W", "ignore::pytest.PytestConfigWarning"]
    run = suite.pytester.run(
        sys.executable,
        *("-m", "coverage", "run", "--source=.", "-m", "pytest"),
        *QUIET,
        *flags,
        *args,
        *tail,
        timeout=180,
    )
    if "-n" in args:  # each process wrote its own data file (parallel = true)
        combined = suite.pytester.run(sys.executable, "-m", "coverage", "combine", timeout=60)
        assert combined.ret == 0, str(combined.stdout) + str(combined.stderr)
    report = suite.pytester.run(sys.executable, "-m", "coverage", "report", "-m", timeout=60)
    assert report.ret == 0, str(report.stdout) + str(report.stderr)
    return run, "\n".join([str(run.stdout), str(run.stderr), str(report.stdout)])


def test_coverage_run_report_equals_plain(suite: Suite) -> None:
    """(c) coverage run -m pytest, then coverage report."""
    _project(suite)
    plain, plain_text = _coverage_run(suite, plugin=False)
    expected = _table(plain_text)
    assert plain.ret == 0 and _total(expected) == "93%", plain_text
    for state in ("cold", "warm"):
        run, text = _coverage_run(suite, plugin=True)
        assert run.ret == 0, text
        assert _table(text) == expected, (state, text)
    assert "hits: 4" in text, text


@pytest.mark.slow
def test_xdist_under_coverage_run_equals_plain(suite: Suite) -> None:
    """(d) coverage run -m pytest -n 2, the workers measured through coverage's subprocess
    patch, their data combined."""
    pytest.importorskip("xdist")
    _project(suite)
    rc = suite.pytester.path / ".coveragerc"
    rc.write_text(rc.read_text() + "parallel = true\npatch = subprocess\n")
    suite.pytester.makepyfile(test_more=TEST_MORE)
    plain, plain_text = _coverage_run(suite, "-n", "2", plugin=False)
    expected = _table(plain_text)
    assert plain.ret == 0 and _total(expected) == "93%", plain_text
    for state in ("cold", "warm"):
        run, text = _coverage_run(suite, "-n", "2", plugin=True)
        assert run.ret == 0, text
        assert _table(text) == expected, (state, text)
    assert "builds: 0" in text, text


@pytest.mark.slow
def test_xdist_with_pytest_cov_equals_plain(suite: Suite) -> None:
    """(d) -n 2: each worker replays into its own data, pytest-cov combines them."""
    pytest.importorskip("xdist")
    _project(suite)
    suite.pytester.makepyfile(test_more=TEST_MORE)
    args = ("-n", "2", "--cov=.", "--cov-report=term-missing")
    plain, cold, warm = _plain_cold_warm(suite, *args)
    expected = _table(plain.text)
    assert _table(cold.text) == expected, cold.text
    assert _table(warm.text) == expected, warm.text


def test_branch_coverage_equals_plain(suite: Suite) -> None:
    """(e) --cov-branch: arcs are recorded and replayed; a value stored under line coverage is
    rebuilt once under branch coverage, never served with lines only."""
    _project(suite)
    lines_only = suite.run("--cov=.")
    assert _total(_table(lines_only.text)) == "93%", lines_only.text
    args = ("--cov=.", "--cov-branch", "--cov-report=term-missing")
    plain = suite.plain(*args)
    expected = _table(plain.text)
    assert "Branch" in expected[0] and _total(expected) == "90%", plain.text
    rebuilt = suite.run(*args)
    rebuilt.result.stdout.fnmatch_lines(
        ["rebuilt *: it was stored with line coverage, and this run measures branches"]
    )
    assert _table(rebuilt.text) == expected, rebuilt.text
    warm = suite.run(*args)
    assert _hits(warm) == 4, warm.text
    assert _table(warm.text) == expected, warm.text
    # Arcs serve line coverage too (the lines they join).
    lines_again = suite.run("--cov=.")
    assert _hits(lines_again) == 4 and _table(lines_again.text) == _table(lines_only.text)


def _contexts(path: Path) -> dict[str, dict[int, list[str]]]:
    data = coverage.CoverageData(str(path / ".coverage"))
    data.read()
    out = {}
    for name in data.measured_files():
        if Path(name).name in ("conftest.py", "shapes.py"):
            by_line = data.contexts_by_lineno(name)
            out[Path(name).name] = {n: sorted(c) for n, c in by_line.items()}
    return out


@pytest.mark.parametrize("static", ["", "ci"])
def test_test_contexts_equal_plain(suite: Suite, static: str) -> None:
    """(f) --cov-context=test: plain pytest records a fixture's lines in the context of the
    test whose setup built it ("test_it.py::test_table|setup"; a function-scoped fixture in
    each of its tests'); a hit replays them there. A static context prefixes them all."""
    _project(suite)
    if static:
        rc = suite.pytester.path / ".coveragerc"
        rc.write_text(rc.read_text() + f"context = {static}\n")
    at = f"{static}|" if static else ""
    args = ("--cov=.", "--cov-context=test")
    suite.plain(*args)
    expected = _contexts(suite.pytester.path)
    shapes = expected["shapes.py"]
    assert shapes[3] == [f"{at}test_it.py::test_table|setup"]  # shape(), from table's build
    assert shapes[10] == [
        f"{at}test_it.py::test_row_again|setup",
        f"{at}test_it.py::test_row|setup",
    ]
    suite.run(*args)
    cold = _contexts(suite.pytester.path)
    # The cold run also keeps the contexts its builds were recorded in (the module docstring
    # of coverage_replay.py says why); the test's contexts are plain pytest's.
    ours = {
        name: {n: [c for c in cs if "statemigrate:" not in c] for n, cs in lines.items()}
        for name, lines in cold.items()
    }
    assert ours == expected
    assert f"{at}statemigrate:conftest.py::table" in cold["shapes.py"][3]
    warm = suite.run(*args)
    assert _hits(warm) == 4, warm.text
    assert _contexts(suite.pytester.path) == expected


def test_value_stored_without_coverage_is_rebuilt_once(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value stored while nothing measured has no lines: under coverage it is rebuilt once
    (the summary says why), then served; a run without coverage imports no coverage."""
    _project(suite)
    suite.pytester.makepyfile(
        test_imports="""
import os, sys

def test_no_coverage_imported(table, summary):
    if os.environ.get("SM_UNMEASURED"):
        assert "coverage" not in sys.modules
"""
    )
    args = ("--cov=.", "--cov-report=term-missing")
    expected = _table(suite.plain(*args).text)
    with monkeypatch.context() as env:
        env.setenv("SM_UNMEASURED", "1")
        suite.run()  # stores without coverage
        warm = suite.run()
    assert _hits(warm) == 4 and set(warm.outcomes.values()) == {"passed"}, warm.text
    rebuilt = suite.run(*args)
    assert rebuilt.stats is not None and rebuilt.stats["builds"] == 3, rebuilt.text
    rebuilt.result.stdout.fnmatch_lines(
        ["rebuilt *: it was stored without coverage data, and coverage measures this run"]
    )
    assert _table(rebuilt.text) == expected, rebuilt.text
    served = suite.run(*args)
    assert _hits(served) == 4 and _table(served.text) == expected, served.text


def test_recorded_lines_follow_the_file(suite: Suite) -> None:
    """An edit of conftest.py that moves a fixture's lines changes neither its key (which
    holds the fixture's source, not its place) nor, here, its fingerprints (its build runs no
    other conftest code): a run without coverage still loads it. Under coverage its recorded
    lines would be misplaced: it is rebuilt, once."""
    _project(suite)
    own = CONFTEST.replace("[helper(i) for i in range(5)]", "[sum(range(i)) for i in range(5)]")
    suite.pytester.makeconftest(own)
    args = ("--cov=.", "--cov-report=term-missing")
    suite.run(*args)
    suite.pytester.makeconftest("# a comment that moves every line down\n" + own)
    plain = suite.plain(*args)
    unmeasured = suite.run()
    assert _hits(unmeasured) == 4, unmeasured.text
    moved = suite.run(*args)
    moved.result.stdout.fnmatch_lines(  # (row too, where its first build was stored)
        ["rebuilt *table: conftest.py changed since its build's coverage was recorded"]
    )
    assert _table(moved.text) == _table(plain.text), moved.text
    warm = suite.run(*args)
    assert _hits(warm) == 4 and _table(warm.text) == _table(plain.text), warm.text


def test_files_a_build_makes_are_still_served_under_coverage(suite: Suite) -> None:
    """What coverage reads and writes (its data file, the digests of the recorded files) is
    not counted as the build's: a fixture that makes files is stored, not refused."""
    _project(suite)
    suite.pytester.makeini(INI + "    made\n")
    suite.pytester.makeconftest(
        CONFTEST
        + """

@pytest.fixture(scope="session")
def made(tmp_path_factory):
    time.sleep(0.05)
    path = tmp_path_factory.mktemp("made") / "rows.txt"
    path.write_text(",".join(map(str, shapes.shape([1, 2]))))
    return path
"""
    )
    suite.pytester.makepyfile(
        test_made="def test_made(made):\n    assert made.read_text() == '1,2'\n"
    )
    args = ("--cov=.", "--cov-report=term-missing")
    plain, cold, warm = _plain_cold_warm(suite, *args)
    assert cold.stats is not None and not cold.stats["refused"], cold.text
    assert _hits(warm) == 5, warm.text
    assert _table(cold.text) == _table(warm.text) == _table(plain.text), warm.text


@pytest.mark.parametrize("relative", [False, True])
def test_another_checkout_maps_the_lines_back(
    suite: Suite,
    relative: bool,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files are recorded relative to the rootdir: a copy of the project elsewhere (another
    checkout, a CI runner restoring the store) replays them onto its own files, whether the
    data names files absolutely or (``relative_files``) relative to the working directory."""
    _project(suite)
    if relative:
        rc = suite.pytester.path / ".coveragerc"
        rc.write_text(rc.read_text() + "relative_files = True\n")
    args = ("--cov=.", "--cov-report=term-missing")
    expected = _table(suite.plain(*args).text)
    suite.run(*args)
    elsewhere = tmp_path_factory.mktemp("checkout") / "project"
    shutil.copytree(suite.pytester.path, elsewhere, symlinks=True)
    monkeypatch.chdir(elsewhere)
    warm = suite.run(*args)
    assert f"rootdir: {elsewhere}" in warm.text
    assert _hits(warm) == 4 and _table(warm.text) == expected, warm.text


def test_a_measurement_that_cannot_record_builds_instead(suite: Suite) -> None:
    """coverage.py's own dynamic contexts (``dynamic_context = test_function``, which
    pytest-cov refuses: ``coverage run``) leave no room for the plugin's: stored values are
    not served short, they are built, and the summary says why once."""
    _project(suite)
    suite.run()  # stored, without coverage
    rc = suite.pytester.path / ".coveragerc"
    rc.write_text(rc.read_text() + "dynamic_context = test_function\n")
    plain, plain_text = _coverage_run(suite, plugin=False)
    run, text = _coverage_run(suite, plugin=True)
    assert plain.ret == run.ret == 0, text
    assert "hits: 0; builds: 4" in text, text
    run.stdout.fnmatch_lines(
        [
            "built row, summary, table in-process: coverage measures this run and cannot "
            "record what a build runs: coverage.py's dynamic_context is set"
        ]
    )
    assert _table(text) == _table(plain_text), text
