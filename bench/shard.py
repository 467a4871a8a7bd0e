#!/usr/bin/env python3
"""CI shards and xdist workers by state affinity, against pytest-split and ``--dist loadscope``.

    python bench/shard.py --runs 5              # ~10 min on the 2-core machine
    python bench/shard.py --runs 5 --markdown   # tables as docs/benchmarks.md shows them
    python bench/shard.py --only shards --runs 3

**The bench suite** (generated under ``.bench/scratch/shard-suite``): 24 managed session values
in 6 clusters of 4, each built by CPU work of 0.1-0.5 s (8.0 s together) into 0.5-2 MB of
bytes; 240 tests in 12 modules, each using one or two values of one cluster, the clusters
spread over the modules (a module's tests use three clusters), each test 5-20 ms of CPU.

**Shards** (``--only shards``): one recording run (the plugin's ESG, and pytest-split's
``--store-durations``), then per round the 4 shards of each splitter run one after another,
each in a fresh store (another CI machine: the ESG or the durations file, no values):

- ``statemigrate``: ``--sm-shard I/4``;
- ``pytest-split``: ``--splits 4 --group I --splitting-algorithm least_duration`` (with the
  plugin on and ``--sm-shard=off``, so that its stats count the state each shard pays).

Per shard: wall time of the process, and the state it built or loaded (build + load seconds
from ``--sm-stats-json``). Reported: longest shard over the mean shard, state over all shards,
and its ratio to pytest-split's; medians over rounds. Targets: longest <= 1.15 x mean, state
<= 0.6 x pytest-split's.

**Workers** (``--only workers``): ``-n 2`` with the ESG, ``--dist statemigrate`` against
``--dist loadscope`` (both with the plugin), side by side, rotated each round; with the values
stored (a warm store: every value is loaded) and with the values not stored (a fresh store with
the ESG only: each value is built once, by the first worker that asks, while a worker that
needs it too waits). Reported: wall time, and values paid per worker (hits + builds, / 2).
Targets: fewer values per worker, not slower.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PY, SCRATCH, BenchError, bench_env, log, setup_venv

SUITE = SCRATCH / "shard-suite"
RESULTS = Path(__file__).resolve().parent / "results" / "shard.json"
SHARDS = 4
CLUSTERS, PER_CLUSTER, MODULES, TESTS_PER_MODULE = 6, 4, 12, 20

CONFTEST = """
import hashlib
import random
import pytest

BLOCK = bytes(65536)
UNITS_PER_SECOND = {units}  # sha256 updates of 64 KiB per second, measured when generated


def _work(seconds):
    h = hashlib.sha256()
    for _ in range(int(seconds * UNITS_PER_SECOND)):
        h.update(BLOCK)
    return h.digest()


def _make(name, seconds, nbytes):
    @pytest.fixture(scope="session", name=name)
    def fixture():
        seed = _work(seconds)
        return random.Random(seed).randbytes(nbytes)
    return fixture


{fixtures}


@pytest.fixture
def cpu():
    return _work
"""


def units_per_second() -> int:
    block = bytes(65536)
    import hashlib

    h = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(2000):
        h.update(block)
    return int(2000 / (time.perf_counter() - start))


def make_suite(dest: Path, seed: int = 11) -> dict[str, float]:
    """Write the bench suite; returns each value's intended build seconds."""
    rng = random.Random(seed)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    costs: dict[str, float] = {}
    lines = []
    for c in range(CLUSTERS):
        for e in range(PER_CLUSTER):
            name = f"state_{c}_{e}"
            costs[name] = round(0.1 + 0.1 * ((c + e) % 5), 2)
            nbytes = rng.choice([512, 1024, 2048]) * 1024
            lines.append(f"{name} = _make({name!r}, {costs[name]}, {nbytes})")
    (dest / "conftest.py").write_text(
        CONFTEST.format(units=units_per_second(), fixtures="\n".join(lines))
    )
    (dest / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = state_*\n"
    )
    for m in range(MODULES):
        clusters = [m % CLUSTERS, (m + 2) % CLUSTERS, (m + 3) % CLUSTERS]
        body = []
        for t in range(TESTS_PER_MODULE):
            c = rng.choice(clusters)
            used = sorted(rng.sample(range(PER_CLUSTER), rng.choice([1, 2])))
            args = ", ".join(f"state_{c}_{e}" for e in used)
            ms = rng.randint(5, 20) / 1000
            body.append(
                f"def test_{t}(cpu, {args}):\n"
                f"    cpu({ms})\n"
                f"    assert all(len(v) >= 512 * 1024 for v in ({args},))\n"
            )
        (dest / f"test_m{m:02d}.py").write_text("\n".join(body))
    return costs


