#!/usr/bin/env python3
"""Wall-time benchmarks of pytest-statemigrate against plain pytest and its peers.

Every measured command is a whole ``python -m pytest ...`` subprocess run with the bench venv
(``.bench/venv``: this project, pytest-xdist, filelock, pytest-split, pytest-fixture-cache),
so start-up is not polluted by plugins installed globally. Each configuration runs in its own
scratch copy of the suite under ``.bench/scratch``; configurations run round-robin (the order
rotates each round) so that drift on a noisy 2-core machine hits them all alike.

Scenarios (docs/benchmarks.md says what each measures and the targets):

  plain     the example suite, plugin disabled (-p no:statemigrate)
  cold      plugin on, store deleted before each run               target: <= 1.05 x plain
  warm      plugin on, store kept (after one unmeasured warm-up)   target: >= 5 x faster
            (and warm-auto: statemigrate_fixtures = auto, no @state, after a recording and a
            storing run: it saves >= 80% of what warm saves)
  xdist     -n 2: plugin cold (the default, --dist statemigrate; and --dist load) / warm vs
            plain -n 2 and the pytest-xdist FileLock recipe
  idle      2,000 trivial tests, nothing managed: plugin loaded vs disabled  target: <= 1.03
  fcache    pytest-fixture-cache cold / warm on an adapted copy of the suite

Usage: python bench/run.py [--runs 5] [--idle-runs 9] [--only plain,cold,...] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import select
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SUITES = BENCH / "suites"
WORK = ROOT / ".bench"
VENV = WORK / "venv"
SCRATCH = WORK / "scratch"
EXAMPLE = ROOT / "examples" / "suite"
RESULTS = BENCH / "results" / "latest.json"
PY = VENV / "bin" / "python"

BASE_PACKAGES = ["pytest-xdist", "filelock", "pytest-split"]
PEER = "pytest-fixture-cache"
SCENARIOS = ("plain", "cold", "warm", "xdist", "idle", "fcache")
PLUGIN_OFF = ["-p", "no:statemigrate", "-W", "ignore::pytest.PytestConfigWarning"]
FCACHE_OFF = ["-p", "no:fixture_cache"]
COPY_IGNORE = shutil.ignore_patterns(
    "__pycache__", ".pytest_cache", ".statemigrate", ".bench-stats.json"
)
PASSED = re.compile(r"(\d+) (?:passed|tests? collected)")
SESSION = re.compile(r" in ([\d.]+)s")
BAD = re.compile(r"\d+ (failed|error|errors)\b")


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the venv --------------------------------------------------------------------------------
def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PY), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )


def _venv_has(*modules: str) -> bool:
    code = "import " + ", ".join(modules)
    return subprocess.run([str(PY), "-c", code], capture_output=True).returncode == 0


def setup_venv(reinstall: bool) -> dict[str, Any]:
    """Create (or reuse) the bench venv; returns what the peer plugin's install said."""
    if reinstall and VENV.exists():
        shutil.rmtree(VENV)
    if not PY.exists():
        log(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not _venv_has("pytest_statemigrate", "xdist", "filelock", "pytest_split"):
        log("installing the project (editable) and " + ", ".join(BASE_PACKAGES))
        done = _pip("install", "-q", "-e", str(ROOT), *BASE_PACKAGES)
        if done.returncode != 0:
            raise BenchError(f"pip install failed:\n{done.stdout}\n{done.stderr}")
    peer: dict[str, Any] = {"package": PEER, "installed": _venv_has("pytest_fixture_cache")}
    if not peer["installed"]:
        log(f"installing {PEER} (optional)")
        done = _pip("install", "-q", PEER)
        peer["installed"] = done.returncode == 0 and _venv_has("pytest_fixture_cache")
        if not peer["installed"]:
            peer["install_error"] = (done.stderr or done.stdout).strip()[-2000:]
    if peer["installed"]:
        peer.update(probe_fixture_cache())
    return peer


def versions() -> dict[str, str]:
    code = textwrap.dedent(
        """
        import importlib.metadata as m, json, platform
        out = {"python": platform.python_version()}
        for d in ("pytest", "pytest-statemigrate", "pytest-xdist", "filelock",
                  "pytest-split", "pytest-fixture-cache", "pyzmq", "msgpack", "diskcache"):
            try:
                out[d] = m.version(d)
            except m.PackageNotFoundError:
                out[d] = None
        print(json.dumps(out))
        """
    )
    done = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def probe_fixture_cache() -> dict[str, Any]:
    """Does pytest-fixture-cache work with this pytest, in either decorator order?"""
    probe = WORK / "probe-fixture-cache"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir(parents=True)
    (probe / "pytest.ini").write_text("[pytest]\n")  # the rootdir: not the project's config
    (probe / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from pytest_fixture_cache import cached_fixture

            @cached_fixture          # the order its README documents
            @pytest.fixture(scope="session")
            def documented():
                return {"x": 1}

            @pytest.fixture(scope="session")
            @cached_fixture          # pytest.fixture outermost
            def reversed_order():
                return {"y": 2}
            """
        )
    )
    (probe / "test_probe.py").write_text(
        "def test_documented(documented): assert documented == {'x': 1}\n"
        "def test_reversed(reversed_order): assert reversed_order == {'y': 2}\n"
    )
    env = bench_env()
    env["PYTEST_FIXTURE_CACHE_DIR"] = str(probe / "cache")
    outs = []
    for _ in range(2):  # second run: served from the cache
        done = subprocess.run(
            [str(PY), "-m", "pytest", "-rA", "-s", *["-p", "no:statemigrate"]],
            cwd=probe,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        outs.append(done.stdout)
    first, second = outs
    return {
        "documented_order_works": "PASSED test_probe.py::test_documented" in first,
        "reversed_order_works": "PASSED test_probe.py::test_reversed" in first
        and "[CACHE HIT] Loaded fixture 'reversed_order'" in second,
        "documented_order_output": [
            line.strip()
            for line in first.splitlines()
            if "wrapped in decorators" in line or "not found" in line
        ],
    }


def bench_env(venv: Path = VENV, work: Path = WORK) -> dict[str, str]:
    """The environment of a measured run: ``venv``'s python first, no PYTEST_/PYTHON
    variables of this shell, a private temp root under ``work``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PYTHON", "COV_", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PY_COLORS"] = "0"
    # A private temp root: pytest's numbered-dir cleanup in the shared /tmp/pytest-of-USER
    # otherwise trips over other sessions' directories on a shared machine.
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(work / "tmp")
    return env


# -- suites ------------------------------------------------------------------------------------
def copy_example(dest: Path, conftest: Path | None = None, ini: str | None = None) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(EXAMPLE, dest, ignore=COPY_IGNORE)
    if conftest is not None:
        shutil.copyfile(conftest, dest / "conftest.py")
    if ini is not None:
        (dest / "pytest.ini").write_text(ini)
    return dest


VARIANT_INI = "[pytest]\nfilterwarnings = error\n"


def auto_example(dest: Path) -> Path:
    """The example with nothing chosen by hand: ``auto`` in the ini file, no ``@state``."""
    copy_example(dest, ini=f"{VARIANT_INI}statemigrate_fixtures = auto\n")
    conftest = dest / "conftest.py"
    lines = conftest.read_text().splitlines(keepends=True)
    conftest.write_text("".join(line for line in lines if not line.startswith("@state")))
    return dest


def make_idle_suite(dest: Path, files: int = 20, tests: int = 100) -> Path:
    """``files`` x ``tests`` trivial tests and a few plain fixtures; nothing managed."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "pytest.ini").write_text(VARIANT_INI)
    (dest / "conftest.py").write_text(
        textwrap.dedent(
            '''
            """Plain fixtures of every scope; nothing here is managed by statemigrate."""
            import pytest


            @pytest.fixture(scope="session")
            def settings():
                return {"name": "idle", "size": 3}


            @pytest.fixture(scope="module")
            def squares():
                return {i: i * i for i in range(100)}


            @pytest.fixture
            def numbers():
                return list(range(10))


            @pytest.fixture
            def total(numbers, settings):
                return sum(numbers) + settings["size"]
            '''
        ).lstrip()
    )
    for f in range(files):
        lines = []
        for t in range(tests):
            if t % 10 == 1:
                lines.append(f"def test_{t}(numbers, squares):\n    assert squares[3] == 9\n")
            elif t % 10 == 2:
                lines.append(f"def test_{t}(total):\n    assert total == 48\n")
            else:
                lines.append(f"def test_{t}():\n    assert 1\n")
        (dest / f"test_idle_{f:02d}.py").write_text("\n\n".join(lines))
    return dest


# -- a long-lived agent -------------------------------------------------------------------------
class Agents:
    """Agents the bench starts itself (``python -m nodeagent``), stopped by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cwd: Path, timeout: float = 30.0) -> str:
        disk = cwd / ".agent-disk"
        shutil.rmtree(disk, ignore_errors=True)
        cmd = [str(PY), "-m", "nodeagent", "--bind", f"ipc://{cwd / 'agent.sock'}"]
        cmd += ["--disk-dir", str(disk), "--disk-bytes", "1G"]
        with open(cwd / "agent.log", "ab") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, env=bench_env(), stdin=subprocess.DEVNULL
            )
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode() if ready else ""
        proc.stdout.close()
        if not line.startswith("nodeagent ready "):
            raise BenchError(f"agent did not start: {line!r}; see {cwd / 'agent.log'}")
        return line.removeprefix("nodeagent ready ").strip()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


