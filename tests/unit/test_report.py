from __future__ import annotations

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
