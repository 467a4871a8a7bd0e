"""Builds that change the process besides returning a value: a hit would not do it, so such a
fixture is refused, the effect named, and built every run as plain pytest builds it (issue 16,
"Side effects seen"). Builds that leave the process as they found it are served."""

from __future__ import annotations

import pytest

from tests.conftest import Suite

CONFTEST = """
import logging, os, signal, sys, time, warnings
import pytest
import app
import app.helpers

@pytest.fixture(scope="session")
def sets_env():
    os.environ["SM_EFFECT"] = "1"
    return [1, 2, 3]

@pytest.fixture(scope="session")
def changes_cwd(tmp_path_factory):
    os.chdir(tmp_path_factory.getbasetemp())
    return [1]

@pytest.fixture(scope="session")
def extends_path():
    sys.path.append(os.path.join(os.path.dirname(__file__), "extra"))
    return [2]

@pytest.fixture(scope="session")
def sets_signal():
    signal.signal(signal.SIGUSR1, lambda *a: None)
    return [3]

@pytest.fixture(scope="session")
def adds_handler():
    logging.getLogger("app.audit").addHandler(logging.NullHandler())
    return [4]

@pytest.fixture(scope="session")
def rebinds_global():
    app.READY = True
    return [5]

@pytest.fixture(scope="session")
def filters_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    return [6]

@pytest.fixture(scope="session")
def tidy():
    # What it changes it puts back, and importing a submodule binds it on its package:
    # neither is an effect, so this one is served.
    os.environ["SM_TIDY"] = "1"
    del os.environ["SM_TIDY"]
    import app.extra_helpers
    time.sleep(0.1)  # (loading must pay: a build of no cost is built, not loaded)
    return [app.helpers.double(21)]
"""

TESTS = """
import logging, os, signal, sys
import app

def test_env(sets_env):
    assert os.environ.get("SM_EFFECT") == "1"

def test_cwd(changes_cwd, tmp_path_factory):
    assert os.getcwd() == str(tmp_path_factory.getbasetemp())

def test_path(extends_path):
    assert sys.path[-1].endswith("extra")

def test_signal(sets_signal):
    assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL

def test_handler(adds_handler):
    assert logging.getLogger("app.audit").handlers

def test_global(rebinds_global):
    assert app.READY is True

def test_filters(filters_warnings):
    pass

def test_tidy(tidy):
    assert tidy == [42]
"""

EFFECTS = {
    "sets_env": "sets the environment variable SM_EFFECT",
    "changes_cwd": "changes the current directory",
    "extends_path": "changes sys.path",
    "sets_signal": "sets a handler for SIGUSR1",
    "adds_handler": "changes the handlers of 'app.audit'",
    "rebinds_global": "rebinds app.READY",
    "filters_warnings": "changes the warnings filters",
}


def _project(suite: Suite) -> None:
    names = "\n    ".join([*EFFECTS, "tidy"])
    suite.pytester.makeini(
        f"[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    {names}\n"
    )
    suite.pytester.makeconftest(CONFTEST)
    pkg = suite.pytester.mkpydir("app")
    (pkg / "__init__.py").write_text("READY = False\n")
    (pkg / "helpers.py").write_text("def double(n):\n    return 2 * n\n")
    (pkg / "extra_helpers.py").write_text("")
    suite.pytester.makepyfile(test_one=TESTS, test_two=TESTS.replace("def test_", "def test_2_"))


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["one-process", "n2"])
def test_a_build_with_an_effect_is_refused_and_named(suite: Suite, args: tuple[str, ...]) -> None:
    _project(suite)
    for _ in ("cold", "warm"):
        run = suite.same_as_plain(*args)
        assert set(run.outcomes.values()) == {"passed"}, run.text
        assert run.stats is not None
        refused = run.stats["refused"]
        for name, effect in EFFECTS.items():
            assert refused.get(name) == f"its build {effect}: a hit would not", (name, run.text)
        assert "tidy" not in refused, run.text
    assert run.stats["hits_total"] >= 1  # tidy, on the warm run
    assert run.stats["builds"] >= len(EFFECTS)  # the others, built again
