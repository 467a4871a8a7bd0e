#!/usr/bin/env python3
"""What recording the execution state graph costs per test.

    python bench/recording.py                 # 2,000 tests, 5 runs
    python bench/recording.py --tests 5000 --runs 3 --markdown

Generates a suite (``.bench/scratch/recording``): every test uses two managed session values
(one small enough to be checked for writes, one larger) and two unmanaged fixtures (one
function-scoped, one module-scoped). Runs it in a subprocess with the plugin, warm, with
perf_counter timers around the recording steps, and prints per-test costs (medians over runs):

- accesses: ``test_ready`` + ``test_done`` without the write checks (what each test pays
  always; the target is at most 0.2 ms per test)
- write checks: the digests of values up to ``statemigrate_write_check_bytes``
- unmanaged setups: timing each unmanaged fixture setup
- end of run: adding the session to the SQLite ESG (and re-partitioning when it changed)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".bench" / "scratch" / "recording"

INNER = textwrap.dedent(
    """
    import functools, json, sys, time
    from collections import defaultdict
    import pytest
    from pytest_statemigrate import recorder, session

    spent = defaultdict(float)

    def wrap(owner, name, label):
        original = getattr(owner, name)
        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start
        setattr(owner, name, timed)

    wrap(session.StateMigrateSession, "test_ready", "ready")
    wrap(session.StateMigrateSession, "test_done", "done")
    wrap(session.StateMigrateSession, "_digest_of", "digests")
    wrap(recorder.AccessRecorder, "unmanaged_setup", "unmanaged")
    wrap(session.StateMigrateSession, "save_esg", "save")
    start = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", *sys.argv[2:]])
    spent["run"] = time.perf_counter() - start
    with open(sys.argv[1], "w") as fh:
        json.dump(spent, fh)
    sys.exit(int(code))
    """
)


def make_suite(tests: int) -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    (SCRATCH / "pytest.ini").write_text("[pytest]\nstatemigrate_fixtures =\n    small\n    large\n")
    (SCRATCH / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture(scope="session")
            def small():
                return {"rows": list(range(200))}           # ~1 KiB: checked for writes

            @pytest.fixture(scope="session")
            def large():
                return list(range(100_000))                 # ~500 KiB: not checked

            @pytest.fixture
            def per_test():
                return 1

            @pytest.fixture(scope="module")
            def per_module():
                return 2
            """
        )
    )
    per_file = 100
    for f in range(max(1, tests // per_file)):
        body = "".join(
            f"def test_{t}(small, large, per_test, per_module):\n    assert small['rows']\n"
            for t in range(per_file)
        )
        (SCRATCH / f"test_gen_{f:03d}.py").write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    make_suite(args.tests)
    inner = SCRATCH / "inner.py"
    inner.write_text(INNER)
    out = SCRATCH / "spent.json"
    rows: dict[str, list[float]] = {}
    for run in range(args.runs + 1):  # the first run fills the store (cold), unmeasured
        done = subprocess.run(
            [sys.executable, str(inner), str(out)], cwd=SCRATCH, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return 1
        if run == 0:
            continue
        spent = json.loads(out.read_text())
        n = args.tests
        digests = spent.get("digests", 0.0)
        values = {
            "accesses (µs/test)": (spent["ready"] + spent["done"] - digests) / n * 1e6,
            "write checks (µs/test)": digests / n * 1e6,
            "unmanaged setups (µs/test)": spent["unmanaged"] / n * 1e6,
            "end of run: ESG saved (ms)": spent["save"] * 1e3,
            "whole run (ms/test)": spent["run"] / n * 1e3,
        }
        for label, value in values.items():
            rows.setdefault(label, []).append(value)
    print(f"{args.tests} tests, median of {args.runs} warm runs")
    if args.markdown:
        print("\n| step | median | min | max |\n| --- | ---: | ---: | ---: |")
    for label, values in rows.items():
        med, lo, hi = statistics.median(values), min(values), max(values)
        if args.markdown:
            print(f"| {label} | {med:.1f} | {lo:.1f} | {hi:.1f} |")
        else:
            print(f"{label:<30}{med:9.1f}{lo:9.1f}{hi:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
