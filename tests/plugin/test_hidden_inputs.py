"""Inputs nobody declares: environment variables read while building, the global random state a
build draws from, the current directory of a relative path. A stored value serves only while
they are what they were, and a hit leaves the random state as the build would (issue 13)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import Suite

VALUES = """
import json, os

def pytest_sessionfinish(session):
    seen = getattr(session.config, "_seen", {})
    with open(os.environ["SM_VALUES"], "w") as f:
        json.dump(seen, f, sort_keys=True)
"""


@contextmanager
def _env(**values: str | None) -> Iterator[None]:
    old = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _values(suite: Suite, *args: str, plugin: bool) -> tuple[dict[str, Any], Any]:
    """The values the tests saw (written by the conftest), and the run."""
    path = suite.pytester.path / f"values-{suite.count + 1}.json"
    with _env(SM_VALUES=str(path)):
        run = suite.run(*args) if plugin else suite.plain(*args)
    assert path.exists(), run.text
    return json.loads(path.read_text()), run


def _same_values(suite: Suite, *args: str) -> Any:
    """Plain pytest, then the plugin: the same outcomes and the same values seen."""
    plain, plain_run = _values(suite, *args, plugin=False)
    managed, run = _values(suite, *args, plugin=True)
    assert plain_run.outcomes and run.outcomes == plain_run.outcomes, run.text
    assert managed == plain, run.text
    run.values = managed
    return run


@pytest.fixture
def env_suite(suite: Suite) -> Suite:
    suite.pytester.makeini(
        "[pytest]\nstatemigrate_fixtures =\n    seeded\n    from_getenv\n    settings\n"
    )
    suite.pytester.makeconftest(
        VALUES
        + """
import time
import pytest
from os import environ

@pytest.fixture(scope="session")
def seeded():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return int(os.environ.get("MY_SEED", "0"))

@pytest.fixture(scope="session")
def from_getenv():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return os.getenv("MY_MODE") or "default"

@pytest.fixture(scope="session")
def settings():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return {k: v for k, v in environ.items() if k.startswith("MY_")}

@pytest.fixture(autouse=True)
def _record(request, seeded, from_getenv, settings):
    request.config._seen = {"seeded": seeded, "mode": from_getenv, "settings": settings}
"""
    )
    suite.pytester.makepyfile(
        """
import os

def test_seed(seeded):
    assert seeded == int(os.environ.get("MY_SEED", "0"))

def test_mode(from_getenv):
    assert from_getenv == (os.environ.get("MY_MODE") or "default")
"""
    )
    return suite


def test_a_value_built_from_an_environment_variable_follows_it(env_suite: Suite) -> None:
    with _env(MY_SEED="1", MY_MODE=None, MY_OTHER=None):
        _same_values(env_suite)
        warm = _same_values(env_suite)
        # (settings reads the whole environment, and each run's differs: SM_VALUES)
        assert warm.stats["hits_total"] == 2, warm.text
        assert "the environment changed" in warm.text
    with _env(MY_SEED="5", MY_MODE=None, MY_OTHER=None):  # was 'assert 0 == 5' before
        run = _same_values(env_suite)
        assert "environment variable MY_SEED changed" in run.text
    with _env(MY_SEED=None, MY_MODE="fast", MY_OTHER=None):  # set -> unset, unset -> set
        run = _same_values(env_suite)
        text = run.text
        assert "environment variable MY_SEED changed" in text
        assert "environment variable MY_MODE changed" in text
    with _env(MY_SEED=None, MY_MODE="fast", MY_OTHER="x"):  # only the whole-environment reader
        run = _same_values(env_suite)
        assert run.stats["hits_total"] == 2, run.text
        assert "the environment changed" in run.text


def test_declared_variables_say_what_of_the_whole_environment_counts(suite: Suite) -> None:
    suite.pytester.makeconftest(
        VALUES
        + """
import time
import pytest
from pytest_statemigrate import state

@state(env=["MY_A"])
@pytest.fixture(scope="session")
def settings():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return {k: v for k, v in os.environ.items() if k.startswith("MY_")}

@pytest.fixture(autouse=True)
def _record(request, settings):
    request.config._seen = {"settings": settings}
"""
    )
    suite.pytester.makepyfile("def test_s(settings): pass\n")
    with _env(MY_A="1"):
        _same_values(suite)
        assert (run := _same_values(suite)).stats["hits_total"] == 1, (
            run.text
        )  # other variables differ: served
    with _env(MY_A="2"):
        assert (run := _same_values(suite)).stats["hits_total"] == 0, run.text


RANDOM_CONFTEST = (
    VALUES
    + """
import random
import time
import pytest

@pytest.fixture(scope="session")
def drawn():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return [random.random() for _ in range(3)]

@pytest.fixture(scope="session")
def own_generator():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return random.Random(7).random()

@pytest.fixture(autouse=True)
def _record(request, drawn, own_generator):
    seen = request.config.__dict__.setdefault("_seen", {})
    seen["drawn"] = drawn
    seen["own"] = own_generator
    seen.setdefault("after", []).append(random.random())  # what the tests draw next
