"""Partitioning of the execution state graph (ESG): which state elements travel together.

A partition is a set of state elements that tests use together; the migration engine moves whole
partitions between agents and tiers. This module turns the ESG (an undirected networkx graph,
:meth:`pytest_statemigrate.esg.ESGStore.to_networkx`) into partitions:

* :func:`choose_nparts`: how many, from a target partition size and the number of agents;
* :func:`partition`: element → part index, by METIS (pymetis) or, when pymetis cannot be
  imported or ``method="spectral"``, by spectral recursive bisection;
* :func:`stable_ids`: parts → partition ids that survive a re-partition of a changed ESG;
* :func:`repartition`: the three over an ESG store, as the plugin runs them at session end.

The graph contract: a node is a state key (``str``) with ``bytes`` (size, a number >= 0; missing
counts as 0); an edge's ``weight`` counts co-accesses (a number >= 0; missing counts as 1).
METIS accepts malformed input silently (one-way edges, self-loops, more parts than vertices), so
the CSR arrays are built and checked here, never taken from elsewhere: nodes sorted by key (the
result does not depend on insertion order), self-loops dropped, parallel edges of a multigraph
summed, weights rounded to integers >= 1 and scaled into int32 range.

Only the standard library is imported at module level; networkx and pymetis are imported where
used, numpy and scipy only by the spectral path (invariant 6). docs/partitioning.md has the
measurements.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from numbers import Real
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

if TYPE_CHECKING:
    import networkx as nx  # type: ignore[import-untyped]
    import numpy as np
    import numpy.typing as npt

METHODS: Final = ("metis", "spectral")
#: What to install for the spectral partitioner (numpy and scipy are not required: 140 MB).
SPECTRAL_EXTRA: Final = (
    "the spectral partitioner needs numpy and scipy: pip install 'pytest-statemigrate[spectral]'"
)


class Unavailable(RuntimeError):
    """The partitioner asked for cannot run here; the message names what to install."""


WEIGHT_BUDGET: Final = 2**30  # largest sum of vertex (or of CSR edge) weights handed to METIS
IMBALANCE: Final = 0.03  # a part may exceed its share of the bytes by 3% (METIS ufactor 30)
DENSE_MAX: Final = 256  # components up to this many elements get a dense eigensolver
EIGEN_TOL: Final = 1e-4  # ARPACK tolerance for the Fiedler vector of larger components


# --------------------------------------------------------------------------- how many parts


def choose_nparts(total_bytes: int, target_bytes: int, agents: int, elements: int) -> int:
    """The number of partitions: ``max(ceil(total_bytes / target_bytes), agents)``, clamped to
    ``[1, elements]``.

    Enough parts that each is near the target size (``statemigrate_partition_bytes``), and at
    least one per agent so that every agent can hold one. No elements gives 1, so the result is
    always a valid ``nparts`` for :func:`partition` (which returns ``{}`` for an empty graph).

    :raises ValueError: a negative total or count, a target below 1 byte, fewer than 1 agent.
    """
    if total_bytes < 0:
        raise ValueError(f"total_bytes must be >= 0, got {total_bytes}")
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    if agents < 1:
        raise ValueError(f"agents must be >= 1, got {agents}")
    if elements < 0:
        raise ValueError(f"elements must be >= 0, got {elements}")
    wanted = max(-(-total_bytes // target_bytes), agents)
    return max(1, min(wanted, elements))


# --------------------------------------------------------------------------- validated CSR


@dataclass(frozen=True)
class _Csr:
    """The graph as METIS takes it: vertex ``i`` is ``keys[i]``; its neighbours are
    ``adjncy[xadj[i]:xadj[i + 1]]`` (ascending) with weights at the same positions of
    ``eweights``. Symmetric, no self-loops, every weight an int >= 1."""

    keys: list[str]
    xadj: list[int]
    adjncy: list[int]
    eweights: list[int]
    vweights: list[int]


def _number(value: object, what: str) -> float:
    """``value`` as a finite float >= 0, or a ValueError naming ``what``."""
    try:
        number = float(value) if isinstance(value, Real) else math.nan
    except OverflowError:  # an int beyond float range
        number = math.inf
    if not 0 <= number < math.inf:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def _size(key: str, value: object) -> float:
    return _number(value, f"bytes of element {key!r}")


def _weight(u: str, v: str, value: object) -> float:
    return _number(value, f"weight of edge {u!r} - {v!r}")


def _integers(values: list[float]) -> list[int]:
    """Rounded to ints >= 1, scaled down first if their sum would exceed :data:`WEIGHT_BUDGET`.

    Values that are all ints already (the fast checks in :func:`_csr` pass only ints from 1 to
    the budget) and within budget together are returned as they are.
    """
    total = sum(values)
    if total <= WEIGHT_BUDGET and all(type(v) is int for v in values):
        return cast("list[int]", values)
    scale = min(1.0, WEIGHT_BUDGET / max(total, 1.0))
    return [max(1, round(v * scale)) for v in values]


def _keys(graph: nx.Graph) -> list[str]:
    if graph.is_directed():
        raise ValueError("the ESG is undirected; got a directed graph")
    keys = list(graph)
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(f"element keys must be str, got {key!r}")
    keys.sort()
    return keys


def _csr(graph: nx.Graph) -> _Csr:
    """Build and check the CSR arrays METIS needs (see the module docstring).

    The rows come from networkx's adjacency, which holds every edge both ways: symmetric by
    construction. A size or weight that is an int >= 1 passes a fast check; any other value
    goes through :func:`_number`.
    """
    keys = _keys(graph)
    index = {key: i for i, key in enumerate(keys)}
    nodes, multi = graph.nodes, graph.is_multigraph()
    adjacency = dict(graph.adjacency())  # plain dicts: 3x faster to walk than graph.adj
    sizes: list[float] = []
    for key in keys:
        size = nodes[key].get("bytes", 0)
        sizes.append(size if type(size) is int and 0 < size <= WEIGHT_BUDGET else _size(key, size))
    xadj = [0]
    adjncy: list[int] = []
    weights: list[float] = []
    for u in keys:
        row: list[tuple[int, float]] = []
        for v, data in adjacency[u].items():
            if v == u:
                continue
            if multi:  # parallel edges: one edge of their summed weight
                w = sum(_weight(u, v, d.get("weight", 1)) for d in data.values())
            else:
                w = data.get("weight", 1)
                if type(w) is not int or not 1 <= w <= WEIGHT_BUDGET:
                    w = _weight(u, v, w)
            row.append((index[v], w))
        if row:
            row.sort()
            columns, row_weights = zip(*row, strict=True)
            adjncy.extend(columns)
            weights.extend(row_weights)
        xadj.append(len(adjncy))
    return _Csr(keys, xadj, adjncy, _integers(weights), _integers(sizes))


def _csr_from_pairs(
    keys: Sequence[str], sizes: Sequence[object], edges: Mapping[tuple[int, int], object]
) -> _Csr:
    """The CSR arrays from plain data: ``edges`` maps index pairs into ``keys`` to weights.

    The same checks as :func:`_csr`: vertices sorted by key, each pair made symmetric (a pair
    given both ways is summed), self-loops dropped, sizes and weights checked and made ints.
    """
    n = len(keys)
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} sizes for {n} elements")
    order = sorted(range(n), key=keys.__getitem__)
    rank = [0] * n
    for new, old in enumerate(order):
        if not isinstance(keys[old], str):
            raise ValueError(f"element keys must be str, got {keys[old]!r}")
        rank[old] = new
    rows: list[dict[int, float]] = [{} for _ in range(n)]
    for (a, b), w in edges.items():
        if not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"edge ({a}, {b}) names no element (there are {n})")
        if a == b:
            continue
        if type(w) is not int or not 1 <= w <= WEIGHT_BUDGET:
            w = _weight(keys[a], keys[b], w)
        u, v = rank[a], rank[b]
        rows[u][v] = rows[u].get(v, 0) + w
        rows[v][u] = rows[v].get(u, 0) + w
    xadj = [0]
    adjncy: list[int] = []
    weights: list[float] = []
    for row in rows:
        for v in sorted(row):
            adjncy.append(v)
            weights.append(row[v])
        xadj.append(len(adjncy))
    vweights: list[float] = []
    for old in order:
        size = sizes[old]
        fast = type(size) is int and 0 < size <= WEIGHT_BUDGET
        vweights.append(cast(int, size) if fast else _size(keys[old], size))
    return _Csr([keys[i] for i in order], xadj, adjncy, _integers(weights), _integers(vweights))


# --------------------------------------------------------------------------- partitioning


def partition(
    graph: nx.Graph, nparts: int, *, method: str = "metis", seed: int = 0
) -> dict[str, int]:
    """Assign every element of ``graph`` to one of ``min(nparts, len(graph))`` parts.

    Parts are balanced by ``bytes`` (each within :data:`IMBALANCE` of its share where the sizes
    allow) and cut as few co-access weights as possible. Every part index in
    ``range(min(nparts, len(graph)))`` is used; parts are numbered in the order of their
    smallest key. The same graph and seed give the same result, whatever the insertion order.

    :param method: ``"metis"`` (pymetis; the spectral path when pymetis cannot be imported) or
        ``"spectral"``.
    :param seed: METIS's random seed, and the start vector of the spectral eigensolver.
    :raises ValueError: ``nparts < 1``, an unknown method, a negative seed, a directed graph, a
        key that is not a str, a size or weight that is not a finite number >= 0.
    :raises Unavailable: the spectral path is needed and numpy or scipy is not installed.
    """
    return _partition_csr(_csr(graph), nparts, method, seed)


def partition_data(
    keys: Sequence[str],
    sizes: Sequence[object],
    edges: Mapping[tuple[int, int], object],
    nparts: int,
    *,
    method: str = "metis",
    seed: int = 0,
) -> dict[str, int]:
    """:func:`partition` of plain data, without networkx (what the plugin runs at the end of
    a session): element ``i`` is ``keys[i]`` of ``sizes[i]`` bytes; ``edges`` maps index pairs
    to co-access weights."""
    return _partition_csr(_csr_from_pairs(keys, sizes, edges), nparts, method, seed)


def _partition_csr(csr: _Csr, nparts: int, method: str, seed: int) -> dict[str, int]:
    if nparts < 1:
        raise ValueError(f"nparts must be >= 1, got {nparts}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    k = min(nparts, len(csr.keys))
    if k <= 1:
        return dict.fromkeys(csr.keys, 0)
    membership = _metis(csr, k, seed) if method == "metis" else None
    if membership is None:
        if not spectral_available():
            missing = "pymetis cannot be imported, and " if method == "metis" else ""
            raise Unavailable(missing + SPECTRAL_EXTRA)
        membership = _spectral(csr, k, seed)
    return dict(zip(csr.keys, _numbered(membership), strict=True))


def _metis(csr: _Csr, k: int, seed: int) -> list[int] | None:
    """METIS's parts (none empty), or None when pymetis cannot be imported."""
    try:
        import pymetis
    except ImportError:
        return None
    options = pymetis.Options(seed=seed, ufactor=round(IMBALANCE * 1000))
    with _c_stdout_silenced():
        _, parts = pymetis.part_graph(
            k,
            adjacency=pymetis.CSRAdjacency(csr.xadj, csr.adjncy),
            vweights=csr.vweights,
            eweights=csr.eweights,
            # Bisection cuts less for few parts (pymetis's own default, stated); for many,
            # k-way keeps the balance (bisection's imbalance compounds: +14% measured for 312
            # parts).
            recursive=k <= 8,
            options=options,
        )
    return _fill_empty(csr, list(parts), k)


