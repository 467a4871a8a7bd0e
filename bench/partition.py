#!/usr/bin/env python3
"""Partitioning benchmark: how long METIS takes on a large ESG, and how good its cuts are.

    python bench/partition.py                      # 5 runs per timing, plain tables
    python bench/partition.py --runs 3 --markdown  # as docs/partitioning.md shows them

1. **Large ESG.** Co-access data for 10,000 elements (tests that each use 3-8 elements of one
   cluster of 50, one test in ten also one element elsewhere) until the graph has 100,000 edges.
   Timed, median of ``--runs``: building the networkx graph from the per-test data (pair counts,
   then ``add_nodes_from`` / ``add_weighted_edges_from``, as esg/store.py does), building and
   checking the CSR arrays, METIS, and the whole ``build + partition()``. Target: under 1 s.
   Twice: with element sizes that make 312 parts of the default 64 MiB target, and ten times
   smaller (32).
2. **Clustered ESGs.** Planted groups (:func:`pytest_statemigrate.partition.planted_graph`) of a
   few sizes, as many parts as groups: the edge cut of the planted groups themselves, of a random
   balanced partition, of METIS and of the spectral fallback, with the median time of each and
   the share of each group that its part kept (mean over the groups).

Every partitioner runs once unmeasured first (imports of pymetis, numpy and scipy).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any

from pytest_statemigrate import partition as pt

MiB = 2**20


def coaccess(elements: int, edges: int, seed: int) -> tuple[dict[str, int], list[list[str]]]:
    """Element sizes and per-test element lists whose co-access graph has ``edges`` edges."""
    rng = random.Random(seed)
    width = len(str(elements))
    keys = [f"k{i:0{width}d}" for i in range(elements)]
    rng.shuffle(keys)
    clusters = [keys[i : i + 50] for i in range(0, elements, 50)]
    sizes = {key: rng.randint(1024, 4 * MiB) for key in keys}
    pairs: set[tuple[str, str]] = set()
    tests: list[list[str]] = []
    while len(pairs) < edges:
        used = rng.sample(rng.choice(clusters), rng.randint(3, 8))
        if rng.random() < 0.1:
            used.append(rng.choice(keys))
        used = sorted(set(used))
        tests.append(used)
        pairs.update(combinations(used, 2))
    return sizes, tests


def build(sizes: Mapping[str, int], tests: Sequence[Collection[str]]) -> Any:
    """The ESG from per-test data: one edge per pair used by a test, weighted by their count."""
    import networkx as nx

    counts: dict[tuple[str, str], int] = {}
    get = counts.get
    for used in tests:
        for pair in combinations(used, 2):
            counts[pair] = get(pair, 0) + 1
    graph = nx.Graph()
    graph.add_nodes_from((key, {"bytes": size}) for key, size in sizes.items())
    graph.add_weighted_edges_from((a, b, n) for (a, b), n in counts.items())
    return graph


def plain(sizes: Mapping[str, int], tests: Sequence[Collection[str]], nparts: int) -> Any:
    """The plugin's path without networkx: index pairs counted, then ``partition_data``."""
    keys = list(sizes)
    index = {key: i for i, key in enumerate(keys)}
    counts: dict[tuple[int, int], int] = {}
    get = counts.get
    for used in tests:
        for a, b in combinations(used, 2):
            pair = (index[a], index[b])
            counts[pair] = get(pair, 0) + 1
    return pt.partition_data(keys, [sizes[k] for k in keys], counts, nparts)