AGENTS = Agents()
LOADS: list[float] = []  # 1-minute load average after each round


# -- configurations ----------------------------------------------------------------------------
@dataclass
class Config:
    name: str
    group: str  # configurations of one group run round-robin with each other
    what: str
    cwd: Path
    args: list[str]
    plugin: bool  # statemigrate on: read its --sm-stats-json after each run
    prep: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    warmups: int = 1  # unmeasured runs first (auto: one records, one stores)
    times: list[float] = field(default_factory=list)
    passed: list[int] = field(default_factory=list)
    session: list[float] = field(default_factory=list)  # what pytest itself reports
    cpu: list[float] = field(default_factory=list)  # user + sys of the whole process tree
    stats: list[dict[str, Any]] = field(default_factory=list)

    def command(self) -> list[str]:
        args = list(self.args)
        if self.plugin:
            args.append(f"--sm-stats-json={self.cwd / '.bench-stats.json'}")
        return ["python", "-m", "pytest", *args]

    def shown(self) -> str:
        args = [a for a in self.args if not a.startswith("--sm-stats-json")]
        return " ".join(["python -m pytest", *args])


def rm_store(cwd: Path) -> None:
    shutil.rmtree(cwd / ".statemigrate", ignore_errors=True)


def rm_fcache(cwd: Path) -> None:
    shutil.rmtree(cwd / ".fixture-cache", ignore_errors=True)


