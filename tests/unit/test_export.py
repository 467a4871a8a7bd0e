from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_statemigrate import export as ex
from pytest_statemigrate.export import FORMATS, export, human_bytes, partition_colour

HOSTILE = "</script><script>alert(1)</script> & \"q\" 'x' <b>\\N</b>\nline2"


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def small_graph(label: str = "conftest.py::model[short]") -> nx.Graph:
    g = nx.Graph()
    common = {"scope": "session", "load_s": 0.01, "writes": 0, "tests": 2}
    g.add_node(key(0), fixture=label, bytes=4096, build_s=1.5, accesses=3, partition=0, **common)
    g.add_node(key(1), fixture="conftest.py::data", bytes=1024, build_s=0.5, accesses=5, **common)
    g.nodes[key(1)]["partition"] = 1
    g.add_node(key(2), fixture="conftest.py::raw", bytes=0, build_s=0.0, accesses=1, **common)
    g.nodes[key(2)]["partition"] = None  # not partitioned yet
    g.add_edge(key(0), key(1), weight=3)
    g.add_edge(key(1), key(2), weight=1)
    return g


def expected_nodes(g: nx.Graph) -> dict[str, dict[str, Any]]:
    """What every format keeps: None attributes are dropped."""
    return {n: {k: v for k, v in d.items() if v is not None} for n, d in g.nodes(data=True)}


def page_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="esg-data">(.*?)</script>', page, re.S)
    assert match is not None
    data: dict[str, Any] = json.loads(match[1])
    return data


def dot_unquote(quoted: str) -> str:
    assert quoted[0] == quoted[-1] == '"'
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], quoted[1:-1])


DOT_STRING = r'"(?:[^"\\]|\\.)*"'


def test_graphml_reads_back_the_same_graph() -> None:
    g = small_graph()
    back = nx.read_graphml(io.BytesIO(export(g, "graphml").encode()))
    assert dict(back.nodes(data=True)) == expected_nodes(g)
    assert {frozenset((u, v)): d for u, v, d in back.edges(data=True)} == {
        frozenset((u, v)): d for u, v, d in g.edges(data=True)
    }
    assert isinstance(back.nodes[key(0)]["bytes"], int)


def test_json_is_node_link_data_sorted_and_deterministic() -> None:
    g = small_graph()
    text = export(g, "json")
    data = json.loads(text)
    assert [n["id"] for n in data["nodes"]] == sorted(g.nodes)
    assert [(e["source"], e["target"]) for e in data["edges"]] == sorted(
        tuple(sorted(e)) for e in g.edges
    )
    back = nx.node_link_graph(data, edges="edges")
    assert dict(back.nodes(data=True)) == expected_nodes(g)
    assert back.edges[key(0), key(1)] == {"weight": 3}

    # The same content as networkx's own node-link data, and no FutureWarning on the way.
    clean = nx.Graph()
    clean.add_nodes_from(expected_nodes(g).items())
    clean.add_edges_from(g.edges(data=True))
    theirs = nx.node_link_data(clean, edges="edges")
    assert sorted(theirs["nodes"], key=lambda n: n["id"]) == data["nodes"]
    assert {(frozenset((e["source"], e["target"])), e["weight"]) for e in theirs["edges"]} == {
        (frozenset((e["source"], e["target"])), e["weight"]) for e in data["edges"]
    }

    # Insertion order does not change a byte.
    reversed_graph = nx.Graph()
    reversed_graph.add_nodes_from(reversed(list(g.nodes(data=True))))
    reversed_graph.add_edges_from((v, u, d) for u, v, d in reversed(list(g.edges(data=True))))
    assert export(reversed_graph, "json") == text


def test_dot_lines() -> None:
    g = small_graph()
    lines = export(g, "dot").splitlines()
    assert lines[0] == "graph esg {" and lines[-1] == "}"
    assert '  subgraph "cluster_p0" {' in lines and '  subgraph "cluster_p1" {' in lines
    assert (
        f'    "{key(0)}" [label="conftest.py::model[short]", fillcolor="{partition_colour(0)}",'
        f' tooltip="{key(0)}\\n4.0 KiB"];'
    ) in lines
    # The unpartitioned element sits outside any cluster, in grey.
    assert any(
        line.startswith(f'  "{key(2)}" [label="conftest.py::raw", fillcolor="#9e9e9e"')
        for line in lines
    )
    a, b = sorted((key(0), key(1)))
    assert f'  "{a}" -- "{b}" [weight=3, penwidth=3.50];' in lines
    assert sum(" -- " in line for line in lines) == 2


