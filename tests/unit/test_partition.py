"""pytest_statemigrate.partition: part counts, validation, determinism, quality, stable ids."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_statemigrate import partition as pt
from pytest_statemigrate.esg import ElementInfo, ESGStore, GraphData, SessionRecord
from pytest_statemigrate.partition import (
    METHODS,
    as_parts,
    choose_nparts,
    edge_cut,
    partition,
    partition_data,
    planted_graph,
    random_balanced,
    repartition,
    stable_ids,
)

MiB = 2**20

# --------------------------------------------------------------------------- choose_nparts


@pytest.mark.parametrize(
    ("total", "target", "agents", "elements", "expected"),
    [
        (10 * MiB, 4 * MiB, 1, 100, 3),  # ceil(10 / 4)
        (8 * MiB, 4 * MiB, 1, 100, 2),
        (8 * MiB, 4 * MiB, 5, 100, 5),  # at least one per agent
        (0, 4 * MiB, 3, 100, 3),
        (10 * MiB, 1, 1, 7, 7),  # never more parts than elements
        (10 * MiB, 1, 4, 0, 1),  # no elements: 1, a valid nparts for partition()
        (0, 1, 1, 1, 1),
    ],
)
def test_choose_nparts(total: int, target: int, agents: int, elements: int, expected: int) -> None:
    assert choose_nparts(total, target, agents, elements) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 1, 1, 1), "total_bytes must be >= 0, got -1"),
        ((1, 0, 1, 1), "target_bytes must be >= 1, got 0"),
        ((1, 1, 0, 1), "agents must be >= 1, got 0"),
        ((1, 1, 1, -2), "elements must be >= 0, got -2"),
    ],
)
def test_choose_nparts_refuses_bad_arguments(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_nparts(*args)


# --------------------------------------------------------------------------- graphs

KEYS = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
SIZES = st.one_of(st.integers(0, 2**40), st.floats(0, 1e12))
WEIGHTS = st.one_of(st.none(), st.integers(0, 10**12), st.floats(0, 1e6))  # None: missing


@st.composite
def esgs(draw: st.DrawFn, max_nodes: int = 20) -> nx.Graph:
    """Small ESGs with what the recorder may produce and worse: isolated elements, missing,
    zero and float sizes and weights, self-loops, huge values."""
    keys = draw(st.lists(KEYS, unique=True, max_size=max_nodes))
    graph = nx.Graph()
    for key in keys:
        size = draw(st.none() | SIZES)
        graph.add_node(key, **({} if size is None else {"bytes": size}))
    if keys:
        ends = st.sampled_from(keys)
        for u, v, weight in draw(st.lists(st.tuples(ends, ends, WEIGHTS), max_size=3 * len(keys))):
            graph.add_edge(u, v, **({} if weight is None else {"weight": weight}))
    return graph


def rebuilt(graph: nx.Graph, nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> nx.Graph:
    """The same graph, its nodes and edges inserted in the given orders."""
    copy = nx.Graph()
    copy.add_nodes_from((n, graph.nodes[n]) for n in nodes)
    copy.add_edges_from((v, u, graph.edges[u, v]) for u, v in edges)  # and each edge reversed
    return copy


# --------------------------------------------------------------------------- the contract


@settings(max_examples=60, deadline=None, database=None)
@given(esgs(), st.integers(1, 25), st.sampled_from(METHODS))
def test_every_element_in_exactly_one_of_min_nparts_parts(
    graph: nx.Graph, nparts: int, method: str
) -> None:
    assignment = partition(graph, nparts, method=method)
    assert assignment.keys() == set(graph)
    assert set(assignment.values()) == set(range(min(nparts, len(graph))))  # none empty
    firsts = [min(part) for part in as_parts(assignment)]
    assert firsts == sorted(firsts)  # parts numbered in the order of their smallest key


@settings(max_examples=30, deadline=None, database=None)
@given(esgs(), st.integers(1, 8), st.sampled_from(METHODS), st.data())
def test_the_same_graph_gives_the_same_parts_whatever_the_order(
    graph: nx.Graph, nparts: int, method: str, data: st.DataObject
) -> None:
    nodes = data.draw(st.permutations(list(graph)))
    edges = data.draw(st.permutations(list(graph.edges)))
    expected = partition(graph, nparts, method=method, seed=3)
    assert partition(rebuilt(graph, nodes, edges), nparts, method=method, seed=3) == expected


@settings(max_examples=60, deadline=None, database=None)
@given(esgs(max_nodes=30))
def test_metis_gets_symmetric_integer_csr_in_int32_range(graph: nx.Graph) -> None:
    csr = pt._csr(graph)
    n = len(csr.keys)
    assert csr.keys == sorted(graph) and len(csr.xadj) == n + 1 and len(csr.vweights) == n
    assert csr.xadj[0] == 0 and csr.xadj[-1] == len(csr.adjncy) == len(csr.eweights)
    entries = {}
    for i in range(n):
        row = csr.adjncy[csr.xadj[i] : csr.xadj[i + 1]]
        assert row == sorted(set(row)) and i not in row  # ascending, no duplicates or self-loops
        for e in range(csr.xadj[i], csr.xadj[i + 1]):
            entries[i, csr.adjncy[e]] = csr.eweights[e]
    assert all(entries[j, i] == w for (i, j), w in entries.items())  # symmetric
    assert {frozenset((csr.keys[i], csr.keys[j])) for i, j in entries} == {
        frozenset(e) for e in graph.edges if e[0] != e[1]
    }
    for weights in (csr.eweights, csr.vweights):
        assert all(type(w) is int and w >= 1 for w in weights)
        assert sum(weights) < 2**31


def test_weights_are_rounded_and_at_least_one() -> None:
    graph = nx.Graph()
    graph.add_nodes_from(["a", "b", "c", "d"], bytes=10)
    graph.add_edge("a", "b", weight=0)
    graph.add_edge("b", "c", weight=2.6)
    graph.add_edge("c", "d")  # missing
    graph.add_edge("d", "d", weight=7)  # self-loop: dropped
    csr = pt._csr(graph)
    assert csr.adjncy == [1, 0, 2, 1, 3, 2] and csr.eweights == [1, 1, 3, 3, 1, 1]
    assert edge_cut(graph, {"a": 0, "b": 1, "c": 0, "d": 1}) == 1 + 3 + 1


def test_sizes_are_scaled_into_int32_range_keeping_their_ratios() -> None:
    graph = nx.Graph()
    graph.add_nodes_from([("big", {"bytes": 3 * 2**40}), ("small", {"bytes": 2**40}), ("z", {})])
    budget = pt.WEIGHT_BUDGET
    assert pt._csr(graph).vweights == [budget * 3 // 4, budget // 4, 1]  # "z" (0 bytes) weighs 1


def test_parallel_edges_of_a_multigraph_add_up() -> None:
    # a-b weighs 3 + 3: it outweighs a-c (5), so {a, b} | {c, d} (cut 5 + 5) beats
    # {a, c} | {b, d} (cut 6 + 6); with a-b counted once (3) the latter would cut only 9.
    graph = nx.MultiGraph()
    graph.add_nodes_from("abcd", bytes=1)
    graph.add_weighted_edges_from(
        [("a", "b", 3), ("a", "b", 3), ("a", "c", 5), ("c", "d", 6), ("b", "d", 5)]
    )
    for method in METHODS:
        assignment = partition(graph, 2, method=method)
        assert assignment["a"] == assignment["b"] != assignment["c"] == assignment["d"], method


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda g: g.add_edge("a", "b", weight=-1), "weight of edge 'a' - 'b' must be a finite"),
        (lambda g: g.add_edge("a", "b", weight=float("nan")), "got nan"),
        (lambda g: g.add_edge("a", "b", weight="3"), "got '3'"),
        (lambda g: g.add_edge("a", "b", weight=10**400), "weight of edge 'a' - 'b' must be"),
        (lambda g: g.add_node("a", bytes=-5), "bytes of element 'a' must be a finite number"),
        (lambda g: g.add_node("a", bytes=None), "got None"),
        (lambda g: g.add_node(7), "element keys must be str, got 7"),
    ],
)
def test_malformed_graphs_are_refused_before_metis(build: object, message: str) -> None:
    graph = nx.Graph()
    graph.add_nodes_from("ab")
    build(graph)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        partition(graph, 2)


def test_bad_arguments_are_refused() -> None:
    graph = planted_graph(2, 3, 1.0, 0.0)
    with pytest.raises(ValueError, match="nparts must be >= 1, got 0"):
        partition(graph, 0)
    with pytest.raises(ValueError, match="method must be one of metis, spectral, got 'kway'"):
        partition(graph, 2, method="kway")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        partition(graph, 2, seed=-1)
    with pytest.raises(ValueError, match="undirected"):
        partition(nx.DiGraph(graph), 2)


@pytest.mark.parametrize("method", METHODS)
def test_trivial_graphs(method: str) -> None:
    assert partition(nx.Graph(), 4, method=method) == {}
    single = nx.Graph()
    single.add_edge("only", "only")
    assert partition(single, 4, method=method) == {"only": 0}
    graph = planted_graph(2, 5, 0.5, 0.1)
    assert partition(graph, 1, method=method) == dict.fromkeys(graph, 0)


@pytest.mark.parametrize("method", METHODS)
def test_components_stay_whole(method: str) -> None:
    graph = nx.Graph()
    for prefix in "xyz":
        graph.add_weighted_edges_from(
            (f"{prefix}{i}", f"{prefix}{j}", 1) for i in range(6) for j in range(i)
        )
    graph.add_nodes_from(("lone1", "lone2"))  # isolated
    assignment = partition(graph, 3, method=method)
    assert edge_cut(graph, assignment) == 0
    assert sorted(map(len, as_parts(assignment))) in ([6, 7, 7], [6, 6, 8])


@pytest.mark.parametrize(
    ("sizes", "edges", "nparts"),
    [([1, 1000], [(0, 1)], 2), ([100, 1, 1, 1, 1], [], 4), ([50, 1, 1], [(1, 2)], 3)],
)
def test_one_huge_element_leaves_no_part_empty(
    sizes: list[int], edges: list[tuple[int, int]], nparts: int
) -> None:
    graph = nx.Graph()
    graph.add_nodes_from((f"k{i}", {"bytes": b}) for i, b in enumerate(sizes))
    graph.add_edges_from((f"k{i}", f"k{j}") for i, j in edges)
    assert set(partition(graph, nparts).values()) == set(range(nparts))


def test_metis_itself_can_leave_a_part_empty() -> None:
    """The pymetis behaviour that _fill_empty is for; if it changes, _fill_empty may go."""
    import pymetis

    result = pymetis.part_graph(
        2, adjacency=pymetis.CSRAdjacency([0, 1, 2], [1, 0]), vweights=[1, 1000]
    )
    assert len(set(result.vertex_part)) == 1


@pytest.mark.parametrize("nparts", [2, 5, 9])
def test_metis_prints_nothing(capfd: pytest.CaptureFixture[str], nparts: int) -> None:
    # METIS writes its complaints ("too many parts", "cannot bisect") to the C stdout.
    graph = planted_graph(3, 3, 0.5, 0.0)  # 9 elements, some of them maybe isolated
    graph.add_nodes_from(["iso1", "iso2"])
    assert len(set(partition(graph, nparts).values())) == nparts
    assert capfd.readouterr() == ("", "")


# --------------------------------------------------------------------------- quality


def recovered(assignment: Mapping[str, int], planted: Sequence[Collection[str]]) -> float:
    """The smallest share of a planted group inside one part; 1.0 if every group got a part of
    its own (the parts holding the groups' majorities must also differ)."""
    majority = []
    share = []
    for group in planted:
        counts = [sum(1 for key in group if assignment[key] == p) for p in range(len(planted))]
        majority.append(counts.index(max(counts)))
        share.append(max(counts) / len(group))
    assert len(set(majority)) == len(planted)
    return min(share)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("groups", "size", "p_in", "p_out"), [(8, 40, 0.3, 0.01), (5, 60, 0.2, 0.01)]
)
def test_planted_groups_are_recovered_and_cut_far_less_than_random(
    method: str, groups: int, size: int, p_in: float, p_out: float
) -> None:
    graph = planted_graph(groups, size, p_in, p_out, seed=11)
    assignment = partition(graph, groups, method=method)
    assert recovered(assignment, graph.graph["groups"]) >= 0.9
    assert edge_cut(graph, assignment) <= edge_cut(graph, random_balanced(graph, groups, 0)) / 2