@contextmanager
def _c_stdout_silenced() -> Iterator[None]:
    """Send what C code prints to file descriptor 1 to the null device, for the block.

    METIS prints "***Cannot bisect a graph with 0 vertices!" to the C library's stdout when a
    vertex outweighs a part (it leaves a part empty, which :func:`_fill_empty` repairs). In a
    pytest run that text would land in the user's terminal, after the summary (C buffers it
    until exit). Python's own buffer is flushed before, and C's inside, so nothing else moves.
    """
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    flush = _c_fflush()
    try:
        sys.stdout.flush()
        flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            flush()
            os.dup2(saved, 1)
    finally:
        os.close(saved)


def _c_fflush() -> Any:
    """``fflush(NULL)`` of the C library (a no-op where it cannot be found)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return lambda: libc.fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library by that name (Windows)
        return lambda: None


def _fill_empty(csr: _Csr, membership: list[int], k: int) -> list[int]:
    """Give every empty part one element.

    METIS leaves a part empty when the vertex weights cannot be balanced (one element far larger
    than the others): ``part_graph(2, ...)`` on two vertices of weights 1 and 1000 puts both in
    one part. Each empty part takes, from the heaviest part with two or more elements, the
    element with the least co-access weight inside that part (ties: the smallest key).
    """
    sizes = [0] * k
    load = [0] * k
    for i, part in enumerate(membership):
        sizes[part] += 1
        load[part] += csr.vweights[i]
    for empty in [part for part in range(k) if sizes[part] == 0]:
        donor = max((p for p in range(k) if sizes[p] > 1), key=lambda p: (load[p], -p))
        members = [i for i, p in enumerate(membership) if p == donor]
        moved = min(members, key=lambda i: _inside(csr, membership, i))
        membership[moved] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
        load[donor] -= csr.vweights[moved]
        load[empty] += csr.vweights[moved]
    return membership


def _inside(csr: _Csr, membership: Sequence[int], i: int) -> int:
    """The co-access weight between element ``i`` and the other elements of its part."""
    span = range(csr.xadj[i], csr.xadj[i + 1])
    return sum(csr.eweights[e] for e in span if membership[csr.adjncy[e]] == membership[i])


def _numbered(membership: Sequence[int]) -> list[int]:
    """Part labels renumbered 0, 1, ... in the order of each part's first (smallest) key."""
    labels: dict[int, int] = {}
    return [labels.setdefault(part, len(labels)) for part in membership]