def build_configs(only: Sequence[str], peer: dict[str, Any]) -> list[Config]:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    out: list[Config] = []
    want = set(only)
    q = ["-q"]

    def example(name: str) -> Path:
        return copy_example(SCRATCH / name)

    if want & {"plain", "cold", "warm"}:
        out.append(
            Config(
                "startup",
                "suite",
                "floor: start-up + collection only (--co), plugin off",
                example("startup"),
                [*q, "--co", *PLUGIN_OFF, *FCACHE_OFF],
                plugin=False,
            )
        )
        out.append(
            Config(
                "plain",
                "suite",
                "example suite, plugin off",
                example("plain"),
                [*q, *PLUGIN_OFF, *FCACHE_OFF],
                plugin=False,
            )
        )
    if "cold" in want:
        out.append(
            Config(
                "cold",
                "suite",
                "plugin on, store deleted before each run",
                example("cold"),
                [*q, *FCACHE_OFF],
                plugin=True,
                prep=rm_store,
            )
        )
    if "warm" in want:
        out.append(
            Config(
                "warm",
                "suite",
                "plugin on, store kept (warmed up)",
                example("warm"),
                [*q, *FCACHE_OFF],
                plugin=True,
            )
        )
        out.append(
            Config(
                "warm-auto",
                "suite",
                "plugin on, statemigrate_fixtures = auto and no @state (after a recording run "
                "and a storing run), store kept",
                auto_example(SCRATCH / "warm-auto"),
                [*q, *FCACHE_OFF],
                plugin=True,
                warmups=2,
            )
        )
        cwd = example("warm-agent")
        endpoint = AGENTS.start(cwd)
        out.append(
            Config(
                "warm-agent",
                "suite",
                "plugin on, long-lived agent (--sm-agent) kept across runs (warmed up)",
                cwd,
                [*q, *FCACHE_OFF, f"--sm-agent={endpoint}"],
                plugin=True,
            )
        )
    if "xdist" in want:
        n2 = ["-n", "2"]
        out.append(
            Config(
                "plain-n2",
                "suite",
                "-n 2, plugin off",
                example("plain-n2"),
                [*q, *n2, *PLUGIN_OFF, *FCACHE_OFF],
                plugin=False,
            )
        )
        out.append(
            Config(
                "filelock-n2",
                "suite",
                "-n 2, pytest-xdist FileLock recipe, plugin off",
                copy_example(SCRATCH / "filelock-n2", SUITES / "filelock_conftest.py", VARIANT_INI),
                [*q, *n2, "-p", "no:statemigrate", *FCACHE_OFF],
                plugin=False,
            )
        )
        out.append(
            Config(
                "cold-n2",
                "suite",
                "-n 2, plugin on, store deleted before each run",
                example("cold-n2"),
                [*q, *n2, *FCACHE_OFF],
                plugin=True,
                prep=rm_store,
            )
        )
        out.append(
            Config(
                "cold-n2-load",
                "suite",
                "-n 2 --dist load (xdist's default), plugin on, store deleted before each run",
                example("cold-n2-load"),
                [*q, *n2, "--dist", "load", *FCACHE_OFF],
                plugin=True,
                prep=rm_store,
            )
        )
        out.append(
            Config(
                "warm-n2",
                "suite",
                "-n 2, plugin on, store kept (warmed up)",
                example("warm-n2"),
                [*q, *n2, *FCACHE_OFF],
                plugin=True,
            )
        )
        out.append(
            Config(
                "warm-n2-load",
                "suite",
                "-n 2 --dist load, plugin on, store kept (warmed up)",
                example("warm-n2-load"),
                [*q, *n2, "--dist", "load", *FCACHE_OFF],
                plugin=True,
            )
        )
    if "fcache" in want and peer.get("installed") and peer.get("reversed_order_works"):
        for name, prep, what in (
            ("fcache-cold", rm_fcache, "pytest-fixture-cache, cache deleted before each run"),
            ("fcache-warm", None, "pytest-fixture-cache, cache kept (warmed up)"),
        ):
            cwd = copy_example(SCRATCH / name, SUITES / "fixture_cache_conftest.py", VARIANT_INI)
            out.append(
                Config(
                    name,
                    "suite",
                    what,
                    cwd,
                    [*q, "-p", "no:statemigrate"],
                    plugin=False,
                    prep=prep,
                    env={"PYTEST_FIXTURE_CACHE_DIR": str(cwd / ".fixture-cache")},
                )
            )
    if "idle" in want:
        idle = make_idle_suite(SCRATCH / "idle")
        out.append(
            Config(
                "idle-off",
                "idle",
                "2,000 trivial tests, plugin disabled",
                idle,
                [*q, "-p", "no:statemigrate", *FCACHE_OFF],
                plugin=False,
            )
        )
        out.append(
            Config(
                "idle-on",
                "idle",
                "2,000 trivial tests, plugin loaded, nothing managed",
                idle,
                [*q, "-p", "statemigrate", *FCACHE_OFF],
                plugin=False,
            )
        )
    return out