def test_dot_quotes_hostile_labels() -> None:
    text = export(small_graph(HOSTILE), "dot")
    outside = re.sub(DOT_STRING, "", text)
    assert '"' not in outside, "every quoted string is closed"
    assert outside.count("{") == outside.count("}")
    line = next(line for line in text.splitlines() if line.startswith(f'    "{key(0)}"'))
    label = re.search(r"label=(" + DOT_STRING + ")", line)
    assert label is not None and dot_unquote(label[1]) == HOSTILE


@given(st.text())
def test_dot_quote_round_trips(text: str) -> None:
    quoted = ex._dot_quote(text)
    assert re.fullmatch(DOT_STRING, quoted)
    assert dot_unquote(quoted) == text.replace("\r", "")


def test_html_embeds_the_data_and_fetches_nothing() -> None:
    g = small_graph()
    page = export(g, "html")
    data = page_data(page)
    assert [n["key"] for n in data["nodes"]] == [key(0), key(1), key(2)]  # partition order
    by_key = {n["key"]: n for n in data["nodes"]}
    assert by_key[key(0)]["label"] == "conftest.py::model[short]"
    assert by_key[key(0)]["size"] == "4.0 KiB" and by_key[key(0)]["build_s"] == 1.5
    assert by_key[key(0)]["accesses"] == 3 and by_key[key(2)]["partition"] is None
    assert [(g_["id"], g_["elements"], g_["bytes"]) for g_ in data["groups"]] == [
        (0, 1, 4096),
        (1, 1, 1024),
        (None, 1, 0),
    ]
    assert sorted(e[2] for e in data["edges"]) == [1, 3]
    assert "3 elements, 5.0 KiB; 2 co-access edges; 2 partitions, 1 not partitioned." in page
    # Self-contained: no attribute loads anything; the only URL is the SVG namespace in the script.
    assert not re.search(r"\b(src|href)\s*=", page, re.I)
    assert not re.search(r"<link|@import|url\(|//cdn", page, re.I)
    assert re.findall(r"https?://[^\s\"'<>]*", page) == ["http://www.w3.org/2000/svg"]
    assert "document.body.dataset.rendered = String(circles.length)" in page


def test_html_escapes_hostile_labels() -> None:
    page = export(small_graph(HOSTILE), "html")
    assert page.count("<script") == 3 and page.count("</script>") == 3
    assert "<b>" not in page and "alert(1)" in page
    assert page_data(page)["nodes"][0]["label"] == HOSTILE


@given(st.text())
def test_html_carries_any_label(label: str) -> None:
    page = export(small_graph(label), "html")
    assert page.count("</script>") == 3
    expected = ex._CONTROL.sub("", label) or key(0)[:12]
    assert page_data(page)["nodes"][0]["label"] == expected


def test_empty_graph() -> None:
    g = nx.Graph()
    page = export(g, "html")
    assert "Nothing recorded yet" in page
    assert page_data(page)["nodes"] == []
    assert json.loads(export(g, "json"))["nodes"] == []
    assert export(g, "dot").splitlines()[-1] == "}"
    assert nx.read_graphml(io.BytesIO(export(g, "graphml").encode())).number_of_nodes() == 0


def test_missing_and_unreadable_attributes() -> None:
    g = nx.Graph()
    g.add_node(key(0))  # nothing at all
    g.add_node(key(1), bytes="lots", build_s=math.nan, partition="x", fixture=None, extra=[1, 2])
    g.add_node(key(2), bytes=2.9, partition=7.0, tests=True, scope="module")
    g.add_edge(key(0), key(1))  # no weight
    g.add_edge(key(1), key(2), weight=None)

    back = nx.read_graphml(io.BytesIO(export(g, "graphml").encode()))
    assert back.nodes[key(0)] == {}
    assert back.nodes[key(1)] == {"extra": "[1, 2]"}
    assert back.nodes[key(2)] == {"bytes": 2, "partition": 7, "tests": 1, "scope": "module"}
    assert all(d == {} for *_, d in back.edges(data=True))

    assert json.loads(export(g, "json"))["nodes"][1] == {"id": key(1), "extra": "[1, 2]"}
    assert f'"{key(0)}" [label="{key(0)[:12]}"' in export(g, "dot")

    data = page_data(export(g, "html"))
    nodes = {n["key"]: n for n in data["nodes"]}
    assert nodes[key(0)]["label"] == key(0)[:12] and nodes[key(0)]["size"] == "0 B"
    assert nodes[key(1)]["build_s"] == 0 and nodes[key(1)]["partition"] is None
    assert nodes[key(2)]["partition"] == 7
    assert sorted(e[2] for e in data["edges"]) == [1, 1]


Box = tuple[float, float, float, float]  # left, top, right, bottom


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_box(node: dict[str, Any]) -> Box:
    """The room the layout gives a label: its box, a row's height around its middle."""
    return (node["lx"], node["y"] - ex.ROW / 2, node["lx"] + node["lw"], node["y"] + ex.ROW / 2)


