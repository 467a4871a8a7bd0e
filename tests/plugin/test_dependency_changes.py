"""Builds that change their dependencies, or share parts with them (issue 17).

The pattern comes from geopandas' ``tools/tests/test_clip.py``: ``buffered_locations(point_gdf)``
buffers ``point_gdf`` in place and returns it. A stored value of such a fixture, served by
reference to a fresh dependency, would hand tests the unchanged dependency. Every run here is
compared with plain pytest: cold, warm, ``-n 2``, with the dependency loaded and built.
"""

from __future__ import annotations

import pytest

from tests.conftest import Suite

pytestmark = pytest.mark.timeout(600)

CONFTEST = '''
import time
import numpy as np
import pytest

def slow():
    time.sleep(0.03)  # building costs more than loading: values are stored, not built

@pytest.fixture
def points():
    slow()
    return {"geometry": ["p1", "p2"], "columns": ["geometry"]}

@pytest.fixture
def buffered(points):
    """Changes its dependency in place and returns it."""
    slow()
    points["geometry"] = [g + "-buffered" for g in points["geometry"]]
    points["type"] = "plot"
    return points

@pytest.fixture
def donut(buffered):
    slow()
    return {"n": len(buffered["geometry"]), "type": buffered["type"]}

@pytest.fixture
def labelled(points):
    """Changes its dependency and returns something else."""
    slow()
    points["label"] = "seen"
    return len(points)

@pytest.fixture(scope="module")
def base():
    slow()
    return np.arange(10)

@pytest.fixture(scope="module")
def view(base):
    """A numpy view: writes through it reach base."""
    slow()
    return base[2:6]

@pytest.fixture
def arrays():
    slow()
    return {"x": np.arange(5), "y": np.ones(3)}

@pytest.fixture
def frames(arrays):
    """A shallow copy holding the same arrays."""
    slow()
    return dict(arrays)

@pytest.fixture
def config():
    slow()
    return {"items": [1, 2], "name": "c"}

@pytest.fixture
def shallow(config):
    """A shallow copy holding the same list."""
    slow()
    return dict(config)

@pytest.fixture
def wrapper(config):
    """Refers to its dependency itself and leaves it alone: served, identity kept."""
    slow()
    return {"config": config, "n": len(config["items"])}

@pytest.fixture
def summary(base):
    """Reads its dependency and copies what it needs: served."""
    slow()
    return base[:4].copy()
'''

TESTS = """
def test_buffered_changes_points(points, buffered):
    assert buffered is points
    assert points["geometry"] == ["p1-buffered", "p2-buffered"]
    assert points["type"] == "plot"

def test_buffered_alone(buffered):
    assert buffered["type"] == "plot"
    assert buffered["geometry"][0].endswith("-buffered")

def test_donut(donut, points):
    assert donut == {"n": 2, "type": "plot"}
    assert points["type"] == "plot"

def test_points_alone(points):
    assert points == {"geometry": ["p1", "p2"], "columns": ["geometry"]}

def test_labelled(labelled, points):
    assert labelled == 3 and points["label"] == "seen"

def test_view_writes_reach_base(view, base):
    view[0] = 99
    try:
        assert base[2] == 99
    finally:
        base[2] = 2

def test_base_writes_reach_view(view, base):
    base[3] = 77
    try:
        assert view[1] == 77
    finally:
        base[3] = 3

def test_frames_share_arrays(frames, arrays):
    frames["x"][0] = 7
    assert arrays["x"][0] == 7

def test_shallow_shares_list(shallow, config):
    shallow["items"].append(3)
    assert config["items"] == [1, 2, 3]

def test_wrapper(wrapper, config):
    assert wrapper["config"] is config and wrapper["n"] == 2

def test_summary(summary, base):
    assert list(summary) == [0, 1, 2, 3]
"""

MUTATING = "buffered,labelled,donut,view,frames,shallow,wrapper,summary"
BOTH = MUTATING + ",points,base,arrays,config"

REFUSED = [
    "refused *buffered*: its build changes points in place*",
    "refused *labelled*: its build changes points in place*",
    "refused view: its value shares an array's memory with base*",
    "refused frames: its value shares an array's memory with arrays*",
    "refused shallow: its value shares a list with config*",
]


def _project(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_deps=TESTS)


def _refusals(run_text: str) -> str:
    return run_text.split("statemigrate ---")[-1]


