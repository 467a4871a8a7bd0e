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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    import networkx as nx  # type: ignore[import-untyped]

Format = Literal["html", "graphml", "json", "dot"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)

#: Circle radius in layout units: area is proportional to bytes, clamped to these bounds.
MIN_RADIUS: Final = 3.0
MAX_RADIUS: Final = 28.0
#: Space between two elements, and between two partitions, in layout units.
GAP: Final = 4.0
GROUP_GAP: Final = 40.0
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
# Each partition is a disc: its elements on a sunflower spiral in breadth-first order (so
# co-accessed elements sit near each other, the most co-accessed in the middle); the discs are
# packed in rows by partition id. Deterministic and O(n + m log m): ~1 s for 3000 elements and
# 43k edges on a 2-core machine. Rejected: networkx's spring_layout, per partition or whole. It
# needs numpy, is O(n²) per iteration (0.5 s for 300 nodes, 10 s for 1000 here; partitions of
# 75 elements made a 3000-element page take 4 s) and overlaps elements of different sizes.

_Point = tuple[float, float]


def _radii(nodes: list[tuple[Any, _Attrs]]) -> dict[Any, float]:
    top = max((_number(attrs, "bytes") for _, attrs in nodes), default=0.0) or 1.0
    return {
        node: max(MIN_RADIUS, MAX_RADIUS * math.sqrt(_number(attrs, "bytes") / top))
        for node, attrs in nodes
    }


def _cell(radius: float) -> float:
    return (2 * radius + GAP) ** 2


def _bfs_order(members: list[Any], adjacency: Mapping[Any, Mapping[Any, int]]) -> list[Any]:
    """Breadth-first from the most co-accessed element, heavier edges first: neighbours land
    close together on the spiral."""

    def strength(node: Any) -> int:
        return sum(adjacency.get(node, {}).values())

    order: list[Any] = []
    seen: set[Any] = set()
    for start in sorted(members, key=lambda n: (-strength(n), str(n))):
        if start in seen:
            continue
        seen.add(start)
        queue = deque([start])
        while queue:
            node = queue.popleft()
            order.append(node)
            near = adjacency.get(node, {})
            for other in sorted(near, key=lambda m: (-near[m], str(m))):
                if other not in seen:
                    seen.add(other)
                    queue.append(other)
    return order


def _sunflower(order: list[Any], radius: Mapping[Any, float]) -> dict[Any, _Point]:
    """Vogel's spiral with area-weighted steps: element i sits where the area enclosed so far
    holds the cells of elements 0..i-1."""
    golden_angle = math.pi * (3 - math.sqrt(5))
    positions: dict[Any, _Point] = {}
    area = 0.0
    for i, node in enumerate(order):
        rho = math.sqrt(area / math.pi)
        positions[node] = (rho * math.cos(i * golden_angle), rho * math.sin(i * golden_angle))
        area += _cell(radius[node])
    return positions


def _pack(radii: list[float]) -> list[_Point]:
    """Centres for circles of these radii, left to right in rows about 1.6 x wider than tall."""
    width = max(
        max((2 * r for r in radii), default=0.0),
        1.6 * math.sqrt(sum((2 * r + GROUP_GAP) ** 2 for r in radii)),
    )
    centres: list[_Point] = []
    x = y = row = 0.0
    for r in radii:
        if x > 0 and x + 2 * r > width:
            x, y, row = 0.0, y + row, 0.0
        centres.append((x + r, y + r))
        x += 2 * r + GROUP_GAP
        row = max(row, 2 * r + GROUP_GAP)
    return centres


