"""pytest_statemigrate.esg: records, the SQLite store, its schema, the graph, partitions."""

from __future__ import annotations

import json
import multiprocessing
import socket
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import closing
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_statemigrate.esg import (
    Access,
    Element,
    ESGError,
    ESGStore,
    FixtureSetup,
    SessionRecord,
    Suggestion,
)
from pytest_statemigrate.esg import store as esg


def rec(
    uid: str,
    started: float,
    uses: Mapping[str, str],
    writes: Mapping[str, str] | None = None,
    builds: Mapping[str, float] | None = None,
    loads: Mapping[str, float] | None = None,
) -> SessionRecord:
    """A session in which each test reads the elements named by the letters of ``uses[test]``.

    Element ``a`` is 100 bytes, ``b`` 200 and so on; its fixture label is ``c.py::a``.
    """
    builds, loads = builds or {}, loads or {}
    record = SessionRecord(uid, started, "host")
    for test, keys in uses.items():
        for key in keys:
            size = (ord(key) - ord("a") + 1) * 100
            record.element(key, f"c.py::{key}", "session", size, builds.get(key), loads.get(key))
            record.read(test, key)
    for test, keys in (writes or {}).items():
        for key in keys:
            record.write(test, key)
    return record


def sql(path: Path, query: str) -> list[Any]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(query).fetchall()


# --------------------------------------------------------------------------- records


def test_recording_and_merging_keep_what_is_known() -> None:
    main = SessionRecord("run", 1.0, "ctl")
    main.element("k1", "c.py::m", "session", 100, build_s=2.0)
    main.element("k1", "c.py::m", "session", 100, load_s=0.1)  # the build time stays
    main.read("t1", "k1")
    main.write("t1", "k1")
    main.setup("c.py::db", "function", 0.5, picklable=True)
    main.use("c.py::db", "function")
    worker = SessionRecord("gw0", 2.0, "box")
    worker.element("k1", "", "", 120, build_s=3.0)
    worker.element("k2", "c.py::n", "module", 5)
    worker.read("t1", "k1")  # the same access: united
    worker.read("t2", "k2")
    worker.setup("c.py::db", "function", 0.25, picklable=False)
    worker.setup("c.py::db", "function", 0.25)
    worker.use("c.py::db", "function")
    worker.use("c.py::db", "function")

    main.merge(SessionRecord.from_json(json.loads(json.dumps(worker.to_json()))))

    assert (main.id, main.started, main.host) == ("run", 1.0, "ctl")
    assert main.elements == {
        "k1": Element("k1", "c.py::m", "session", 120, 3.0, 0.1),
        "k2": Element("k2", "c.py::n", "module", 5),
    }
    assert main.accesses == [
        Access("t1", "k1", "read"),
        Access("t1", "k1", "write"),
        Access("t2", "k2", "read"),
    ]
    assert main.setups == {"c.py::db": FixtureSetup("c.py::db", "function", 1.0, 3, 3, False)}


def test_new_record_is_this_host_now() -> None:
    before = time.time()
    record = SessionRecord.new()
    assert record.host == socket.gethostname() and before <= record.started <= time.time()
    assert len(record.id) == 32 and record.id != SessionRecord.new().id


labels = st.text(max_size=12)
seconds = st.floats(min_value=0, max_value=1e6)


@st.composite
def records(draw: st.DrawFn) -> SessionRecord:
    record = SessionRecord(draw(labels), draw(seconds), draw(labels))
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["element", "read", "write", "setup", "use"]))
        key, test, fixture = draw(labels), draw(labels), draw(labels)
        if kind == "element":
            timings = st.none() | seconds
            record.element(key, fixture, "session", draw(st.integers(0, 2**40)), draw(timings))
        elif kind in ("read", "write"):
            getattr(record, kind)(test, key)
        elif kind == "setup":
            record.setup(fixture, "module", draw(seconds), draw(st.none() | st.booleans()))
        else:
            record.use(fixture, "module")
    return record


@given(records())
def test_json_round_trip(record: SessionRecord) -> None:
    assert SessionRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


# --------------------------------------------------------------------------- schema