# -- running -----------------------------------------------------------------------------------
def run_once(config: Config, measured: bool) -> float:
    if config.prep is not None:
        config.prep(config.cwd)
    stats_path = config.cwd / ".bench-stats.json"
    stats_path.unlink(missing_ok=True)
    env = bench_env()
    env.update(config.env)
    cmd = config.command()
    cmd[0] = str(PY)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=config.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    match = PASSED.search(tail[0])
    if done.returncode != 0 or match is None or BAD.search(tail[0]):
        raise BenchError(
            f"{config.name}: exit {done.returncode} in {config.cwd}\n$ {' '.join(cmd)}\n"
            + "\n".join(done.stdout.splitlines()[-40:])
        )
    if measured:
        config.times.append(seconds)
        config.cpu.append(cpu)
        config.passed.append(int(match.group(1)))
        reported = SESSION.search(tail[0])
        if reported is not None:
            config.session.append(float(reported.group(1)))
        if config.plugin and stats_path.exists():
            config.stats.append(json.loads(stats_path.read_text()))
    return seconds


def run_group(configs: list[Config], runs: int) -> None:
    if not configs:
        return
    log(f"warm-up: {', '.join(c.name for c in configs)}")
    for config in configs:  # pyc files, page cache; fills the store of the warm configs
        for _ in range(config.warmups):
            run_once(config, measured=False)
    for i in range(runs):
        shift = i % len(configs)
        order = configs[shift:] + configs[:shift]
        line = []
        for config in order:
            line.append(f"{config.name} {run_once(config, measured=True):.2f}s")
        load = os.getloadavg()[0]
        LOADS.append(round(load, 2))
        log(f"round {i + 1}/{runs} (load {load:.2f}): " + ", ".join(line))