def pytest_run(cwd: Path, *args: str) -> tuple[float, dict[str, Any] | None, str]:
    stats = cwd / ".bench-stats.json"
    stats.unlink(missing_ok=True)
    cmd = [str(PY), "-m", "pytest", "-q", "-p", "no:randomly", *args]
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=cwd, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"exit {done.returncode}: {' '.join(cmd)}\n{done.stdout[-3000:]}")
    data = json.loads(stats.read_text()) if stats.exists() else None
    return seconds, data, done.stdout


def state_seconds(stats: dict[str, Any] | None) -> float:
    if stats is None:
        return 0.0
    return float(stats["build_seconds"]) + float(stats["load_seconds"])


def fresh_store(name: str, esg: bool = True) -> str:
    store = SCRATCH / "shard-stores" / name
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    if esg:
        shutil.copy(SUITE / ".recorded" / "esg.sqlite", store / "esg.sqlite")
    return f"--sm-dir={store}"


def record() -> None:
    """The ESG (a whole plugin run) and pytest-split's durations (a whole run storing them)."""
    log("recording: a plugin run for the ESG, a run for pytest-split's durations")
    shutil.rmtree(SUITE / ".recorded", ignore_errors=True)
    pytest_run(SUITE, "--sm-dir=.recorded", "--sm-shard=off")
    pytest_run(SUITE, "--sm-dir=.splitrec", "--sm-shard=off", "--store-durations")
    shutil.rmtree(SUITE / ".splitrec", ignore_errors=True)


def shard_round(splitter: str) -> dict[str, Any]:
    walls, states = [], []
    for i in range(1, SHARDS + 1):
        if splitter == "statemigrate":
            args = [f"--sm-shard={i}/{SHARDS}"]
        else:
            args = ["--sm-shard=off", "--splits", str(SHARDS), "--group", str(i)]
            args += ["--splitting-algorithm", "least_duration"]
        store = fresh_store(f"{splitter}-{i}")
        wall, stats, _ = pytest_run(
            SUITE, store, f"--sm-stats-json={SUITE / '.bench-stats.json'}", *args
        )
        walls.append(wall)
        states.append(state_seconds(stats))
    mean = statistics.mean(walls)
    return {
        "walls": walls,
        "states": states,
        "longest_over_mean": max(walls) / mean,
        "state_s": sum(states),
    }


