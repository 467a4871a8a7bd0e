"""Acceptance runs through pytester: every run is compared with a plain pytest run."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import Suite

pytestmark = pytest.mark.timeout(300)

CONFTEST = '''
import time
import pytest
from pathlib import Path

LOG = Path(__file__).parent / "builds.log"

def built(name):
    """Log a build; the sleep makes building cost more than loading."""
    with open(LOG, "a") as fh:
        fh.write(name + "\\n")
    time.sleep(0.05)

@pytest.fixture(scope="session")
def dataset():
    built("dataset")
    return {"rows": list(range(1000)), "name": "data"}

@pytest.fixture
def rows(dataset):
    built("rows")
    return list(dataset["rows"])
'''

TESTS = """
def test_dataset(dataset):
    assert len(dataset["rows"]) == 1000

def test_rows_mutated(rows):
    rows.append("mine")
    assert rows[-1] == "mine"

def test_rows_fresh(rows):
    assert "mine" not in rows
    assert len(rows) == 1000
"""


def _project(suite: Suite, ini: str = "statemigrate_fixtures =\n    dataset\n    rows\n") -> None:
    suite.pytester.makeini(f"[pytest]\nfilterwarnings = error\n{ini}")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_data=TESTS)


def test_cold_then_warm_builds_nothing(suite: Suite) -> None:
    _project(suite)
    cold = suite.same_as_plain()
    plain_builds = suite.builds().count("dataset")
    assert plain_builds == 2  # once in the plain run, once in the cold run
    # rows is function-scoped: its second setup in the cold run is already a hit
    assert cold.stats is not None and cold.stats["builds"] == 2
    (suite.pytester.path / "builds.log").unlink()
    warm = suite.run()
    assert warm.outcomes == cold.outcomes
    assert suite.builds() == []
    assert warm.stats is not None
    assert warm.stats["builds"] == 0 and warm.stats["hits_total"] == 3
    warm.result.stdout.fnmatch_lines(["*statemigrate*", "managed fixtures: 2 (dataset, rows)"])


@pytest.mark.parametrize("ini", ["dataset rows", "dataset, rows"], ids=["spaces", "commas"])
def test_patterns_on_one_line_are_several(suite: Suite, ini: str) -> None:
    """``statemigrate_fixtures = dataset rows`` was one pattern that matched nothing."""
    _project(suite, ini=f"statemigrate_fixtures = {ini}\n")
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines(["managed fixtures: 2 (dataset, rows)"])


def test_refresh_rebuilds(suite: Suite) -> None:
    _project(suite)
    suite.run()
    (suite.pytester.path / "builds.log").unlink()
    refreshed = suite.run("--sm-refresh")
    assert sorted(suite.builds()) == ["dataset", "rows"]  # each key rebuilt once
    assert refreshed.stats is not None and refreshed.stats["builds"] == 2
    (suite.pytester.path / "builds.log").unlink()
    suite.run()
    assert suite.builds() == []


def test_decorator_in_either_order(suite: Suite) -> None:
    suite.pytester.makeconftest(
        CONFTEST
        + textwrap.dedent("""
        from pytest_statemigrate import state

        @state
        @pytest.fixture(scope="session")
        def below():
            built("below")
            return [1, 2]

        @pytest.fixture(scope="session")
        @state(env=["SM_TEST_SEED"])
        def above():
            built("above")
            return [3, 4]
        """)
    )
    suite.pytester.makepyfile(
        "def test_both(below, above):\n    assert below + above == [1, 2, 3, 4]\n"
    )
    suite.same_as_plain()
    (suite.pytester.path / "builds.log").unlink()
    warm = suite.run()
    assert suite.builds() == []
    assert warm.stats is not None and sorted(warm.stats["managed"]) == ["above", "below"]


def test_params_and_overrides_get_their_own_values(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = number\n")
    suite.pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session", params=[1, 2, 3])
def number(request):
    import time; time.sleep(0.05)
    return request.param * 10
""")
    suite.pytester.makepyfile(
        test_params="""
def test_number(number, request):
    assert number in (10, 20, 30)

def test_ids(number, request):
    assert number == {"1": 10, "2": 20, "3": 30}[request.node.callspec.id]
""",
        test_override="""
import pytest

@pytest.fixture(scope="session")
def number():
    return 99

def test_overridden(number):
    assert number == 99
""",
    )
    cold = suite.same_as_plain()
    warm = suite.same_as_plain()
    assert cold.outcomes == warm.outcomes
    assert set(warm.outcomes.values()) == {"passed"}
    assert warm.stats is not None and warm.stats["builds"] == 0


