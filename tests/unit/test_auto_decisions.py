"""auto.py: what ``statemigrate_fixtures = auto`` manages, from what the ESG measured."""

from __future__ import annotations

from pathlib import Path

from pytest_statemigrate.auto import decide
from pytest_statemigrate.esg import ESGStore, SessionRecord, Suggestion


def _setup(fixture: str, seconds: float, sessions: int = 1, **kw: object) -> Suggestion:
    fields: dict[str, object] = {
        "fixture": fixture,
        "scope": "session",
        "sessions": sessions,
        "setups": sessions,
        "seconds": seconds,
        "mean_s": seconds / sessions,
        "tests": 3,
        "picklable": True,
        "saving_s": seconds / sessions - 0.001,
    }
    fields.update(kw)
    return Suggestion(**fields)  # type: ignore[arg-type]


def test_each_rule_decides_with_its_reason() -> None:
    decisions = decide(
        [
            _setup("c.py::worth", 0.4, sessions=2),
            _setup("c.py::cheap", 0.01),
            _setup("c.py::lock", 1.0, picklable=False),
            _setup("c.py::costly_load", 0.2, saving_s=-0.1),
            _setup("c.py::refused", 1.0),
            _setup("c.py::stored", 9.0),  # managed since: what its values measured counts
        ],
        {
            "c.py::stored": (0.3, 0.01, 2),
            "c.py::slow_load": (0.1, 0.5, 1),
            "c.py::tiny": (0.001, None, 1),
        },
        {"c.py::refused": "its build sets the environment variable X: a hit would not"},
        threshold=0.05,
    )
    assert decisions.manage == {
        "c.py::stored": "~300 ms of building per session",
        "c.py::worth": "~200 ms of setup per session",
    }
    assert decisions.declined == {
        "c.py::refused": "refused in an earlier run: its build sets the environment "
        "variable X: a hit would not",
        "c.py::slow_load": "loading took 500 ms, building 100 ms",
        "c.py::lock": "its value does not pickle",
        "c.py::costly_load": "loading would cost more than its setup",
    }
    assert decisions.cheap == 2  # cheap, tiny
    lines = decisions.lines(0.05)
    assert lines[0] == (
        "auto manages stored (~300 ms of building per session), worth (~200 ms of setup per "
        "session)"
    )
    assert lines[-1] == "auto: 2 other fixture(s) take under 50 ms per session"


def test_the_esg_keeps_refusals_and_managed_costs(tmp_path: Path) -> None:
    path = tmp_path / "esg.sqlite"
    first = SessionRecord.new()
    first.refused["c.py::env"] = "its build sets the environment variable X: a hit would not"
    first.element("k1", "c.py::table[one]", "module", 10, build_s=0.2, load_s=0.01)
    first.element("k2", "c.py::table[two]", "module", 10, build_s=0.3, load_s=None)
    first.read("t.py::test_a", "k1")
    first.read("t.py::test_b", "k2")
    with ESGStore(path) as store:
        store.add_session(first)
        assert store.refusals() == {"c.py::env": first.refused["c.py::env"]}
        # Every param's element counts for the fixture; one load unmeasured: no load total.
        assert store.managed_costs() == {"c.py::table": (0.5, None, 2)}
    merged = tmp_path / "merged.sqlite"
    with ESGStore(merged) as other:
        other.merge_from(path)
        assert other.refusals() == {"c.py::env": first.refused["c.py::env"]}
