"""The run report: one self-contained HTML page about a run (``statemigrate report -o FILE``,
``--sm-report=FILE`` at the end of a run).

:func:`render` is pure: it takes plain data and returns text (:func:`read` gathers that data
from a store directory's files, the one function here that reads any). Its parts, each saying
so when it has no data:

* the summary lines and, per fixture, builds, hits by tier, seconds built, loaded and saved,
  bytes, and the reasons of refusals, rebuilds and in-process builds: from the stats JSON the
  run writes (:meth:`report.RunStats.to_json`);
* the prefetch plan as a timeline against the test order: a row per partition, a bar from the
  test before which a load is issued to the test that uses it, and each agent's RAM held: from
  the plan JSON (:meth:`engine.Plan.to_json`, ``plan.json`` in the store directory);
* the trend over the sessions the ESG keeps: tests and elements each session used.

The pictures are SVG drawn here; every text in them has a box of its own (rows at least a label
high, axis labels thinned to their width), and a small inline script squeezes a text that the
browser's font draws wider than its box into it. The script sets ``body[data-rendered]`` and
keeps script errors in ``body[data-errors]`` (tests/integration/test_report_html.py).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .export import human_bytes, partition_colour, shorten
from .report import RunStats

#: Label font (px) and the advance of its monospace glyphs, generously (see export.CHAR_W).
FONT: Final = 12.0
CHAR_W: Final = 0.62 * FONT
ROW: Final = 18.0  # a timeline row: one label high and room around it
PLOT_W: Final = 760.0  # the plot area of a chart
LABEL_CHARS: Final = 36
AXIS_GAP: Final = 14.0  # px between two axis labels at least


@dataclass(frozen=True)
class Session:
    """A kept ESG session as the trend shows it (esg.SessionInfo's fields)."""

    id: str
    started: float
    host: str
    tests: int
    elements: int


def render(
    stats: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None,
    sessions: Sequence[Session] | None,
    *,
    sources: Mapping[str, str] | None = None,
    plan_note: str = "",
) -> str:
    """The report page.

    :param stats: the run's stats JSON; None when there is none.
    :param plan: the run's plan JSON; None when the run made no plan.
    :param sessions: the ESG's kept sessions, oldest first; None without an ESG.
    :param sources: what each part was read from (``{"stats": "/x/stats.json"}``), shown.
    :param plan_note: why there is no plan, when ``plan`` is None (a default otherwise).
    """
    sources = sources or {}
    fixtures, fixture_html = _fixtures(stats)
    planned = (stats or {}).get("planned") or {}
    sent = planned.get("sent") if isinstance(planned, Mapping) else None
    loads, plan_html = _timeline(plan, plan_note, sent if isinstance(sent, bool) else None)
    shown, trend_html = _trend(sessions)
    summary = _summary(stats)
    where = "".join(
        f"<li>{html.escape(part)}: <code>{html.escape(path)}</code></li>"
        for part, path in sources.items()
    )
    nav = " \u00b7 ".join(
        f'<a href="#{anchor}">{title}</a>'
        for anchor, title in (
            ("summary", "summary"),
            ("fixtures", f"fixtures ({fixtures})"),
            ("plan", "prefetch plan"),
            ("trend", "trend"),
        )
    )
    body = (
        f'<header><h1>statemigrate run report</h1><ul class="sources">{where}</ul>'
        f"<nav>{nav}</nav></header>"
        f'<section id="summary"><h2>Summary</h2>{summary}</section>'
        f'<section id="fixtures"><h2>Fixtures</h2>{fixture_html}</section>'
        f'<section id="plan"><h2>Prefetch plan</h2>{plan_html}</section>'
        f'<section id="trend"><h2>Trend over the kept sessions</h2>{trend_html}</section>'
    )
    counts = f'data-fixtures="{fixtures}" data-loads="{loads}" data-sessions="{shown}"'
    return _PAGE.replace("@@COUNTS@@", counts).replace("@@BODY@@", body)


def read(
    store_dir: Path,
    stats: Mapping[str, Any] | Path | None = None,
    plan: Path | None = None,
) -> str:
    """The report page from a store directory's files: ``stats.json`` (or ``stats``: the
    run's stats, or another file), ``plan.json`` (or ``plan``), ``esg.sqlite``.

    The plan is shown when it is this run's: when ``plan`` is given, or the stats say the run
    made one (a cold run makes none, and ``plan.json`` is then an earlier run's)."""
    sources: dict[str, str] = {}
    note = ""
    data: Mapping[str, Any] | None
    if isinstance(stats, Mapping):
        data, sources["run statistics"] = stats, "this run"
    else:
        path = stats or store_dir / STATS_FILE
        data, trouble = _json(path)
        sources["run statistics"] = str(path) + (f" ({trouble})" if trouble else "")
    planned = plan is not None or data is None or bool(data.get("planned"))
    plan_data = None
    plan_path = plan or store_dir / "plan.json"
    if planned:
        plan_data, trouble = _json(plan_path)
        if plan_data is not None:
            sources["prefetch plan"] = str(plan_path)
        elif trouble != "missing":
            note = f"{plan_path}: {trouble}."
    elif plan_path.exists():
        note = f"{NO_PLAN} (The plan in {plan_path} is an earlier run's.)"
    sessions = None
    esg = store_dir / "esg.sqlite"
    if esg.exists():
        from .esg import ESGStore

        with ESGStore(esg) as store:
            sessions = [
                Session(s.id, s.started, s.host, s.tests, s.elements) for s in store.sessions()
            ]
        sources["sessions"] = str(esg)
    return render(data, plan_data, sessions, sources=sources, plan_note=note)


#: Where a run leaves its statistics in the store directory (for ``statemigrate report``).
STATS_FILE: Final = "stats.json"


def after_run(
    stats: RunStats, store_dir: Path, report: Path | None, *, keep: bool = True
) -> list[str]:
    """At the end of a run: with ``keep``, its stats into the store directory (when there is
    one), and the report page to ``report`` when asked. Returns the lines saying what failed."""
    trouble = []
    data = stats.to_json()
    if keep and store_dir.is_dir():
        try:
            tmp = store_dir / f"{STATS_FILE}.tmp"
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            tmp.replace(store_dir / STATS_FILE)
        except OSError as exc:
            trouble.append(f"could not write {store_dir / STATS_FILE} ({exc.strerror or exc})")
    if report is not None:
        try:
            page = read(store_dir, data)
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(page, encoding="utf-8")
        except Exception as exc:  # the run's outcome never depends on its report
            trouble.append(
                f"--sm-report={report}: cannot write it ({exc}); name a file in a "
                "directory that can be made"
            )
    return trouble


def _json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in ``path``, "") or (None, what is wrong: "missing", "not JSON ...")."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, ""


