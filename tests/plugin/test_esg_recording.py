"""The execution state graph recorded by real runs: reads, writes, unmanaged setups, xdist."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pytest_statemigrate.esg import ESGStore
from tests.conftest import Suite

CONFTEST = """
import time
import pytest

@pytest.fixture(scope="session")
def corpus():
    return ["alpha", "beta", "gamma"]

@pytest.fixture(scope="module", params=[1, 2], ids=["one", "two"])
def table(request):
    return {"n": request.param}

@pytest.fixture(scope="session")
def slow_plain():
    time.sleep(0.06)
    return {"answer": 42}

@pytest.fixture
def cheap():
    return 1
"""

TESTS = """
def test_reads_corpus(corpus):
    assert corpus[0] == "alpha"

def test_appends(corpus):
    corpus.append("delta")
    assert corpus[-1] == "delta"

def test_sees_the_append(corpus):
    assert corpus[-1] == "delta"

def test_table(table, slow_plain):
    assert table["n"] in (1, 2) and slow_plain["answer"] == 42

def test_dynamic(request, cheap):
    assert request.getfixturevalue("corpus")[1] == "beta"

def test_nothing():
    pass
"""


def make(suite: Suite) -> None:
    suite.pytester.makeini("[pytest]\nstatemigrate_fixtures =\n    corpus\n    table\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_esg=TESTS)


def accesses(path: Path) -> tuple[dict[str, set[tuple[str, str]]], dict[str, str]]:
    """test name → {(fixture label, mode)} of the last session; key → label."""
    with ESGStore(path / ".statemigrate" / "esg.sqlite") as store:
        graph = store.to_networkx()
        labels = {key: str(data["fixture"]) for key, data in graph.nodes(data=True)}
        record = store.last_session()
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for access in record.accesses:
        found[access.test.rsplit("::", 1)[-1]].add((labels[access.element], access.mode))
    return found, labels


EXPECTED = {
    "test_reads_corpus": {("conftest.py::corpus", "read")},
    "test_appends": {("conftest.py::corpus", "read"), ("conftest.py::corpus", "write")},
    "test_sees_the_append": {("conftest.py::corpus", "read")},
    "test_table[one]": {("conftest.py::table[one]", "read")},
    "test_table[two]": {("conftest.py::table[two]", "read")},
    "test_dynamic": {("conftest.py::corpus", "read")},
}


@pytest.mark.parametrize("args", [(), ("-n", "2", "-p", "xdist")], ids=["one-process", "n2"])
def test_reads_and_writes_are_recorded(suite: Suite, args: tuple[str, ...]) -> None:
    make(suite)
    # -p no:randomly and a fixed order: the write and the test that sees it stay in one worker
    order = ("--dist", "loadfile") if args else ()
    suite.same_as_plain(*args, *order)
    found, labels = accesses(suite.pytester.path)
    assert dict(found) == EXPECTED
    assert sorted(labels.values()) == [
        "conftest.py::corpus",
        "conftest.py::table[one]",
        "conftest.py::table[two]",
    ]


def test_graph_and_unmanaged_setups(suite: Suite) -> None:
    make(suite)
    suite.same_as_plain()
    suite.same_as_plain()  # warm: the values are loaded, and recorded again
    with ESGStore(suite.pytester.path / ".statemigrate" / "esg.sqlite") as store:
        assert len(store.sessions()) == 2
        graph = store.to_networkx()
        corpus = next(k for k, d in graph.nodes(data=True) if d["fixture"].endswith("corpus"))
        data = graph.nodes[corpus]
        assert data["bytes"] > 0 and data["build_s"] >= 0 and data["load_s"] >= 0
        assert data["writes"] == 2  # test_appends, once per session
        assert graph.number_of_edges() == 0  # no test uses two managed elements
        setups = {s.fixture: s for s in store.suggestions()}
    slow = setups["conftest.py::slow_plain"]
    assert slow.scope == "session" and slow.tests == 2 and slow.picklable is True
    assert slow.seconds >= 0.05


def test_nothing_is_recorded_when_nothing_is_managed(suite: Suite) -> None:
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_esg=TESTS)
    suite.same_as_plain()
    assert not (suite.pytester.path / ".statemigrate").exists()
    suite.run("--sm-record")
    with ESGStore(suite.pytester.path / ".statemigrate" / "esg.sqlite") as store:
        names = {s.fixture for s in store.suggestions()}
    assert "conftest.py::slow_plain" in names


def test_the_statemigrate_command_reads_the_esg(
    suite: Suite, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pytest_statemigrate.cli import main

    make(suite)
    suite.run()
    store = str(suite.pytester.path / ".statemigrate")
    assert main(["esg", "--dir", store]) == 0
    out = capsys.readouterr().out
    assert "1 session(s) kept, 3 element(s)" in out and "conftest.py::table[two]" in out
    assert main(["partitions", "--dir", store]) == 0
    assert "1 partition(s)" in capsys.readouterr().out  # 3 small elements: one partition
    assert main(["suggest", "--dir", store]) == 0
    out = capsys.readouterr().out
    assert "conftest.py::slow_plain" in out
    assert "\nstatemigrate_fixtures =\n    slow_plain\n" in out  # ready to paste
    picture = tmp_path / "esg.json"
    assert main(["graph", "--dir", store, "--format", "json", "-o", str(picture)]) == 0
    assert picture.read_text().count('"partition": 0') == 3
    capsys.readouterr()

    # A second shard's ESG, merged into this one: its session is added once.
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "esg.sqlite").write_bytes((Path(store) / "esg.sqlite").read_bytes())
    suite.run()
    assert main(["merge", "--dir", str(shard), store + "/esg.sqlite"]) == 0
    assert "1 session(s) merged" in capsys.readouterr().out
    assert main(["merge", "--dir", str(shard), store + "/esg.sqlite"]) == 0
    assert "0 session(s) merged" in capsys.readouterr().out
    assert main(["partition", "--dir", str(shard), "--partition-bytes", "1"]) == 0
    assert "3 partition(s) saved" in capsys.readouterr().out

    assert main(["esg", "--dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("statemigrate esg: no execution state graph at") and "\n" not in err


def test_recording_trouble_never_changes_an_outcome(suite: Suite) -> None:
    make(suite)
    # A fault that real values cannot produce: the recorder itself breaks.
    suite.pytester.makepyfile(
        sm_break="""
