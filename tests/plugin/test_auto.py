"""``statemigrate_fixtures = auto``: the first run records what each fixture costs, the next
manages those worth it, and a fixture refused once (a side effect of its build) is declined
with its reason; every run's outcomes are plain pytest's (issue 16, ``auto``)."""

from __future__ import annotations

import pytest

from tests.conftest import Suite

CONFTEST = """
import os, threading, time
import pytest

@pytest.fixture(scope="session")
def slow_data():
    time.sleep(0.15)
    return list(range(1000))

@pytest.fixture(scope="session")
def slow_lock():
    time.sleep(0.15)
    return threading.Lock()  # does not pickle

@pytest.fixture(scope="session")
def slow_env():
    time.sleep(0.15)
    os.environ["SM_AUTO_EFFECT"] = "1"
    return 7

@pytest.fixture
def quick():
    return 1
"""

TESTS = """
import os

def test_data(slow_data, quick):
    assert sum(slow_data) == 499500

def test_lock(slow_lock):
    assert slow_lock.acquire(blocking=False)
    slow_lock.release()

def test_env(slow_env):
    assert os.environ.get("SM_AUTO_EFFECT") == "1" and slow_env == 7
"""


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["one-process", "n2"])
def test_auto_manages_what_pays_and_says_why(suite: Suite, args: tuple[str, ...]) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = auto\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_auto=TESTS)

    first = suite.same_as_plain(*args)
    first.result.stdout.fnmatch_lines(["auto: nothing recorded yet; this run records *"])
    assert first.stats is not None and first.stats["builds"] == 0

    second = suite.same_as_plain(*args)
    second.result.stdout.fnmatch_lines(
        [
            "auto manages slow_* (~1?? ms of setup per session), slow_* (~1?? ms of setup per "
            "session)",
            "auto declined slow_lock: its value does not pickle",
            "auto: 1 other fixture(s) take under 50 ms per session",  # quick
        ]
    )
    assert second.stats is not None
    assert "slow_env" in second.stats["refused"], second.text  # its build's side effect
    assert "slow_lock" not in second.text.split("auto manages")[1].splitlines()[0]

    third = suite.same_as_plain(*args)
    third.result.stdout.fnmatch_lines(
        [
            "auto manages slow_data (~1?? ms of building per session)",
            "auto declined slow_env: refused in an earlier run: its build sets the environment "
            "variable SM_AUTO_EFFECT: a hit would not",
        ]
    )
    assert third.stats is not None and third.stats["hits_total"] >= 1  # slow_data, served
    assert not third.stats["refused"], third.text  # neither is tried again
