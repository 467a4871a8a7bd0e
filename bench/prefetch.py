#!/usr/bin/env python3
"""What predictive migration buys when the store is slow and the agent's RAM starts empty.

    python bench/prefetch.py                      # 5 runs of each configuration
    python bench/prefetch.py --runs 5 --markdown  # the tables docs/benchmarks.md quotes

Generates a suite (``.bench/scratch/prefetch``): ``--values`` module-scoped managed values of
``--value-mib`` MiB each, defined in the conftest, and ``--modules`` test modules; module *i*
uses values *i mod V* and *(i + 1) mod V* (so every value is used by several modules, in a
cycle: the pattern where recency is the worst guide), and each of its ``--tests`` tests works
``--work-ms`` ms. ``statemigrate_partition_bytes`` is one value, so each value is a partition.

A long-lived agent serves the values from a tier-3 store made slow on purpose
(``--store-latency`` per read, ``--store-bandwidth`` cap) and no disk tier, so every load the
tests do not find in RAM is a store read. A first run builds and stores the values. Then each
measured run starts a fresh agent (empty RAM) and runs the suite, with configurations rotated
round by round:

- ``on-demand``: ``--sm-prefetch=off``; every first use of a value in a module waits for a
  store read (RAM budget: the whole working set);
- ``prefetch``: the plan's PREFETCHes, same budget;
- ``in-ram``: every value already in the agent's RAM (an unmeasured run first): the floor,
  what loading costs when nothing is read from the store (GET from RAM, verify, unpickle);
- ``belady`` / ``lru`` / ``aggressive``: prefetch with a RAM budget of half the working set,
  the plan's evictions by next use, by recency, or by next use with aggressive prefetching.

Reported (medians over runs): the seconds the tests spent loading values (the proxy's
``load_seconds``: GET, waiting for an in-flight load, verifying, unpickling), the share of
on-demand load time above the floor that prefetching hides, the share of prefetched bytes a
test then used, and for the half budget the share of value uses served from RAM, measured and
as planned.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".bench" / "scratch" / "prefetch"
sys.path.insert(0, str(ROOT))

from nodeagent.launcher import start_agent  # noqa: E402
from nodeagent.units import parse_size  # noqa: E402


def make_suite(path: Path, values: int, value_mib: float, modules: int, tests: int, work_ms: int):
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    size = int(value_mib * 2**20)
    (path / "pytest.ini").write_text(
        textwrap.dedent(
            f"""\
            [pytest]
            filterwarnings = error
            statemigrate_fixtures = value_*
            statemigrate_partition_bytes = {size}
            """
        )
    )
    lines = ["import os, time", "import pytest", ""]
    for v in range(values):
        lines += [
            "@pytest.fixture(scope='module')",
            f"def value_{v}():",
            "    time.sleep(1.0)  # building costs more than the slowest load",
            f"    return bytes([{v}]) * {size}",
            "",
        ]
    (path / "conftest.py").write_text("\n".join(lines))
    for m in range(modules):
        a, b = m % values, (m + 1) % values
        body = ["import time", ""]
        for t in range(tests):
            body += [
                f"def test_{t}(value_{a}, value_{b}):",
                f"    end = time.perf_counter() + {work_ms / 1000}",
                "    while time.perf_counter() < end:",
                "        pass",
                f"    assert value_{a}[0] == {a} and value_{b}[-1] == {b}",
                "",
            ]
        (path / f"test_m{m:03d}.py").write_text("\n".join(body))


def run_suite(path: Path, endpoint: str, *extra: str) -> dict[str, Any]:
    stats = path / ".stats.json"
    plan = path / ".plan.json"
    stats.unlink(missing_ok=True)
    plan.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        f"--sm-agent={endpoint}",
        f"--sm-stats-json={stats}",
        f"--sm-plan={plan}",
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=path, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    data = json.loads(stats.read_text())
    data["wall_s"] = seconds
    data["plan"] = json.loads(plan.read_text()) if plan.exists() else None
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--values", type=int, default=8)
    parser.add_argument("--value-mib", type=float, default=8.0)
    parser.add_argument("--modules", type=int, default=16)
    parser.add_argument("--tests", type=int, default=3)
    parser.add_argument("--work-ms", type=int, default=40)
    parser.add_argument("--store-latency", type=float, default=0.05, help="s per store read")
    parser.add_argument("--store-bandwidth", default="100M", help="store read cap, bytes/s")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "prefetch.json"))
    args = parser.parse_args()

    make_suite(SCRATCH, args.values, args.value_mib, args.modules, args.tests, args.work_ms)
    store = SCRATCH / ".store"
    working_set = args.values * int(args.value_mib * 2**20)
    slow = dict(store_latency=args.store_latency, store_bandwidth=parse_size(args.store_bandwidth))
    # Fill the store (the agent writes through to it); the ESG is partitioned at the end.
    with start_agent(disk_dir=None, store=str(store), log_file=str(SCRATCH / "agent.log")) as a:
        first = run_suite(SCRATCH, a.endpoint)
    if first["builds"] != args.values:
        raise SystemExit(f"the first run built {first['builds']} values, not {args.values}")
    half = working_set // 2 + 2**20  # half the values, and room for entry headers
    configs = {
        "on-demand": (working_set * 2, ["--sm-prefetch=off"]),
        "prefetch": (working_set * 2, []),
        # The floor: every value already in the agent's RAM (a first, unmeasured run put it
        # there), so loading costs only the GET from RAM, verifying and unpickling.
        "in-ram": (working_set * 2, ["--sm-prefetch=off"]),
        "belady": (half, ["-o", "statemigrate_eviction=belady"]),
        "lru": (half, ["-o", "statemigrate_eviction=lru"]),
        "aggressive": (half, ["-o", "statemigrate_eviction=aggressive"]),
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for r in range(args.runs):
        names = list(configs)
        names = names[r % len(names) :] + names[: r % len(names)]
        line = []
        for name in names:
            budget, extra = configs[name]
            with start_agent(
                disk_dir=None,
                store=str(store),
                ram_bytes=budget,
                log_file=str(SCRATCH / "agent.log"),
                **slow,  # type: ignore[arg-type]
            ) as agent:
                if name == "in-ram":
                    run_suite(SCRATCH, agent.endpoint, *extra)
                data = run_suite(SCRATCH, agent.endpoint, *extra)
            if data["builds"]:
                raise SystemExit(f"{name}: {data['builds']} values were rebuilt; store broken?")
            results[name].append(data)
            line.append(f"{name} {data['load_seconds']:.2f}s loading / {data['wall_s']:.2f}s")
        print(f"round {r + 1}/{args.runs}: " + ", ".join(line), file=sys.stderr)

    def med(name: str, f: Any) -> float:
        return statistics.median(f(d) for d in results[name])

    def ram_share(d: dict[str, Any]) -> float:
        hits = d["hits"]
        total = sum(hits.values())
        return hits.get("ram", 0) / total if total else 0.0

    def used(d: dict[str, Any]) -> float:
        return d["prefetch_used_bytes"] / d["prefetch_bytes"] if d["prefetch_bytes"] else 0.0

    def planned(d: dict[str, Any]) -> float:
        return float(d["plan"]["stats"]["hit_rate"]) if d.get("plan") else 0.0

    def pair(name_a: str, name_b: str, f: Any, fmt: str) -> str:
        return f"{fmt.format(med(name_a, f))} / {fmt.format(med(name_b, f))}"

    def trio(f: Any, fmt: str) -> str:
        return " / ".join(fmt.format(med(n, f)) for n in ("belady", "lru", "aggressive"))

    def load_s(d: dict[str, Any]) -> float:
        return float(d["load_seconds"])

    def wall_s(d: dict[str, Any]) -> float:
        return float(d["wall_s"])

    off, on, floor = med("on-demand", load_s), med("prefetch", load_s), med("in-ram", load_s)
    rounds = zip(results["prefetch"], results["on-demand"], results["in-ram"], strict=True)
    hidden = [(load_s(o) - load_s(p)) / (load_s(o) - load_s(r)) for p, o, r in rounds]
    rows = [
        ("on-demand load seconds (sum over tests)", f"{off:.3f}"),
        ("prefetch load seconds", f"{on:.3f}"),
        ("all in RAM already: load seconds (the floor)", f"{floor:.3f}"),
        (
            "load time above the floor hidden by prefetch (target >= 80%)",
            f"{(off - on) / (off - floor):.1%} (per round {statistics.median(hidden):.1%})",
        ),
        ("all load seconds saved by prefetch", f"{1 - on / off:.1%}"),
        ("prefetched bytes used (target >= 90%)", f"{med('prefetch', used):.1%}"),
        ("wall s: on-demand / prefetch", pair("on-demand", "prefetch", wall_s, "{:.2f}")),
        (
            "half budget: uses served from RAM, belady / lru / aggressive",
            trio(ram_share, "{:.1%}"),
        ),
        ("half budget: planned hit rate, belady / lru / aggressive", trio(planned, "{:.1%}")),
        ("half budget: load seconds, belady / lru / aggressive", trio(load_s, "{:.3f}")),
        ("half budget: prefetched bytes used, belady / lru / aggressive", trio(used, "{:.1%}")),
    ]
    setup = (
        f"{args.values} values x {args.value_mib:g} MiB, {args.modules} modules x {args.tests} "
        f"tests x {args.work_ms} ms; store: {args.store_latency * 1e3:g} ms + "
        f"{args.store_bandwidth}/s per read; {args.runs} runs"
    )
    if args.markdown:
        print(f"{setup}\n\n| measure | median |\n| --- | ---: |")
        for k, v in rows:
            print(f"| {k} | {v} |")
    else:
        print(setup)
        for k, v in rows:
            print(f"{k:55s} {v}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    slim = {
        name: [{k: d[k] for k in d if k != "plan"} | {"planned_hit_rate": planned(d)} for d in runs]
        for name, runs in results.items()
    }
    out = {"setup": setup, "args": vars(args), "runs": slim}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
