from __future__ import annotations

import re
from collections import Counter

from pytest_statemigrate.report import RunStats


def test_merge_and_json_round_trip() -> None:
    a = RunStats(managed={"x"}, hits=Counter(ram=2), builds=1, bytes_loaded=10)
    a.fallback("agent down")
    b = RunStats(managed={"y"}, hits=Counter(disk=1), refused={"z": "yield fixture"})
    b.fallback("agent down")
    a.merge(RunStats.from_json(b.to_json()))
    data = a.to_json()
    assert data["managed"] == ["x", "y"] and data["hits"] == {"ram": 2, "disk": 1}
    assert data["hits_total"] == 3 and data["fallbacks"] == {"agent down": 2}
    lines = a.lines()
    assert "refused z: yield fixture; it runs unmanaged" in lines
    assert "fallback: agent down (x2)" in lines


def test_empty_run_says_nothing() -> None:
    assert RunStats().is_empty()


def test_a_run_that_managed_nothing_says_only_its_trouble() -> None:
    stats = RunStats()
    stats.fallback("--sm-dir=/x: cannot create it (Permission denied); fixtures run unmanaged")
    assert stats.lines() == [
        "fallback: --sm-dir=/x: cannot create it (Permission denied); fixtures run unmanaged"
    ]


def test_notes_are_said_once_across_workers() -> None:
    line = "--sm-fixtures=nomatch matched no fixture the selected tests use"
    a, b = RunStats(), RunStats()
    a.note(line)
    b.note(line)
    a.note(line)
    a.merge(RunStats.from_json(b.to_json()))
    assert not a.is_empty() and a.lines() == [line] and a.to_json()["notes"] == [line]


def test_labels_tell_fixtures_of_one_name_apart() -> None:
    stats = RunStats()
    for ident in (
        "tests/test_a.py::TestOne.data",
        "tests/test_a.py::TestTwo.data",
        "tests/conftest.py::data",
        "tests/conftest.py::other",
    ):
        stats.fixture(ident, ident.rpartition(".")[2].rpartition("::")[2])
    assert [stats.label(i) for i in stats.names] == [
        "data (tests/test_a.py::TestOne)",
        "data (tests/test_a.py::TestTwo)",
        "data (tests/conftest.py)",
        "other",
    ]


def test_saved_is_net_of_loads_and_the_plugins_own_work() -> None:
    stats = RunStats(hits=Counter(disk=3), saved_seconds=0.30, load_seconds=0.05)
    stats.plugin_seconds = 0.15  # the loads (0.05) and 0.10 of keys, checks, recording
    assert round(stats.net_saved(), 6) == 0.20
    assert "saved ~0.20s" in stats.lines()[2]
    stats.plugin_seconds = 0.45  # the plugin's work cost more than the builds it avoided
    assert "loading and checking cost ~0.10s more than building would have" in stats.lines()[2]
    assert "saved" not in stats.lines()[2]
    assert round(RunStats.from_json(stats.to_json()).net_saved(), 6) == -0.10


def test_a_run_without_hits_claims_no_saving() -> None:
    stats = RunStats(builds=2, build_seconds=1.0, plugin_seconds=0.12)
    stats.managed.add("a")
    assert stats.lines()[2].endswith("the plugin's own work took 0.12s")


def test_workers_savings_are_build_time_not_wall_time() -> None:
    """Under -n 2 the summary said "saved ~5.98s" where about 3 s of wall time were gained:
    the workers ran side by side."""
    controller = RunStats()
    for saved in (3.10, 2.88):
        worker = RunStats(hits=Counter(disk=3), saved_seconds=saved, load_seconds=0.1)
        controller.merge(RunStats.from_json(worker.to_json()))  # as workers send them
    line = controller.lines()[2]
    assert "saved ~5.98s of building across 2 workers" in line
    assert "~2.99s of wall time if they share the work evenly" in line
    assert RunStats.from_json(controller.to_json()).worker_saved == [3.1, 2.88]
    single = RunStats(hits=Counter(disk=3), saved_seconds=3.10, load_seconds=0.1)
    assert single.lines()[2].endswith("saved ~3.10s")  # one process: wall time it is