# -- results -----------------------------------------------------------------------------------
def summary(config: Config) -> dict[str, Any]:
    t = config.times
    out: dict[str, Any] = {
        "what": config.what,
        "command": config.shown(),
        "cwd": str(config.cwd.relative_to(ROOT)),
        "runs": len(t),
        "median_s": statistics.median(t),
        "min_s": min(t),
        "max_s": max(t),
        "times_s": [round(x, 4) for x in t],
        "passed": sorted(set(config.passed)),
        "pytest_reported_median_s": statistics.median(config.session) if config.session else None,
        "cpu_median_s": statistics.median(config.cpu),
        "cpu_s": [round(x, 3) for x in config.cpu],
    }
    if config.stats:
        out["statemigrate"] = {
            "builds": [s.get("builds") for s in config.stats],
            "hits": [s.get("hits_total") for s in config.stats],
            "hits_by_tier": config.stats[-1].get("hits"),
            "waited": [s.get("waited") for s in config.stats],
            "load_seconds_median": statistics.median(s["load_seconds"] for s in config.stats),
            "store_seconds_median": statistics.median(s["store_seconds"] for s in config.stats),
            "build_seconds_median": statistics.median(s["build_seconds"] for s in config.stats),
            "fallbacks": config.stats[-1].get("fallbacks"),
            "refused": config.stats[-1].get("refused"),
            "built_instead": config.stats[-1].get("built_instead"),
        }
    return out


# (name, numerator, denominator, goal, limit, text): goal "max" means ratio <= limit.
TARGETS: list[tuple[str, str, str, str, float, str]] = [
    ("cold vs plain", "cold", "plain", "max", 1.05, "cold within 5% of plain"),
    ("plain vs warm", "plain", "warm", "min", 5.0, "warm at least 5x faster than plain"),
    ("cold-n2 vs plain-n2", "cold-n2", "plain-n2", "max", 1.0, "-n 2 cold faster than plain -n 2"),
    (
        "cold-n2 vs filelock-n2",
        "cold-n2",
        "filelock-n2",
        "max",
        1.0,
        "-n 2 cold faster than the FileLock recipe",
    ),
    ("idle-on vs idle-off", "idle-on", "idle-off", "max", 1.03, "idle overhead within 3%"),
]
INFO_RATIOS: list[tuple[str, str, str]] = [
    ("cold-n2-load vs plain-n2", "cold-n2-load", "plain-n2"),
    ("cold-n2-load vs filelock-n2", "cold-n2-load", "filelock-n2"),
    ("plain vs warm-agent", "plain", "warm-agent"),
    ("plain-n2 vs warm-n2", "plain-n2", "warm-n2"),
    ("warm-n2 vs warm-n2-load", "warm-n2", "warm-n2-load"),
    ("filelock-n2 vs plain-n2", "filelock-n2", "plain-n2"),
    ("plain vs fcache-warm", "plain", "fcache-warm"),
    ("fcache-cold vs plain", "fcache-cold", "plain"),
    ("warm vs fcache-warm", "warm", "fcache-warm"),
]


