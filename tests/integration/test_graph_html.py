"""The HTML graph page in a real browser: headless Chromium draws every element and its label,
no two labels or partition titles overlap, no script error.

Chromium loads the page from a file, runs its script and dumps the resulting DOM. The page sets
``body[data-rendered]`` to the number of elements it drew and keeps script errors in
``body[data-errors]``; Chromium's console log (stderr) is checked for "Uncaught" too. A script
appended to the page (:data:`CHECK`) reads every label's and title's bounding box from the
rendered DOM (``getBoundingClientRect``) and notes the pairs that overlap. The negative cases
run the same checks on broken pages, so the harness cannot pass vacuously.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import pytest

from pytest_statemigrate.export import MAX_EDGES, export

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium hangs or fails on a closed network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
TIMEOUT = 60.0
PWNED = "</script><script>document.body.dataset.pwned = 1</script><b>&amp;\"'"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package chromium)"
    ),
]


class Dom(HTMLParser):
    """What the checks read from the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.circles: list[dict[str, str | None]] = []
        self.edges = 0
        self.legend_rows = 0
        self._in_legend = False
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        elif tag == "circle" and "data-key" in attributes:
            self.circles.append(attributes)
        elif tag in ("line", "path") and "edge" in str(attributes.get("class")).split():
            self.edges += 1
        elif tag == "table":
            self._in_legend = attributes.get("id") == "legend"
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_legend and self._in_body:
            self.legend_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_legend = False
        elif tag == "tbody":
            self._in_body = False


@dataclass
class Rendered:
    dom: Dom
    stderr: str


#: Appended to a page: every text ``@@SELECTOR@@`` selects (labels and titles), its bounding
#: box as drawn, and the pairs of them that overlap (a sweep over the boxes sorted by their
#: left edge), kept in body data attributes. Boxes that only touch do not overlap.
CHECK = """<script>
(function () {
  var body = document.body;
  var texts = Array.prototype.slice.call(document.querySelectorAll("@@SELECTOR@@"));
  var boxes = texts.map(function (t) { return t.getBoundingClientRect(); });
  var order = boxes.map(function (b, i) { return i; });
  order.sort(function (i, j) { return boxes[i].left - boxes[j].left; });
  var overlaps = [];
  for (var a = 0; a < order.length; a++) {
    var p = boxes[order[a]];
    for (var b = a + 1; b < order.length && boxes[order[b]].left < p.right; b++) {
      var q = boxes[order[b]];
      if (q.top < p.bottom && p.top < q.bottom) {
        overlaps.push(texts[order[a]].textContent + " / " + texts[order[b]].textContent);
      }
    }
  }
  function count(selector) { return String(document.querySelectorAll(selector).length); }
  body.dataset.labels = count("#graph text.label");
  body.dataset.titles = count("#graph text.glabel");
  body.dataset.blank = String(boxes.filter(function (b, i) {
    return !(b.width > 0 && b.height > 0 && texts[i].textContent);
  }).length);
  body.dataset.overlaps = String(overlaps.length);
  body.dataset.overlapping = overlaps.slice(0, 5).join(" | ");
})();
</script>
</body>"""


def write_page(page: Path, text: str, selector: str = "#graph text") -> Path:
    """``text`` with :data:`CHECK` for the texts ``selector`` selects appended, written to
    ``page``."""
    check = CHECK.replace("@@SELECTOR@@", selector)
    page.write_text(text.replace("</body>", check), encoding="utf-8")
    return page


def overlap_problems(body: dict[str, str | None]) -> list[str]:
    """What :data:`CHECK` found: texts drawn blank, texts that overlap."""
    found = []
    if body.get("data-blank") != "0":
        found.append(f"{body.get('data-blank')} labels drawn blank or empty")
    if body.get("data-overlaps") != "0":
        found.append(
            f"labels overlap: {body.get('data-overlaps')} pairs ({body.get('data-overlapping')})"
        )
    return found


