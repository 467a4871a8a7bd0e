#!/usr/bin/env python3
"""Two trees of this project side by side: the example suite's plain, cold, warm (and idle)
runs of both, interleaved in the same rounds, so that a noisy machine's drift hits both alike.

Each tree needs its bench venv (``python bench/run.py --only plain --runs 1`` in it makes
``.bench/venv``). Every run is a whole ``python -m pytest`` subprocess in a scratch copy of the
suite; the order of the configurations rotates each round. Prints each configuration's median
and minimum, and per tree the ratios of medians and the median of per-round (paired) ratios::

    git worktree add /tmp/base 5bcd716
    python bench/ab.py --tree base=/tmp/base --tree head=. --runs 9
    python bench/ab.py --tree base=/tmp/base --tree head=. --runs 9 --configs idle-on,idle-off
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OFF = ["-p", "no:statemigrate", "-W", "ignore::pytest.PytestConfigWarning"]


def _once(config: str, cwd: Path, cmd: list[str], env: dict[str, str]) -> float:
    if config == "cold":
        shutil.rmtree(cwd / ".statemigrate", ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or "passed" not in last or "warn" in last:
        raise SystemExit(f"{cwd}: {done.stdout[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH, twice")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--configs", default="plain,cold,warm")
    parser.add_argument("--scratch", type=Path, default=Path(".bench") / "ab")
    parser.add_argument("--json", type=Path, help="write every time here")
    ns = parser.parse_args()
    trees = {n: Path(p).resolve() for n, p in (t.split("=", 1) for t in ns.tree)}
    which = ns.configs.split(",")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as bench  # the idle suite of bench/run.py

    configs: list[tuple[str, str, Path, list[str], dict[str, str]]] = []
    for name, tree in trees.items():
        for config in which:
            cwd = (ns.scratch / name / config).resolve()
            shutil.rmtree(cwd, ignore_errors=True)
            if config.startswith("idle"):
                bench.make_idle_suite(cwd)
            else:
                shutil.copytree(
                    tree / "examples" / "suite",
                    cwd,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".statemigrate"),
                )
            args = ["-q", "-p", "no:fixture_cache"]
            args += OFF if config in ("plain", "idle-off") else []
            args += ["-p", "statemigrate"] if config == "idle-on" else []
            python = str(tree / ".bench" / "venv" / "bin" / "python")
            env = bench.bench_env(tree / ".bench" / "venv", ns.scratch.resolve())
            configs.append((name, config, cwd, [python, "-m", "pytest", *args], env))
    times: dict[tuple[str, str], list[float]] = {(n, c): [] for n, c, *_ in configs}
    for _, config, cwd, cmd, env in configs:
        _once(config, cwd, cmd, env)  # warm-up: a warm run needs a stored store
    for i in range(ns.runs):
        order = configs[i % len(configs) :] + configs[: i % len(configs)]
        line = []
        for name, config, cwd, cmd, env in order:
            seconds = _once(config, cwd, cmd, env)
            times[name, config].append(seconds)
            line.append(f"{name}/{config} {seconds:.3f}")
        print(f"round {i + 1} (load {os.getloadavg()[0]:.2f}): " + ", ".join(line), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for (name, config), values in sorted(times.items()):
        print(f"{name:8} {config:9} median {med[name, config]:.3f}  min {min(values):.3f}")

    def paired(name: str, a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[name, a], times[name, b], strict=True))

    pairs = [("cold", "plain"), ("plain", "warm"), ("idle-on", "idle-off")]
    for name in trees:
        for a, b in pairs:
            if a in which and b in which:
                ratio = med[name, a] / med[name, b]
                print(f"{name}: {a}/{b} {ratio:.3f} of medians, {paired(name, a, b):.3f} paired")
    if ns.json is not None:
        out: dict[str, Any] = {f"{n}/{c}": v for (n, c), v in times.items()}
        ns.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
