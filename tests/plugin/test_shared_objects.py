"""Values tied to the project's module-level objects, and what a refused round trip leaves
behind. Each shape comes from a real suite whose outcome changed with every fixture opted in:

- a build that fills a class attribute or a module-level container *in place* (MDAnalysis's
  stream data adds to a class-level dict); a hit would leave it as it was;
- a fixture whose value is a member of a module-level list, or its param object itself
  (geopandas parametrizes with frames that tests find again by ``id()``); a loaded copy is
  another object;
- a value whose round trip fails half-way (MDAnalysis's named streams), leaving a half-built
  object whose ``__del__`` raises when it is collected: plain pytest never made it, so no
  test may see its unraisable exception.
"""

from __future__ import annotations

import pytest

from tests.conftest import Suite

APP = """
import time

FILES = {"psf": "a.psf"}
REGISTRY = []
FRAMES = [{"n": 1}, {"n": 2}]
BY_ID = {id(f): f["n"] for f in FRAMES}


class Stream:
    files = {"pdb": "a.pdb"}

    def __init__(self):
        time.sleep(0.1)
        self.files["xyz"] = "a.xyz"  # the class's dict, changed in place
        self.names = sorted(self.files)


class Holder:
    def __init__(self):
        self.seen = []


HOLDER = Holder()
"""

CONFTEST = """
import time
import pytest
import app


@pytest.fixture(scope="session")
def stream():
    return app.Stream()


@pytest.fixture(scope="session")
def registers():
    time.sleep(0.1)
    app.REGISTRY.append("plugin")
    return [1, 2]


@pytest.fixture(scope="session")
def adds_file():
    time.sleep(0.1)
    app.FILES["dcd"] = "a.dcd"
    return [3]


@pytest.fixture(scope="session")
def notes_on_instance():
    time.sleep(0.1)
    app.HOLDER.seen.append("x")  # a project object's attribute list, in place
    return [4]


@pytest.fixture(scope="module", params=app.FRAMES)
def frame(request):
    time.sleep(0.1)
    return request.param


@pytest.fixture(scope="session")
def first_frame():
    time.sleep(0.1)
    return app.FRAMES[0]


@pytest.fixture(scope="session")
def untouched():
    # Reads the module-level objects and changes none of them: served.
    time.sleep(0.1)
    return [len(app.FILES), len(app.Stream.files), app.FRAMES[1]["n"]]
"""

TESTS = """
import app


def test_stream(stream):
    assert "xyz" in app.Stream.files
    assert stream.names == ["pdb", "xyz"]


def test_registry(registers):
    assert app.REGISTRY == ["plugin"]


def test_files(adds_file):
    assert "dcd" in app.FILES


def test_holder(notes_on_instance):
    assert app.HOLDER.seen == ["x"]


def test_frame(frame):
    assert app.BY_ID[id(frame)] == frame["n"]


def test_first_frame(first_frame):
    assert first_frame is app.FRAMES[0]


def test_untouched(untouched):
    assert untouched[2] == 2
"""

REFUSED = {
    "stream": "its build changes app.Stream.files in place: a hit would not",
    "registers": "its build changes app.REGISTRY in place: a hit would not",
    "adds_file": "its build changes app.FILES in place: a hit would not",
    "notes_on_instance": "its build changes app.HOLDER.seen in place: a hit would not",
    "frame": "returns its param object itself: a loaded copy would be another object",
    "first_frame": (
        "returns the module-level object app.FRAMES[0]: a loaded value would skip what "
        "building does to it"
    ),
}


def _project(suite: Suite) -> None:
    names = "\n    ".join([*REFUSED, "untouched"])
    suite.pytester.makeini(
        f"[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    {names}\n"
    )
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(app=APP)
    suite.pytester.makepyfile(test_one=TESTS)


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["one-process", "n2"])
def test_module_level_objects_changed_or_returned_are_refused(
    suite: Suite, args: tuple[str, ...]
) -> None:
    _project(suite)
    for _ in ("cold", "warm"):
        run = suite.same_as_plain(*args)
        assert set(run.outcomes.values()) == {"passed"}, run.text
        assert run.stats is not None
        refused = run.stats["refused"]
        for name, why in REFUSED.items():
            assert refused.get(name) == why, (name, run.text)
        assert "untouched" not in refused, run.text
    assert run.stats["hits_total"] >= 1  # untouched, on the warm run


FRAGILE_CONFTEST = """
import io, time
import pytest


class Named:
    # Delegates to its stream, and so answers pickle's __setstate__ lookup on an instance
    # that has no stream yet: unpickling recurses. Its __del__ closes the stream.
    def __init__(self, text):
        self.stream = io.StringIO(text)
        self.name = "named"

    def __getattr__(self, attr):
        return getattr(self.stream, attr)

    def close(self):
        self.stream.close()

    def __del__(self):
        self.close()


@pytest.fixture(scope="session")
def named():
    time.sleep(0.1)
    return Named("data")
"""

FRAGILE_TESTS = """
import gc


def test_reads(named):
    assert named.read() == "data"


def test_later():
    gc.collect()  # what the refused round trip left must not surface here


def test_again(named):
    assert named.name == "named"
"""


def test_a_failed_round_trip_leaves_nothing_behind(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = named\n")
    suite.pytester.makeconftest(FRAGILE_CONFTEST)
    suite.pytester.makepyfile(test_fragile=FRAGILE_TESTS)
    for _ in ("cold", "warm"):
        run = suite.same_as_plain()
        assert set(run.outcomes.values()) == {"passed"}, run.text
        assert run.stats is not None
        why = run.stats["refused"].get("named", "")
        assert why.startswith("its value does not survive pickling (RecursionError"), run.text
        assert "Unraisable" not in run.text and "Exception ignored" not in run.text, run.text