# -- summary and fixtures --------------------------------------------------------------------


def _summary(stats: Mapping[str, Any] | None) -> str:
    if stats is None:
        return _none(
            "No run statistics: run pytest with the plugin (each run writes stats.json in the "
            "store directory), or pass the file with --stats."
        )
    lines = _stats(stats).lines()
    if not lines:
        return _none("The run managed nothing and had nothing to say.")
    return "<ul class='lines'>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"


def _stats(data: Mapping[str, Any]) -> RunStats:
    return RunStats.from_json(dict(data))


def _fixtures(data: Mapping[str, Any] | None) -> tuple[int, str]:
    """(rows, the table): a row per fixture the run managed, refused or built in-process."""
    if data is None:
        return 0, _none("No run statistics: nothing to show per fixture.")
    stats = _stats(data)

    def weight(ident: str) -> float:  # what the fixture costs or saves: the largest first
        counts = stats.per_fixture.get(ident)
        return 0.0 if counts is None else counts.build_seconds + max(0.0, counts.saved_seconds)

    named = set(stats.managed) | set(stats.per_fixture) | set(stats.refused)
    named |= set(stats.stale) | set(stats.built_instead)
    idents = sorted(named, key=lambda i: (-weight(i), stats.label(i), i))
    if not idents:
        return 0, _none("No managed fixture in this run.")
    top = max((max(0.0, c.saved_seconds) for c in stats.per_fixture.values()), default=0.0)
    rows = []
    for ident in idents:
        counts = stats.per_fixture.get(ident)
        hits = sum(counts.hits.values()) if counts else 0
        tiers = ", ".join(f"{t} {n}" for t, n in sorted(counts.hits.items())) if counts else ""
        notes = []
        for kind, reasons in (
            ("refused", stats.refused),
            ("rebuilt", stats.stale),
            ("built in-process", stats.built_instead),
        ):
            if ident in reasons:
                notes.append(f"<b>{kind}</b>: {html.escape(reasons[ident])}")
        saved = counts.saved_seconds if counts else 0.0
        share = 0.0 if top <= 0 else max(0.0, saved) / top
        bar = f'<span class="bar" style="width:{100 * share:.1f}%"></span>' if share else ""
        rows.append(
            "<tr>"
            f'<td class="label" title="{html.escape(ident)}">{html.escape(stats.label(ident))}</td>'
            f"<td>{counts.builds if counts else 0}</td>"
            f"<td>{hits}{f' <small>({tiers})</small>' if tiers else ''}</td>"
            f"<td>{_s(counts.build_seconds if counts else 0.0)}</td>"
            f"<td>{_s(counts.load_seconds if counts else 0.0)}</td>"
            f'<td class="saved"><span class="num">{_s(saved)}</span>{bar}</td>'
            f"<td>{human_bytes(counts.bytes_loaded) if counts else '-'}</td>"
            f"<td>{human_bytes(counts.bytes_stored) if counts else '-'}</td>"
            f'<td class="why">{"<br>".join(notes)}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "fixture",
            "builds",
            "hits (tiers)",
            "built s",
            "loaded s",
            "saved s",
            "loaded",
            "stored",
            "refusals, rebuilds and why",
        )
    )
    table = f'<table class="fixtures"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
    return len(idents), table + "</table>"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _s(seconds: float) -> str:
    return f"{seconds:.3f}"