def _page_data(graph: nx.Graph) -> dict[str, Any]:
    nodes, edges = _cleaned(graph)
    radius = _radii(nodes)
    weighted = [(u, v, _weight(attrs)) for u, v, attrs in edges if u != v]
    adjacency: dict[Any, dict[Any, int]] = {}
    partition_of = {node: _partition(attrs) for node, attrs in nodes}
    for u, v, weight in weighted:
        if partition_of[u] == partition_of[v]:
            adjacency.setdefault(u, {})[v] = weight
            adjacency.setdefault(v, {})[u] = weight

    groups = _groups(nodes)
    local = [
        _sunflower(_bfs_order([node for node, _ in members], adjacency), radius)
        for members in groups.values()
    ]
    group_radius = [
        max((math.hypot(*p) + radius[n] for n, p in pos.items()), default=0.0) for pos in local
    ]
    centres = _pack(group_radius)

    out_nodes: list[dict[str, Any]] = []
    index: dict[Any, int] = {}
    out_groups: list[dict[str, Any]] = []
    for (partition, members), pos, (cx, cy), r in zip(
        groups.items(), local, centres, group_radius, strict=True
    ):
        colour = partition_colour(partition)
        size = sum(_number(attrs, "bytes") for _, attrs in members)
        out_groups.append(
            {
                "id": partition,
                "label": "not partitioned" if partition is None else f"partition {partition}",
                "elements": len(members),
                "bytes": size,
                "size": human_bytes(size),
                "colour": colour,
                **_xyr(cx, cy, r),
            }
        )
        for node, attrs in members:
            index[node] = len(out_nodes)
            x, y = pos[node]
            out_nodes.append(
                {
                    "key": _CONTROL.sub("", str(node)),
                    "label": _label(node, attrs),
                    "scope": str(attrs.get("scope", "")),
                    "partition": partition,
                    "colour": colour,
                    "size": human_bytes(_number(attrs, "bytes")),
                    **{
                        name: _number(attrs, name)
                        for name in ("bytes", "build_s", "load_s", "accesses", "writes", "tests")
                    },
                    **_xyr(cx + x, cy + y, radius[node]),
                }
            )

    drawn = sorted(weighted, key=lambda e: -e[2])[:MAX_EDGES]
    return {
        "nodes": out_nodes,
        "edges": [[index[u], index[v], weight] for u, v, weight in drawn],
        "edges_total": len(weighted),
        "max_weight": max((weight for *_, weight in weighted), default=1),
        "groups": out_groups,
        "view": _view(out_groups),
    }


def _xyr(x: float, y: float, r: float) -> dict[str, float]:
    return {"x": round(x, 1), "y": round(y, 1), "r": round(r, 1)}