def test_parts_are_balanced_by_bytes() -> None:
    graph = planted_graph(4, 30, 0.3, 0.02, seed=2)
    for key in list(graph)[:30]:
        graph.nodes[key]["bytes"] *= 3  # sizes differ: parts still hold about a quarter each
    total = sum(b for _, b in graph.nodes(data="bytes"))
    for method in METHODS:
        parts = as_parts(partition(graph, 4, method=method))
        loads = [sum(graph.nodes[k]["bytes"] for k in part) for part in parts]
        # 3% of a 45 MiB share, plus one 3 MiB element (sizes are not divisible): 10%
        assert max(loads) <= 1.10 * total / 4, (method, loads)


def test_spectral_runs_when_pymetis_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = planted_graph(3, 20, 0.4, 0.02, seed=5)
    spectral = partition(graph, 3, method="spectral")
    calls: list[int] = []
    real = pt._spectral

    def spy(csr: pt._Csr, k: int, seed: int) -> list[int]:
        calls.append(k)
        return real(csr, k, seed)

    monkeypatch.setattr(pt, "_spectral", spy)
    partition(graph, 3)
    assert calls == []  # METIS, while pymetis is there
    monkeypatch.setitem(sys.modules, "pymetis", None)  # import pymetis → ImportError
    assert partition(graph, 3) == spectral and calls == [3]