@pytest.mark.parametrize("elements", [1, 20, 500])
def test_layout_gives_every_label_and_title_a_box_of_its_own(elements: int) -> None:
    g = nx.Graph()
    for i in range(elements):
        name = "x" * (i % 70) if i % 7 == 0 else f"fixture_{i % 9}"
        g.add_node(
            key(i),
            fixture=f"tests/conftest.py::{name}[p{i}]",
            bytes=[0, 25, 100][i % 3] * 1000,
            partition=None if i % 11 == 5 else i % 4,
        )
    for i in range(elements - 4):
        g.add_edge(key(i), key(i + 4), weight=1 + i % 5)
    data = page_data(export(g, "html"))
    cards = {grp["id"]: grp for grp in data["groups"]}
    boxes = [(c["x"], c["y"], c["x"] + c["w"], c["y"] + c["h"]) for c in cards.values()]
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i])
    for card in cards.values():  # the title stays in its card's title row
        assert card["tx"] + card["tw"] <= card["x"] + card["w"]
        assert card["y"] < card["ty"] <= card["y"] + ex.TITLE_ROW
    labels = [label_box(n) for n in data["nodes"]]
    assert not any(overlap(a, b) for i, a in enumerate(labels) for b in labels[:i])
    for node, box in zip(data["nodes"], labels, strict=True):
        card = cards[node["partition"]]
        assert card["x"] <= node["x"] - node["r"] and box[2] <= card["x"] + card["w"]
        assert card["y"] + ex.TITLE_ROW <= box[1] and box[3] <= card["y"] + card["h"]
        assert node["x"] + node["r"] < box[0]  # the disc beside its label, not under it
        assert len(node["text"].removesuffix(" (stale)")) <= ex.LABEL_CHARS
        assert node["lw"] >= len(node["text"]) * ex.CHAR_W * ex.FONT
    assert page_data(export(g, "html")) == data  # deterministic


def test_labels_name_the_fixture_and_param_and_sizes_go_by_bytes() -> None:
    g = nx.Graph()
    g.add_node(key(0), fixture="tests/conftest.py::corpus[en]", bytes=100_000, partition=0)
    g.add_node(key(1), fixture="tests/a/conftest.py::model", bytes=25_000, partition=0)
    g.add_node(key(2), fixture="tests/b/conftest.py::model", bytes=0, partition=0)
    long = "tests/conftest.py::" + "v" * 60 + "[param-at-the-end]"
    g.add_node(key(3), fixture=long, bytes=1000, partition=0, stale=True)
    data = page_data(export(g, "html"))
    nodes = {n["key"]: n for n in data["nodes"]}
    assert nodes[key(0)]["text"] == "corpus[en]"  # where it is defined: in the details
    assert nodes[key(1)]["text"] == "tests/a/conftest.py::model"  # two of that name
    assert (
        nodes[key(3)]["text"].endswith("at-the-end] (stale)") and "\u2026" in nodes[key(3)]["text"]
    )
    assert [n["stale"] for n in data["nodes"]] == [False, False, True, False]
    radius = {n["bytes"]: n["r"] for n in data["nodes"]}
    assert radius[0] == ex.MIN_RADIUS and radius[100_000] == ex.MAX_RADIUS
    assert radius[25_000] == ex.MAX_RADIUS / 2
    assert [s["size"] for s in data["sizes"]] == ["97.7 KiB", "24.4 KiB", "1000 B"]
    assert "4 elements, 123.0 KiB; 0 co-access edges; 1 partition; 1 stale." in export(g, "html")


def test_html_draws_the_heaviest_edges_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "MAX_EDGES", 2)
    g = nx.path_graph([key(i) for i in range(5)])
    for w, (u, v) in enumerate(g.edges, start=1):
        g.edges[u, v]["weight"] = w
    page = export(g, "html")
    assert sorted(e[2] for e in page_data(page)["edges"]) == [3, 4]
    assert "4 co-access edges (the 2 heaviest drawn)" in page


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_the_file(tmp_path: Path, fmt: ex.Format) -> None:
    path = tmp_path / f"esg.{fmt}"
    text = export(small_graph(HOSTILE), fmt, path)
    assert path.read_bytes() == text.encode("utf-8")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown graph format 'png'; choose one of html, "):
        export(nx.Graph(), "png")  # type: ignore[arg-type]


def test_human_bytes_and_colours() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 2**30, 2**60)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 GiB",
        "1048576.0 TiB",
    ]
    colours = [partition_colour(p) for p in range(40)]
    assert len(set(colours)) == 40 and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert partition_colour(None) not in colours