# --------------------------------------------------------------------------- spectral


def spectral_available() -> bool:
    """numpy and scipy can be imported (the ``spectral`` extra), without importing them."""
    for name in ("numpy", "scipy"):
        if name in sys.modules:
            if sys.modules[name] is None:  # (marked as not importable)
                return False
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def _spectral(csr: _Csr, k: int, seed: int) -> list[int]:
    """Recursive spectral bisection into exactly ``k`` non-empty parts.

    A set that must become ``p`` parts is ordered (:func:`_spectral_order`) and cut once, into a
    prefix that becomes ``j`` parts and a rest that becomes ``p - j`` (:func:`_sweep` picks the
    position and ``j``); each side is then split the same way. So ``k`` need not be a power of
    two, and a cluster at one end of the order can be cut off as one part.
    """
    import numpy as np
    from scipy import sparse  # type: ignore[import-untyped]

    n = len(csr.keys)
    adjacency = sparse.csr_array(
        (np.asarray(csr.eweights, dtype=float), csr.adjncy, csr.xadj), shape=(n, n)
    )
    weights = np.asarray(csr.vweights, dtype=float)
    membership = [0] * n
    labels = count()

    def split(members: npt.NDArray[np.intp], parts: int) -> None:
        if parts == 1:
            label = next(labels)
            for i in members.tolist():
                membership[i] = label
            return
        sub = adjacency[members][:, members]
        order = _spectral_order(sub, weights[members], seed)
        cut, left = _sweep(sub, order, weights[members], parts)
        split(np.sort(members[order[:cut]]), left)
        split(np.sort(members[order[cut:]]), parts - left)

    split(np.arange(n), k)
    return membership