@pytest.mark.parametrize("selection", [MUTATING, BOTH, "*"], ids=["alone", "both", "star"])
def test_dependency_changes_keep_plain_outcomes(suite: Suite, selection: str) -> None:
    _project(suite)
    opt = f"--sm-fixtures={selection}"
    cold = suite.same_as_plain(opt)
    assert set(cold.outcomes.values()) == {"passed"}, cold.text
    cold.result.stdout.fnmatch_lines_random(REFUSED)
    for _ in range(2):  # warm: the dependencies are loaded where they are managed
        warm = suite.same_as_plain(opt)
        warm.result.stdout.fnmatch_lines_random(REFUSED)
        assert warm.stats is not None
        managed = set(warm.stats["managed"])
        assert {"wrapper", "summary"} <= managed, warm.text
        assert not {"buffered", "labelled", "view", "frames", "shallow"} & managed
        assert warm.stats["hits_total"] > 0
    # The dependencies built again (refreshed) while the store holds everything.
    suite.same_as_plain(opt, "--sm-refresh")
    suite.same_as_plain(opt, "-n", "2")
    suite.same_as_plain(opt, "-n", "2")


GENERATED_PARAMS = """
import time
import pytest

def pytest_generate_tests(metafunc):
    # scikit-learn's pattern: a plain int parametrized by the project's own conftest
    if "global_random_seed" in metafunc.fixturenames:
        metafunc.parametrize("global_random_seed", [0, 1, 2])

@pytest.fixture
def seeded(global_random_seed):
    time.sleep(0.03)
    return [global_random_seed] * 3

@pytest.fixture
def sized(n):
    time.sleep(0.03)
    return list(range(n))
"""

GENERATED_TESTS = """
import pytest

def test_seeded(seeded, global_random_seed):
    assert seeded == [global_random_seed] * 3

@pytest.mark.parametrize("n", [1, 4])
def test_sized(sized, n):
    assert len(sized) == n
"""


def test_parametrize_arguments_feed_managed_fixtures(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = *\n")
    suite.pytester.makeconftest(GENERATED_PARAMS)
    suite.pytester.makepyfile(test_seeds=GENERATED_TESTS)
    cold = suite.same_as_plain()
    warm = suite.same_as_plain()
    assert len(warm.outcomes) == 5 and set(warm.outcomes.values()) == {"passed"}
    assert warm.stats is not None
    assert sorted(warm.stats["managed"]) == ["seeded", "sized"], warm.text
    assert warm.stats["hits_total"] == 5 and warm.stats["builds"] == 0
    for run in (cold, warm):
        assert "global_random_seed" not in _refusals(run.text), run.text


def test_fixtures_of_pytest_are_named_in_refusals(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = *\n")
    suite.pytester.makeconftest("""
import pytest

@pytest.fixture
def in_tmp(tmp_path):
    return str(tmp_path)
""")
    suite.pytester.makepyfile("def test_tmp(in_tmp):\n    assert in_tmp\n")
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines_random(
        [
            "refused in_tmp: depends on tmp_path, a fixture of pytest (not the project's)*",
            "refused *tmp_path*: defined outside the rootdir, by pytest: only the project's*",
        ]
    )


CHANGED_BEFORE = """
import time
import pytest

@pytest.fixture(scope="session")
def data():
    time.sleep(0.03)
    return [1, 2, 3]

@pytest.fixture(scope="module")
def derived(data):
    time.sleep(0.03)
    return len(data)
"""


def test_a_value_built_after_a_test_changed_its_dependency_serves_only_that_state(
    suite: Suite,
) -> None:
    """``test_a`` appends to the session's ``data``; ``derived``, set up later, counts it.
    Stored from a run where the append came first, it must not serve a run without it (it
    did: ``-k test_d`` passed with the plugin, failed without)."""
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\n")
    suite.pytester.makeconftest(CHANGED_BEFORE)
    suite.pytester.makepyfile(
        test_a="def test_mut(data):\n    data.append(4)\n",
        test_b="def test_d(derived):\n    assert derived == 4\n",
    )
    opt = "--sm-fixtures=data,derived"
    for args in ([], [], ["-k", "test_d"], [], ["-k", "test_d"], ["-n", "2", "--dist", "loadfile"]):
        run = suite.same_as_plain(opt, *args)
        # (under -n the two modules run on different workers: no append, as plain)
        expected = "passed" if not args else "failed"
        assert run.outcomes["test_b.py::test_d"] == expected, run.text