"""
)


def test_under_pytest_randomly_each_seed_gets_its_own_value(suite: Suite) -> None:
    pytest.importorskip("pytest_randomly")
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures =\n    drawn\n    own_generator\n")
    suite.pytester.makeconftest(RANDOM_CONFTEST)
    suite.pytester.makepyfile("def test_a(drawn): pass\ndef test_b(drawn): pass\n")
    seen = []
    for seed in ("1", "2", "3", "1", "1"):
        run = _same_values(suite, "-p", "randomly", f"--randomly-seed={seed}")
        seen.append(run.values["drawn"])
    assert len({json.dumps(v) for v in seen[:3]}) == 3  # three seeds, three values
    assert seen[3] == seen[0]
    assert run.stats["hits_total"] == 2, run.text  # seed 1 again and again: served


def test_a_hit_leaves_the_global_random_state_as_the_build_did(suite: Suite) -> None:
    """Tests that draw after a fixture that drew see the same numbers, hit or not; a value
    built with its own seeded generator is served whatever the global state."""
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures =\n    drawn\n    own_generator\n")
    suite.pytester.makeconftest(
        RANDOM_CONFTEST
        + """
def pytest_runtest_setup(item):
    random.seed(int(os.environ.get("MY_RANDOM_SEED", "0")))
"""
    )
    suite.pytester.makepyfile("def test_a(drawn): pass\ndef test_b(drawn): pass\n")
    with _env(MY_RANDOM_SEED="4"):
        _same_values(suite)
        warm = _same_values(suite)
        assert warm.stats["hits_total"] == 2, warm.text
    with _env(MY_RANDOM_SEED="5"):  # (the conftest reads it: not the build)
        run = _same_values(suite)
        text = run.text
        assert "the global random state of 'random' is not the one it was built from" in text
        assert run.stats["hits_total"] == 1, run.text  # own_generator


def test_numpy_global_state_is_an_input_too(suite: Suite) -> None:
    pytest.importorskip("numpy")
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = noise\n")
    suite.pytester.makeconftest(
        VALUES
        + """
import time
import numpy as np
import pytest

def pytest_runtest_setup(item):
    np.random.seed(int(os.environ.get("MY_RANDOM_SEED", "0")))

@pytest.fixture(scope="session")
def noise():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    return np.random.rand(4).tolist()

@pytest.fixture(autouse=True)
def _record(request, noise):
    seen = request.config.__dict__.setdefault("_seen", {})
    seen["noise"] = noise
    seen.setdefault("after", []).append(float(np.random.rand()))
"""
    )
    suite.pytester.makepyfile("def test_a(noise): pass\ndef test_b(noise): pass\n")
    with _env(MY_RANDOM_SEED="1"):
        _same_values(suite)
        assert (run := _same_values(suite)).stats["hits_total"] == 1, run.text
    with _env(MY_RANDOM_SEED="2"):
        run = _same_values(suite)
        assert "the global random state of 'numpy.random'" in run.text


def test_a_relative_path_is_read_from_the_current_directory(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = data\n")
    suite.pytester.makeconftest(
        VALUES
        + """
import time
import pytest

@pytest.fixture(scope="session")
def data():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    with open("data.txt") as f:  # relative: read from wherever pytest was started
        return f.read()

@pytest.fixture(autouse=True)
def _record(request, data):
    request.config._seen = {"data": data}
"""
    )
    suite.pytester.makepyfile("def test_data(data):\n    assert data == open('data.txt').read()\n")
    root = suite.pytester.path
    (root / "data.txt").write_text("top")
    sub = root / "sub"
    sub.mkdir()
    (sub / "data.txt").write_text("sub")
    (sub / "sm_outcomes.py").write_text((root / "sm_outcomes.py").read_text())  # (on its path)
    _same_values(suite)
    assert (run := _same_values(suite)).stats["hits_total"] == 1, run.text
    os.chdir(sub)
    try:
        run = _same_values(suite, str(root))
    finally:
        os.chdir(root)
    assert "the current directory changed" in run.text


def test_os_environ_keeps_its_class_outside_builds(suite: Suite) -> None:
    """Recording reads os.environ through a class of its own only while a build runs."""
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = value\n")
    suite.pytester.makeconftest(
        """
import os, pytest

@pytest.fixture(scope="session")
def value():
    return type(os.environ).__name__

def test_environ_class_outside_builds(value):
    assert type(os.environ) is os._Environ
"""
    )
    suite.pytester.makepyfile(
        "import os\n\ndef test_class(value):\n    assert type(os.environ) is os._Environ\n"
    )
    run = suite.same_as_plain()
    assert set(run.outcomes.values()) == {"passed"}


def test_a_library_scanning_the_environment_as_it_is_imported_is_not_an_input(
    suite: Suite,
) -> None:
    """networkx reads every NETWORKX_* variable when imported: a fixture that imports it first
    would otherwise depend on the whole environment (and never be served in CI)."""
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = scanned\n")
    suite.pytester.makepyfile(
        envscan="import os\nCONFIG = {k: v for k, v in os.environ.items() if k.startswith('X_')}\n"
    )
    suite.pytester.makeconftest(
        VALUES
        + """
import time
import pytest

@pytest.fixture(scope="session")
def scanned():
    time.sleep(0.2)  # (building must cost more than loading, even under load)
    import envscan
    return sorted(envscan.CONFIG)

@pytest.fixture(autouse=True)
def _record(request, scanned):
    request.config._seen = {"scanned": scanned}
"""
    )
    suite.pytester.makepyfile("def test_s(scanned): pass\n")
    _same_values(suite)
    run = _same_values(suite)  # (SM_VALUES, SM_OUTCOMES differ from run to run)
    assert run.stats["hits_total"] == 1, run.text