def _spectral_order(sub: Any, weights: npt.NDArray[np.float64], seed: int) -> npt.NDArray[np.intp]:
    """The elements of ``sub`` in a line along which a cut is cheap.

    Connected components one after another, heaviest first (ties: the one with the smallest
    element first), so that a cut between two of them costs nothing; inside a component, the
    elements ordered by its Fiedler vector (ties: by index).
    """
    import numpy as np
    from scipy.sparse.csgraph import connected_components  # type: ignore[import-untyped]

    ncomp, component = connected_components(sub, directed=False)
    by_component = np.argsort(component, kind="stable")  # each component's elements ascending
    bounds = np.cumsum(np.bincount(component, minlength=ncomp))
    blocks = np.split(by_component, bounds[:-1])
    load = np.bincount(component, weights=weights, minlength=ncomp)
    firsts = [int(block[0]) for block in blocks]
    pieces = []
    for c in sorted(range(ncomp), key=lambda c: (-load[c], firsts[c])):
        block = blocks[c]
        if len(block) > 2:
            fiedler = _fiedler(sub[block][:, block], seed)
            block = block[np.lexsort((block, fiedler))]
        pieces.append(block)
    return np.concatenate(pieces)


def _fiedler(adjacency: Any, seed: int) -> npt.NDArray[np.float64]:
    """The Fiedler vector of a connected graph's normalised Laplacian (either sign: the order
    it gives and its reverse offer the same cuts).

    It is ``D^-1/2 u`` for ``u`` the eigenvector of the second largest eigenvalue of
    ``D^-1/2 A D^-1/2``: dense ``eigh`` for small graphs, ARPACK (``eigsh``, largest algebraic,
    a start vector drawn from ``seed``) above :data:`DENSE_MAX` elements.
    """
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import eigsh  # type: ignore[import-untyped]

    n = adjacency.shape[0]
    scale = 1.0 / np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel())
    normalised = sparse.diags_array(scale) @ adjacency @ sparse.diags_array(scale)
    if n <= DENSE_MAX:
        vectors = np.linalg.eigh(normalised.toarray())[1]
        vector = vectors[:, -2]
    else:
        start = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(normalised, k=2, which="LA", v0=start, tol=EIGEN_TOL)
        vector = vectors[:, int(np.argmin(values))]
    fiedler: npt.NDArray[np.float64] = vector * scale
    return fiedler