def render(page: Path, tmp: Path) -> Rendered:
    """Load ``page`` in headless Chromium and return its DOM after the scripts ran."""
    command = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1400,1000",
        "--dump-dom",
        page.as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp)}  # nothing lands in the real home directory
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, so a hung browser goes whole
    ) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium did not finish within {TIMEOUT} s: {command}")
    assert proc.returncode == 0, err[-3000:]
    dom = Dom()
    dom.feed(out)
    return Rendered(dom, err)


def problems(rendered: Rendered, graph: nx.Graph) -> list[str]:
    """Everything that says the page did not draw ``graph`` cleanly; empty when it did."""
    found = []
    body = rendered.dom.body
    if body.get("data-errors"):
        found.append(f"script errors: {body['data-errors']}")
    if "Uncaught" in rendered.stderr:
        found.append("'Uncaught' in the console log")
    if body.get("data-rendered") != str(graph.number_of_nodes()):
        found.append(f"data-rendered={body.get('data-rendered')!r}")
    drawn = {c["data-key"]: c["data-partition"] for c in rendered.dom.circles}
    if len(rendered.dom.circles) != graph.number_of_nodes():
        found.append(f"{len(rendered.dom.circles)} circles drawn")
    expected = {
        n: "" if p is None else str(p) for n, p in graph.nodes(data="partition", default=None)
    }
    if drawn != expected:
        found.append("the circles' keys or partitions differ from the graph's")
    partitions = {p for _, p in graph.nodes(data="partition", default=None)}
    if graph.number_of_nodes() and rendered.dom.legend_rows != len(partitions):
        found.append(f"{rendered.dom.legend_rows} legend rows for {len(partitions)} partitions")
    if rendered.dom.edges != min(graph.number_of_edges(), MAX_EDGES):
        found.append(f"{rendered.dom.edges} edges drawn")
    if "data-pwned" in body:
        found.append("a label ran as a script")
    if body.get("data-labels") != str(graph.number_of_nodes()):
        found.append(f"data-labels={body.get('data-labels')!r}")
    if graph.number_of_nodes() and body.get("data-titles") != str(len(partitions)):
        found.append(f"data-titles={body.get('data-titles')!r} for {len(partitions)} partitions")
    return found + overlap_problems(body)


def suite_graph(elements: int = 300, partitions: int = 6, seed: int = 7) -> nx.Graph:
    """An ESG as a suite would record it: some partitions, some elements not yet partitioned,
    elements co-accessed by tests that mostly stay within one partition."""
    rng = random.Random(seed)
    g = nx.Graph()
    loose = elements // 15  # not partitioned yet
    keys = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(elements)]
    for i, key in enumerate(keys):
        g.add_node(
            key,
            fixture=PWNED if i % 50 == 0 else f"tests/conftest.py::fixture_{i % 23}[p{i}]",
            scope="session",
            bytes=rng.choice([0, 512, 2**20, rng.randrange(2**34)]),
            build_s=rng.random() * 10,
            load_s=rng.random() / 10,
            accesses=rng.randrange(1, 40),
            writes=rng.randrange(3),
            tests=rng.randrange(1, 30),
            partition=None if i >= elements - loose else i % partitions,
        )
    for _ in range(elements):
        home = rng.randrange(partitions)
        members = keys[home : elements - loose : partitions]
        used = [*rng.sample(members, min(4, len(members))), rng.choice(keys)]
        for a in used:
            for b in used:
                if a < b:
                    g.add_edge(a, b, weight=g.get_edge_data(a, b, {"weight": 0})["weight"] + 1)
    return g


@pytest.mark.parametrize(
    "graph",
    [
        suite_graph(elements=1, partitions=1),
        suite_graph(elements=20, partitions=4),
        suite_graph(elements=500, partitions=6),
        nx.Graph(),
    ],
    ids=["1-element", "20-elements", "500-elements", "empty"],
)
def test_chromium_draws_every_element_and_no_labels_overlap(
    tmp_path: Path, graph: nx.Graph
) -> None:
    page = write_page(tmp_path / "esg.html", export(graph, "html"))
    rendered = render(page, tmp_path)
    assert problems(rendered, graph) == []


