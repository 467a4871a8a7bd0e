"""Export of the execution state graph (ESG): GraphML, node-link JSON, DOT, and one HTML page.

Pure: takes the ``networkx.Graph`` the ESG store builds and returns text. Nodes are state keys;
node attributes ``fixture`` (label), ``scope``, ``bytes``, ``build_s``, ``load_s``,
``accesses``, ``writes``, ``tests``, ``partition`` (absent or None before partitioning); edge
attribute ``weight`` (co-access count). Any attribute may be missing. Known attributes are
coerced to their type and dropped when they cannot be (None, NaN, unreadable); other attributes
are kept when scalar and turned into strings otherwise, so every format gets the same clean data.

The HTML page is self-contained (no network): positions are computed here, the data is embedded
as JSON, and a small inline script draws the SVG, then sets ``body[data-rendered]`` to the
number of elements drawn; script errors land in ``body[data-errors]``.
"""

from __future__ import annotations

import colorsys
import html
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    import networkx as nx  # type: ignore[import-untyped]

Format = Literal["html", "graphml", "json", "dot"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)

#: Circle radius in layout units: area is proportional to bytes, clamped to these bounds.
MIN_RADIUS: Final = 3.0
MAX_RADIUS: Final = 16.0
#: The page draws the heaviest edges only: browsers slow down beyond ~10k SVG lines.
MAX_EDGES: Final = 5000

Scalar = str | int | float | bool
_Attrs = dict[str, Scalar]

_NODE_TYPES: Final[Mapping[str, Callable[[Any], Scalar]]] = {
    "fixture": str,
    "scope": str,
    "bytes": int,
    "build_s": float,
    "load_s": float,
    "accesses": int,
    "writes": int,
    "tests": int,
    "partition": int,
    "stale": bool,
}
_EDGE_TYPES: Final[Mapping[str, Callable[[Any], Scalar]]] = {"weight": int}
# Characters XML 1.0 cannot hold; they carry no meaning in a label anywhere else either.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# Tableau 10 without its grey (grey means "not partitioned yet"); further ids by golden angle.
_PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
UNPARTITIONED_COLOUR: Final = "#9e9e9e"


def export(graph: nx.Graph, fmt: Format, path: Path | None = None) -> str:
    """The graph as text in ``fmt``; also written to ``path`` (UTF-8) when one is given.

    :raises ValueError: for an unknown format.
    """
    try:
        render = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown graph format {fmt!r}; choose one of {', '.join(FORMATS)}"
        ) from None
    text = render(graph)
    if path is not None:
        path.write_bytes(text.encode("utf-8"))
    return text


def partition_colour(partition: int | None) -> str:
    """A stable colour for a partition id (grey when not partitioned)."""
    if partition is None:
        return UNPARTITIONED_COLOUR
    if 0 <= partition < len(_PALETTE):
        return _PALETTE[partition]
    red, green, blue = colorsys.hls_to_rgb((partition * 0.618033988749895) % 1.0, 0.5, 0.55)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (red, green, blue))


def human_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(size) >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.0f} B" if i == 0 else f"{size:.1f} {units[i]}"


# -- clean data ------------------------------------------------------------------------------


def _clean(attrs: Mapping[Any, Any], types: Mapping[str, Callable[[Any], Scalar]]) -> _Attrs:
    out: _Attrs = {}
    for name, raw in attrs.items():
        if raw is None:
            continue
        kind = types.get(str(name))
        try:
            if kind is not None:
                value = kind(raw)
            elif isinstance(raw, (str, int, float)):  # bool is an int
                value = raw
            else:
                value = str(raw)
        except (TypeError, ValueError, ArithmeticError):
            continue  # a value the export cannot read is left out, never fatal
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[str(name)] = _CONTROL.sub("", value) if isinstance(value, str) else value
    return out


def _cleaned(graph: nx.Graph) -> tuple[list[tuple[Any, _Attrs]], list[tuple[Any, Any, _Attrs]]]:
    """Nodes sorted by key and edges sorted by their (sorted) ends, with clean attributes."""
    nodes = sorted(
        ((node, _clean(data, _NODE_TYPES)) for node, data in graph.nodes(data=True)),
        key=lambda item: str(item[0]),
    )
    edges = []
    for u, v, data in graph.edges(data=True):
        a, b = (u, v) if str(u) <= str(v) else (v, u)
        edges.append((a, b, _clean(data, _EDGE_TYPES)))
    edges.sort(key=lambda e: (str(e[0]), str(e[1])))
    return nodes, edges