def workers_round(dist: str, cold: bool = False) -> dict[str, Any]:
    """One ``-n 2`` run: with the warm store (values stored), or ``cold``: a fresh store with
    the ESG only (the values are built, each once, by whichever worker asks first)."""
    stats_path = SUITE / ".bench-stats.json"
    store = fresh_store(f"workers-{dist}") if cold else "--sm-dir=.warm"
    args = ["--sm-shard=off", "-n", "2", "--dist", dist, f"--sm-stats-json={stats_path}"]
    wall, stats, _ = pytest_run(SUITE, store, *args)
    assert stats is not None
    paid = sum(stats["hits"].values()) + int(stats["builds"])
    return {"wall": wall, "per_worker": paid / 2, "hits": stats["hits"], "builds": stats["builds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="shards,workers")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, default=None, help="print, measure nothing")
    args = parser.parse_args()
    if args.from_json is not None:
        print(tables(json.loads(args.from_json.read_text()), args.markdown))
        return 0
    only = set(args.only.split(","))
    setup_venv(reinstall=False)
    costs = make_suite(SUITE)
    record()
    results: dict[str, Any] = {"costs": costs, "runs": args.runs, "shards": {}, "workers": {}}
    if "shards" in only:
        for splitter in ("statemigrate", "pytest-split"):
            results["shards"][splitter] = []
        for r in range(args.runs):
            order = ["statemigrate", "pytest-split"][:: 1 if r % 2 == 0 else -1]
            for splitter in order:
                result = shard_round(splitter)
                results["shards"][splitter].append(result)
                log(
                    f"shards round {r + 1}/{args.runs} {splitter}: walls "
                    + ", ".join(f"{w:.2f}" for w in result["walls"])
                    + f"; state {result['state_s']:.2f}s"
                )
    if "workers" in only:
        shutil.rmtree(SUITE / ".warm", ignore_errors=True)
        shutil.copytree(SUITE / ".recorded", SUITE / ".warm")
        configs = [(d, cold) for cold in (False, True) for d in ("statemigrate", "loadscope")]
        for dist, cold in configs:  # warm-up: fills the store, pyc
            workers_round(dist, cold)
            results["workers"][_name(dist, cold)] = []
        for r in range(args.runs):
            shift = r % len(configs)
            for dist, cold in configs[shift:] + configs[:shift]:
                result = workers_round(dist, cold)
                results["workers"][_name(dist, cold)].append(result)
                log(
                    f"workers round {r + 1}/{args.runs} {_name(dist, cold)}: "
                    f"{result['wall']:.2f}s, {result['per_worker']:.1f} values per worker"
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(tables(results, args.markdown))
    log(f"wrote {args.json}")
    return 0


def _name(dist: str, cold: bool) -> str:
    return f"{dist}, {'values built' if cold else 'values stored'}"


def tables(results: dict[str, Any], markdown: bool) -> str:
    out = []

    def row(cells: list[str]) -> str:
        return (
            ("| " + " | ".join(cells) + " |") if markdown else "  ".join(f"{c:>14}" for c in cells)
        )

    med = statistics.median
    shards = results.get("shards") or {}
    if shards:
        head = ["splitter", "longest / mean", "longest s", "mean s", "state s", "vs pytest-split"]
        out += [row(head)] + ([row(["---"] * len(head))] if markdown else [])
        split_state = med(r["state_s"] for r in shards["pytest-split"])
        for name, rounds in shards.items():
            state = med(r["state_s"] for r in rounds)
            out.append(
                row(
                    [
                        name,
                        f"{med(r['longest_over_mean'] for r in rounds):.3f}",
                        f"{med(max(r['walls']) for r in rounds):.2f}",
                        f"{med(statistics.mean(r['walls']) for r in rounds):.2f}",
                        f"{state:.2f}",
                        f"{state / split_state:.3f}",
                    ]
                )
            )
        out.append("")
    workers = results.get("workers") or {}
    if workers:
        head = ["--dist", "median s", "min s", "values / worker", "paired vs loadscope"]
        out += [row(head)] + ([row(["---"] * len(head))] if markdown else [])
        for name, rounds in workers.items():
            base = workers[name.replace("statemigrate", "loadscope")]
            paired = med(a["wall"] / b["wall"] for a, b in zip(rounds, base, strict=True))
            out.append(
                row(
                    [
                        name,
                        f"{med(r['wall'] for r in rounds):.2f}",
                        f"{min(r['wall'] for r in rounds):.2f}",
                        f"{med(r['per_worker'] for r in rounds):.1f}",
                        f"{paired:.3f}",
                    ]
                )
            )
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