def paired_ratio(a: Config, b: Config) -> float:
    """Median over rounds of a/b, each round's runs measured side by side."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


def ratios(configs: dict[str, Config]) -> list[dict[str, Any]]:
    rows: list[tuple[str, str, str, str | None, float | None, str | None]] = [
        *TARGETS,
        *((name, num, den, None, None, None) for name, num, den in INFO_RATIOS),
    ]
    out = []
    if {"plain", "warm", "warm-auto"} <= configs.keys():
        plain, warm, auto = (
            statistics.median(configs[n].times) for n in ("plain", "warm", "warm-auto")
        )
        paired = statistics.median(
            (p - a) / (p - w)
            for p, w, a in zip(
                configs["plain"].times,
                configs["warm"].times,
                configs["warm-auto"].times,
                strict=True,
            )
        )
        fraction = (plain - auto) / (plain - warm)
        out.append(
            {
                "name": "auto's saving vs hand-picked",
                "ratio": fraction,
                "paired_ratio": paired,
                "min_ratio": None,
                "cpu_ratio": None,
                "target": ">= 0.8",
                "goal": "auto saves at least 80% of what the hand-picked fixtures save (warm)",
                "met": fraction >= 0.8,
            }
        )
    for name, num, den, goal, limit, text in rows:
        if num not in configs or den not in configs:
            continue
        a, b = configs[num], configs[den]
        r = statistics.median(a.times) / statistics.median(b.times)
        met = None
        if goal is not None and limit is not None:
            met = r <= limit if goal == "max" else r >= limit
        out.append(
            {
                "name": name,
                "ratio": r,
                "paired_ratio": paired_ratio(a, b),
                "min_ratio": min(a.times) / min(b.times),
                "cpu_ratio": statistics.median(a.cpu) / statistics.median(b.cpu),
                "target": None if limit is None else f"{'<=' if goal == 'max' else '>='} {limit:g}",
                "goal": text,
                "met": met,
            }
        )
    return out


@dataclass
class _Pooled:
    """The times of one configuration over several results files (for :func:`ratios`)."""

    times: list[float]
    cpu: list[float]


def pooled(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several results files as one: each configuration's rounds concatenated (file by file,
    so round i of two configurations still ran side by side), medians and ratios recomputed."""
    names = [n for n in results[0]["configs"] if all(n in r["configs"] for r in results)]
    runs = {
        n: _Pooled(
            [t for r in results for t in r["configs"][n]["times_s"]],
            [c for r in results for c in r["configs"][n]["cpu_s"]],
        )
        for n in names
    }
    configs = {}
    for n, p in runs.items():
        first = results[0]["configs"][n]
        reported = [r["configs"][n].get("pytest_reported_median_s") for r in results]
        configs[n] = {
            **first,
            "runs": len(p.times),
            "median_s": statistics.median(p.times),
            "min_s": min(p.times),
            "max_s": max(p.times),
            "times_s": p.times,
            "cpu_median_s": statistics.median(p.cpu),
            "cpu_s": p.cpu,
            "pytest_reported_median_s": None
            if None in reported
            else statistics.median(x for x in reported if x is not None),
        }
    return {"configs": configs, "ratios": ratios(runs)}  # type: ignore[arg-type]


def source_digest() -> str:
    """Digest of the plugin's and the agent's sources: others may edit them during a run."""
    h = hashlib.sha256()
    for package in ("pytest_statemigrate", "nodeagent"):
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python_host": platform.python_version(),
    }
    with contextlib.suppress(OSError, StopIteration):
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = list(os.getloadavg())
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "pytest_statemigrate", "nodeagent"],
        capture_output=True,
        text=True,
    )
    info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return info