def _none(text: str) -> str:
    return f'<p class="none">{html.escape(text)}</p>'


# -- SVG helpers -----------------------------------------------------------------------------


def _text(
    x: float, y: float, text: str, width: float, cls: str = "t", anchor: str = "start"
) -> str:
    """An SVG text in a box ``width`` wide (the page squeezes it in if the font is wider)."""
    return (
        f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" '
        f'data-fit="{width:.1f}">{html.escape(text)}</text>'
    )


def _width(text: str, font: float = FONT) -> float:
    return math.ceil(len(text) * 0.62 * font) + 2


def _ticks(count: int, room: float, widest: float) -> list[int]:
    """Which of ``count`` evenly spaced positions over ``room`` px get a label ``widest`` px
    wide, so that no two labels come closer than :data:`AXIS_GAP`."""
    if count <= 0:
        return []
    pitch = room / count
    step = max(1, math.ceil((widest + AXIS_GAP) / pitch))
    nice = next((n * 10**e for e in range(8) for n in (1, 2, 5) if n * 10**e >= step), step)
    if nice == 1:
        return list(range(count))
    # The first position, then every multiple of ``nice`` (counting from 1), as people count.
    marks = list(range(nice - 1, count, nice))
    if not marks or (marks[0] * pitch >= widest + AXIS_GAP):
        marks.insert(0, 0)
    return marks


# -- the prefetch plan -----------------------------------------------------------------------

NO_PLAN: Final = (
    "No prefetch plan for this run. A cold run has none: a plan is made once the ESG has "
    "partitions and an agent holds their values (and prefetching is on)."
)