def test_random_balanced_is_a_seeded_round_robin() -> None:
    graph = planted_graph(3, 7, 0.5, 0.1)
    assignment = random_balanced(graph, 4, seed=1)
    assert sorted(map(len, as_parts(assignment))) == [5, 5, 5, 6]
    assert random_balanced(graph, 4, seed=1) == assignment != random_balanced(graph, 4, seed=2)
    with pytest.raises(ValueError, match="nparts must be >= 1, got 0"):
        random_balanced(graph, 0)
    with pytest.raises(ValueError, match="no part for 1 element"):
        edge_cut(graph, {k: v for k, v in assignment.items() if k != min(graph)})


# --------------------------------------------------------------------------- stable ids


def test_first_ids_are_fresh_in_order_of_the_smallest_key() -> None:
    assert stable_ids([{"x", "y"}, {"b"}], {}, 0) == {0: {"b"}, 1: {"x", "y"}}


def test_ids_follow_the_largest_total_overlap() -> None:
    # Greedy would give P the id of X (3 shared) and Q a fresh id: 3 elements keep their id.
    # P → Y and Q → X keep 4.
    p, q = {"a", "b", "c", "d", "e"}, {"f", "g"}
    old = {10: {"a", "b", "c", "f", "g"}, 11: {"d", "e"}}
    assert stable_ids([p, q], old, 12) == {10: q, 11: p}
    assert stable_ids([q, p], old, 12) == {10: q, 11: p}  # the order of new does not matter


