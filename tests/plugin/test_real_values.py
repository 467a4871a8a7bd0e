"""What real fixtures return (issue 12): a faithful corpus served, a lossy corpus refused.

Each faithful fixture builds a value of a well-known library, as fixtures of real suites do;
each test compares the value it was given with one built afresh by the same helper, so a value
served from the store must behave like the built one. Libraries missing on an interpreter skip
their tests, in the plain run and the managed runs alike.
"""

from __future__ import annotations

import pytest

from tests.conftest import Suite

pytestmark = pytest.mark.timeout(600)

HELPERS = '''
"""Builders shared by the fixtures and by the tests that check what they were given."""
import dataclasses
import pathlib


class Namespace(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class Reader:
    """A domain-library-style reader: it reopens its file when unpickled."""

    def __init__(self, path):
        self.path = str(path)
        self.text = pathlib.Path(path).read_text()
        self._index = None

    def __reduce__(self):
        return (Reader, (self.path,))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.text.split())}
        return self._index.get(name)


@dataclasses.dataclass
class Experiment:
    config: Namespace
    runs: list


def frame():
    import numpy as np
    import pandas as pd
    idx = pd.MultiIndex.from_product([["a", "b"], [1, 2, 3]], names=["k", "n"])
    return pd.DataFrame(
        {
            "cat": pd.Categorical(["x", "y", "x", "z", "y", "x"]),
            "when": pd.date_range("2024-01-01", periods=6, freq="h", tz="Europe/Paris"),
            "value": np.arange(6, dtype=float) / 3,
            "maybe": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
        },
        index=idx,
    )


def sparse():
    import scipy.sparse as sp
    return sp.random(200, 100, density=0.05, random_state=0, format="csr")


def data():
    import numpy as np
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def estimator():
    from sklearn.linear_model import LogisticRegression
    X, y = data()
    return LogisticRegression().fit(X, y)


def pipeline():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = data()
    return make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X, y)


def graph():
    import networkx as nx
    g = nx.karate_club_graph()
    nx.set_edge_attributes(g, {e: {"w": i} for i, e in enumerate(g.edges)})
    g.graph["title"] = "karate"
    return g


def dataset():
    import numpy as np
    import xarray as xr
    return xr.Dataset(
        {"t": (("x", "y"), np.arange(12.0).reshape(3, 4), {"units": "K"})},
        coords={"x": [10, 20, 30], "y": list("abcd")},
        attrs={"source": "test"},
    )


def table():
    import astropy.units as u
    from astropy.table import QTable
    return QTable({"d": [1.0, 2.5, 4.0] * u.m, "t": [1, 2, 3] * u.s, "name": ["a", "b", "c"]})


def arrow():
    import pyarrow as pa
    return pa.table({"n": [1, 2, 3], "s": ["x", None, "z"]})


def polars_frame():
    import polars as pl
    return pl.DataFrame({"n": [1, 2, 3], "s": ["x", "y", None]})


def image():
    from PIL import Image
    img = Image.new("RGB", (32, 16), (10, 20, 30))
    img.putpixel((3, 4), (255, 0, 0))
    return img


def expression():
    import sympy
    x, y = sympy.symbols("x y")
    return sympy.expand((x + 2 * y) ** 5)


def geometry():
    from shapely.geometry import Point, Polygon
    return Polygon([(0, 0), (4, 0), (4, 4), (0, 4)]).difference(Point(2, 2).buffer(1))


def namespace():
    return Namespace(rows=[1, 2, 3], name="cfg", nested=Namespace(depth=2))


def experiment(config):
    return Experiment(config=config, runs=[{"seed": s} for s in range(3)])
'''