def _timeline(
    plan: Mapping[str, Any] | None, note: str, plan_sent: bool | None = None
) -> tuple[int, str]:
    """(loads drawn, the section): the plan's loads against the test order."""
    if plan is None:
        return 0, _none(note or NO_PLAN)
    tests = [str(t) for t in plan.get("tests", [])]
    agents: Mapping[str, Any] = plan.get("agents", {})
    loads: list[tuple[str, int, int, int, str, int]] = []  # agent, partition, issue, due, ...
    for name, schedule in sorted(agents.items()):
        for step in schedule.get("steps", []):
            for load in step.get("load", []):
                loads.append(
                    (
                        name,
                        int(load["partition"]),
                        int(step["test"]),
                        int(load["for"]),
                        str(load.get("source", "")),
                        int(load.get("bytes", 0)),
                    )
                )
    if not tests or not loads:
        return 0, _none(
            f"The plan has {len(tests)} tests and no load: every value it needs was in RAM "
            "already, or none is in a partition."
        )
    many_agents = len(agents) > 1
    rows: dict[tuple[str, int], int] = {}
    size: dict[tuple[str, int], int] = {}
    for agent, part, *_, nbytes in sorted(loads, key=lambda x: (x[2], x[1])):
        rows.setdefault((agent, part), len(rows))
        size[(agent, part)] = max(size.get((agent, part), 0), nbytes)
    label = {
        row: shorten(
            f"partition {row[1]}"
            + (f" @ {row[0]}" if many_agents else "")
            + f" \u00b7 {human_bytes(size[row])}",
            LABEL_CHARS,
        )
        for row in rows
    }
    left = max(_width(t) for t in label.values()) + 12
    pitch = PLOT_W / len(tests)
    top = 8.0
    height = top + ROW * len(rows)

    def x(index: int) -> float:
        return left + index * pitch

    parts = [f'<line class="axis" x1="{left}" y1="{height}" x2="{left + PLOT_W}" y2="{height}"/>']
    for row, i in rows.items():
        y = top + i * ROW
        if i % 2:
            parts.append(
                f'<rect class="stripe" x="0" y="{y:.1f}" width="{left + PLOT_W}" height="{ROW}"/>'
            )
        parts.append(_text(4, y + ROW / 2 + FONT * 0.35, label[row], left - 12, "label"))
    for agent, part, issue, due, source, nbytes in loads:
        y = top + rows[(agent, part)] * ROW + 3
        start, end = x(issue), x(due + 1)
        what = (
            f"partition {part} ({human_bytes(nbytes)}) from {source or 'the agent'}"
            + (f" to agent {agent}" if many_agents else "")
            + f": issued before test {issue + 1} ({tests[issue] if issue < len(tests) else '?'}),"
            f" used by test {due + 1} ({tests[due] if due < len(tests) else '?'})"
        )
        parts.append(
            f'<rect class="load" x="{start:.1f}" y="{y:.1f}" width="{max(2.0, end - start):.1f}"'
            f' height="{ROW - 6}" fill="{partition_colour(part)}"><title>{html.escape(what)}'
            "</title></rect>"
        )
    parts += _test_axis(tests, left, pitch, height)
    ram_parts, ram_height = _ram(agents, left, pitch, height + 66)
    parts += ram_parts
    svg_h = height + 50 + ram_height
    stats = plan.get("stats", {})
    facts = (
        f"{_count(len(tests), 'test')} in run order, {_count(len(loads), 'load')} of "
        f"{_count(len(rows), 'partition')} on {_count(len(agents), 'agent')}"
    )
    if isinstance(stats, Mapping) and "hit_rate" in stats:
        facts += (
            f"; planned: {float(stats.get('hit_rate', 0)):.0%} of uses find their partition in "
            f"RAM, {float(stats.get('ready_rate', 0)):.0%} without waiting"
        )
    if plan_sent is False:
        facts += (
            " (not carried out: with the run's own agent and its disk tier on this machine, "
            "the tests read the disk tier directly, faster than through the agent's RAM)"
        )
    key = (
        "A bar runs from the test before which a load is issued to the test that uses it; a "
        "short bar is a load the test waits for. Hover a bar for its partition and tests."
    )
    svg = (
        f'<svg class="chart" width="{left + PLOT_W + 20:.0f}" height="{svg_h:.0f}" '
        f'role="img" aria-label="prefetch timeline">{"".join(parts)}</svg>'
    )
    return len(loads), f"<p>{html.escape(facts)}.</p><p class='hint'>{key}</p>{svg}"