def test_retired_ids_are_not_reused() -> None:
    old = {0: {"a", "b"}, 5: {"c"}}
    assert stable_ids([{"a", "b"}, {"x"}, {"y"}], old, 6) == {0: {"a", "b"}, 6: {"x"}, 7: {"y"}}


@pytest.mark.parametrize(
    ("new", "old", "next_id", "message"),
    [
        ([{"a"}, set()], {}, 0, "a new part is empty"),
        ([{"a", "b"}, {"b"}], {}, 0, "'b' is in two new parts"),
        ([{"a"}], {3: {"a"}}, 3, "next_id must be >= 0 and above every old id, got 3"),
        ([{"a"}], {}, -1, "got -1"),
    ],
)
def test_stable_ids_refuses_bad_arguments(
    new: list[set[str]], old: dict[int, set[str]], next_id: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stable_ids(new, old, next_id)


@pytest.mark.parametrize("method", METHODS)
def test_ids_survive_a_small_change_of_the_esg(method: str) -> None:
    graph = planted_graph(6, 30, 0.3, 0.01, seed=4)
    before = stable_ids(as_parts(partition(graph, 6, method=method)), {}, 100)
    changed = graph.copy()
    gone = sorted(graph)[:4]
    changed.remove_nodes_from(gone)
    for i, group in enumerate(graph.graph["groups"][:3]):  # a new element in 3 groups
        changed.add_weighted_edges_from((f"new{i}", key, 2) for key in sorted(group)[:8])
        changed.nodes[f"new{i}"]["bytes"] = 2**20
    after = stable_ids(as_parts(partition(changed, 6, method=method)), before, 106)
    assert after.keys() == before.keys()
    for i, elements in before.items():
        kept = len(elements & after[i]) / len(elements - set(gone))
        assert kept >= 0.9, (i, kept)


# --------------------------------------------------------------------------- repartition


def as_data(graph: nx.Graph, *, edges: bool = True) -> GraphData:
    """The graph as ESGStore.graph_data gives it (elements in insertion order)."""
    keys = list(graph)
    index = {k: i for i, k in enumerate(keys)}
    elements = [
        ElementInfo(k, k, "session", int(graph.nodes[k].get("bytes", 0)), None, None, 0, 0, 0)
        for k in keys
    ]
    pairs = {(index[u], index[v]): int(w) for u, v, w in graph.edges(data="weight", default=1)}
    return GraphData(elements, pairs if edges else {})


@given(st.integers(0, 2**16), st.integers(1, 6))
@settings(max_examples=25, deadline=None)
def test_plain_data_partitions_like_the_graph(seed: int, nparts: int) -> None:
    graph = planted_graph(3, 8, 0.5, 0.05, seed=seed)
    data = as_data(graph)
    keys = [e.key for e in data.elements]
    sizes = [e.nbytes for e in data.elements]
    assert partition_data(keys, sizes, data.edges, nparts, seed=1) == partition(
        graph, nparts, seed=1
    )


def test_plain_data_is_checked() -> None:
    with pytest.raises(ValueError, match="names no element"):
        partition_data(["a", "b"], [1, 1], {(0, 5): 1}, 2)
    with pytest.raises(ValueError, match="2 sizes for 3 elements"):
        partition_data(["a", "b", "c"], [1, 1], {}, 2)
    with pytest.raises(ValueError, match="weight"):
        partition_data(["a", "b"], [1, 1], {(0, 1): -1}, 2)
    # a self-loop is dropped; a pair given both ways is one edge of the summed weight
    assert partition_data(["a", "b", "c"], [1, 1, 1], {(0, 0): 9, (0, 1): 2, (1, 0): 3}, 1) == {
        "a": 0,
        "b": 0,
        "c": 0,
    }


def record_of(graph: nx.Graph) -> SessionRecord:
    """A session whose tests use the graph's elements as its edges say: one test per unit of
    an edge's weight reads both ends, and one test reads each element alone."""
    record = SessionRecord.new()
    for key, size in graph.nodes(data="bytes"):
        record.element(key, f"conftest.py::{key}", "session", size)
        record.read(f"test_alone_{key}", key)
    for u, v, w in graph.edges(data="weight"):
        for n in range(w):
            record.read(f"test_{u}_{v}_{n}", u)
            record.read(f"test_{u}_{v}_{n}", v)
    return record


def test_repartition_sizes_parts_and_keeps_ids(tmp_path: Path) -> None:
    graph = planted_graph(4, 20, 0.4, 0.02, seed=8, element_bytes=MiB)
    with ESGStore(tmp_path / "esg.sqlite", history=1) as store:
        store.add_session(record_of(graph))
        first = repartition(store, partition_bytes=20 * MiB, agents=2)
        assert not store.needs_partitioning() and sorted(first) == [0, 1, 2, 3]  # 80 / 20 MiB
        assert {k for part in first.values() for k in part} == set(graph)
        graph.remove_node(min(graph))
        store.add_session(record_of(graph))  # history 1: the first session goes
        assert store.needs_partitioning()
        second = repartition(store, partition_bytes=20 * MiB, agents=2)
        assert not store.needs_partitioning() and sorted(second) == [0, 1, 2, 3]
        assert {k for part in second.values() for k in part} == set(graph)
        assert sum(len(first[i] & second[i]) for i in first) >= 0.95 * len(graph)
        third = repartition(store, partition_bytes=40 * MiB, agents=3)  # 79 MiB: 2 parts, 3 agents
        assert len(third) == 3 and third.keys() < {0, 1, 2, 3}  # one id retired, none new


def test_repartition_of_a_real_esg_store(tmp_path: Path) -> None:
    """Four planted groups of elements used together by their tests, in a real ESG file."""
    record = SessionRecord.new()
    for g in range(4):
        keys = [f"g{g}-e{i}" for i in range(5)]
        for key in keys:
            record.element(key, f"conftest.py::f{key}", "session", MiB)
        for t in range(6):
            test = f"test_g{g}_{t}"
            for key in keys[t % 3 : t % 3 + 3]:
                record.read(test, key)
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(record)
        assert store.needs_partitioning()
        parts = repartition(store, partition_bytes=5 * MiB, agents=1)
        assert not store.needs_partitioning()
        saved = {p.id: set(p.elements) for p in store.partitions()}
    assert saved == {i: set(keys) for i, keys in parts.items()}
    assert sorted(sorted(p) for p in saved.values()) == [
        [f"g{g}-e{i}" for i in range(5)] for g in range(4)
    ]
    with ESGStore(tmp_path / "esg.sqlite") as store:
        fewer = repartition(store, partition_bytes=10 * MiB, agents=1)  # 2 parts: 2 ids retire
        assert len(fewer) == 2 and set(fewer) < set(parts)
        again = repartition(store, partition_bytes=5 * MiB, agents=1)  # 4 again: 2 fresh ids
        assert len(again) == 4 and set(again) - set(fewer) == {4, 5}  # retired ids not reused


def test_one_partition_needs_no_graph_library(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from pytest_statemigrate.esg import ESGStore, SessionRecord\n"
        "from pytest_statemigrate.partition import repartition\n"
        "r = SessionRecord.new(); r.element('k', 'f', 'session', 10); r.read('t', 'k')\n"
        f"with ESGStore(Path({str(tmp_path / 'esg.sqlite')!r})) as s:\n"
        "    s.add_session(r); print(repartition(s, partition_bytes=2**20, agents=1))\n"
        "print(sorted(m for m in ('networkx', 'pymetis', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["{0: frozenset({'k'})}", "[]"]


def test_importing_the_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, pytest_statemigrate; before = set(sys.modules); "
        "import pytest_statemigrate.partition; "
        "print(' '.join({m.partition('.')[0] for m in set(sys.modules) - before}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = set(out.stdout.split())
    assert "pytest_statemigrate" in imported
    assert not imported & {"networkx", "pymetis", "numpy", "scipy"}


def test_metis_prints_nothing_into_the_run_s_output(capfd: pytest.CaptureFixture[str]) -> None:
    """A vertex heavier than a part makes METIS print "Cannot bisect a graph with 0 vertices"
    to C's stdout (seen after pytest's summary of a warm ``-n 2`` run); the parts are still
    whole and none is empty."""
    import ctypes

    keys = [f"v{i}" for i in range(6)]
    edges = {(i, i + 1): 1 for i in range(5)}
    membership = pt.partition_data(keys, [1_000_000, 1, 2, 3, 1, 2], edges, 4)
    ctypes.CDLL(None).fflush(None)  # what C buffered would reach the terminal at exit
    assert capfd.readouterr().out == ""
    assert sorted(set(membership.values())) == [0, 1, 2, 3]
    print("after")  # the descriptor is back
    assert capfd.readouterr().out == "after\n"


@pytest.mark.parametrize("blocked", ["numpy", "scipy"])
def test_without_the_spectral_extra_one_line_names_it(
    monkeypatch: pytest.MonkeyPatch, blocked: str
) -> None:
    """numpy and scipy are the ``spectral`` extra: without them the spectral path is refused
    with what to install, and METIS (a required dependency) still partitions."""
    graph = planted_graph(3, 20, 0.4, 0.02, seed=5)
    metis = partition(graph, 3)
    monkeypatch.setitem(sys.modules, blocked, None)  # import → ImportError, as if not installed
    assert not pt.spectral_available()
    with pytest.raises(pt.Unavailable) as spectral:
        partition(graph, 3, method="spectral")
    assert str(spectral.value) == pt.SPECTRAL_EXTRA and "[spectral]" in pt.SPECTRAL_EXTRA
    assert partition(graph, 3) == metis
    monkeypatch.setitem(sys.modules, "pymetis", None)
    with pytest.raises(pt.Unavailable, match=r"^pymetis cannot be imported, and the spectral"):
        partition(graph, 3)