def _view(groups: list[dict[str, Any]]) -> list[float]:
    if not groups:
        return [0.0, 0.0, 100.0, 100.0]
    left = min(g["x"] - g["r"] for g in groups)
    top = min(g["y"] - g["r"] for g in groups)
    right = max(g["x"] + g["r"] for g in groups)
    bottom = max(g["y"] + g["r"] for g in groups)
    margin = 30 + 0.02 * max(right - left, bottom - top)  # room for the partition labels
    left, top, right, bottom = left - margin, top - margin, right + margin, bottom + margin
    return [round(left, 1), round(top, 1), round(right - left, 1), round(bottom - top, 1)]


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
    edges = f"{data['edges_total']} co-access edges"
    if data["edges_total"] > len(data["edges"]):
        edges += f" (the {len(data['edges'])} heaviest drawn)"
    partitions = sum(1 for g in data["groups"] if g["id"] is not None)
    loose = sum(g["elements"] for g in data["groups"] if g["id"] is None)
    if not partitions:
        grouping = "not partitioned yet"
    else:
        grouping = f"{partitions} partitions" + (f", {loose} not partitioned" if loose else "")
    return f"{len(nodes)} elements, {total}; {edges}; {grouping}."


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
  body { margin: 0; height: 100vh; display: grid; grid-template: auto 1fr / 1fr 320px;
         font: 13px/1.4 system-ui, sans-serif; color: #222; }
  header { grid-column: 1 / 3; padding: 6px 12px; border-bottom: 1px solid #ddd; }
  h1 { display: inline; font-size: 15px; margin-right: 10px; }
  h2 { font-size: 13px; margin: 10px 0 4px; }
  #graph { width: 100%; height: 100%; background: #fafafa; cursor: grab; touch-action: none; }
  aside { border-left: 1px solid #ddd; padding: 4px 12px; overflow: auto; }
  table { border-collapse: collapse; width: 100%; }
  th, td { padding: 1px 4px; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  #legend tr { cursor: pointer; }
  #legend tr:hover { background: #eee; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
            margin-right: 4px; vertical-align: -1px; }
  .group { fill: none; stroke: #ccc; stroke-dasharray: 4 3; }
  .glabel { fill: #777; }
  .edge { stroke: #555; stroke-opacity: 0.3; }
  .node { stroke: #fff; stroke-width: 1; cursor: pointer; }
  .node.sel { stroke: #000; stroke-width: 2; }
  .dim { opacity: 0.1; }
  dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 0 8px; }
  dt { color: #666; }
  dd { margin: 0; word-break: break-all; }
  #tip { position: fixed; display: none; pointer-events: none; background: #fff;
         border: 1px solid #999; padding: 4px 6px; box-shadow: 0 1px 4px #0003; }
  .hint { color: #777; }
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
<svg id="graph" role="img" aria-label="execution state graph"></svg>
<aside>
  <h2>Partitions</h2>
  <table id="legend"><thead><tr><th>partition</th><th>elements</th><th>bytes</th></tr></thead>
  <tbody></tbody></table>
  <h2>Element</h2>
  <dl id="details"></dl>
  <p class="hint">Hover an element for its details, click to pin it and show its co-access
  neighbours, click a partition to single it out. Wheel zooms, drag pans, double-click resets.
  </p>
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

  var view = data.view.slice();
  function setView() { svg.setAttribute("viewBox", view.join(" ")); }
  setView();
  var groupLayer = svgEl("g", {}, svg);
  var edgeLayer = svgEl("g", {}, svg);
  var nodeLayer = svgEl("g", {}, svg);

  var font = Math.max(12, view[2] / 100);
  data.groups.forEach(function (g) {
    svgEl("circle", {"class": "group", cx: g.x, cy: g.y, r: g.r}, groupLayer);
    svgEl("text", {"class": "glabel", x: g.x, y: g.y - g.r - font / 2, "font-size": font,
                   "text-anchor": "middle"}, groupLayer).textContent = g.label;
  });
  var neighbours = data.nodes.map(function () { return []; });
  var lines = data.edges.map(function (e) {
    var a = data.nodes[e[0]], b = data.nodes[e[1]];
    neighbours[e[0]].push(e[1]);
    neighbours[e[1]].push(e[0]);
    return svgEl("line", {"class": "edge", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
                          "stroke-width": 0.5 + 3 * e[2] / data.max_weight}, edgeLayer);
  });
  var circles = data.nodes.map(function (n, i) {
    return svgEl("circle", {"class": "node", cx: n.x, cy: n.y, r: n.r, fill: n.colour,
                            "data-index": i, "data-key": n.key,
                            "data-partition": n.partition === null ? "" : n.partition},
                 nodeLayer);
  });

  function rows(n) {
    return [["fixture", n.label], ["key", n.key.slice(0, 16)],
            ["partition", n.partition === null ? "none" : String(n.partition)],
            ["scope", n.scope || "?"], ["bytes", n.size],
            ["build", n.build_s.toFixed(3) + " s"], ["load", n.load_s.toFixed(3) + " s"],
            ["accesses", String(n.accesses)], ["writes", String(n.writes)],
            ["tests", String(n.tests)]];
  }
  function fill(list, n) {
    list.replaceChildren();
    rows(n).forEach(function (r) { htmlEl("dt", r[0], list); htmlEl("dd", r[1], list); });
  }
  function nodeOf(target) {
    var i = target.getAttribute && target.getAttribute("data-index");
    return i === null || i === undefined ? null : Number(i);
  }

  nodeLayer.addEventListener("mousemove", function (e) {
    var i = nodeOf(e.target);
    if (i === null) return;
    var n = data.nodes[i];
    tip.replaceChildren();
    htmlEl("strong", n.label, tip);
    htmlEl("div", n.size + ", built in " + n.build_s.toFixed(3) + " s, " + n.accesses +
           " accesses", tip);
    tip.style.left = e.clientX + 14 + "px";
    tip.style.top = e.clientY + 14 + "px";
    tip.style.display = "block";
  });
  nodeLayer.addEventListener("mouseout", function () { tip.style.display = "none"; });

  function highlight(keep) {
    circles.forEach(function (c, i) { c.classList.toggle("dim", keep !== null && !keep[i]); });
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