CONFTEST = """
import time
import pytest
import helpers

def slow(value):
    time.sleep(0.05)  # a build costs more than a load: values are stored and served
    return value

@pytest.fixture(scope="session")
def frame():
    pytest.importorskip("pandas")
    return slow(helpers.frame())

@pytest.fixture(scope="session")
def sparse():
    pytest.importorskip("scipy")
    return slow(helpers.sparse())

@pytest.fixture(scope="session")
def estimator():
    pytest.importorskip("sklearn")
    return slow(helpers.estimator())

@pytest.fixture(scope="session")
def pipeline():
    pytest.importorskip("sklearn")
    return slow(helpers.pipeline())

@pytest.fixture(scope="session")
def graph():
    return slow(helpers.graph())

@pytest.fixture(scope="session")
def dataset():
    pytest.importorskip("xarray")
    return slow(helpers.dataset())

@pytest.fixture(scope="session")
def table():
    pytest.importorskip("astropy")
    return slow(helpers.table())

@pytest.fixture(scope="session")
def arrow():
    pytest.importorskip("pyarrow")
    return slow(helpers.arrow())

@pytest.fixture(scope="session")
def polars_frame():
    pytest.importorskip("polars")
    return slow(helpers.polars_frame())

@pytest.fixture(scope="session")
def image():
    pytest.importorskip("PIL")
    return slow(helpers.image())

@pytest.fixture(scope="session")
def expression():
    pytest.importorskip("sympy")
    return slow(helpers.expression())

@pytest.fixture(scope="session")
def geometry():
    pytest.importorskip("shapely")
    return slow(helpers.geometry())

@pytest.fixture(scope="session")
def reader():
    return slow(helpers.Reader(helpers.pathlib.Path(__file__).parent / "words.txt"))

@pytest.fixture(scope="session")
def namespace():
    return slow(helpers.namespace())

@pytest.fixture(scope="session")
def experiment(namespace):
    return slow(helpers.experiment(namespace))
"""

TESTS = """
import helpers

def test_frame(frame):
    import pandas as pd
    pd.testing.assert_frame_equal(frame, helpers.frame())
    assert frame["cat"].dtype == "category" and str(frame["when"].dt.tz) == "Europe/Paris"

def test_sparse(sparse):
    assert (sparse != helpers.sparse()).nnz == 0 and sparse.format == "csr"

def test_estimator(estimator):
    import numpy as np
    X, _ = helpers.data()
    assert np.array_equal(estimator.predict(X), helpers.estimator().predict(X))

def test_pipeline(pipeline):
    import numpy as np
    X, _ = helpers.data()
    assert np.allclose(pipeline.predict(X), helpers.pipeline().predict(X))

def test_graph(graph):
    import networkx as nx
    assert nx.utils.graphs_equal(graph, helpers.graph()) and graph.graph["title"] == "karate"
    assert graph.edges[0, 1]["w"] == helpers.graph().edges[0, 1]["w"]

def test_dataset(dataset):
    assert dataset.identical(helpers.dataset()) and dataset["t"].attrs["units"] == "K"

def test_table(table):
    import astropy.units as u
    assert (table["d"] == helpers.table()["d"]).all() and table["t"].unit == u.s

def test_arrow(arrow):
    assert arrow.equals(helpers.arrow())

def test_polars(polars_frame):
    assert polars_frame.equals(helpers.polars_frame())

def test_image(image):
    assert image.tobytes() == helpers.image().tobytes() and image.getpixel((3, 4)) == (255, 0, 0)

def test_expression(expression):
    assert expression == helpers.expression()

def test_geometry(geometry):
    assert geometry.equals(helpers.geometry())
    assert abs(geometry.area - helpers.geometry().area) < 1e-12

def test_reader(reader):
    assert reader.text.split()[0] == "alpha" and reader.beta == 1

def test_namespace(namespace):
    assert namespace == helpers.namespace() and namespace.nested.depth == 2

def test_experiment(experiment, namespace):
    assert experiment.config is namespace
    assert experiment == helpers.experiment(helpers.namespace())
"""

FAITHFUL = {
    "frame": "pandas",
    "sparse": "scipy",
    "estimator": "sklearn",
    "pipeline": "sklearn",
    "graph": "networkx",
    "dataset": "xarray",
    "table": "astropy",
    "arrow": "pyarrow",
    "polars_frame": "polars",
    "image": "PIL",
    "expression": "sympy",
    "geometry": "shapely",
    "reader": "pathlib",
    "namespace": "pathlib",
    "experiment": "pathlib",
}

