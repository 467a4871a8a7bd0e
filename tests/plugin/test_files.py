"""Files a fixture builds with ``tmp_path_factory`` are stored with its value (issue 12).

Each suite here records, from inside its tests, what the fixtures' directories hold (every
path, its kind, mode, bytes or link target) and where they are; the runs are compared with
plain pytest's, cold, warm and ``-n 2``. A served tree must equal the built one, lie in this
session's temporary directory, and be a copy of its own: a test that changes its module's copy
leaves the next module's and the next session's alone.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Suite

pytestmark = pytest.mark.timeout(600)

CONFTEST = '''
import json, os, sqlite3, stat, time
from pathlib import Path
import pytest

HERE = Path(__file__).parent
# Opened before any build: a build that opened it would write outside its directories.
LOG = open(HERE / "builds.log", "a", buffering=1)

def log(what):
    LOG.write(what + "\\n")

def tree(root):
    """Every path below root: kind, mode, and bytes or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ["l", os.readlink(full).replace(str(root), "<root>")]
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ["d", oct(stat.S_IMODE(st.st_mode))]
            else:
                out[rel] = ["f", oct(stat.S_IMODE(st.st_mode)), Path(full).read_bytes().hex(),
                            st.st_nlink]
    return out

def note(name, root, tmp_path_factory):
    """What this session's test saw: the tree, and whether it lies in this session."""
    base = tmp_path_factory.getbasetemp()
    with open(HERE / f"seen-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl", "a") as fh:
        fh.write(json.dumps({"name": name, "tree": tree(root), "here": str(root),
                             "fresh": Path(root).is_relative_to(base)}) + "\\n")

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    log("dataset")
    d = tmp_path_factory.mktemp("data")
    (d / "table.csv").write_text("x,y\\n1,2\\n3,4\\n")
    (d / "nested" / "deeper").mkdir(parents=True)
    (d / "nested" / "deeper" / "blob.bin").write_bytes(bytes(range(256)) * 40)
    (d / "nested" / "same.bin").write_bytes(bytes(range(256)) * 40)  # same content
    run = d / "run.sh"
    run.write_text("#!/bin/sh\\necho hi\\n")
    run.chmod(0o755)
    ro = d / "frozen.txt"
    ro.write_text("read only")
    ro.chmod(0o444)
    os.symlink("table.csv", d / "link.csv")
    os.symlink(d / "nested", d / "abs-link")  # absolute, into the tree
    os.link(d / "table.csv", d / "hard.csv")
    time.sleep(0.1)
    return d

@pytest.fixture(scope="session")
def db_url(tmp_path_factory):
    log("db_url")
    d = tmp_path_factory.mktemp("db", numbered=False)
    con = sqlite3.connect(d / "app.sqlite")
    con.execute("create table t (v)")
    con.executemany("insert into t values (?)", [(i,) for i in range(100)])
    con.commit()
    con.close()
    time.sleep(0.1)
    return f"sqlite:///{d / 'app.sqlite'}"

@pytest.fixture(scope="module")
def index(dataset):
    """A dependent that holds paths into its dependency's directory, as Path and as str."""
    log("index")
    time.sleep(0.05)
    return {"table": dataset / "table.csv", "blob": str(dataset / "nested/deeper/blob.bin"),
            "rows": len((dataset / "table.csv").read_text().splitlines())}

@pytest.fixture(scope="session")
def legacy(tmpdir_factory):
    """py.path, through tmpdir_factory."""
    log("legacy")
    d = tmpdir_factory.mktemp("old")
    d.join("f.txt").write("legacy")
    time.sleep(0.05)
    return d
'''

MODULE = '''
import os, sqlite3
from pathlib import Path
from conftest import note

def test_dataset(dataset, tmp_path_factory):
    note("dataset", dataset, tmp_path_factory)
    assert (dataset / "table.csv").read_text() == "x,y\\n1,2\\n3,4\\n"
    assert os.access(dataset / "run.sh", os.X_OK)
    assert os.readlink(dataset / "link.csv") == "table.csv"
    assert os.readlink(dataset / "abs-link") == str(dataset / "nested")
    assert os.path.samefile(dataset / "table.csv", dataset / "hard.csv")
    assert dataset.name.startswith("data")

