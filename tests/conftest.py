"""Shared helpers: run a suite through pytester with and without the plugin and compare."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

# Imported before any pytester snapshot of sys.modules, so that no pytester test's cleanup
# drops it: numpy's extension cannot be loaded twice in one process ("cannot load module more
# than once per process" in a later test's import). Where it is missing, its tests skip.
with contextlib.suppress(ImportError):
    import numpy  # noqa: F401

# Plugins installed next to ours that are slow to import and irrelevant to these runs.
QUIET = (
    *("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider"),
    *("-p", "no:randomly"),  # a test that wants it passes "-p randomly" after these
)

OUTCOMES_PLUGIN = """
import json, os

_outcomes = {}

def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        key = report.nodeid
        if report.when != "call" and report.outcome == "failed":
            outcome = "error"
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        _outcomes.setdefault(key, outcome)

def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        return
    path = os.environ.get("SM_OUTCOMES")
    if path:
        with open(path, "w") as fh:
            json.dump(_outcomes, fh)
"""


#: A conftest with one session fixture, ``dataset``, that logs each build to builds.log.
DATASET_CONFTEST = """
import time
import pytest
from pathlib import Path

@pytest.fixture(scope="session")
def dataset():
    with open(Path(__file__).parent / "builds.log", "a") as fh:
        fh.write("dataset\\n")
    time.sleep(0.05)
    return list(range(100))
"""


@dataclass
class Run:
    result: pytest.RunResult
    outcomes: dict[str, str]
    stats: dict[str, Any] | None

    @property
    def text(self) -> str:
        return str(self.result.stdout) + str(self.result.stderr)


class Suite:
    """A pytester project that runs with the plugin (``run``) and without (``plain``)."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.count = 0
        pytester.makepyfile(sm_outcomes=OUTCOMES_PLUGIN)

    def _run(self, *args: str, plugin: bool) -> Run:
        self.count += 1
        path = self.pytester.path / f".outcomes-{self.count}.json"
        stats_path = self.pytester.path / f".stats-{self.count}.json"
        os.environ["SM_OUTCOMES"] = str(path)
        try:
            flags = ["-p", "sm_outcomes", *QUIET]
            tail: list[str] = []
            if plugin:
                flags += ["-p", "statemigrate", f"--sm-stats-json={stats_path}"]
            else:  # last, so that a "-W error" among args does not turn it back on
                flags += ["-p", "no:statemigrate"]
                tail = ["-W", "ignore::pytest.PytestConfigWarning"]
            result = self.pytester.runpytest_subprocess(*flags, *args, *tail, timeout=180)
        finally:
            del os.environ["SM_OUTCOMES"]
        outcomes = json.loads(path.read_text()) if path.exists() else {}
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
        return Run(result, outcomes, stats)

    def run(self, *args: str) -> Run:
        return self._run(*args, plugin=True)

    def plain(self, *args: str) -> Run:
        """The same run without the plugin (its own options dropped)."""
        kept: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg.startswith("--sm-"):
                skip = "=" not in arg and arg != "--sm-refresh"
            elif arg != "--strict-config":
                kept.append(arg)
        return self._run(*kept, plugin=False)

    def same_as_plain(self, *args: str) -> Run:
        """Run with the plugin and check every outcome equals a plain run's."""
        plain = self.plain(*args)
        managed = self.run(*args)
        assert plain.outcomes, plain.text
        assert managed.outcomes == plain.outcomes, managed.text
        return managed

    def builds(self, name: str = "builds.log") -> list[str]:
        path = self.pytester.path / name
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def suite(pytester: pytest.Pytester) -> Suite:
    return Suite(pytester)
