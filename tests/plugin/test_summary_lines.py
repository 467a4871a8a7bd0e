"""Summary lines that say why a value was rebuilt, and none for a prefetch that did nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.launcher import start_agent
from pytest_statemigrate.cli import main
from tests.conftest import Suite
from tests.plugin.test_prefetch import CONFTEST, INI, MODULES

pytestmark = pytest.mark.timeout(300)

FIXTURES = """
import pytest

@pytest.fixture(scope="session")
def dataset():
    return list(range(1000))

@pytest.fixture(scope="session")
def model(dataset):
    return {"sum": sum(dataset)}
"""

TESTS = """
def test_model(model):
    assert model["sum"] > 0
"""


@pytest.fixture
def managed(suite: Suite) -> Suite:
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = dataset model\n"
    )
    suite.pytester.makeconftest(FIXTURES)
    suite.pytester.makepyfile(test_it=TESTS)
    return suite


def test_a_code_change_says_code_changed(managed: Suite) -> None:
    first = managed.run()
    assert first.stats is not None and first.stats["builds"] == 2
    managed.pytester.makeconftest(FIXTURES.replace("range(1000)", "range(2000)"))
    run = managed.same_as_plain()
    assert run.stats is not None and run.stats["builds"] == 2, run.text
    run.result.stdout.fnmatch_lines(
        ["rebuilt dataset: code changed", "rebuilt model: its dependency dataset changed"]
    )
    assert run.stats["stale"] == {
        "dataset": "code changed",
        "model": "its dependency dataset changed",
    }


def test_a_data_file_change_still_names_the_file(managed: Suite) -> None:
    data = managed.pytester.path / "data.txt"
    data.write_text("1 2 3")
    managed.pytester.makeconftest(
        FIXTURES.replace(
            "return list(range(1000))", "return open('data.txt').read().split()"
        ).replace("sum(dataset)", "len(dataset)")
    )
    managed.run()
    data.write_text("1 2 3 4")
    run = managed.same_as_plain()
    run.result.stdout.fnmatch_lines(["rebuilt dataset: data.txt changed"])
    assert "code changed" not in run.text


def test_values_of_one_fixture_by_param_are_not_mistaken_for_a_change(suite: Suite) -> None:
    """``model`` has one value per param of ``dataset``, under one name: building them again
    (the store was cleared) is not a change of code."""
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = dataset model\n"
    )
    suite.pytester.makeconftest(
        FIXTURES.replace(
            'scope="session")\ndef dataset():',
            'scope="session", params=[1, 2])\ndef dataset(request):',
        ).replace("range(1000)", "range(1000 * request.param)")
    )
    suite.pytester.makepyfile(test_it=TESTS)
    first = suite.run()
    assert first.stats is not None and first.stats["builds"] == 4, first.text
    assert main(["clear", "--dir", str(suite.pytester.path / ".statemigrate")]) == 0
    again = suite.run()
    assert again.stats is not None and again.stats["builds"] == 4, again.text
    assert again.stats["stale"] == {} and "rebuilt" not in again.text


def test_a_cold_run_that_prefetched_nothing_has_no_prefetched_line(
    suite: Suite, tmp_path: Path
) -> None:
    """The ESG and the last plan know the values, the agent holds none of them (its disk was
    emptied): the plan still asks for them, and the run builds all; no line claims a prefetch."""
    suite.pytester.makeini(INI)
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(**MODULES)
    with start_agent(disk_dir=str(tmp_path / "first")) as agent:
        first = suite.run("--sm-agent", agent.endpoint)
        assert first.stats is not None and first.stats["builds"] == 4
    with start_agent(disk_dir=str(tmp_path / "empty")) as agent:
        cold = suite.run("--sm-agent", agent.endpoint)
    assert cold.stats is not None and cold.stats["builds"] == 4, cold.text
    assert cold.stats["prefetched"] > 0, "the plan asked for nothing: not the case tested"
    cold.result.stdout.no_fnmatch_line("prefetched *")


def test_statemigrate_esg_marks_the_elements_of_old_code_stale(
    managed: Suite, capsys: pytest.CaptureFixture[str]
) -> None:
    managed.run()
    managed.pytester.makeconftest(FIXTURES.replace("range(1000)", "range(2000)"))
    managed.run()
    capsys.readouterr()
    assert main(["esg", "--dir", str(managed.pytester.path / ".statemigrate")]) == 0
    out = capsys.readouterr().out
    assert "4 element(s), 2 stale" in out
    rows = [line.split() for line in out.splitlines() if "::dataset" in line or "::model" in line]
    assert sorted(row[-1] for row in rows) == ["current", "current", "stale", "stale"]