def table(results: dict[str, Any], markdown: bool) -> str:
    """The medians (with min, max and what pytest itself reported) and the ratios."""
    rows = []
    for name, r in results["configs"].items():
        sm = r.get("statemigrate")
        reported = r.get("pytest_reported_median_s")
        rows.append(
            (
                name,
                f"{r['median_s']:.2f}",
                f"{r['min_s']:.2f}",
                f"{r['max_s']:.2f}",
                str(r["runs"]),
                "" if reported is None else f"{reported:.2f}",
                f"{r['cpu_median_s']:.2f}" if "cpu_median_s" in r else "",
                f"{_median(sm['builds'])} / {_median(sm['hits'])}" if sm else "",
            )
        )
    head = (
        "configuration",
        "median s",
        "min s",
        "max s",
        "runs",
        "pytest says s",
        "CPU s",
        "builds / hits",
    )
    ratio_rows = [
        (
            r["name"],
            f"{r['ratio']:.3f}",
            f"{r['paired_ratio']:.3f}",
            "" if r.get("min_ratio") is None else f"{r['min_ratio']:.3f}",
            "" if r.get("cpu_ratio") is None else f"{r['cpu_ratio']:.3f}",
            r["target"] or "",
            "" if r["met"] is None else ("yes" if r["met"] else ("**no**" if markdown else "NO")),
        )
        for r in results["ratios"]
    ]
    ratio_head = ("ratio", "of medians", "paired", "of minimums", "CPU", "target", "met")
    if markdown:
        return "\n".join([*_md(head, rows), "", *_md(ratio_head, ratio_rows)])
    return "\n".join([*_text(head, rows), "", *_text(ratio_head, ratio_rows)])


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _text(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]

    def line(row: Sequence[str]) -> str:
        first = f"{row[0]:<{widths[0]}}"
        rest = "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))
        return (first + rest).rstrip()

    return [line(head), *(line(row) for row in rows)]


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if v is not None]
    if not nums:
        return "?"
    m = statistics.median(nums)
    return int(m) if float(m).is_integer() else m


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark pytest-statemigrate (wall time of whole pytest runs).",
        epilog="Results go to bench/results/latest.json; docs/benchmarks.md explains them.",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="measured runs per configuration of the example suite (default 5)",
    )
    parser.add_argument(
        "--idle-runs",
        type=int,
        default=9,
        help="measured runs per configuration of the idle suite (default 9)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS,
        help=f"where to write the results (default {RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="delete and recreate the bench venv first"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="measure nothing: print the tables of earlier results files; several files "
        "(runs of the same configurations) are pooled round by round",
    )
    args = parser.parse_args(argv)

    if args.from_json is not None:
        loaded = [json.loads(path.read_text()) for path in args.from_json]
        print(table(loaded[0] if len(loaded) == 1 else pooled(loaded), args.markdown))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.idle_runs < 1:
        parser.error("--runs and --idle-runs must be at least 1")

    started = time.time()
    host = machine()
    source_before = source_digest()
    peer = setup_venv(args.reinstall)
    configs: list[Config] = []
    try:
        configs = build_configs(only, peer)
        run_group([c for c in configs if c.group == "suite"], args.runs)
        run_group([c for c in configs if c.group == "idle"], args.idle_runs)
    except BenchError as exc:
        log(f"bench failed: {exc}")
        return 1
    finally:
        AGENTS.stop()
    by_name = {c.name: c for c in configs}
    results = {
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "bench_seconds": round(time.time() - started, 1),
        "machine": host,
        "source_digest": {"before": source_before, "after": source_digest()},
        "loadavg_after_rounds": LOADS,
        "versions": versions(),
        "peer": peer,
        "configs": {c.name: summary(c) for c in configs},
        "ratios": ratios(by_name),
    }
    if results["source_digest"]["before"] != results["source_digest"]["after"]:
        log("warning: pytest_statemigrate/ or nodeagent/ changed during the run")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, args.markdown))
    log(f"wrote {args.json} ({results['bench_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