BREAKAGES: dict[str, tuple[Callable[[str], str], str]] = {
    "corrupt-data": (
        lambda page: page.replace('esg-data">{', 'esg-data">{oops', 1),
        "script errors",
    ),
    "throwing-script": (
        lambda page: page.replace("<header>", "<script>throw new Error('boom')</script><header>"),
        "'Uncaught' in the console log",
    ),
    "an-element-skipped": (
        lambda page: page.replace(
            "data.nodes.map(function (n, i) {", "data.nodes.slice(1).map(function (n, i) {"
        ),
        "data-rendered=",
    ),
    "labels-unescaped": (
        lambda page: page.replace("\\u003c", "<").replace("\\u003e", ">"),
        "a label ran as a script",
    ),
    "labels-too-big": (
        lambda page: page.replace('"font-size": data.font,', '"font-size": data.font * 2,'),
        "labels overlap",
    ),
    "titles-on-one-spot": (
        lambda page: page.replace("x: g.tx, y: g.ty,", "x: 0, y: 0,"),
        "labels overlap",
    ),
    "a-label-missing": (
        lambda page: page.replace("t.textContent = n.text;", "t.textContent = i ? n.text : '';"),
        "1 labels drawn blank",
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_the_harness_sees_a_broken_page(tmp_path: Path, name: str) -> None:
    breakage, symptom = BREAKAGES[name]
    graph = suite_graph(elements=60, partitions=3)
    text = export(graph, "html")
    broken = breakage(text)
    assert broken != text
    page = write_page(tmp_path / "broken.html", broken)
    found = problems(render(page, tmp_path), graph)
    assert any(problem.startswith(symptom) for problem in found), found


# Appended to the page: hover and click the first element, click the first legend row, zoom;
# what the page shows after each step is kept in body data attributes.
INTERACT = """<script>
(function () {
  var body = document.body, svg = document.getElementById("graph");
  var circle = document.querySelector("circle[data-key]");
  var box = circle.getBoundingClientRect();
  var at = {bubbles: true, clientX: box.x + box.width / 2, clientY: box.y + box.height / 2};
  circle.dispatchEvent(new MouseEvent("mousemove", at));
  body.dataset.tip = document.getElementById("tip").textContent;
  circle.dispatchEvent(new PointerEvent("pointerdown", at));
  circle.dispatchEvent(new PointerEvent("pointerup", at));
  body.dataset.details = document.getElementById("details").textContent;
  body.dataset.dimmed = document.querySelectorAll("circle.dim").length;
  document.querySelector("#legend tbody tr").click();
  body.dataset.legendDimmed = document.querySelectorAll("circle.dim").length;
  var before = svg.getAttribute("viewBox");
  svg.dispatchEvent(new WheelEvent("wheel", Object.assign({deltaY: -100, cancelable: true}, at)));
  body.dataset.zoomed = String(svg.getAttribute("viewBox") !== before);
})();
</script>
"""


def test_hover_click_legend_and_zoom(tmp_path: Path) -> None:
    graph = suite_graph(elements=60, partitions=3)
    page = write_page(
        tmp_path / "esg.html", export(graph, "html").replace("</body>", INTERACT + "</body>")
    )
    rendered = render(page, tmp_path)
    assert problems(rendered, graph) == []
    body = rendered.dom.body
    first = rendered.dom.circles[0]["data-key"]
    attrs = graph.nodes[first]
    tip = str(body["data-tip"])
    assert tip.startswith(attrs["fixture"]) and f"{attrs['accesses']} accesses" in tip
    details = str(body["data-details"])
    assert f"fixture{attrs['fixture']}key{first[:16]}partition{attrs['partition']}" in details
    assert body["data-dimmed"] == str(len(graph) - 1 - graph.degree(first))
    in_first_partition = sum(1 for _, p in graph.nodes(data="partition") if p == 0)
    assert body["data-legend-dimmed"] == str(len(graph) - in_first_partition)
    assert body["data-zoomed"] == "true"