def test_changes_its_copy(dataset):
    (dataset / "table.csv").write_text("changed")
    (dataset / "nested" / "same.bin").unlink()
    (dataset / "new.txt").write_text("new")

def test_sees_the_change(dataset):
    assert (dataset / "table.csv").read_text() == "changed"

def test_db(db_url, tmp_path_factory):
    path = db_url.removeprefix("sqlite:///")
    note("db", Path(path).parent, tmp_path_factory)
    con = sqlite3.connect(path)
    assert con.execute("select count(*) from t").fetchone() == (100,)
    con.close()

def test_index(index, dataset):
    """Set up after test_changes_its_copy changed the table (unless deselected)."""
    assert index["table"].parent == dataset
    assert Path(index["blob"]).read_bytes()[:3] == bytes([0, 1, 2])
    assert index["rows"] == 1

def test_legacy(legacy, tmp_path_factory):
    note("legacy", Path(legacy), tmp_path_factory)
    assert legacy.join("f.txt").read() == "legacy"
'''

SELECTION = "--sm-fixtures=dataset,db_url,index,legacy"


def _project(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_one=MODULE, test_two=MODULE)


def _seen(suite: Suite) -> list[dict[str, object]]:
    """What the tests saw, then forget it for the next run."""
    out: list[dict[str, object]] = []
    for path in sorted(suite.pytester.path.glob("seen-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
        path.unlink()
    return out


def _trees(seen: list[dict[str, object]]) -> dict[str, object]:
    trees = {str(s["name"]): s["tree"] for s in seen}
    assert all(s["fresh"] for s in seen), seen  # in this session's temporary directory
    return trees


def _managed(suite: Suite, *args: str) -> tuple[list[dict[str, object]], list[str], object]:
    """A plain run, then the same with the plugin: the same outcomes; what the plugin run's
    tests saw, and what it built."""
    plain = suite.plain(*args)
    _seen(suite)
    (suite.pytester.path / "builds.log").unlink(missing_ok=True)
    run = suite.run(SELECTION, *args)
    assert run.outcomes == plain.outcomes, run.text
    return _seen(suite), suite.builds(), run


def test_built_files_are_served_as_built(suite: Suite) -> None:
    _project(suite)
    plain = suite.plain()
    assert set(plain.outcomes.values()) == {"passed"}, plain.text
    built = _trees(_seen(suite))

    seen, builds, cold = _managed(suite)
    assert _trees(seen) == built
    assert sorted(builds) == ["dataset", "db_url", "index", "legacy"], cold
    places: set[str] = set()
    for _ in range(2):
        seen, builds, warm = _managed(suite)
        assert _trees(seen) == built, warm  # paths, bytes, modes, links
        assert builds == [], warm  # every value and its files served
        # Each module and each session has a copy of its own.
        places |= {str(s["here"]) for s in seen if s["name"] == "dataset"}
    assert len(places) == 4, places
    for _ in range(2):
        seen, builds, _run = _managed(suite, "-n", "2", "--dist", "loadfile")
        assert _trees(seen) == built


def test_a_dependent_follows_changes_to_the_files(suite: Suite) -> None:
    """``index`` reads ``dataset``'s table when it is set up: after a test changed the table
    it counts 1 row; with that test deselected, 3 (and test_index fails, as in plain pytest).
    A stored ``index`` built from one state of the files never serves the other."""
    _project(suite)
    unchanged = {
        f"{m}::{t}"
        for m in ("test_one.py", "test_two.py")
        for t in ("test_index", "test_sees_the_change")
    }
    loadfile = ["-n", "2", "--dist", "loadfile"]
    for args in ([], ["-k", "not changes"], [], ["-k", "not changes"], loadfile):
        run = suite.same_as_plain(SELECTION, *args)
        failed = {k for k, v in run.outcomes.items() if v == "failed"}
        assert failed == (unchanged if "-k" in args else set()), run.text


REFUSING = '''
import os, tempfile
from pathlib import Path
import pytest

OPEN = []

