"""A real project's suite with and without the plugin: every test's outcome, and the times.

For each fixture selection, each round runs plain pytest, then the plugin on an empty store
(cold), then again (warm), and with ``--xdist`` the same with ``-n 2``; each test's outcome is
compared with the plain run of that round. It prints one markdown row per selection and mode:
runs, tests, runs whose outcomes differ from plain, median seconds (the session time pytest
reports) and the ratio of medians against plain.

``--preset mdanalysis``, ``--preset geopandas-clip`` and ``--preset sunpy-map`` set up the
suites of docs/benchmarks.md in ``~/.cache/statemigrate-bench/real-NAME`` on first use and run
them::

    python bench/realsuite.py --preset mdanalysis --runs 3 --xdist
    python bench/realsuite.py --preset sunpy-map --runs 3 --xdist

Or set up a project as a user would, from its sdist, in a venv that has the plugin::

    python -m venv /tmp/gpd/venv
    /tmp/gpd/venv/bin/pip install -e . pytest-xdist geopandas==1.2.0 pyogrio
    /tmp/gpd/venv/bin/pip download --no-deps --no-binary :all: geopandas==1.2.0 -d /tmp/gpd
    tar xzf /tmp/gpd/geopandas-1.2.0.tar.gz -C /tmp/gpd

    python bench/realsuite.py --python /tmp/gpd/venv/bin/python \\
        --project /tmp/gpd/geopandas-1.2.0 --runs 5 --xdist \\
        --fixtures '*' --fixtures point_gdf,buffered_locations \\
        geopandas/tools/tests/test_clip.py

The project's own pytest configuration is used (its rootdir, its ini file); the plugin is
loaded with ``-p statemigrate`` and the selection with ``--sm-fixtures``. Not collected by
pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The outcome recorder of the project's own acceptance tests: the same verdicts, compared alike.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import OUTCOMES_PLUGIN as OUTCOMES

_SECONDS = re.compile(r" in ([0-9.]+)s")


def run(
    python: str, project: Path, args: list[str], plugin_dir: Path, out: Path
) -> tuple[dict[str, str], float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
    env["SM_OUTCOMES"] = str(out)
    out.unlink(missing_ok=True)
    cmd = [python, "-m", "pytest", "-p", "sm_bench_outcomes", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    outcomes = json.loads(out.read_text()) if out.exists() else {}
    found = _SECONDS.findall(text.strip().splitlines()[-1] if text.strip() else "")
    return outcomes, float(found[-1]) if found else float("nan"), text


#: Suites set up by ``--preset NAME`` in ``~/.cache/statemigrate-bench/real-NAME`` (a venv with
#: this project installed editable): what to install, where the project is, what to run.
PRESETS: dict[str, dict[str, Any]] = {
    # The fixture-heavy suite of docs/benchmarks.md: 87% of a plain run is fixture setup.
    "mdanalysis": {
        "install": ["MDAnalysis==2.11.0", "MDAnalysisTests==2.11.0", "pytest-xdist"],
        "package": "MDAnalysisTests",  # the project is this installed package's directory
        "args": ["--rootdir=.", "core/test_atomselections.py"],
        "fixtures": ["*"],
    },
    # Issue 17's suite: a fixture that buffers its dependency in place.
    "geopandas-clip": {
        "install": ["geopandas==1.2.0", "pyogrio", "pytest-xdist"],
        "sdist": "geopandas==1.2.0",  # the project is this sdist, unpacked
        "args": ["geopandas/tools/tests/test_clip.py"],
        "fixtures": ["*", "point_gdf,buffered_locations"],
    },
    # Astronomy: sunpy's map sources (423 tests), half of a plain session in setup (62% of
    # the tests' own time: a function-scoped fixture per instrument reading a FITS file or
    # header into a Map). Maps are refused: a round trip adds an attribute to the nested
    # original-meta MetaDict. The second selection is what `statemigrate suggest` named after
    # a --sm-record run; eit_fits_directory writes files with tmp_path_factory. The sdist has
    # the pytest.ini (filterwarnings = error, --doctest-rst, --arraydiff) and is what the tests
    # import: pure Python but for the optional ANA reader, whose tests are outside this subset.
    "sunpy-map": {
        "install": ["sunpy[map,tests-only]==7.0.5", "pytest-xdist"],
        "sdist": "sunpy==7.0.5",
        "args": ["sunpy/map/sources", "sunpy/map/tests/test_map_factory.py"],
        "fixtures": [
            "*",
            "hmi_bharp_map,punch_map,suit_map,gong_halpha,eit_fits_directory,gong_magnetogram,"
            "sot,hi_map,wispr_map,hmi_sharp_map,kcor,rhessi_map,eui_map",
        ],
    },
}


def prepare(name: str) -> tuple[str, Path, list[str], list[str]]:
    """(python, project, pytest args, selections) of a preset, set up on first use."""
    preset = PRESETS[name]
    root = Path(__file__).resolve().parents[1]
    # Outside this repository: pytest would take its pyproject.toml for the suite's ini file.
    home = Path.home() / ".cache" / "statemigrate-bench" / f"real-{name}"
    python = home / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip"]
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
        subprocess.run([*pip, "install", "-q", "-e", str(root), *preset["install"]], check=True)
    unpacked = [p for p in home.iterdir() if p.is_dir() and p.name != "venv"]
    if "sdist" in preset and not unpacked:
        # The sdist of this one package only: with ``:all:`` its build requirements (numpy,
        # for sunpy) would be built from source too, just to read the sdist's metadata.
        name = re.split(r"[=<>!~\[ ]", preset["sdist"])[0]
        download = [*pip, "download", "-q", "--no-deps", "--no-binary", name, "-d", str(home)]
        subprocess.run([*download, preset["sdist"]], check=True)
        for archive in home.glob("*.tar.gz"):
            shutil.unpack_archive(archive, home)
        unpacked = [p for p in home.iterdir() if p.is_dir() and p.name != "venv"]
    if "package" in preset:
        found = subprocess.run(
            [
                str(python),
                "-c",
                f"import {preset['package']} as m, os; print(os.path.dirname(m.__file__))",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        project = Path(found.stdout.strip())
    else:
        project = unpacked[0]
    return str(python), project, list(preset["args"]), list(preset["fixtures"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "tests", nargs="*", help="test paths, relative to the project, and pytest options"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a suite set up here (below)")
    parser.add_argument("--project", type=Path)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--fixtures", action="append", help="--sm-fixtures value")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--xdist", action="store_true", help="also -n 2")
    parser.add_argument("--show-diffs", action="store_true")
    ns, extra = parser.parse_known_args()  # pytest's own options (--rootdir=., -k ...) too
    ns.tests += extra
    if ns.preset:
        ns.python, ns.project, args, selections = prepare(ns.preset)
        ns.tests = ns.tests or args
        ns.fixtures = ns.fixtures or selections
    if ns.project is None or not ns.fixtures:
        parser.error("give --preset, or --project and --fixtures")

    tmp = Path(tempfile.mkdtemp(prefix="sm-realsuite-"))
    (tmp / "sm_bench_outcomes.py").write_text(OUTCOMES)
    out = tmp / "outcomes.json"
    store = ns.project / ".statemigrate"
    modes: list[tuple[str, list[str]]] = [("", [])] + ([("-n 2 ", ["-n", "2"])] if ns.xdist else [])
    rows = []
    try:
        for selection in ns.fixtures:
            sm = ["-p", "statemigrate", f"--sm-fixtures={selection}"]
            for label, extra in modes:
                times: dict[str, list[float]] = {"plain": [], "cold": [], "warm": []}
                diffs = {"cold": 0, "warm": 0}
                tests = 0
                for _ in range(ns.runs):
                    shutil.rmtree(store, ignore_errors=True)
                    plain, secs, _text = run(ns.python, ns.project, [*extra, *ns.tests], tmp, out)
                    times["plain"].append(secs)
                    tests = len(plain)
                    for phase in ("cold", "warm"):
                        got, secs, text = run(
                            ns.python, ns.project, [*sm, *extra, *ns.tests], tmp, out
                        )
                        times[phase].append(secs)
                        if got != plain:
                            diffs[phase] += 1
                            if ns.show_diffs:
                                changed = {
                                    k
                                    for k in plain.keys() | got.keys()
                                    if plain.get(k) != got.get(k)
                                }
                                print(f"{label}{phase}: {sorted(changed)[:10]}\n{text[-3000:]}")
                base = statistics.median(times["plain"])
                for phase in ("plain", "cold", "warm"):
                    med = statistics.median(times[phase])
                    rows.append(
                        f"| `{selection}` | {label}{phase} | {ns.runs} | {tests} | "
                        f"{diffs.get(phase, 0)} | {med:.2f} | {med / base:.2f} |"
                    )
                    print(rows[-1], flush=True)
    finally:
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    header = "| selection | run | rounds | tests | rounds unlike plain | median s | ratio |"
    print("\n" + header)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