def _sweep(
    sub: Any, order: npt.NDArray[np.intp], weights: npt.NDArray[np.float64], parts: int
) -> tuple[int, int]:
    """Where to cut ``order`` for ``parts`` parts: (prefix length, parts of the prefix).

    A prefix of weight ``w`` becomes ``j = round(w / share)`` parts (``share`` = a part's share
    of the weight), bounded so that each side has at least one element per part. It is balanced
    when ``w`` is within :data:`IMBALANCE` of ``j`` shares per part on its smaller side, or
    within the heaviest element's weight when that is more (sizes are not divisible). Among
    balanced prefixes the cut wins that has the smallest ratio cut, ``cut / (j * (parts - j))``
    (cutting off one cluster at an end of the order scores as well as halving along cluster
    boundaries); when no prefix is balanced, the one closest to balanced wins. Ties go to the
    shorter prefix.

    The cut weight after every prefix comes from one pass over the edges: putting element ``v``
    into the prefix adds its edges to later elements and removes those to earlier ones.
    """
    import numpy as np

    n = len(order)
    position = np.empty(n, dtype=np.intp)
    position[order] = np.arange(n)
    edges = sub.tocoo()
    src, dst = position[edges.row], position[edges.col]
    delta = np.bincount(src, weights=np.where(dst > src, edges.data, -edges.data), minlength=n)
    cut = np.cumsum(delta)[:-1]  # cut[p - 1]: weight between the first p elements and the rest
    prefix = np.cumsum(weights[order])[:-1]
    share = float(weights.sum()) / parts
    length = np.arange(1, n)
    left = np.clip(
        np.rint(prefix / share), np.maximum(1, parts - n + length), np.minimum(parts - 1, length)
    )
    off = np.abs(prefix - left * share)
    slack = np.maximum(IMBALANCE * share * np.minimum(left, parts - left), weights.max())
    balanced = off <= slack
    score = np.where(balanced, cut / (left * (parts - left)), off)
    best = int(np.lexsort((length, score, ~balanced))[0])
    return best + 1, int(left[best])