def _test_axis(tests: Sequence[str], left: float, pitch: float, y: float) -> list[str]:
    """Ticks under the timeline: test numbers (1-based), thinned so that none overlap."""
    out = []
    widest = _width(str(len(tests)))
    for i in _ticks(len(tests), PLOT_W, widest):
        cx = left + (i + 0.5) * pitch
        out.append(f'<line class="tick" x1="{cx:.1f}" y1="{y}" x2="{cx:.1f}" y2="{y + 4}"/>')
        label = _text(cx, y + 16, str(i + 1), widest, "tick-label", "middle")
        out.append(label.replace("</text>", f"<title>{html.escape(tests[i])}</title></text>"))
    out.append(_text(left, y + 34, "tests, in run order", PLOT_W, "axis-title"))
    return out


def _ram(
    agents: Mapping[str, Any], left: float, pitch: float, y0: float
) -> tuple[list[str], float]:
    """Each agent's RAM held while each test runs, as a step line under the timeline."""
    out: list[str] = []
    y = y0
    band = 40.0
    for name, schedule in sorted(agents.items()):
        held = [int(b) for b in schedule.get("resident_bytes", [])]
        if not held:
            continue
        peak = max(held)
        points = []
        for i, nbytes in enumerate(held):
            level = y + band - band * nbytes / max(peak, 1)
            points += [
                f"{left + i * pitch:.1f},{level:.1f}",
                f"{left + (i + 1) * pitch:.1f},{level:.1f}",
            ]
        out.append(f'<polyline class="ram" points="{" ".join(points)}"/>')
        held_text = f"peak {human_bytes(peak)}" if peak else "nothing (no partition planned)"
        text = shorten(f"RAM held by {name}: {held_text}", LABEL_CHARS + 20)
        out.append(_text(left, y - 4, text, PLOT_W, "label"))
        y += band + 26
    return out, y - y0


# -- the trend -------------------------------------------------------------------------------


def _trend(sessions: Sequence[Session] | None) -> tuple[int, str]:
    if sessions is None:
        return 0, _none("No execution state graph: no session recorded yet.")
    if not sessions:
        return 0, _none("The execution state graph keeps no session yet.")
    n = len(sessions)
    top = max(max(s.tests, s.elements) for s in sessions) or 1
    left, plot_h, y0 = 48.0, 140.0, 10.0
    pitch = PLOT_W / n
    bars = pitch >= 6  # room for a pair of bars per session; else two lines
    bar = min(14.0, pitch * 0.4)
    parts = []
    lines: dict[str, list[str]] = {"tests": [], "elements": []}
    for i, s in enumerate(sessions):
        cx = left + (i + 0.5) * pitch
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started))
        tip = f"session {s.id[:12]} on {s.host}, {when}: {s.tests} tests, {s.elements} elements"
        marks = []
        for k, (value, cls) in enumerate(((s.tests, "tests"), (s.elements, "elements"))):
            h = plot_h * value / top
            if bars:
                marks.append(
                    f'<rect class="{cls}" x="{cx - bar + k * bar:.1f}" y="{y0 + plot_h - h:.1f}"'
                    f' width="{bar:.1f}" height="{max(h, 0.5):.1f}"/>'
                )
            else:
                lines[cls].append(f"{cx:.1f},{y0 + plot_h - h:.1f}")
        # A session is a group with its tooltip: a band as wide as its place when drawn as
        # lines, so that hovering anywhere over it names it.
        if not bars:
            marks.append(
                f'<rect class="hover" x="{cx - pitch / 2:.1f}" y="{y0}" width="{pitch:.2f}"'
                f' height="{plot_h}"/>'
            )
        parts.append(f'<g class="session"><title>{html.escape(tip)}</title>{"".join(marks)}</g>')
    for cls, points in lines.items():
        if points:
            parts.insert(0, f'<polyline class="line {cls}" points="{" ".join(points)}"/>')
    base = y0 + plot_h
    parts.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{left + PLOT_W}" y2="{base}"/>')
    parts.append(_text(left - 6, y0 + FONT * 0.7, str(top), left - 8, "tick-label", "end"))
    parts.append(_text(left - 6, base, "0", left - 8, "tick-label", "end"))
    stamp = "%m-%d %H:%M:%S"
    widest = _width("00-00 00:00:00")
    for i in _ticks(n, PLOT_W, widest):
        cx = left + (i + 0.5) * pitch
        when = time.strftime(stamp, time.localtime(sessions[i].started))
        parts.append(_text(cx, base + 16, when, widest, "tick-label", "middle"))
    parts.append(
        _text(
            left,
            base + 34,
            "sessions, oldest first (the last: the latest run)",
            PLOT_W,
            "axis-title",
        )
    )
    svg = (
        f'<svg class="chart" width="{left + PLOT_W + 20:.0f}" height="{base + 44:.0f}" '
        f'role="img" aria-label="trend">{"".join(parts)}</svg>'
    )
    key = (
        '<p class="key"><span class="sw tests"></span> tests that used managed state '
        '<span class="sw elements"></span> state elements used</p>'
    )
    return n, f"<p>{_count(n, 'session')} kept.</p>{key}{svg}"


_PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>statemigrate: run report</title>
<style>
  body { margin: 0 auto; max-width: 1200px; padding: 8px 20px 40px;
         font: 14px/1.45 system-ui, sans-serif; color: #222; }
  h1 { font-size: 20px; margin: 8px 0 2px; }
  h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid #ddd; }
  .sources { margin: 0; padding-left: 18px; color: #666; font-size: 12px; }
  .none { color: #7a5a00; background: #fff8e1; padding: 6px 10px; border-radius: 4px; }
  .lines { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
  table.fixtures { border-collapse: collapse; width: 100%; font-size: 13px; }
  .fixtures th, .fixtures td { padding: 3px 6px; border-bottom: 1px solid #eee;
                               text-align: right; vertical-align: top; }
  .fixtures th:first-child, .fixtures td:first-child, .fixtures .why,
  .fixtures th:last-child { text-align: left; }
  .fixtures th, .fixtures td:not(.label):not(.why) { white-space: nowrap; }
  nav { margin: 6px 0 0; font-size: 13px; }
  a { color: #2a5d9f; }
  .fixtures td.label { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
                       word-break: break-all; max-width: 320px; }
  .fixtures td.saved { min-width: 120px; }
  .bar { display: block; height: 4px; background: #59a14f; margin-left: auto; }
  .why { color: #444; max-width: 340px; }
  .hint { color: #666; font-size: 12px; }
  svg.chart { display: block; overflow: visible; margin-top: 6px; }
  svg text { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
             fill: #333; }
  svg .axis-title { fill: #666; font-family: system-ui, sans-serif; }
  .stripe { fill: #f4f4f4; }
  .axis, .tick { stroke: #999; }
  .load { stroke: #0004; }
  .ram { fill: none; stroke: #4e79a7; stroke-width: 1.5; }
  rect.tests, .sw.tests { fill: #4e79a7; background: #4e79a7; }
  rect.elements, .sw.elements { fill: #f28e2b; background: #f28e2b; }
  .line { fill: none; stroke-width: 1.5; }
  .line.tests { stroke: #4e79a7; }
  .line.elements { stroke: #f28e2b; }
  rect.hover { fill: transparent; }
  rect.hover:hover { fill: #0001; }
  .sw { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; }
  .key { font-size: 12px; color: #444; margin: 0; }
</style>
</head>
<body @@COUNTS@@>
<script>
  // First of all, so that a later failure is kept in the page (the browser test reads it).
  (function () {
    function record(message) {
      var body = document.body;
      body.dataset.errors = (body.dataset.errors ? body.dataset.errors + "\\n" : "") + message;
    }
    window.addEventListener("error", function (e) { record(String(e.message)); });
  })();
</script>
@@BODY@@
<script>
(function () {
  "use strict";
  // A text the font draws wider than its box is squeezed into it: labels never overlap.
  var texts = Array.prototype.slice.call(document.querySelectorAll("text[data-fit]"));
  texts.map(function (t) { return t.getComputedTextLength() > Number(t.dataset.fit); })
    .forEach(function (wide, i) {
      if (!wide) return;
      texts[i].setAttribute("textLength", texts[i].dataset.fit);
      texts[i].setAttribute("lengthAdjust", "spacingAndGlyphs");
    });
  document.body.dataset.rendered = String(
    document.querySelectorAll("table.fixtures tbody tr").length + " " +
    document.querySelectorAll("rect.load").length + " " +
    document.querySelectorAll("g.session").length);
})();
</script>
</body>
</html>
"""