@pytest.fixture(scope="session")
def outside(tmp_path_factory, elsewhere):
    d = tmp_path_factory.mktemp("o")
    (elsewhere / "stray.txt").write_text("x")
    return d

@pytest.fixture(scope="session")
def elsewhere():
    return Path(tempfile.mkdtemp())

@pytest.fixture(scope="session")
def keeps_open(tmp_path_factory):
    d = tmp_path_factory.mktemp("k")
    OPEN.append(open(d / "log.txt", "w"))
    return d

@pytest.fixture(scope="session")
def in_basetemp(tmp_path_factory):
    mine = tmp_path_factory.getbasetemp() / "mine"
    mine.mkdir()
    return mine

@pytest.fixture(scope="session")
def as_bytes(tmp_path_factory):
    return str(tmp_path_factory.mktemp("b")).encode()

@pytest.fixture(scope="session")
def fifo(tmp_path_factory):
    d = tmp_path_factory.mktemp("p")
    os.mkfifo(d / "pipe")
    return d

@pytest.fixture(scope="session")
def maker(tmp_path_factory):
    return tmp_path_factory.mktemp("m")

@pytest.fixture(scope="session")
def through_maker(maker):
    return maker / "x"

@pytest.fixture
def per_test(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path

@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """Scratch files removed before it returns are no side effect: served."""
    d = tmp_path_factory.mktemp("s")
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(b"x")
    (d / "kept").write_text("kept")
    return d
'''

REFUSING_TESTS = """
def test_outside(outside, elsewhere):
    assert (elsewhere / "stray.txt").read_text() == "x"

def test_keeps_open(keeps_open):
    assert (keeps_open / "log.txt").exists()

def test_in_basetemp(in_basetemp):
    assert in_basetemp.is_dir()

def test_as_bytes(as_bytes):
    assert as_bytes.startswith(b"/")

def test_fifo(fifo):
    assert (fifo / "pipe").exists()

def test_through_maker(through_maker):
    assert through_maker.name == "x"

def test_per_test(per_test):
    assert (per_test / "f").read_text() == "x"

def test_scratch(scratch):
    assert (scratch / "kept").read_text() == "kept"
"""

REFUSALS = [
    "refused outside: writes */stray.txt outside the directories it made with "
    "tmp_path_factory.mktemp: a loaded value would not write it*",
    "refused keeps_open: keeps */k0/log.txt open when it returns*",
    "refused in_basetemp: writes */mine outside the directories it made*",
    "refused as_bytes: its value holds the path * in bytes*",
    "refused fifo: it made */pipe, a special file that cannot be stored*",
    "refused through_maker: depends on maker, which makes files with tmp_path_factory and "
    "is not managed: manage maker too*",
    "refused per_test: depends on tmp_path, a fixture of pytest*",
]


def test_files_that_cannot_be_served_are_refused_with_the_reason(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\n")
    suite.pytester.makeconftest(REFUSING)
    suite.pytester.makepyfile(test_refusing=REFUSING_TESTS)
    opt = (
        "--sm-fixtures=outside,keeps_open,in_basetemp,as_bytes,fifo,through_maker,per_test,scratch"
    )
    for _ in range(2):  # cold, then warm: the refusals are stored with the key
        run = suite.same_as_plain(opt, "-rA")
        assert set(run.outcomes.values()) == {"passed"}, run.text
        run.result.stdout.fnmatch_lines_random(REFUSALS)
        assert run.stats is not None
        assert set(run.stats["managed"]) == {"scratch"}, run.text
    assert run.stats["hits_total"] == 1


def test_files_over_the_value_limit_are_refused(suite: Suite) -> None:
    """A tree over statemigrate_max_value_bytes is not read, with the reason."""
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_max_value_bytes = 2M\n")
    suite.pytester.makeconftest(
        """
import pytest
@pytest.fixture(scope="session")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    (d / "a.bin").write_bytes(b"x" * 3 * 2**20)
    return d
"""
    )
    suite.pytester.makepyfile("def test_big(big):\n    assert (big / 'a.bin').stat().st_size\n")
    run = suite.same_as_plain("--sm-fixtures=big")
    run.result.stdout.fnmatch_lines(["refused big: the files it made are over 2 MiB*"])