# --------------------------------------------------------------------------- measures


def edge_cut(graph: nx.Graph, assignment: Mapping[str, int]) -> int:
    """The co-access weight between elements in different parts (each weight rounded to an int
    >= 1, as METIS sees it before any scaling; self-loops never count).

    :raises ValueError: an element of ``graph`` has no part in ``assignment``.
    """
    missing = graph.nodes - assignment.keys()
    if missing:
        raise ValueError(f"no part for {len(missing)} element(s), e.g. {min(missing)!r}")
    return sum(
        max(1, round(_weight(u, v, value)))
        for u, v, value in graph.edges(data="weight", default=1)
        if assignment[u] != assignment[v]
    )


def random_balanced(graph: nx.Graph, nparts: int, seed: int = 0) -> dict[str, int]:
    """A baseline: elements shuffled by ``seed``, dealt round-robin to ``min(nparts, n)`` parts
    (balanced by count, not by bytes)."""
    if nparts < 1:
        raise ValueError(f"nparts must be >= 1, got {nparts}")
    keys = _keys(graph)
    random.Random(seed).shuffle(keys)
    k = min(nparts, len(keys))
    return {key: i % k for i, key in enumerate(keys)}


def as_parts(assignment: Mapping[str, int]) -> list[frozenset[str]]:
    """The parts of an assignment as sets of keys, by part index (an unused index: empty)."""
    members: list[set[str]] = [set() for _ in range(max(assignment.values(), default=-1) + 1)]
    for key, part in assignment.items():
        members[part].add(key)
    return [frozenset(m) for m in members]


# --------------------------------------------------------------------------- stable ids


def stable_ids(
    new: Sequence[Collection[str]], old: Mapping[int, Collection[str]], next_id: int
) -> dict[int, frozenset[str]]:
    """Partition ids for the parts of a new partitioning: the old ids where they fit.

    New parts and old partitions are matched one to one so that the total number of elements
    that keep their id is the largest possible (a maximum weight matching). The matching runs
    over new parts ordered by their smallest key and old ids ascending, so ties are settled the
    same way whatever the order of ``new``. A new part left unmatched (no old partition shares
    an element with it, or those that do went to better matches) gets a fresh id: ``next_id``,
    ``next_id + 1``, ... in that order. The caller's next fresh id is then
    ``max(next_id, max(result) + 1)``.

    :param old: the current partitions, id → keys.
    :param next_id: above every id ever given out, so that retired ids are never reused.
    :raises ValueError: an empty new part, an element in two new parts, ``next_id`` not above
        every old id or negative.
    """
    if next_id < 0 or any(i >= next_id for i in old):
        raise ValueError(f"next_id must be >= 0 and above every old id, got {next_id}")
    parts = [frozenset(p) for p in new]
    if not all(parts):
        raise ValueError("a new part is empty")
    parts.sort(key=min)
    part_of: dict[str, int] = {}
    for i, part in enumerate(parts):
        for key in part:
            if part_of.setdefault(key, i) != i:
                raise ValueError(f"{key!r} is in two new parts")
    overlap: dict[tuple[int, int], int] = {}
    for old_id in sorted(old):
        for key in old[old_id]:
            if key in part_of:
                pair = (part_of[key], old_id)
                overlap[pair] = overlap.get(pair, 0) + 1
    matched = _max_overlap_matching(overlap)
    fresh = count(next_id)
    ids = {matched[i] if i in matched else next(fresh): part for i, part in enumerate(parts)}
    return dict(sorted(ids.items()))


