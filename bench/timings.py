#!/usr/bin/env python3
"""Where a statemigrate run spends its time: wall-clock timers around the plugin's steps.

    python bench/timings.py cold          # store deleted before each run
    python bench/timings.py warm --runs 5 # store kept (one unmeasured run fills it first)

Runs the example suite (a scratch copy under .bench/scratch/timings) in-process with the bench
venv's python (create it with bench/run.py first) and prints, per run, the time spent in each
wrapped step. Timers are plain ``perf_counter`` pairs, not a profiler, so the numbers add up
to wall time. Steps whose functions do not exist (the plugin is being changed) are skipped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".bench" / "venv" / "bin" / "python"
SCRATCH = ROOT / ".bench" / "scratch" / "timings"

#: (module, attribute path, label): the steps timed, in the order they are printed.
STEPS = [
    ("nodeagent.launcher", "spawn_agent", "agent spawn (Popen)"),
    ("nodeagent.launcher", "AgentProcess.wait_ready", "agent wait_ready (boot)"),
    ("pytest_statemigrate.fixturekeys", "FixtureKeys.analysis", "fixture analysis"),
    ("pytest_statemigrate.fixturekeys", "FixtureKeys.key_for", "state keys"),
    ("pytest_statemigrate.proxy", "StateProxy.lookup", "lookup (GET/LEASE + load)"),
    ("pytest_statemigrate.codec", "load", "  unpickle"),
    ("pytest_statemigrate.codec", "verify", "  verify digest"),
    ("nodeagent.client", "AgentClient.get", "  GET round trip"),
    ("pytest_statemigrate.managed", "fingerprint", "fingerprints"),
    ("pytest_statemigrate.managed", "static_paths", "static paths"),
    ("pytest_statemigrate.proxy", "StateProxy.store", "store"),
    ("pytest_statemigrate.codec", "dump", "  pickle"),
    ("pytest_statemigrate.codec", "seal", "  seal (HMAC)"),
    ("nodeagent.client", "AgentClient.put", "  PUT round trip"),
    ("pytest_statemigrate.session", "StateMigrateSession.test_ready", "ESG: before each test"),
    ("pytest_statemigrate.session", "StateMigrateSession.test_done", "ESG: after each test"),
    ("pytest_statemigrate.session", "StateMigrateSession.save_esg", "ESG: saved at the end"),
    ("pytest_statemigrate.session", "StateMigrateSession.finish", "session finish (write check)"),
    ("nodeagent.launcher", "AgentProcess.stop", "agent stop"),
]


def inner(pytest_args: list[str]) -> int:
    """Run pytest in this process with the timers in place; print one line per step."""
    import functools
    import importlib

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(owner, name, timed)

    import pytest  # first: its own import is not the plugin's

    start = time.perf_counter()
    import pytest_statemigrate.plugin  # noqa: F401

    spent["import plugin"] = time.perf_counter() - start
    calls["import plugin"] = 1
    for module_name, path, label in STEPS:
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for part in parents:
                owner = getattr(owner, part)
            getattr(owner, name)
        except (ImportError, AttributeError):
            print(f"  (no {module_name}.{path}: skipped)", file=sys.stderr)
            continue
        wrap(owner, name, label)

    start = time.perf_counter()
    code = int(pytest.main(pytest_args))
    spent["pytest.main, all of it"] = time.perf_counter() - start
    calls["pytest.main, all of it"] = 1
    for label in ["import plugin", *(s[2] for s in STEPS), "pytest.main, all of it"]:
        if calls.get(label):
            print(f"TIMING {label:<28}{spent[label] * 1e3:9.1f} ms  x{calls[label]}")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["cold", "warm"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.inner:
        return inner(rest)
    if not PY.exists():
        parser.error(f"no bench venv at {PY.parent.parent}: run python bench/run.py first")
    shutil.rmtree(SCRATCH, ignore_errors=True)
    shutil.copytree(
        ROOT / "examples" / "suite",
        SCRATCH,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".statemigrate"),
    )
    cmd = [
        str(PY),
        str(Path(__file__).resolve()),
        args.mode,
        "--inner",
        "-q",
        "-p",
        "no:fixture_cache",
    ]
    if args.mode == "warm":
        subprocess.run(cmd, cwd=SCRATCH, capture_output=True, check=True)
    rows: dict[str, list[str]] = {}
    for _ in range(args.runs):
        if args.mode == "cold":
            shutil.rmtree(SCRATCH / ".statemigrate", ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=SCRATCH, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return 1
        for line in done.stdout.splitlines():
            if line.startswith("TIMING "):
                label, value = line[7:35].rstrip(), line[35:].strip()
                rows.setdefault(label, []).append(value)
        rows.setdefault("process wall (incl. start-up)", []).append(f"{wall * 1e3:.1f} ms")
    for label, values in rows.items():
        print(f"{label:<32}" + "  ".join(f"{v:>16}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