def store_with(sizes: Mapping[str, int], tests: Sequence[Collection[str]], path: Path) -> None:
    """An ESG file holding one session in which test ``i`` read ``tests[i]``."""
    from pytest_statemigrate.esg import ESGStore, SessionRecord

    record = SessionRecord.new()
    for key, size in sizes.items():
        record.element(key, f"conftest.py::{key}", "session", size)
    for i, used in enumerate(tests):
        for key in used:
            record.read(f"test_{i}", key)
    with ESGStore(path) as store:
        store.add_session(record)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def large(runs: int, seed: int) -> list[tuple[str, ...]]:
    """Time the steps at two part counts: elements of 1 KiB-4 MiB (20 GiB in all) and ten
    times smaller, with the default 64 MiB target."""
    sizes, tests = coaccess(10_000, 100_000, seed)
    graph = build(sizes, tests)
    head = f"{len(graph):,} elements, {graph.number_of_edges():,} edges, {len(tests):,} tests"
    print(f"large ESG: {head}, 64 MiB target, {runs} runs", file=sys.stderr)
    rows = [("step", "parts", "median s", "min s", "max s")]
    for scale in (1, 10):
        scaled = {key: size // scale for key, size in sizes.items()}
        nparts = pt.choose_nparts(sum(scaled.values()), 64 * MiB, 1, len(graph))
        pt.partition(build(scaled, tests), nparts)  # warm-up: imports
        steps: dict[str, list[float]] = {
            "graph build": [],
            "CSR": [],
            "METIS": [],
            "build + partition()": [],
            "pairs + partition_data() (no networkx)": [],
            "repartition() of esg.sqlite (the plugin's path)": [],
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "esg.sqlite"
            store_with(scaled, tests, path)
            for _ in range(runs):
                t_build, graph = timed(partial(build, scaled, tests))
                t_csr, csr = timed(partial(pt._csr, graph))
                t_metis, _ = timed(partial(pt._metis, csr, nparts, 0))
                t_all, _ = timed(lambda s=scaled, k=nparts: pt.partition(build(s, tests), k))
                t_plain, _ = timed(partial(plain, scaled, tests, nparts))
                t_store, _ = timed(partial(repartition_file, path))
                measured = (t_build, t_csr, t_metis, t_all, t_plain, t_store)
                for times, t in zip(steps.values(), measured, strict=True):
                    times.append(t)
        for name, times in steps.items():
            stats = (f"{f(times):.3f}" for f in (statistics.median, min, max))
            rows.append((name, str(nparts), *stats))
    return rows


def repartition_file(path: Path) -> Any:
    from pytest_statemigrate.esg import ESGStore

    with ESGStore(path) as store:
        return pt.repartition(store, partition_bytes=64 * MiB, agents=1)


def kept(assignment: Mapping[str, int], groups: Sequence[Collection[str]]) -> float:
    """Mean over the groups of the share of a group that its most common part holds."""
    shares = []
    for group in groups:
        counts: dict[int, int] = {}
        for key in group:
            counts[assignment[key]] = counts.get(assignment[key], 0) + 1
        shares.append(max(counts.values()) / len(group))
    return statistics.fmean(shares)


CLUSTERED = [(8, 50), (32, 100), (64, 150)]  # (groups, group size)


def clustered(runs: int, seed: int) -> list[tuple[str, ...]]:
    rows = [
        (
            "groups x size",
            "edges",
            "planted cut",
            "random cut",
            "METIS cut",
            "spectral cut",
            "METIS s",
            "spectral s",
            "METIS kept",
            "spectral kept",
        )
    ]
    for groups, size in CLUSTERED:
        n = groups * size
        # about 15 co-accessed elements inside the group and 1.5 outside, per element
        graph = pt.planted_graph(groups, size, 15 / size, 1.5 / (n - size), seed=seed)
        planted = graph.graph["groups"]
        truth = {key: i for i, group in enumerate(planted) for key in group}
        cuts = {}
        times = {}
        shares = {}
        for method in pt.METHODS:
            pt.partition(graph, groups, method=method)  # warm-up: imports
            call = partial(pt.partition, graph, groups, method=method)
            measured = [timed(call) for _ in range(runs)]
            times[method] = statistics.median(t for t, _ in measured)
            assignment = measured[0][1]
            cuts[method] = pt.edge_cut(graph, assignment)
            shares[method] = kept(assignment, planted)
        rows.append(
            (
                f"{groups} x {size}",
                f"{graph.number_of_edges():,}",
                f"{pt.edge_cut(graph, truth):,}",
                f"{pt.edge_cut(graph, pt.random_balanced(graph, groups, seed)):,}",
                f"{cuts['metis']:,}",
                f"{cuts['spectral']:,}",
                f"{times['metis']:.3f}",
                f"{times['spectral']:.3f}",
                f"{shares['metis']:.1%}",
                f"{shares['spectral']:.1%}",
            )
        )
    return rows


def render(rows: Sequence[Sequence[str]], markdown: bool) -> str:
    head, body = rows[0], rows[1:]
    if markdown:
        align = ["---"] + ["---:"] * (len(head) - 1)
        return "\n".join("| " + " | ".join(row) + " |" for row in [head, align, *body])
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}"
        + "".join(f"  {c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True))
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated graphs")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument(
        "--only", choices=("large", "clustered"), help="run one of the two parts only"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.only != "clustered":
        print(render(large(args.runs, args.seed), args.markdown))
        print()
    if args.only != "large":
        print(render(clustered(args.runs, args.seed), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