def _max_overlap_matching(overlap: Mapping[tuple[int, int], int]) -> dict[int, int]:
    """New part → old id, maximising the total overlap. When every new part overlaps at most
    one old partition and vice versa (a small change of the ESG), that is the overlap itself;
    otherwise networkx's maximum weight matching decides."""
    news = [i for i, _ in overlap]
    olds = [o for _, o in overlap]
    if len(set(news)) == len(news) and len(set(olds)) == len(olds):
        return {i: old_id for i, old_id in overlap}
    import networkx as nx

    matching = nx.Graph()
    matching.add_nodes_from(("new", i) for i in sorted(set(news)))
    matching.add_nodes_from(("old", o) for o in sorted(set(olds)))
    matching.add_weighted_edges_from(
        (("new", i), ("old", old_id), n) for (i, old_id), n in sorted(overlap.items())
    )
    matched: dict[int, int] = {}
    for a, b in nx.max_weight_matching(matching):
        (_, i), (_, old_id) = sorted((a, b))  # "new" < "old"
        matched[i] = old_id
    return matched


# --------------------------------------------------------------------------- the store


class PartitionStore(Protocol):
    """What :func:`repartition` needs of the ESG store (:class:`esg.ESGStore` is one)."""

    def generation(self) -> int: ...

    def totals(self) -> tuple[int, int]: ...

    def keys(self) -> list[str]: ...

    def coaccess(self) -> tuple[list[str], list[int], dict[tuple[int, int], int]]: ...

    def partition_sets(self) -> tuple[Mapping[int, Collection[str]], int]: ...

    def save_partitions(self, generation: int, parts: Mapping[int, Collection[str]]) -> bool: ...


def repartition(
    store: PartitionStore,
    *,
    partition_bytes: int,
    agents: int,
    method: str = "metis",
    seed: int = 0,
) -> dict[int, frozenset[str]]:
    """Partition the store's ESG and save the partitions, keeping the ids of the saved ones.

    No networkx: the graph is read as plain data, and its co-access edges only when more
    than one part is wanted.

    :param partition_bytes: the target size of one partition (``statemigrate_partition_bytes``).
    :param agents: the number of node agents; at least one partition each.
    :returns: the partitions saved, id → keys (the store may refuse to save them when a newer
        generation's are saved already; they are returned all the same).
    """
    generation = store.generation()  # before the graph: a change in between re-partitions again
    count, total = store.totals()
    nparts = choose_nparts(total, partition_bytes, agents, count)
    if nparts <= 1:
        assignment = dict.fromkeys(store.keys(), 0)
    else:
        keys, sizes, pairs = store.coaccess()
        assignment = partition_data(keys, sizes, pairs, nparts, method=method, seed=seed)
    old, next_id = store.partition_sets()
    ids = stable_ids(as_parts(assignment), old, next_id)
    store.save_partitions(generation, ids)
    return ids


# --------------------------------------------------------------------------- synthetic ESG


def planted_graph(
    groups: int,
    group_size: int,
    p_in: float,
    p_out: float,
    seed: int = 0,
    element_bytes: int = 2**20,
) -> nx.Graph:
    """A synthetic ESG with planted groups, for tests and benchmarks.

    ``groups`` groups of ``group_size`` elements of ``element_bytes`` each; two elements are
    co-accessed with probability ``p_in`` inside a group and ``p_out`` across groups, with a
    weight from 1 to 5. Keys are shuffled so that their order does not give the groups away;
    ``graph.graph["groups"]`` lists the groups as sets of keys.
    """
    import networkx as nx

    rng = random.Random(seed)
    raw = nx.random_partition_graph([group_size] * groups, p_in, p_out, seed=seed)
    n = groups * group_size
    names = [f"e{i:0{len(str(n))}d}" for i in rng.sample(range(n), n)]
    graph = nx.Graph(groups=[frozenset(names[i] for i in g) for g in raw.graph["partition"]])
    graph.add_nodes_from(names, bytes=element_bytes)
    graph.add_weighted_edges_from((names[u], names[v], rng.randint(1, 5)) for u, v in raw.edges)
    return graph
