"""The run report page in a real browser: headless Chromium draws every fixture row, every load
of the plan and every session of the trend, no two texts overlap, no script error.

The page is made from the data a run leaves (stats JSON, plan JSON, the ESG's sessions): here
from synthetic data of 1, 20 and 500 elements each, and from the files of real runs (cold, then
warm). The harness is test_graph_html.py's: Chromium dumps the DOM after the scripts ran, and
the script it appends reads every text's bounding box from the DOM.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_statemigrate import engine
from pytest_statemigrate.cli import main
from pytest_statemigrate.report import RunStats
from pytest_statemigrate.runreport import Session, render
from tests.conftest import Suite
from tests.integration.test_graph_html import CHROMIUM, PWNED, overlap_problems, write_page
from tests.integration.test_graph_html import render as chromium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package chromium)"
    ),
]

#: The texts the check reads: the pictures' (labels, ticks, titles) and the fixture names.
TEXTS = "svg text, td.label"


def run_stats(fixtures: int) -> dict[str, Any]:
    """Stats of a run with ``fixtures`` fixtures: built, served from each tier, refused,
    rebuilt and built in-process for a reason, one with a hostile name."""
    stats = RunStats()
    for i in range(fixtures):
        ident = stats.fixture(
            f"tests/conftest.py::fixture_{i}", PWNED if i == 3 else f"fixture_{i}"
        )
        if i % 5 == 4:
            stats.refused[ident] = "yield fixture: it runs unmanaged"
            continue
        stats.managed.add(ident)
        if i % 3 == 0:
            stats.count_build(ident, 0.5 + i / 100)
            stats.count_store(ident, 1000 * i, 0.01)
            if i % 2:
                stats.stale[ident] = "code changed"
        else:
            stats.count_hit(ident, ("ram", "disk", "store")[i % 3], 2**20 + i, 0.01, 1.0 + i)
        if i % 7 == 6:
            stats.built_instead[ident] = "loading took 9.0 ms, building 1.0 ms"
    stats.prefetched = fixtures
    stats.planned = {"partitions": fixtures, "loads": fixtures, "sent": True}
    return stats.to_json()


def plan_json(partitions: int) -> dict[str, Any]:
    """A real plan (engine.plan) of ``partitions`` partitions over as many tests, two agents."""
    requests = [
        engine.Request(f"tests/test_m.py::test_{i}", (i % partitions, (i * 7) % partitions))
        if partitions > 1
        else engine.Request(f"tests/test_m.py::test_{i}", (0,))
        for i in range(partitions)
    ]
    requests = [engine.Request(r.test, tuple(sorted(set(r.partitions)))) for r in requests]
    sizes = {p: 2**20 * (1 + p % 4) for p in range(partitions)}
    agents = [
        engine.AgentInfo(name, "host", ram_budget=2**22, ram_free=2**22) for name in ("a", "b")
    ]
    return engine.plan(requests, sizes, agents, "host").to_json()


def sessions(count: int) -> list[Session]:
    start = time.time() - 3600 * count
    return [
        Session(f"{i:032x}", start + 3600 * i, "ci-host", 10 + i % 17, 3 + i % 5)
        for i in range(count)
    ]


def loads_in(plan: dict[str, Any]) -> int:
    return sum(len(s["load"]) for a in plan["agents"].values() for s in a["steps"])


def problems(page: Path, tmp: Path, fixtures: int, loads: int, kept: int) -> list[str]:
    rendered = chromium(write_page(page, page.read_text(encoding="utf-8"), TEXTS), tmp)
    body = rendered.dom.body
    found = []
    if body.get("data-errors"):
        found.append(f"script errors: {body['data-errors']}")
    if "Uncaught" in rendered.stderr:
        found.append("'Uncaught' in the console log")
    if body.get("data-rendered") != f"{fixtures} {loads} {kept}":
        found.append(f"data-rendered={body.get('data-rendered')!r}, not {fixtures} {loads} {kept}")
    if "data-pwned" in body:
        found.append("a label ran as a script")
    return found + overlap_problems(body)


@pytest.mark.parametrize("elements", [1, 20, 500])
def test_chromium_draws_every_part_and_no_texts_overlap(tmp_path: Path, elements: int) -> None:
    plan = plan_json(elements)
    assert loads_in(plan) > 0
    page = tmp_path / "report.html"
    page.write_text(render(run_stats(elements), plan, sessions(elements)), encoding="utf-8")
    assert problems(page, tmp_path, elements, loads_in(plan), elements) == []


def test_the_harness_sees_overlapping_texts(tmp_path: Path) -> None:
    plan = plan_json(20)
    text = render(run_stats(20), plan, sessions(20))
    broken = text.replace('class="label" x="4.0"', 'class="label" style="font-size: 40px" x="4.0"')
    assert broken != text
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    found = problems(page, tmp_path, 20, loads_in(plan), 20)
    assert any(p.startswith("labels overlap") for p in found), found


def test_a_page_without_data_says_so(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    text = render(None, None, None)
    page.write_text(text, encoding="utf-8")
    assert problems(page, tmp_path, 0, 0, 0) == []
    assert "No run statistics" in text and "A cold run has none" in text
    assert "no session recorded yet" in text


MANAGED = """
import time
import pytest

@pytest.fixture(scope="session", params=["en", "de"])
def corpus(request):
    time.sleep(0.05)
    return [request.param] * 5000

@pytest.fixture(scope="session")
def broken():
    yield 1
"""

TESTS = """
def test_one(corpus):
    assert len(corpus) == 5000

def test_two(corpus, broken):
    assert broken == 1
"""


def test_a_cold_then_a_warm_run_report_from_their_files(suite: Suite, tmp_path: Path) -> None:
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = corpus broken\n"
    )
    suite.pytester.makeconftest(MANAGED)
    suite.pytester.makepyfile(test_it=TESTS)
    store = suite.pytester.path / ".statemigrate"
    cold_page = tmp_path / "cold.html"
    cold = suite.run(f"--sm-report={cold_page}")
    assert cold.stats is not None and cold.stats["builds"] == 2, cold.text
    assert json.loads((store / "stats.json").read_text())["builds"] == 2
    text = cold_page.read_text(encoding="utf-8")
    assert "No prefetch plan for this run. A cold run has none" in text
    assert "yield fixture" in text and "<td>2</td>" in text  # corpus: two builds
    assert problems(cold_page, tmp_path, 2, 0, 1) == []

    warm = suite.run()
    assert warm.stats is not None and warm.stats["hits_total"] == 2, warm.text
    page = tmp_path / "warm.html"
    assert main(["report", "--dir", str(store), "-o", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "hits: 2 (disk 2); builds: 0" in text
    plan = json.loads((store / "plan.json").read_text())
    assert problems(page, tmp_path, 2, loads_in(plan), 2) == []