def _partition(attrs: _Attrs) -> int | None:
    value = attrs.get("partition")
    return value if isinstance(value, int) else None


def _number(attrs: _Attrs, name: str) -> float:
    value = attrs.get(name, 0)
    return max(0.0, float(value)) if isinstance(value, (int, float)) else 0.0


def _weight(attrs: _Attrs) -> int:
    value = attrs.get("weight", 1)
    return max(1, value) if isinstance(value, int) else 1


def _label(node: Any, attrs: _Attrs) -> str:
    return str(attrs.get("fixture") or _CONTROL.sub("", str(node))[:12])


# -- GraphML, JSON ---------------------------------------------------------------------------


def _graphml(graph: nx.Graph) -> str:
    import networkx as nx

    nodes, edges = _cleaned(graph)
    clean = nx.Graph()
    clean.graph.update(_clean(graph.graph, {}))
    clean.add_nodes_from(nodes)
    clean.add_edges_from(edges)
    buffer = io.BytesIO()
    nx.write_graphml(clean, buffer, encoding="utf-8", infer_numeric_types=True)
    return buffer.getvalue().decode("utf-8")


def _json(graph: nx.Graph) -> str:
    # The node-link layout of ``nx.node_link_data(graph, edges="edges")``, built here because
    # networkx 3.2-3.3 spell that keyword ``link=`` and 3.4-3.5 warn without it; sorted.
    nodes, edges = _cleaned(graph)
    data = {
        "directed": False,
        "multigraph": False,
        "graph": _clean(graph.graph, {}),
        "nodes": [{**attrs, "id": node} for node, attrs in nodes],
        "edges": [{**attrs, "source": u, "target": v} for u, v, attrs in edges],
    }
    return json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"


# -- DOT -------------------------------------------------------------------------------------


def _dot_quote(text: object) -> str:
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _groups(nodes: Iterable[tuple[Any, _Attrs]]) -> dict[int | None, list[tuple[Any, _Attrs]]]:
    """Nodes by partition: ids ascending, the unpartitioned last."""
    groups: dict[int | None, list[tuple[Any, _Attrs]]] = {}
    for node, attrs in nodes:
        groups.setdefault(_partition(attrs), []).append((node, attrs))
    order = sorted(groups, key=lambda p: (p is None, p or 0))
    return {p: groups[p] for p in order}