def test_identity_with_the_dependency_is_kept(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures =\n    dataset\n    selection\n")
    suite.pytester.makeconftest(
        CONFTEST
        + """
class Selection:
    def __init__(self, source):
        self.source = source
        self.first = source["rows"][:3]

@pytest.fixture(scope="session")
def selection(dataset):
    built("selection")
    return Selection(dataset)
"""
    )
    suite.pytester.makepyfile("""
def test_selection_refers_to_dataset(selection, dataset):
    assert selection.source is dataset
    assert selection.first == [0, 1, 2]
""")
    suite.same_as_plain()
    warm = suite.same_as_plain()
    assert warm.outcomes == {
        "test_identity_with_the_dependency_is_kept.py::test_selection_refers_to_dataset": "passed"
    }
    assert warm.stats is not None and warm.stats["hits_total"] == 2


def test_mutation_does_not_reach_later_sessions(suite: Suite) -> None:
    _project(suite)
    suite.pytester.makepyfile(
        test_mutate="""
def test_mutate_session_value(dataset):
    dataset["rows"].clear()
"""
    )
    suite.same_as_plain("-p", "no:randomly")
    warm = suite.same_as_plain()
    assert warm.stats is not None and warm.stats["hits_total"] >= 1


REFUSALS = """
import threading
import pytest

@pytest.fixture
def with_teardown():
    yield 1

@pytest.fixture
def lock():
    return threading.Lock()

@pytest.fixture
def in_tmp(tmp_path):
    return str(tmp_path)

@pytest.fixture
def reads_config(request):
    return request.config.getoption("verbose")

@pytest.fixture
def fine():
    import time; time.sleep(0.05)
    return 5
"""


def test_refusals_are_explained_and_run_unmanaged(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = *\n")
    suite.pytester.makeconftest(REFUSALS)
    suite.pytester.makepyfile("""
def test_all(with_teardown, lock, in_tmp, reads_config, fine):
    assert with_teardown == 1 and fine == 5
    assert lock.acquire() and in_tmp
""")
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines_random(
        [
            "refused with_teardown: yield fixture*; it runs unmanaged",
            "refused lock: *cannot be pickled*; it runs unmanaged",
            "refused in_tmp: depends on tmp_path*; it runs unmanaged",
            "refused reads_config: uses request.config*; it runs unmanaged",
            # (tmp_path_factory is never selected: fixtures using it are managed with files)
            "refused tmp_path: defined outside the rootdir*; it runs unmanaged",
        ]
    )
    assert run.stats is not None and "fine" in run.stats["managed"]
    again = suite.same_as_plain()
    assert again.stats is not None and "lock" in again.stats["refused"]


def test_staleness_fixture_helper_datafile_env(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = suite.pytester
    p.makeini("[pytest]\nstatemigrate_fixtures = table\n")
    p.makepyfile(helper="def scale():\n    return 2\n")
    (p.path / "data.txt").write_text("1 2 3\n")
    p.makeconftest("""
import os
import pytest
import helper
from pathlib import Path
from pytest_statemigrate import state

@pytest.fixture(scope="session")
@state(env=["SM_TEST_OFFSET"])
def table():
    import time; time.sleep(0.05)
    with open(Path(__file__).parent / "builds.log", "a") as fh:
        fh.write("table\\n")
    numbers = (Path(__file__).parent / "data.txt").read_text().split()
    offset = int(os.environ.get("SM_TEST_OFFSET", "0"))
    return [int(n) * helper.scale() + offset for n in numbers]
""")
    p.makepyfile(
        test_t="""
import os

def test_table(table):
    expected = os.environ.get("SM_EXPECT")
    assert table == [int(x) for x in expected.split(",")]
"""
    )

    def check(expect: str, builds: int) -> None:
        (p.path / "builds.log").unlink(missing_ok=True)
        monkeypatch.setenv("SM_EXPECT", expect)  # the subprocesses inherit it
        run = suite.same_as_plain()
        assert set(run.outcomes.values()) == {"passed"}, run.text
        # the plain run always builds once; the managed run builds `builds` times
        assert suite.builds().count("table") == 1 + builds, run.text

    check("2,4,6", builds=1)
    check("2,4,6", builds=0)
    p.makepyfile(helper="def scale():\n    return 3\n")  # a helper module changed
    check("3,6,9", builds=1)
    check("3,6,9", builds=0)
    (p.path / "data.txt").write_text("1 2\n")  # a data file it reads changed
    check("3,6", builds=1)
    check("3,6", builds=0)
    monkeypatch.setenv("SM_TEST_OFFSET", "1")  # a declared env var changed
    check("4,7", builds=1)
    check("4,7", builds=0)
    monkeypatch.delenv("SM_TEST_OFFSET")
    conftest = p.path / "conftest.py"
    conftest.write_text(conftest.read_text().replace("offset for n", "offset + 100 for n"))
    check("103,106", builds=1)  # the fixture's own code changed


def test_editing_an_unrelated_test_does_not_rebuild(suite: Suite) -> None:
    _project(suite)
    suite.run()
    suite.pytester.makepyfile(test_data=TESTS + "\ndef test_new():\n    pass\n")
    (suite.pytester.path / "builds.log").unlink()
    warm = suite.run()
    assert suite.builds() == [], warm.text


def test_warnings_are_replayed_on_hits(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = noisy\n")
    suite.pytester.makeconftest("""
import warnings
import pytest

@pytest.fixture(scope="session")
def noisy():
    import time; time.sleep(0.05)
    warnings.warn("building noisy is deprecated", DeprecationWarning)
    return 1
""")
    suite.pytester.makepyfile("def test_noisy(noisy):\n    assert noisy == 1\n")
    cold = suite.same_as_plain()
    cold.result.stdout.fnmatch_lines(["*building noisy is deprecated*"])
    warm = suite.same_as_plain()
    assert warm.stats is not None and warm.stats["hits_total"] == 1
    warm.result.stdout.fnmatch_lines(["*DeprecationWarning: building noisy is deprecated*"])
    # Under filterwarnings=error the warning fails the setup, loaded or not.
    errors = suite.same_as_plain("-W", "error::DeprecationWarning")
    assert set(errors.outcomes.values()) == {"error"}


def test_strict_config_and_no_warnings_of_its_own(suite: Suite) -> None:
    _project(
        suite,
        ini="statemigrate_fixtures = dataset\nstatemigrate_timeout = 20\n"
        "statemigrate_max_value_bytes = 64M\n",
    )
    run = suite.same_as_plain("--strict-config", "-W", "error")
    assert set(run.outcomes.values()) == {"passed"}
    assert "warnings summary" not in run.text


def test_large_values_are_built_and_said_so(suite: Suite) -> None:
    _project(suite, ini="statemigrate_fixtures = dataset\nstatemigrate_max_value_bytes = 1K\n")
    cold = suite.same_as_plain()
    cold.result.stdout.fnmatch_lines(
        ["built dataset in-process: its value is *over statemigrate_max_value_bytes*"]
    )
    (suite.pytester.path / "builds.log").unlink()
    warm = suite.same_as_plain()
    assert suite.builds().count("dataset") == 2
    warm.result.stdout.fnmatch_lines(["built dataset in-process: *"])


def test_cheap_values_are_built_when_loading_costs_more(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = tiny\n")
    suite.pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session")
def tiny():
    return 1
""")
    suite.pytester.makepyfile("def test_tiny(tiny):\n    assert tiny == 1\n")
    suite.run()
    warm = suite.same_as_plain()
    warm.result.stdout.fnmatch_lines(["built tiny in-process: loading took *, building *"])
    (suite.pytester.path / ".statemigrate" / "esg.sqlite").unlink()  # only the later run's
    later = suite.same_as_plain()
    assert later.stats is not None and later.stats["hits_total"] == 0
    later.result.stdout.fnmatch_lines(["built tiny in-process: loading took *"])
    from pytest_statemigrate.esg import ESGStore

    with ESGStore(suite.pytester.path / ".statemigrate" / "esg.sqlite") as store:
        # built in-process by decision, it is still a state element, named
        assert [e.fixture for e in store.elements()] == ["conftest.py::tiny"]


def test_bad_configuration_is_one_clear_line(suite: Suite) -> None:
    _project(suite, ini="statemigrate_max_value_bytes = lots\n")
    run = suite.run()
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    run.result.stderr.fnmatch_lines(["*statemigrate: bad value for statemigrate_max_value_bytes:*"])
    run = suite.run("--sm-agent", "tcp://10.1.2.3:5555")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    run.result.stderr.fnmatch_lines(["*refusing*10.1.2.3*"])


DECORATED = """
import pytest
from pytest_statemigrate import state

@state
@pytest.fixture(scope="session")
def extra():
    return [1, 2, 3]
"""


@pytest.mark.parametrize(
    ("where", "name"),
    [
        (("--sm-dir=/proc/nope",), "--sm-dir=/proc/nope"),
        (("--sm-dir=/proc/nope", "-n", "2"), "--sm-dir=/proc/nope"),
        ((), "statemigrate_dir = /proc/nope"),
    ],
    ids=["option", "option-n2", "ini"],
)
def test_a_store_directory_that_cannot_be_made_runs_unmanaged(
    suite: Suite, where: tuple[str, ...], name: str
) -> None:
    ini = "statemigrate_fixtures =\n    dataset\n    rows\n"
    _project(suite, ini=ini + ("" if where else "statemigrate_dir = /proc/nope\n"))
    suite.pytester.makepyfile(sm_extra=DECORATED, test_extra="def test_extra(extra):\n    pass\n")
    plain = suite.plain(*where, "-p", "sm_extra")
    plain_builds = suite.builds().count("dataset")
    run = suite.run(*where, "-p", "sm_extra")
    assert run.result.ret == plain.result.ret == pytest.ExitCode.OK, run.text
    assert run.outcomes == plain.outcomes and len(run.outcomes) == 4
    assert "INTERNALERROR" not in run.text and "Traceback" not in run.text
    run.result.stdout.fnmatch_lines(
        [
            f"fallback: {name}: cannot create it (*); name a directory that can be made: "
            "fixtures run unmanaged"
        ]
    )
    assert run.text.count("cannot create it") == 1
    assert suite.builds().count("dataset") == 2 * plain_builds  # built as plain pytest builds


def test_a_stats_file_that_cannot_be_written_is_one_line(suite: Suite) -> None:
    _project(suite)
    suite.pytester.makepyfile(test_fails="def test_fails():\n    assert False\n")
    where = "--sm-stats-json=/proc/nope/stats.json"
    plain = suite.plain(where)
    run = suite.run(where)
    assert run.result.ret == plain.result.ret == pytest.ExitCode.TESTS_FAILED
    assert run.outcomes == plain.outcomes
    assert "Traceback" not in run.text, run.text
    run.result.stdout.fnmatch_lines(
        [f"fallback: {where}: cannot write it (*); name a file in a directory that can be made"]
    )
    (suite.pytester.path / "test_fails.py").unlink()
    run = suite.run(where)
    assert run.result.ret == pytest.ExitCode.OK, run.text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("--sm-fixtures=nomatch",),
            "--sm-fixtures=nomatch matched no fixture the selected tests use; it replaces "
            "statemigrate_fixtures (dataset, rows), whose fixtures run unmanaged",
        ),
        (
            ("--sm-fixtures=nomatch", "-n", "2"),
            "--sm-fixtures=nomatch matched no fixture the selected tests use; it replaces "
            "statemigrate_fixtures (dataset, rows), whose fixtures run unmanaged",
        ),
        (
            ("--sm-fixtures=",),
            "--sm-fixtures is empty: it replaces statemigrate_fixtures (dataset, rows), whose "
            "fixtures run unmanaged",
        ),
        (
            ("--sm-fixtures=dataset,rowz",),
            "--sm-fixtures=dataset,rowz: rowz matched no fixture the selected tests use",
        ),
    ],
    ids=["nomatch", "nomatch-n2", "empty", "one-of-two"],
)
def test_a_fixtures_option_that_selects_nothing_says_so(
    suite: Suite, args: tuple[str, ...], says: str
) -> None:
    _project(suite)
    run = suite.same_as_plain(*args)
    run.result.stdout.fnmatch_lines([says])
    assert run.text.count("matched no fixture") + run.text.count("is empty") == 1, run.text
    assert run.stats is not None and says in run.stats["notes"]
    # Patterns that all match say nothing, nor does the ini list alone.
    for quiet in (("--sm-fixtures=dataset,r*",), ()):
        run = suite.run(*quiet, *args[1:])
        assert "matched no fixture" not in run.text and "is empty" not in run.text, run.text


def test_unreachable_agent_falls_back(suite: Suite) -> None:
    _project(suite, ini="statemigrate_fixtures = dataset\nstatemigrate_timeout = 1\n")
    missing = suite.pytester.path / "nowhere.sock"
    run = suite.same_as_plain("--sm-agent", f"ipc://{missing}")
    assert set(run.outcomes.values()) == {"passed"}
    run.result.stdout.fnmatch_lines(["fallback: agent unavailable*built in-process*"])


@pytest.mark.parametrize("store", ["cold", "warm"])
def test_xdist_builds_each_session_value_once(suite: Suite, store: str) -> None:
    pytest.importorskip("xdist")
    _project(suite, ini="statemigrate_fixtures = dataset\n")
    suite.pytester.makepyfile(
        **{f"test_more{i}": "def test_a(dataset):\n    assert dataset\n" * 1 for i in range(6)}
    )
    if store == "warm":
        suite.run()
    (suite.pytester.path / "builds.log").unlink(missing_ok=True)
    plain = suite.plain("-n", "2")
    assert suite.builds().count("dataset") == 2  # plain pytest builds it in each worker
    (suite.pytester.path / "builds.log").unlink()
    run = suite.run("-n", "2")
    assert run.outcomes == plain.outcomes, run.text
    assert suite.builds().count("dataset") == (1 if store == "cold" else 0), run.text
    assert run.stats is not None and run.stats["managed"] == ["dataset"]
    assert len(run.stats["worker_saved_seconds"]) == 2, run.stats  # one per worker
    if store == "warm" and run.stats["net_saved_seconds"] >= 0:
        assert "of building across 2 workers" in run.text, run.text


def test_same_names_told_apart_and_parametrize_names_ignored(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = *\n")
    suite.pytester.makeconftest(CONFTEST.replace("def dataset():", "def data():"))
    suite.pytester.makepyfile(
        test_a="""
import pytest

@pytest.fixture
def data(tmp_path):
    return str(tmp_path)

def test_a(data):
    assert data
""",
        test_b="def test_b(data):\n    assert data['name'] == 'data'\n",
        test_c="""
import pytest

@pytest.mark.parametrize("data", [[0]])
def test_c(data):
    assert data == [0]
""",
    )
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines_random(
        [
            "managed fixtures: 1 (data (conftest.py))",
            "refused data (test_a.py): depends on tmp_path, a fixture of pytest*",
        ]
    )
    assert "test_c" not in run.text.split("statemigrate")[-1]
    assert "get_direct_param" not in run.text


def test_values_that_do_not_unpickle_are_refused(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures = odd\n")
    suite.pytester.makeconftest("""
import time
import pytest

class Odd:
    def __init__(self):
        self.items = []

    def __getattr__(self, name):
        return lambda *args: None

@pytest.fixture(scope="session")
def odd():
    time.sleep(0.05)
    return Odd()
""")
    suite.pytester.makepyfile("def test_odd(odd):\n    assert odd.items == []\n")
    suite.same_as_plain()
    warm = suite.same_as_plain()
    warm.result.stdout.fnmatch_lines(["refused odd: its value does not survive pickling*"])
    assert "fallback" not in warm.text
    later = suite.same_as_plain()
    later.result.stdout.fnmatch_lines(["refused odd: its value does not survive pickling*"])
    assert later.stats is not None and later.stats["bytes_stored"] == 0


def test_a_refused_param_does_not_lend_its_key_to_dependents(suite: Suite) -> None:
    """The second param of ``codec`` cannot be keyed: ``box`` for it must not load the first's."""
    suite.pytester.makeconftest("""
import pickle, time
import pytest

class Box:
    def __init__(self, kind):
        self.kind = kind

@pytest.fixture(params=["json", pickle])
def codec(request):
    return request.param

@pytest.fixture
def box(codec):
    time.sleep(0.02)
    return Box(codec if isinstance(codec, str) else codec.__name__)
""")
    suite.pytester.makepyfile("""
def test_box(box, codec):
    assert box.kind == (codec if isinstance(codec, str) else codec.__name__)
""")
    for _ in range(2):  # cold, warm
        run = suite.same_as_plain("--sm-fixtures=*")
        assert set(run.outcomes.values()) == {"passed"}
    run.result.stdout.fnmatch_lines(["*depends on codec, which runs unmanaged*"])


def test_side_effect_fixtures_are_refused(suite: Suite) -> None:
    """A fixture that returns None, or returns the module-level object it resets, works by its
    side effects; a loaded value would skip them."""
    suite.pytester.makepyfile(app="STATE = {}\nLOG = []\n")
    suite.pytester.makeconftest("""
import time
import pytest
import app

@pytest.fixture
def fresh_state():
    time.sleep(0.02)
    app.STATE.clear()
    return app.STATE

@pytest.fixture
def reset_log():
    time.sleep(0.02)
    app.LOG.clear()
""")
    suite.pytester.makepyfile("""
import app

def test_a(fresh_state, reset_log):
    assert fresh_state == {} and app.LOG == []
    fresh_state["x"] = 1
    app.LOG.append(1)

def test_b(fresh_state, reset_log):
    assert fresh_state == {} and app.LOG == []
    fresh_state["y"] = 2
    app.LOG.append(2)
""")
    for _ in range(2):  # cold, warm
        run = suite.same_as_plain("--sm-fixtures=fresh_state,reset_log")
        assert set(run.outcomes.values()) == {"passed"}
    assert run.stats is not None and run.stats["hits_total"] == 0
    run.result.stdout.fnmatch_lines(["*fresh_state*returns the module-level object app.STATE*"])
    run.result.stdout.fnmatch_lines(["*reset_log*returns None: it runs for its side effects*"])
    assert "managed fixtures: 0" in run.result.stdout.str()  # both refused: none managed


def test_fixtures_made_by_one_factory_get_their_own_values(suite: Suite) -> None:
    """One function under several names (and one name in two modules): several fixtures."""
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    table_*\n    local\n"
    )
    suite.pytester.makeconftest("""
import time
import pytest

def make(name, size):
    @pytest.fixture(scope="module", name=name)
    def fixture():
        time.sleep(0.05)
        return {"name": name, "rows": list(range(size))}
    return fixture

table_a = make("table_a", 10)
table_b = make("table_b", 20)
""")
    suite.pytester.makepyfile(
        test_one="""
from conftest import make
local = make("local", 1)

def test_tables(table_a, table_b, local):
    assert (table_a["name"], len(table_b["rows"]), len(local["rows"])) == ("table_a", 20, 1)
""",
        test_two="""
from conftest import make
local = make("local", 2)

def test_local(local):
    assert len(local["rows"]) == 2
""",
    )
    cold = suite.same_as_plain()
    warm = suite.same_as_plain()
    assert cold.stats is not None and cold.stats["builds"] == 4
    assert warm.stats is not None and warm.stats["builds"] == 0
    assert warm.stats["hits_total"] == 4


def test_a_value_derived_from_a_rebuilt_dependency_is_rebuilt(suite: Suite) -> None:
    """What a value derived from its dependency (an id, a length) is only right for the
    instance it was made from: when the dependency is built again (it is cheaper to build
    than to load, or its data file changed), so is the dependent."""
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n"
        "    user\n    serialized\n    data\n    summary\n"
    )
    suite.pytester.makeconftest("""
import time
import uuid
from pathlib import Path
import pytest

@pytest.fixture
def user():
    return {"uid": str(uuid.uuid4())}  # cheap: built rather than loaded, a new id each time

@pytest.fixture
def serialized(user):
    time.sleep(0.05)
    return "uid=" + user["uid"]

@pytest.fixture(scope="session")
def data():
    return (Path(__file__).parent / "data.txt").read_text()

@pytest.fixture(scope="session")
def summary(data):
    time.sleep(0.05)
    return len(data)
""")
    suite.pytester.makepyfile(
        "from pathlib import Path\n\n"
        + "".join(
            f"def test_{i}(serialized, user):\n    assert serialized == 'uid=' + user['uid']\n\n"
            for i in range(4)
        )
        + "def test_summary(summary):\n"
        "    assert summary == len((Path(__file__).parent / 'data.txt').read_text())\n"
    )
    data = suite.pytester.path / "data.txt"
    data.write_text("short")
    suite.same_as_plain()
    suite.same_as_plain()
    data.write_text("a good deal longer")
    run = suite.same_as_plain()
    assert run.stats is not None and run.stats["stale"] == {"data": "data.txt changed"}