LOSSY_CONFTEST = '''
import sqlite3
import time
import pytest

class Swallows:
    """Its __getattr__ answers for __setstate__: a loaded one has lost its items."""
    def __init__(self):
        self.items = [1, 2]
    def __getattr__(self, name):
        return lambda *args: None

class Shouting(dict):
    """Restoring its items through its own __setitem__ changes them."""
    def __setitem__(self, key, value):
        super().__setitem__(key, f"{value}!")

@pytest.fixture(scope="session")
def swallows():
    time.sleep(0.05)
    return Swallows()

@pytest.fixture(scope="session")
def shouting():
    time.sleep(0.05)
    s = Shouting()
    dict.__setitem__(s, "a", "1")
    return s

@pytest.fixture(scope="session")
def connection():
    return sqlite3.connect(":memory:")

@pytest.fixture(scope="session")
def callback():
    return lambda x: x + 1

@pytest.fixture(scope="session")
def registry():
    def handler():
        return "handled"
    return {"handler": handler}
'''

LOSSY_TESTS = """
def test_swallows(swallows):
    assert swallows.items == [1, 2]

def test_shouting(shouting):
    assert shouting == {"a": "1"}

def test_connection(connection):
    assert connection.execute("select 1").fetchone() == (1,)

def test_callback(callback):
    assert callback(1) == 2

def test_registry(registry):
    assert registry["handler"]() == "handled"
"""


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_faithful_values_are_served(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = *\n")
    suite.pytester.makepyfile(helpers=HELPERS, test_values=TESTS)
    suite.pytester.makeconftest(CONFTEST)
    (suite.pytester.path / "words.txt").write_text("alpha beta gamma\n")
    cold = suite.same_as_plain()
    expected = {name for name, module in FAITHFUL.items() if _available(module)}
    assert {t.split("::")[1] for t, o in cold.outcomes.items() if o == "passed"} == {
        f"test_{'polars' if n == 'polars_frame' else n}" for n in expected
    }, cold.text
    warm = suite.same_as_plain()
    assert warm.stats is not None
    assert not set(warm.stats["refused"]) & expected, warm.stats["refused"]
    assert not set(warm.stats["built_instead"]) & expected, warm.stats["built_instead"]
    assert expected <= set(warm.stats["managed"]), warm.text
    assert warm.stats["builds"] == 0 and warm.stats["hits_total"] >= len(expected)
    suite.same_as_plain("-n", "2")
    suite.same_as_plain("-n", "2")


def test_lossy_values_are_refused_with_the_reason(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = *\n")
    suite.pytester.makeconftest(LOSSY_CONFTEST)
    suite.pytester.makepyfile(test_lossy=LOSSY_TESTS)
    suite.same_as_plain()
    for args in ((), ("-n", "2")):
        warm = suite.same_as_plain(*args)
        assert warm.stats is not None and warm.stats["managed"] == [], warm.text
        warm.result.stdout.fnmatch_lines_random(
            [
                "refused swallows: its value does not survive pickling (Swallows: __getattr__*",
                "refused shouting: its value does not survive pickling (Shouting: a dict sub*",
                "refused connection: *Connection value cannot be pickled*",
                "refused *callback*: *cannot be pickled*",
                "refused *registry*: *cannot be pickled*",
            ]
        )


WARNS_ON_LOAD = '''
import time
import warnings
import pytest

class Trajectory:
    """Warns whenever it opens, on unpickling too (MDAnalysis: "Reader has no dt ...")."""
    def __init__(self, frames):
        warnings.warn("Reader has no dt information, set to 1.0 ps", UserWarning)
        self.frames = frames
    def __reduce__(self):
        return (Trajectory, (self.frames,))

@pytest.fixture
def trajectory():
    time.sleep(0.05)
    return Trajectory(list(range(10)))
'''


def test_warnings_of_a_load_are_not_added_to_the_builds(suite: Suite) -> None:
    """Each test sees the build's one warning, as in plain pytest: not the load's as well."""
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = trajectory\n")
    suite.pytester.makeconftest(WARNS_ON_LOAD)
    suite.pytester.makepyfile(
        test_traj="def test_a(trajectory):\n    assert len(trajectory.frames) == 10\n"
        "def test_b(trajectory):\n    assert trajectory.frames[-1] == 9\n"
    )
    plain = suite.plain().result.parseoutcomes()
    for _ in range(2):  # cold (the second test loads), then warm
        run = suite.same_as_plain()
        assert run.result.parseoutcomes() == plain, run.text
        assert run.stats is not None and run.stats["hits_total"] >= 1