def _dot(graph: nx.Graph) -> str:
    nodes, edges = _cleaned(graph)
    lines = [
        "graph esg {",
        "  graph [overlap=false, outputorder=edgesfirst];",
        '  node [shape=ellipse, style=filled, fontname="Helvetica", fontsize=10];',
        '  edge [color="#00000066"];',
    ]
    for partition, members in _groups(nodes).items():
        colour = partition_colour(partition)
        indent = "  "
        if partition is not None:
            lines.append(f'  subgraph "cluster_p{partition}" {{')
            lines.append(f'    label="partition {partition}"; color="{colour}";')
            indent = "    "
        for node, attrs in members:
            tip = f"{node}\n{human_bytes(_number(attrs, 'bytes'))}"
            lines.append(
                f"{indent}{_dot_quote(node)} [label={_dot_quote(_label(node, attrs))},"
                f' fillcolor="{colour}", tooltip={_dot_quote(tip)}];'
            )
        if partition is not None:
            lines.append("  }")
    top = max((_weight(attrs) for *_, attrs in edges), default=1)
    for u, v, attrs in edges:
        weight = _weight(attrs)
        lines.append(
            f"  {_dot_quote(u)} -- {_dot_quote(v)}"
            f" [weight={weight}, penwidth={0.5 + 3 * weight / top:.2f}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- HTML: layout ----------------------------------------------------------------------------
#
# Each partition is a card: a title row, then its elements in columns, each element a disc
# (area by bytes) with its label beside it, the largest first. Every label has a box of its
# own: rows are at least one label high, columns as wide as the card's longest label (a label
# longer than LABEL_CHARS is shortened in the middle; the page squeezes any label the font
# draws wider than its box into it), so no two labels or titles overlap at any element count.
# The cards are packed in rows (shelves) by partition id. Deterministic and O(n log n + m log m).
# Rejected: discs packed on a sunflower spiral per partition (the layout before this one): it
# leaves no room for labels, and its partition titles ran into each other ("partition 2partition
# 3"); networkx's spring_layout: it needs numpy, is O(n²) per iteration and overlaps elements
# of different sizes; labels placed by a force/collision simulation in the browser: slow at 500
# elements and never guaranteed to settle without an overlap.

_Point = tuple[float, float]

#: Label and title sizes in layout units (pixels at the page's initial scale). Labels are
#: drawn in a monospace font, whose advance is about 0.6 em: CHAR_W estimates it generously.
FONT: Final = 12.0
TITLE_FONT: Final = 13.0
CHAR_W: Final = 0.62
LABEL_CHARS: Final = 40
ROW: Final = 20.0  # the least row height: one label and room around it
TITLE_ROW: Final = 28.0
PAD: Final = 10.0  # inside a card
COLUMN_GAP: Final = 18.0
MAX_ROWS: Final = 20  # rows per column in a card before another column starts
#: The width the shelves aim at: a card row fits a laptop screen at the initial scale.
SHELF_WIDTH: Final = 1040.0


def _radii(nodes: list[tuple[Any, _Attrs]]) -> dict[Any, float]:
    top = max((_number(attrs, "bytes") for _, attrs in nodes), default=0.0) or 1.0
    return {
        node: max(MIN_RADIUS, MAX_RADIUS * math.sqrt(_number(attrs, "bytes") / top))
        for node, attrs in nodes
    }


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` of at most ``limit`` characters: a longer one keeps its start and its end (the
    param) around an ellipsis."""
    if len(text) <= limit:
        return text
    tail = max(1, limit // 3)
    return text[: limit - tail - 1] + "\u2026" + text[-tail:]


def _short_labels(nodes: list[tuple[Any, _Attrs]]) -> dict[Any, str]:
    """What each element's label on the picture says: the fixture's name and param without
    where it is defined, unless two fixtures of that name are defined in different places;
    "(stale)" after it for a stale element."""
    full = {node: _label(node, attrs) for node, attrs in nodes}
    short = {node: label.rpartition("::")[2] or label for node, label in full.items()}
    places: dict[str, set[str]] = {}
    for node, name in short.items():
        places.setdefault(name.partition("[")[0], set()).add(full[node].rpartition("::")[0])
    stale = {node for node, attrs in nodes if attrs.get("stale")}
    return {
        node: shorten(name if len(places[name.partition("[")[0]]) == 1 else full[node])
        + (" (stale)" if node in stale else "")
        for node, name in short.items()
    }


def _card(
    members: list[Any], radius: Mapping[Any, float], text: Mapping[Any, str], title: str
) -> tuple[float, float, dict[Any, _Point], float]:
    """Lay out one card at the origin: (width, height, disc centres, label box width)."""
    disc = 2 * max((radius[n] for n in members), default=MIN_RADIUS)
    label_w = math.ceil(max((len(text[n]) for n in members), default=1) * CHAR_W * FONT) + 4
    column_w = disc + 6 + label_w
    # Columns of MAX_ROWS, as many as a shelf holds; then longer columns.
    fit = max(1, math.floor((SHELF_WIDTH - 2 * PAD + COLUMN_GAP) / (column_w + COLUMN_GAP)))
    cols = max(1, min(math.ceil(len(members) / MAX_ROWS), fit))
    rows = math.ceil(len(members) / cols) if members else 0
    heights = [ROW] * rows
    for i, node in enumerate(members):
        heights[i % rows] = max(heights[i % rows], 2 * radius[node] + 4)
    tops = [TITLE_ROW + sum(heights[:r]) for r in range(rows)]
    centres: dict[Any, _Point] = {}
    for i, node in enumerate(members):  # down each column, then the next
        col, row = divmod(i, rows)
        x = PAD + col * (column_w + COLUMN_GAP) + disc / 2
        centres[node] = (x, tops[row] + heights[row] / 2)
    width = 2 * PAD + cols * column_w + (cols - 1) * COLUMN_GAP
    width = max(width, 2 * PAD + len(title) * CHAR_W * TITLE_FONT)
    height = TITLE_ROW + sum(heights) + PAD
    return width, height, centres, label_w


def _shelves(sizes: list[tuple[float, float]], gap: float = 24.0) -> list[_Point]:
    """Top-left corners for boxes of these (width, height), left to right in rows."""
    width = max(SHELF_WIDTH, max((w for w, _ in sizes), default=0.0))
    corners: list[_Point] = []
    x = y = row = 0.0
    for w, h in sizes:
        if x > 0 and x + w > width:
            x, y, row = 0.0, y + row + gap, 0.0
        corners.append((x, y))
        x += w + gap
        row = max(row, h)
    return corners


def _page_data(graph: nx.Graph) -> dict[str, Any]:
    nodes, edges = _cleaned(graph)
    radius = _radii(nodes)
    text = _short_labels(nodes)
    weighted = [(u, v, _weight(attrs)) for u, v, attrs in edges if u != v]
    groups = _groups(nodes)

    cards = []
    for partition, members in groups.items():
        members = sorted(members, key=lambda m: (-_number(m[1], "bytes"), text[m[0]], str(m[0])))
        size = sum(_number(attrs, "bytes") for _, attrs in members)
        name = "not partitioned" if partition is None else f"partition {partition}"
        title = f"{name} \u00b7 {len(members)} element{'s' * (len(members) != 1)}"
        title += f" \u00b7 {human_bytes(size)}"
        cards.append(
            (partition, members, size, title, _card([n for n, _ in members], radius, text, title))
        )
    corners = _shelves([(w, h) for *_, (w, h, _, _) in cards])

    out_nodes: list[dict[str, Any]] = []
    index: dict[Any, int] = {}
    out_groups: list[dict[str, Any]] = []
    for (partition, members, size, title, (w, h, centres, label_w)), (left, top) in zip(
        cards, corners, strict=True
    ):
        colour = partition_colour(partition)
        disc = 2 * max(radius[n] for n, _ in members)
        out_groups.append(
            {
                "id": partition,
                "label": title,
                "elements": len(members),
                "bytes": size,
                "size": human_bytes(size),
                "colour": colour,
                "x": round(left, 1),
                "y": round(top, 1),
                "w": round(w, 1),
                "h": round(h, 1),
                "tx": round(left + PAD, 1),
                "ty": round(top + TITLE_ROW - 10, 1),
                "tw": round(w - 2 * PAD, 1),
            }
        )
        for node, attrs in members:
            index[node] = len(out_nodes)
            x, y = centres[node]
            out_nodes.append(
                {
                    "key": _CONTROL.sub("", str(node)),
                    "label": _label(node, attrs),
                    "text": text[node],
                    "scope": str(attrs.get("scope", "")),
                    "partition": partition,
                    "colour": colour,
                    "size": human_bytes(_number(attrs, "bytes")),
                    "stale": bool(attrs.get("stale", False)),
                    **{
                        name: _number(attrs, name)
                        for name in ("bytes", "build_s", "load_s", "accesses", "writes", "tests")
                    },
                    "x": round(left + x, 1),
                    "y": round(top + y, 1),
                    "r": round(radius[node], 1),
                    "lx": round(left + x + disc / 2 + 6, 1),
                    "lw": label_w,
                }
            )

    drawn = sorted(weighted, key=lambda e: -e[2])[:MAX_EDGES]
    top_bytes = max((n["bytes"] for n in out_nodes), default=0.0)
    return {
        "nodes": out_nodes,
        "edges": [[index[u], index[v], weight] for u, v, weight in drawn],
        "edges_total": len(weighted),
        "max_weight": max((weight for *_, weight in weighted), default=1),
        "groups": out_groups,
        "view": _view(out_groups),
        "font": FONT,
        "title_font": TITLE_FONT,
        "sizes": _size_legend(top_bytes),
    }


def _size_legend(top: float) -> list[dict[str, Any]]:
    """Discs for the legend: the largest element's size, a quarter and a hundredth of it."""
    if top <= 0:
        return []
    out = []
    for share in (1.0, 0.25, 0.01):
        r = max(MIN_RADIUS, MAX_RADIUS * math.sqrt(share))
        out.append({"r": round(r, 1), "size": human_bytes(top * share)})
    return out


def _view(groups: list[dict[str, Any]]) -> list[float]:
    """The whole picture with a margin: what a double-click shows."""
    if not groups:
        return [0.0, 0.0, 100.0, 100.0]
    right = max(g["x"] + g["w"] for g in groups)
    bottom = max(g["y"] + g["h"] for g in groups)
    return [-12.0, -12.0, round(right + 24, 1), round(bottom + 24, 1)]


# -- HTML: page ------------------------------------------------------------------------------


def _script_json(data: object) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` survive, so no ``</script>``."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _summary(data: Mapping[str, Any]) -> str:
    nodes = data["nodes"]
    if not nodes:
        return (
            "Nothing recorded yet: run the suite with the plugin on, and the graph fills in as"
            " tests use managed state."
        )
    total = human_bytes(sum(n["bytes"] for n in nodes))
    edges = _count(data["edges_total"], "co-access edge")
    if data["edges_total"] > len(data["edges"]):
        edges += f" (the {len(data['edges'])} heaviest drawn)"
    partitions = sum(1 for g in data["groups"] if g["id"] is not None)
    loose = sum(g["elements"] for g in data["groups"] if g["id"] is None)
    if not partitions:
        grouping = "not partitioned yet"
    else:
        grouping = _count(partitions, "partition") + (f", {loose} not partitioned" if loose else "")
    stale = sum(1 for n in nodes if n["stale"])
    return f"{_count(len(nodes), 'element')}, {total}; {edges}; {grouping}" + (
        f"; {stale} stale." if stale else "."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _html(graph: nx.Graph) -> str:
    data = _page_data(graph)
    values = {"SUMMARY": html.escape(_summary(data)), "DATA": _script_json(data)}
    return re.sub(r"@@(SUMMARY|DATA)@@", lambda m: values[m[1]], _PAGE)


_RENDERERS: Final[Mapping[str, Callable[[nx.Graph], str]]] = {
    "html": _html,
    "graphml": _graphml,
    "json": _json,
    "dot": _dot,
}

# The page. Everything inline; the script builds the SVG from the embedded JSON with
# createElementNS and textContent only (never innerHTML), so labels cannot inject markup.
_PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>statemigrate: execution state graph</title>
<style>
  body { margin: 0; height: 100vh; display: grid; grid-template: auto 1fr / 1fr 330px;
         font: 13px/1.4 system-ui, sans-serif; color: #222; }
  header { grid-column: 1 / 3; padding: 6px 12px; border-bottom: 1px solid #ddd; }
  h1 { display: inline; font-size: 15px; margin-right: 10px; }
  h2 { font-size: 13px; margin: 12px 0 4px; }
  #graph { width: 100%; height: 100%; background: #fafafa; cursor: grab; touch-action: none;
           display: block; }
  aside { border-left: 1px solid #ddd; padding: 4px 12px; overflow: auto; }
  table { border-collapse: collapse; width: 100%; }
  th, td { padding: 1px 4px; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  #legend tr { cursor: pointer; }
  #legend tbody tr:hover { background: #eee; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
            margin-right: 4px; vertical-align: -1px; }
  .group { fill: #fff; stroke: #d0d0d0; }
  .glabel { fill: #444; font-weight: 600; }
  .edge { stroke: #445; pointer-events: none; }
  .node { stroke: #fff; stroke-width: 1; cursor: pointer; }
  .node.stale { stroke: #222; stroke-dasharray: 2 2; fill-opacity: 0.45; }
  .node.sel { stroke: #000; stroke-width: 2; stroke-dasharray: none; }
  .label { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
           fill: #222; cursor: pointer; paint-order: stroke; stroke: #fff; stroke-width: 2px;
           stroke-linejoin: round; }
  .label.stale { fill: #888; font-style: italic; }
  .dim { opacity: 0.12; }
  dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 0 8px; }
  dt { color: #666; }
  dd { margin: 0; word-break: break-all; }
  #tip { position: fixed; display: none; pointer-events: none; background: #fff;
         border: 1px solid #999; padding: 4px 6px; box-shadow: 0 1px 4px #0003; }
  .hint { color: #777; }
  .key svg { vertical-align: middle; }
  .key td { text-align: left; padding: 2px 4px; }
</style>
</head>
<body>
<script>
  // First of all, so that a later failure is kept in the page (the browser test reads it).
  (function () {
    function record(message) {
      var body = document.body;
      body.dataset.errors = (body.dataset.errors ? body.dataset.errors + "\\n" : "") + message;
    }
    window.addEventListener("error", function (e) { record(String(e.message)); });
    window.addEventListener("unhandledrejection", function (e) {
      record("unhandled rejection: " + String(e.reason));
    });
  })();
</script>
<header><h1>Execution state graph</h1><span id="summary">@@SUMMARY@@</span></header>
<svg id="graph" role="img" aria-label="execution state graph"
     preserveAspectRatio="xMinYMin meet"></svg>
<aside>
  <h2>Legend</h2>
  <table class="key"><tbody id="key"></tbody></table>
  <h2>Partitions</h2>
  <table id="legend"><thead><tr><th>partition</th><th>elements</th><th>bytes</th></tr></thead>
  <tbody></tbody></table>
  <h2>Element</h2>
  <dl id="details"></dl>
  <p class="hint">Each card is a partition: elements that tests use together, moved together.
  Hover an element (disc or label) for its details, click to pin it and show its co-access
  neighbours, click a partition to single it out. Wheel zooms, drag pans, double-click shows
  the whole graph.</p>
</aside>
<div id="tip"></div>
<noscript>This page draws the graph with JavaScript.</noscript>
<script type="application/json" id="esg-data">@@DATA@@</script>
<script>
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("esg-data").textContent);
  var svg = document.getElementById("graph");
  var tip = document.getElementById("tip");
  var details = document.getElementById("details");

  function svgEl(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    parent.appendChild(e);
    return e;
  }
  function htmlEl(name, text, parent) {
    var e = document.createElement(name);
    if (text !== null) e.textContent = text;
    parent.appendChild(e);
    return e;
  }

  // At first one layout unit is one pixel (labels at their size), from the top left; a
  // double-click shows the whole picture.
  var view = data.view.slice();
  var box = svg.getBoundingClientRect();
  if (box.width > 0 && box.height > 0) view = [view[0], view[1], box.width, box.height];
  function setView() { svg.setAttribute("viewBox", view.join(" ")); }
  setView();
  var groupLayer = svgEl("g", {}, svg);
  var edgeLayer = svgEl("g", {}, svg);
  var nodeLayer = svgEl("g", {}, svg);
  var labelLayer = svgEl("g", {}, svg);

  // A text that the font draws wider than its box is squeezed into it: labels never overlap.
  var boxed = [];
  function fitted(text, width) { boxed.push([text, width]); return text; }

  data.groups.forEach(function (g) {
    svgEl("rect", {"class": "group", x: g.x, y: g.y, width: g.w, height: g.h, rx: 6,
                   "data-partition": g.id === null ? "" : g.id}, groupLayer);
    svgEl("rect", {x: g.x, y: g.y, width: 5, height: g.h, rx: 2, fill: g.colour},
          groupLayer);
    fitted(svgEl("text", {"class": "glabel", x: g.tx, y: g.ty, "font-size": data.title_font},
                 groupLayer), g.tw).textContent = g.label;
  });
  var neighbours = data.nodes.map(function () { return []; });
  // Edges are arcs, bent to the left of their direction downwards: the edges along a column
  // of elements fan out beside it instead of lying on top of each other. The more edges, the
  // fainter each one.
  var faint = Math.min(0.25, Math.max(0.04, 3 / Math.sqrt(data.edges.length || 1)));
  var lines = data.edges.map(function (e) {
    var a = data.nodes[e[0]], b = data.nodes[e[1]];
    neighbours[e[0]].push(e[1]);
    neighbours[e[1]].push(e[0]);
    if (a.y > b.y) { var t = a; a = b; b = t; }
    var dx = b.x - a.x, dy = b.y - a.y, bend = Math.min(0.2, 60 / (Math.hypot(dx, dy) || 1));
    var cx = (a.x + b.x) / 2 - dy * bend, cy = (a.y + b.y) / 2 + dx * bend;
    var share = e[2] / data.max_weight;
    return svgEl("path", {"class": "edge", d: "M" + a.x + " " + a.y + "Q" + cx + " " + cy +
                          " " + b.x + " " + b.y, fill: "none",
                          "stroke-width": 0.5 + 2.5 * share,
                          "stroke-opacity": faint + 0.5 * share * share}, edgeLayer);
  });
  var circles = data.nodes.map(function (n, i) {
    return svgEl("circle", {"class": n.stale ? "node stale" : "node", cx: n.x, cy: n.y,
                            r: n.r, fill: n.colour, "data-index": i, "data-key": n.key,
                            "data-partition": n.partition === null ? "" : n.partition},
                 nodeLayer);
  });
  var labels = data.nodes.map(function (n, i) {
    var t = svgEl("text", {"class": n.stale ? "label stale" : "label", x: n.lx,
                           y: n.y + data.font * 0.35, "font-size": data.font,
                           "data-index": i}, labelLayer);
    t.textContent = n.text;
    return fitted(t, n.lw);
  });
  boxed.map(function (b) { return b[0].getComputedTextLength() > b[1]; })
    .forEach(function (wide, k) {
      if (!wide) return;
      boxed[k][0].setAttribute("textLength", boxed[k][1]);
      boxed[k][0].setAttribute("lengthAdjust", "spacingAndGlyphs");
    });

  function rows(n) {
    return [["fixture", n.label], ["key", n.key.slice(0, 16)],
            ["partition", n.partition === null ? "none" : String(n.partition)],
            ["scope", n.scope || "?"], ["bytes", n.size],
            ["build", n.build_s.toFixed(3) + " s"], ["load", n.load_s.toFixed(3) + " s"],
            ["accesses", String(n.accesses)], ["writes", String(n.writes)],
            ["tests", String(n.tests)]].concat(n.stale ? [["stale", "yes: the code that " +
            "made it changed since"]] : []);
  }
  function fill(list, n) {
    list.replaceChildren();
    rows(n).forEach(function (r) { htmlEl("dt", r[0], list); htmlEl("dd", r[1], list); });
  }
  function nodeOf(target) {
    var i = target.getAttribute && target.getAttribute("data-index");
    return i === null || i === undefined ? null : Number(i);
  }

  function hover(e) {
    var i = nodeOf(e.target);
    if (i === null) return;
    var n = data.nodes[i];
    tip.replaceChildren();
    htmlEl("strong", n.label, tip);
    htmlEl("div", n.size + ", built in " + n.build_s.toFixed(3) + " s, " + n.accesses +
           " accesses" + (n.stale ? " (stale)" : ""), tip);
    tip.style.left = e.clientX + 14 + "px";
    tip.style.top = e.clientY + 14 + "px";
    tip.style.display = "block";
  }
  [nodeLayer, labelLayer].forEach(function (layer) {
    layer.addEventListener("mousemove", hover);
    layer.addEventListener("mouseout", function () { tip.style.display = "none"; });
  });

  function highlight(keep) {
    circles.forEach(function (c, i) { c.classList.toggle("dim", keep !== null && !keep[i]); });
    labels.forEach(function (t, i) { t.classList.toggle("dim", keep !== null && !keep[i]); });
    lines.forEach(function (l, k) {
      var e = data.edges[k];
      l.classList.toggle("dim", keep !== null && !(keep[e[0]] && keep[e[1]]));
    });
  }
  var selected = null;
  function select(i) {
    if (selected !== null) circles[selected].classList.remove("sel");
    selected = i;
    if (i === null) { details.replaceChildren(); highlight(null); return; }
    circles[i].classList.add("sel");
    fill(details, data.nodes[i]);
    var keep = {};
    keep[i] = true;
    neighbours[i].forEach(function (j) { keep[j] = true; });
    highlight(keep);
  }

  var legend = document.querySelector("#legend tbody");
  data.groups.forEach(function (g) {
    var tr = htmlEl("tr", null, legend);
    var first = htmlEl("td", null, tr);
    htmlEl("span", null, first).className = "swatch";
    first.firstChild.style.background = g.colour;
    first.appendChild(document.createTextNode(g.id === null ? "none" : String(g.id)));
    htmlEl("td", String(g.elements), tr);
    htmlEl("td", g.size, tr);
    tr.addEventListener("click", function () {
      select(null);
      var keep = {};
      data.nodes.forEach(function (n, i) { if (n.partition === g.id) keep[i] = true; });
      highlight(keep);
    });
  });

  // The key: what size, colour, edges (and a dashed outline) mean.
  var key = document.getElementById("key");
  function keyRow(draw, width, height, text) {
    var tr = htmlEl("tr", null, key);
    var pic = document.createElementNS(NS, "svg");
    pic.setAttribute("width", width);
    pic.setAttribute("height", height);
    draw(pic, width, height);
    htmlEl("td", null, tr).appendChild(pic);
    htmlEl("td", text, tr);
  }
  if (data.nodes.length) {
    data.sizes.forEach(function (s, k) {
      keyRow(function (pic, w, h) {
        svgEl("circle", {cx: w / 2, cy: h / 2, r: s.r, fill: "#bbb"}, pic);
      }, 36, Math.max(10, 2 * s.r + 2), s.size + (k ? "" : ": a disc's area is its bytes"));
    });
    keyRow(function (pic, w, h) {
      data.groups.slice(0, 5).forEach(function (g, k) {
        svgEl("circle", {cx: 5 + k * 6.5, cy: h / 2, r: 4, fill: g.colour}, pic);
      });
    }, 36, 12, "colour: partition (table below)");
    if (data.edges.length) keyRow(function (pic, w, h) {
      svgEl("line", {x1: 2, y1: h / 2, x2: w - 2, y2: h / 2, stroke: "#445",
                     "stroke-width": 0.5, "stroke-opacity": 0.3}, pic);
    }, 36, 8, "arc: a test used both elements");
    if (data.max_weight > 1) keyRow(function (pic, w, h) {
      svgEl("line", {x1: 2, y1: h / 2, x2: w - 2, y2: h / 2, stroke: "#445",
                     "stroke-width": 3, "stroke-opacity": 0.55}, pic);
    }, 36, 8, "thicker, darker: more tests (" + data.max_weight + " at most)");
    if (data.nodes.some(function (n) { return n.stale; })) {
      keyRow(function (pic, w, h) {
        svgEl("circle", {"class": "node stale", cx: w / 2, cy: h / 2, r: 5, fill: "#bbb"}, pic);
      }, 36, 12, "dashed, grey label: stale (its code changed since)");
    }
  }

  // Zoom around the pointer, pan by dragging; a drag is not a click.
  function toSvg(e) {
    var p = svg.createSVGPoint();
    p.x = e.clientX;
    p.y = e.clientY;
    return p.matrixTransform(svg.getScreenCTM().inverse());
  }
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var p = toSvg(e), f = e.deltaY > 0 ? 1.2 : 1 / 1.2;
    view = [p.x - (p.x - view[0]) * f, p.y - (p.y - view[1]) * f, view[2] * f, view[3] * f];
    setView();
  }, {passive: false});
  var drag = null;
  svg.addEventListener("pointerdown", function (e) {
    drag = {x: e.clientX, y: e.clientY, view: view.slice(), scale: svg.getScreenCTM().a,
            moved: false};
  });
  svg.addEventListener("pointermove", function (e) {
    if (drag === null) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    view = [drag.view[0] - dx / drag.scale, drag.view[1] - dy / drag.scale, view[2], view[3]];
    setView();
  });
  svg.addEventListener("pointerup", function (e) {
    if (drag !== null && !drag.moved) select(nodeOf(e.target));
    drag = null;
  });
  svg.addEventListener("dblclick", function () { view = data.view.slice(); setView(); });

  document.body.dataset.rendered = String(circles.length);
})();
</script>
</body>
</html>
"""