def test_a_new_store_has_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sm" / "esg.sqlite"
    with ESGStore(path) as store:
        assert store.notice is None
    assert sql(path, "PRAGMA user_version") == [(len(esg.MIGRATIONS),)]
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def _newer(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {len(esg.MIGRATIONS) + 1}")


def _foreign(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text)")


def _damaged(path: Path) -> None:
    ESGStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE runs")


@pytest.mark.parametrize(
    ("spoil", "suffix", "reason"),
    [
        (_garbage, "bad", "is not a readable database"),
        (_newer, "new", "newer than this plugin's"),
        (_foreign, "bad", "is not an ESG store"),
        (_damaged, "bad", "lacks the tables runs"),
    ],
)
def test_an_unusable_file_is_moved_aside_and_rebuilt(
    tmp_path: Path, spoil: Any, suffix: str, reason: str
) -> None:
    path = tmp_path / "esg.sqlite"
    spoil(path)
    spoiled = path.read_bytes()
    with ESGStore(path) as store:
        assert store.notice is not None
        assert reason in store.notice and f"moved it to esg.sqlite.{suffix}" in store.notice
        assert store.add_session(rec("s", 1.0, {"t": "ab"}))
        assert [s.id for s in store.sessions()] == ["s"]
    assert (tmp_path / f"esg.sqlite.{suffix}").read_bytes() == spoiled


def test_the_notice_outlives_the_store_that_moved_the_file(tmp_path: Path) -> None:
    """A run's first open plans (and drops its store); the one that records the session
    reports the line, once."""
    path = tmp_path / "esg.sqlite"
    _garbage(path)
    with ESGStore(path) as planning:
        line = planning.notice
    assert line is not None and "moved it to esg.sqlite.bad" in line
    with ESGStore(path) as recording:
        assert recording.notice == line
        recording.add_session(rec("s", 1.0, {"t": "ab"}))
    with ESGStore(path) as next_run:
        assert next_run.notice is None
    assert not (tmp_path / "esg.sqlite.notice").exists()


def test_a_file_another_process_replaced_meanwhile_is_not_moved_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes find the file bad at once; the first moves it and starts a new store.
    The second, which read the old file, checks again under the directory's lock and opens
    the new one. (The race cannot be timed for real: the first read is made to fail.)"""
    path = tmp_path / "esg.sqlite"
    with ESGStore(path) as store:
        store.add_session(rec("s", 1.0, {"t": "ab"}))
    real = ESGStore._open
    calls: list[int] = []

    def stale_first_read(self: ESGStore) -> sqlite3.Connection:
        calls.append(1)
        if len(calls) == 1:
            raise esg._Unusable("is not a readable database (file is not a database)", "bad")
        return real(self)

    monkeypatch.setattr(ESGStore, "_open", stale_first_read)
    with ESGStore(path) as store:
        assert store.notice is None and [s.id for s in store.sessions()] == ["s"]
    assert len(calls) == 2 and not (tmp_path / "esg.sqlite.bad").exists()


def test_an_older_schema_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "esg.sqlite"
    with ESGStore(path) as store:
        store.add_session(rec("s", 1.0, {"t": "ab"}))
    step = ("ALTER TABLE sessions ADD COLUMN note TEXT", "UPDATE sessions SET note = 'v2'")
    monkeypatch.setattr(esg, "MIGRATIONS", (*esg.MIGRATIONS, step))
    with ESGStore(path) as store:
        assert store.notice is None
        assert [s.id for s in store.sessions()] == ["s"]
        assert store.to_networkx().edges["a", "b"]["weight"] == 1
    assert sql(path, "PRAGMA user_version") == [(len(esg.MIGRATIONS),)]
    assert sql(path, "SELECT uid, note FROM sessions") == [("s", "v2")]


def test_a_locked_store_is_an_error_not_a_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "esg.sqlite"
    with ESGStore(path) as store:
        store.add_session(rec("s", 1.0, {"t": "ab"}))
    monkeypatch.setattr(esg, "BUSY_TIMEOUT_S", 0.05)
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ESGError, match="database is locked"):
            ESGStore(path)
        other.execute("ROLLBACK")
    with ESGStore(path) as store:
        assert store.notice is None and [s.id for s in store.sessions()] == ["s"]


def test_history_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history must be at least 1"):
        ESGStore(tmp_path / "esg.sqlite", history=0)


# --------------------------------------------------------------------------- sessions


def test_add_session_says_when_the_graph_changed(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        assert store.generation() == 0 and not store.needs_partitioning()
        assert store.add_session(rec("s1", 1.0, {"t1": "ab", "t2": "c"}))
        assert store.generation() == 1 and store.needs_partitioning()
        # The same sets of elements again (t3 alone with c adds no pair): nothing to re-partition.
        assert not store.add_session(rec("s2", 2.0, {"t1": "ab", "t3": "c"}, {"t1": "a"}))
        assert not store.add_session(rec("s2", 2.0, {"t9": "xyz"}))  # a stored id: skipped
        assert store.generation() == 1 and len(store.sessions()) == 2
        assert store.add_session(rec("s3", 3.0, {"t1": "ac"}))  # a new pair
        assert store.add_session(rec("s4", 4.0, {"t4": "d"}))  # a new element
        assert store.generation() == 3


def test_history_is_bounded_and_unused_rows_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "esg.sqlite"
    with ESGStore(path, history=2) as store:
        old = rec("old", 1.0, {"t_old": "xy"})
        old.setup("c.py::db", "function", 1.0)
        store.add_session(old)
        store.add_session(rec("mid", 2.0, {"t_mid": "y"}))
        assert store.add_session(rec("new", 3.0, {"t_new": "yz"}))
        assert [s.id for s in store.sessions()] == ["mid", "new"]
        assert [e.key for e in store.elements()] == ["y", "z"]
        assert store.suggestions() == []
        # A session older than the kept ones is pruned at once: no change.
        assert not store.add_session(rec("ancient", 0.5, {"t_a": "wy"}))
        assert [s.id for s in store.sessions()] == ["mid", "new"]
    assert sql(path, "SELECT nodeid FROM tests ORDER BY 1") == [("t_mid",), ("t_new",)]
    assert sql(path, "SELECT count(*) FROM footprints") == [(2,)]  # "y" and "y,z"
    assert sql(path, "SELECT count(*) FROM runs") == [(2,)]


def test_sessions_and_elements_tables(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(rec("s1", 1.0, {"t1": "ab", "t2": "b"}, builds={"a": 2.0}))
        store.add_session(rec("s2", 2.0, {"t1": "a"}, {"t1": "a"}, loads={"a": 0.5}))
        assert [(s.id, s.started, s.host, s.tests, s.elements) for s in store.sessions()] == [
            ("s1", 1.0, "host", 2, 2),
            ("s2", 2.0, "host", 1, 1),
        ]
        assert store.elements() == [
            esg.ElementInfo("a", "c.py::a", "session", 100, 2.0, 0.5, 3, 1, 1),
            esg.ElementInfo("b", "c.py::b", "session", 200, None, None, 2, 0, 2),
        ]
        assert store.last_session() == SessionRecord(
            "s2",
            2.0,
            "host",
            {"a": Element("a", "c.py::a", "session", 100, 2.0, 0.5)},
            [Access("t1", "a", "read"), Access("t1", "a", "write")],
        )


def test_an_empty_store_has_no_last_session(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        assert store.last_session() is None and store.sessions() == []


# --------------------------------------------------------------------------- the graph


def test_graph_of_a_small_example(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(
            rec("s1", 1.0, {"t1": "abc", "t2": "ab", "t3": "c"}, {"t1": "a"}, {"a": 1.0, "b": 2.0})
        )
        store.add_session(rec("s2", 2.0, {"t1": "abc", "t4": "bd"}, {"t4": "d"}, {"b": 2.5}))
        store.add_session(rec("s3", 3.0, {}))  # a session that used nothing
        graph = store.to_networkx()
    assert weights(graph) == {("a", "b"): 3, ("a", "c"): 2, ("b", "c"): 2, ("b", "d"): 1}
    assert nx.number_of_selfloops(graph) == 0
    assert dict(graph.nodes(data=True)) == {
        "a": node("a", 100, 1.0, 0.0, accesses=4, writes=1, tests=2),
        "b": node("b", 200, 2.5, 0.0, accesses=4, writes=0, tests=3),
        "c": node("c", 300, 0.0, 0.0, accesses=3, writes=0, tests=2),
        "d": node("d", 400, 0.0, 0.0, accesses=2, writes=1, tests=1),
    }


def weights(graph: nx.Graph) -> dict[tuple[str, ...], int]:
    return {tuple(sorted(edge)): w for *edge, w in graph.edges(data="weight")}


def node(key: str, nbytes: int, build_s: float, load_s: float, **uses: int) -> dict[str, Any]:
    return {
        "fixture": f"c.py::{key}",
        "scope": "session",
        "bytes": nbytes,
        "build_s": build_s,
        "load_s": load_s,
        **uses,
    }


def test_a_test_using_too_many_elements_adds_no_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(esg, "PAIR_LIMIT", 3)
    with ESGStore(tmp_path / "esg.sqlite") as store:
        store.add_session(rec("s1", 1.0, {"wide": "abcd", "narrow": "abc"}))
        graph = store.to_networkx()
    assert sorted(graph.edges(data="weight")) == [("a", "b", 1), ("a", "c", 1), ("b", "c", 1)]
    assert graph.nodes["d"]["accesses"] == 1


sessions_st = st.lists(
    st.dictionaries(
        st.sampled_from(["t1", "t2", "t3", "t4"]),
        st.tuples(st.sets(st.sampled_from("abcdef"), min_size=1), st.sets(st.sampled_from("abc"))),
        max_size=4,
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(sessions_st, st.integers(1, 4), st.randoms(use_true_random=False))
def test_graph_equals_a_brute_force_count(
    sessions: list[dict[str, tuple[set[str], set[str]]]], history: int, rng: Any
) -> None:
    starts = rng.sample(range(100), len(sessions))
    kept = sorted(range(len(sessions)), key=lambda i: starts[i])[-history:]
    pairs: Counter[tuple[str, str]] = Counter()
    reads: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    tests: dict[str, set[str]] = {}
    for i in kept:
        for test, (used, wrote) in sessions[i].items():
            pairs.update(combinations(sorted(used), 2))
            reads.update(used)
            writes.update(wrote & used)  # a test writes only what it was given
            for key in used:
                tests.setdefault(key, set()).add(test)
    with tempfile.TemporaryDirectory() as tmp, ESGStore(Path(tmp) / "e", history) as store:
        for i, uses in enumerate(sessions):
            record = rec(f"s{i}", starts[i], {t: "".join(u) for t, (u, _) in uses.items()})
            for test, (used, wrote) in uses.items():
                for key in wrote & used:
                    record.write(test, key)
            store.add_session(record)
        graph = store.to_networkx()
    assert weights(graph) == dict(pairs)
    assert set(graph) == set(reads)
    for key, attrs in graph.nodes(data=True):
        assert attrs["accesses"] == reads[key] + writes[key]
        assert attrs["writes"] == writes[key]
        assert attrs["tests"] == len(tests[key])


# --------------------------------------------------------------------------- partitions


def test_partition_metadata_and_profile(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        assert store.partitions() == [] and store.last_generation() is None
        store.add_session(rec("s1", 10.0, {"t1": "ab", "t2": "c"}, {"t1": "a"}))
        store.add_session(rec("s2", 20.0, {"t1": "ab"}))
        store.add_session(rec("s3", 30.0, {"t3": "c"}))
        generation = store.generation()
        assert store.save_partitions(generation, {0: ["a", "b"], 1: {"c"}, 2: ["gone"]})
        assert not store.needs_partitioning() and store.last_generation() == generation
        assert store.partitions() == [
            esg.Partition(0, generation, ("a", "b"), 300, (3, 2, 0), ("t1",), "s2", 20.0),
            esg.Partition(1, generation, ("c",), 300, (1, 0, 1), ("t2", "t3"), "s3", 30.0),
            esg.Partition(2, generation, ("gone",), 0, (0, 0, 0), (), None, None),
        ]
        # A slower process saving partitions of an older graph does not overwrite these.
        assert not store.save_partitions(generation - 1, {0: ["a"]})
        assert [p.elements for p in store.partitions()] == [("a", "b"), ("c",), ("gone",)]
        with pytest.raises(ValueError, match="a is in partitions 0 and 1"):
            store.save_partitions(generation, {0: ["a"], 1: ["a"]})
        assert store.add_session(rec("s4", 40.0, {"t4": "ad"}))
        assert store.needs_partitioning()


def test_suggestions_estimate_the_saving(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        first = rec("s1", 1.0, {"t1": "a"}, loads={"a": 0.02})
        first.setup("c.py::db", "function", 2.0, picklable=True)
        for _ in range(4):
            first.use("c.py::db", "function")
        store.add_session(first)
        second = rec("s2", 2.0, {"t2": "b"}, loads={"b": 0.04})
        second.setup("c.py::db", "module", 1.0)
        second.setup("c.py::tmp", "function", 0.01, picklable=False)
        second.use("c.py::db", "module")
        store.add_session(second)
        db, tmp = store.suggestions()
    # A load costs the mean measured load, (0.02 + 0.04) / 2.
    assert rounded(db) == Suggestion("c.py::db", "module", 2, 2, 3.0, 1.5, 4, True, 1.47)
    assert rounded(tmp) == Suggestion("c.py::tmp", "function", 1, 1, 0.01, 0.01, 0, False, -0.02)


def rounded(suggestion: Suggestion) -> Suggestion:
    return replace(suggestion, saving_s=round(suggestion.saving_s, 9))


def test_suggestions_assume_a_load_cost_before_any_was_measured(tmp_path: Path) -> None:
    with ESGStore(tmp_path / "esg.sqlite") as store:
        record = rec("s1", 1.0, {"t1": "a"})
        record.setup("c.py::db", "function", 1.0)
        store.add_session(record)
        (suggestion,) = store.suggestions()
    assert suggestion.saving_s == pytest.approx(1.0 - esg.DEFAULT_LOAD_S)


# --------------------------------------------------------------------------- merge


def test_merge_from_imports_missing_sessions_in_any_order(tmp_path: Path) -> None:
    s1 = rec("s1", 1.0, {"t1": "ab"}, builds={"a": 1.0})
    s2 = rec("s2", 2.0, {"t2": "bc"}, {"t2": "c"}, builds={"b": 2.0})
    s3 = rec("s3", 3.0, {"t1": "ab", "t3": "cd"}, builds={"a": 1.5}, loads={"b": 0.1})
    s3.setup("c.py::db", "function", 1.0)
    for name, sessions in ("a", [s1, s2]), ("b", [s2, s3]), ("all", [s1, s2, s3]):
        with ESGStore(tmp_path / name) as store:
            for record in sessions:
                store.add_session(record)
    with ESGStore(tmp_path / "a") as a, ESGStore(tmp_path / "b") as b:
        assert a.merge_from(tmp_path / "b") == 1
        assert b.merge_from(tmp_path / "a") == 1
        assert a.merge_from(tmp_path / "b") == 0
        with ESGStore(tmp_path / "all") as every:
            expected = every.to_networkx()
            assert a.elements() == b.elements() == every.elements()
            assert a.suggestions() == b.suggestions() == every.suggestions()
        for store in a, b:
            assert [s.id for s in store.sessions()] == ["s1", "s2", "s3"]
            graph = store.to_networkx()
            assert dict(graph.nodes(data=True)) == dict(expected.nodes(data=True))
            assert weights(graph) == weights(expected)
    with ESGStore(tmp_path / "a", history=2) as bounded:
        assert bounded.merge_from(tmp_path / "all") == 0
        assert [s.id for s in bounded.sessions()] == ["s2", "s3"]


def test_merge_from_an_older_schema_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ESGStore(tmp_path / "old") as old:
        old.add_session(rec("s1", 1.0, {"t1": "ab"}))
    monkeypatch.setattr(esg, "MIGRATIONS", (*esg.MIGRATIONS, ("CREATE TABLE extra (x)",)))
    with ESGStore(tmp_path / "new") as new:
        assert new.merge_from(tmp_path / "old") == 1
        assert [s.id for s in new.sessions()] == ["s1"]
    assert sql(tmp_path / "old", "PRAGMA user_version") == [(len(esg.MIGRATIONS) - 1,)]


def test_merge_from_a_file_that_is_not_an_esg_store_fails_cleanly(tmp_path: Path) -> None:
    _garbage(tmp_path / "garbage")
    _newer(tmp_path / "newer")
    with ESGStore(tmp_path / "esg.sqlite") as store:
        with pytest.raises(ESGError, match="garbage: file is not a database"):
            store.merge_from(tmp_path / "garbage")
        with pytest.raises(ESGError, match="newer: has schema version"):
            store.merge_from(tmp_path / "newer")
        with pytest.raises(ESGError, match="missing: unable to open"):
            store.merge_from(tmp_path / "missing")
    assert (tmp_path / "garbage").read_bytes().startswith(b"this is not a database")


# --------------------------------------------------------------------------- concurrency

WRITERS, SESSIONS, TESTS = 4, 10, 20
ELEMENTS = 5 + 2 * TESTS  # per session: 5 shared, TESTS of the writer, TESTS of the session
RUNS_PER_SESSION = (
    "SELECT count(r.test) FROM sessions s LEFT JOIN runs r ON r.session = s.id GROUP BY s.id"
)


def _write_sessions(path: str, writer: int, start: Any) -> None:
    """One process: wait for the others, then add SESSIONS sessions of TESTS tests each."""
    start.wait()
    with ESGStore(Path(path), history=WRITERS * SESSIONS) as store:
        for i in range(SESSIONS):
            record = SessionRecord(f"w{writer}-{i}", time.time(), f"host{writer}")
            for t in range(TESTS):
                for key in (f"shared-{t % 5}", f"w{writer}-{t}", f"w{writer}-{i}-{t}"):
                    record.element(key, "c.py::fx", "session", 10, build_s=0.01)
                    record.read(f"test_{t}", key)
            store.add_session(record)


@pytest.mark.timeout(120)
def test_concurrent_writers_in_processes_land_whole_sessions(tmp_path: Path) -> None:
    path = tmp_path / "esg.sqlite"  # created by the writers, all at once
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [
        context.Process(target=_write_sessions, args=(str(path), w, start)) for w in range(WRITERS)
    ]
    for process in writers:
        process.start()
    try:
        start.set()
        reads = 0
        while any(p.is_alive() for p in writers):
            if path.exists():
                ESGStore(path, history=WRITERS * SESSIONS).close()  # opens amid the writers
                assert set(sql(path, RUNS_PER_SESSION)) <= {(TESTS,)}  # never half a session
                reads += 1
            time.sleep(0.05)
        for process in writers:
            process.join(10)
            assert process.exitcode == 0
    finally:
        for process in writers:
            if process.is_alive():
                process.kill()
                process.join()
    assert reads > 0
    with ESGStore(path, history=WRITERS * SESSIONS) as store:
        sessions = store.sessions()
        assert len(sessions) == WRITERS * SESSIONS
        assert {(s.tests, s.elements) for s in sessions} == {(TESTS, ELEMENTS)}
        assert set(sql(path, RUNS_PER_SESSION)) == {(TESTS,)}
        graph = store.to_networkx()
        assert graph.nodes["shared-0"]["accesses"] == WRITERS * SESSIONS * TESTS // 5
        assert store.generation() == WRITERS * SESSIONS  # every session brought new elements
    assert sql(path, "PRAGMA integrity_check") == [("ok",)]


# --------------------------------------------------------------------------- test durations


def test_durations_are_kept_per_session_merged_and_pruned(tmp_path: Path) -> None:
    s1 = rec("s1", 1.0, {"t1": "ab"}, builds={"a": 1.0, "b": 2.0})
    s1.duration("t1", 0.5)
    s1.duration("t9", 0.25)  # a test that used no managed state
    s2 = rec("s2", 2.0, {"t1": "ab"}, loads={"a": 0.1})
    s2.duration("t1", 0.75)
    s3 = rec("s3", 3.0, {"t1": "a"})
    s3.duration("t1", 0.125)
    with ESGStore(tmp_path / "a") as store:
        for record in s1, s2, s3:
            store.add_session(record)
        p = store.prediction()
        assert p.durations == {"t1": 0.5, "t9": 0.25}  # medians over the kept sessions
        assert p.cost == {"a": 1.0, "b": 2.0}  # builds first; a load only where none was
        assert p.loads == {"a": 0.1}  # what a run that loads instead pays
    with ESGStore(tmp_path / "a", history=2) as store:
        store.add_session(rec("s4", 4.0, {"t2": "c"}))  # prunes s1 and s2
        assert store.prediction().durations == {"t1": 0.125}  # t9 went with s1
        assert sql(tmp_path / "a", "SELECT nodeid FROM tests ORDER BY nodeid") == [
            ("t1",),
            ("t2",),
        ]
    with ESGStore(tmp_path / "b") as other:
        assert other.merge_from(tmp_path / "a") == 2
        assert other.prediction().durations == {"t1": 0.125}


def test_worker_records_sum_durations_and_survive_json() -> None:
    a, b = SessionRecord("x", 1.0, "h"), SessionRecord("y", 1.0, "h")
    a.duration("t", 0.5)
    a.duration("t", 0.25)  # setup, then call
    a.duration("u", -1.0)  # a phase shorter than its managed setups: counts as 0
    b.duration("v", 1.0)
    a.merge(b)
    assert a.durations == {"t": 0.75, "u": 0.0, "v": 1.0}
    assert SessionRecord.from_json(json.loads(json.dumps(a.to_json()))).durations == a.durations


def test_a_version_1_file_gains_durations(tmp_path: Path) -> None:
    path = tmp_path / "esg.sqlite"
    with closing(sqlite3.connect(path)) as db:
        for statement in esg.MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.commit()
    with ESGStore(path) as store:
        assert store.notice is None
        record = rec("s", 1.0, {"t": "a"})
        record.duration("t", 0.5)
        store.add_session(record)
        assert store.prediction().durations == {"t": 0.5}
    assert sql(path, "PRAGMA user_version") == [(len(esg.MIGRATIONS),)]