def test_no_prefetched_line_when_the_prefetch_served_nothing() -> None:
    cold = RunStats(managed={"x"}, builds=3, prefetched=3)
    assert not any(line.startswith("prefetched") for line in cold.lines())
    warm = RunStats(managed={"x"}, hits=Counter(ram=3), prefetched=3)
    assert "prefetched 3 value(s) before the tests that need them" in warm.lines()


def test_per_fixture_counts_add_up_and_survive_workers() -> None:
    a, b = RunStats(), RunStats()
    a.count_build("c.py::x", 2.0)
    a.count_store("c.py::x", 100, 0.1)
    b.count_hit("c.py::x", "disk", 100, 0.5, 2.0)
    b.count_hit("c.py::y", "ram", 10, 0.1, 1.0)
    a.merge(RunStats.from_json(b.to_json()))
    data = RunStats.from_json(a.to_json()).to_json()
    assert data["per_fixture"]["c.py::x"] == {
        "builds": 1,
        "build_seconds": 2.0,
        "hits": {"disk": 1},
        "load_seconds": 0.5,
        "saved_seconds": 1.5,
        "bytes_loaded": 100,
        "bytes_stored": 100,
    }
    assert data["hits"] == {"disk": 1, "ram": 1} and data["builds"] == 1
    assert data["saved_seconds"] == 2.4 and data["bytes_loaded"] == 110


def test_the_run_report_says_which_parts_have_no_data() -> None:
    from pytest_statemigrate.runreport import render

    page = render(None, None, None)
    assert "No run statistics" in page and "no session recorded yet" in page
    assert "No prefetch plan for this run. A cold run has none" in page
    assert 'data-fixtures="0" data-loads="0" data-sessions="0"' in page
    assert "<script src" not in page and "http" not in page  # self-contained


def test_the_run_report_lists_each_fixture_with_its_reasons() -> None:
    from pytest_statemigrate.runreport import Session, render

    stats = RunStats()
    built = stats.fixture("c.py::model", "model")
    stats.managed.add(built)
    stats.count_build(built, 2.5)
    stats.stale[built] = "code changed"
    served = stats.fixture("c.py::corpus", "corpus")
    stats.managed.add(served)
    stats.count_hit(served, "ram", 2048, 0.1, 3.0)
    stats.count_hit(served, "disk", 2048, 0.2, 3.0)
    refused = stats.fixture("c.py::conn", "<conn>")
    stats.refused[refused] = "yield fixture"
    page = render(stats.to_json(), None, [Session("a" * 32, 0.0, "h", 3, 2)])
    rows = re.findall(r"<tr><td class=\"label\"[^>]*>(.*?)</td>(.*?)</tr>", page)
    assert [name for name, _ in rows] == ["corpus", "model", "&lt;conn&gt;"]  # biggest first
    corpus, model, conn = (cells for _, cells in rows)
    assert "<td>2 <small>(disk 1, ram 1)</small></td>" in corpus and "5.700" in corpus
    assert "<b>rebuilt</b>: code changed" in model and "<td>1</td>" in model
    assert "<b>refused</b>: yield fixture" in conn
    assert 'data-fixtures="3" data-loads="0" data-sessions="1"' in page


def test_a_rebuild_that_was_then_refused_is_said_once_as_refused() -> None:
    stats = RunStats(builds=2, stale={"a": "its source changed", "b": "its source changed"})
    stats.refused["a"] = "returns None"
    lines = stats.lines()
    assert "rebuilt b: its source changed" in lines
    assert "refused a: returns None; it runs unmanaged" in lines
    assert not any(line.startswith("rebuilt a") for line in lines)
    assert "(1 rebuilt: why below)" in lines[1]