from pytest_statemigrate import recorder

def broken(*args, **kwargs):
    raise RuntimeError("recorder broke")

recorder.AccessRecorder.after_test = broken
recorder.AccessRecorder.unmanaged_setup = broken
"""
    )
    run = suite.same_as_plain("-p", "sm_break")
    run.result.stdout.fnmatch_lines(
        ["*fallback*could not record a test's state accesses (RuntimeError('recorder broke'))*"]
    )


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("-n", "2", "-p", "xdist", "--dist", "loadfile"),
    ],  # (the write and its reader: one worker)
    ids=["one-process", "n2"],
)
def test_a_corrupt_esg_file_is_moved_aside_and_the_summary_says_so_once(
    suite: Suite, args: tuple[str, ...]
) -> None:
    make(suite)
    suite.run(*args)
    store = suite.pytester.path / ".statemigrate"
    garbage = b"this is not a database" * 100
    (store / "esg.sqlite").write_bytes(garbage)
    # The run's first open moves it: planning the prefetches, in a worker under -n 2; the
    # session is recorded, and the summary written, at the end (by xdist's controller).
    run = suite.same_as_plain(*args)
    notice = "fallback: the ESG store */esg.sqlite is not a readable database (*); moved it to "
    notice += "esg.sqlite.bad and started a new one"
    run.result.stdout.fnmatch_lines([notice])
    assert run.text.count("esg.sqlite.bad") == 1, run.text
    assert (store / "esg.sqlite.bad").read_bytes() == garbage
    with ESGStore(store / "esg.sqlite") as esg:
        assert len(esg.sessions()) == 1  # the run that found it recorded itself anew
    again = suite.run(*args)
    assert "esg.sqlite.bad" not in again.text, again.text


def test_the_spectral_partitioner_without_its_extra_is_one_line(
    suite: Suite, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``statemigrate_partitioner = spectral`` where scipy is not installed (its import fails,
    as it does without the ``spectral`` extra): one summary line names the extra, and METIS
    partitions the ESG; the CLI says the same in one line and exits 2."""
    from pytest_statemigrate.cli import main

    suite.pytester.makeini(
        "[pytest]\nstatemigrate_fixtures =\n    corpus\n    table\n"
        "statemigrate_partitioner = spectral\nstatemigrate_partition_bytes = 1\n"
    )
    suite.pytester.makeconftest("import sys\nsys.modules['scipy'] = None\n" + CONFTEST)
    suite.pytester.makepyfile(test_esg=TESTS)
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines(
        [
            "fallback: statemigrate_partitioner = spectral: the spectral partitioner needs numpy "
            "and scipy: pip install 'pytest-statemigrate[spectral]'; METIS partitions"
        ]
    )
    store = str(suite.pytester.path / ".statemigrate")
    assert main(["partitions", "--dir", store]) == 0
    assert "3 partition(s)" in capsys.readouterr().out  # 1-byte partitions: one per element
    monkeypatch.setitem(sys.modules, "scipy", None)
    code = main(
        ["partition", "--dir", store, "--partitioner", "spectral", "--partition-bytes", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("statemigrate partition: the spectral partitioner needs")
    assert "\n" not in err
