"""The SQLite file that keeps the last N sessions of the ESG (``esg.sqlite`` in the store
directory; docs/esg.md): the graph (:meth:`ESGStore.to_networkx`), the partition metadata the
migration engine reads, imports of other ESG files (CI shards) and the queries of the
``statemigrate`` command. Only the standard library is imported at module level; networkx is
imported by :meth:`ESGStore.to_networkx`."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from itertools import chain, combinations
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import networkx as nx  # type: ignore[import-untyped]

from .record import Element, FixtureSetup, SessionRecord

DEFAULT_HISTORY: Final = 20  # sessions kept (the plugin's ini key statemigrate_history)
BUSY_TIMEOUT_S: Final = 10.0  # s a writer waits for another one before sqlite3 gives up
PAIR_LIMIT: Final = 256  # elements: a test using more adds no edges (pairs grow quadratically)
DEFAULT_LOAD_S: Final = 0.005  # s per load assumed by suggestions() before any load was measured


@dataclass(frozen=True)
class SessionInfo:
    id: str
    started: float
    host: str
    tests: int  # tests that used a managed element
    elements: int  # elements used


class ElementInfo(NamedTuple):
    """An element with its measurements and its use over the kept history.

    A named tuple, like :class:`Access`: the graph makes one per element, 10,000 at a time.
    """

    key: str
    fixture: str
    scope: str
    nbytes: int
    build_s: float | None  # the latest measurement; None if never built while recorded
    load_s: float | None  # the latest measurement; None if never loaded while recorded
    accesses: int  # reads + writes
    writes: int
    tests: int  # distinct tests


@dataclass(frozen=True)
class Partition:
    """A saved partition and its access-frequency profile over the kept history."""

    id: int
    generation: int  # the ESG generation it was computed from
    elements: tuple[str, ...]  # state keys, sorted
    nbytes: int  # sum of its elements' sizes when it was saved
    accesses: tuple[int, ...]  # reads + writes of its elements per kept session, oldest first
    tests: tuple[str, ...]  # tests that used it, sorted
    last_session: str | None  # the latest kept session that used it
    last_used: float | None  # when that session started


@dataclass(frozen=True)
class Prediction:
    """What the kept history says the next run's tests will need (for the engine).

    ``footprints``: test node id → the keys it used the last time it ran; ``latest``: element
    label (fixture id and param label) → its most recently built or loaded key; ``partition_of``:
    key → partition id; ``sizes``: partition id → bytes; ``members``: partition id → keys.
    """

    footprints: dict[str, tuple[str, ...]]
    latest: dict[str, str]
    partition_of: dict[str, int]
    sizes: dict[int, int]
    members: dict[int, tuple[str, ...]]
    nbytes: dict[str, int] = field(default_factory=dict)  # key → its size
    #: key → seconds its first use costs: the latest build, else the latest load
    cost: dict[str, float] = field(default_factory=dict)
    #: node id → the test's own seconds (median over the kept sessions that ran it)
    durations: dict[str, float] = field(default_factory=dict)
    #: key → seconds its latest load took, where one was measured
    loads: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphData:
    """The ESG without networkx: ``edges`` maps index pairs ``(i, j)`` into ``elements`` to
    their co-access weight (each unordered pair once, no self-loops)."""

    elements: list[ElementInfo]
    edges: dict[tuple[int, int], int]


@dataclass(frozen=True)
class Suggestion:
    """An unmanaged fixture and what managing it might save (docs/esg.md: the estimate)."""

    fixture: str
    scope: str
    sessions: int  # kept sessions that set it up
    setups: int  # over those sessions
    seconds: float  # total setup seconds over those sessions
    mean_s: float  # seconds per setup
    tests: int  # the most tests that used it in one session
    picklable: bool | None
    saving_s: float  # estimated seconds saved per session; negative: loading would cost more


class ESGError(Exception):
    """The store cannot be opened, or a file given to merge_from is not a usable ESG file."""


class _Unusable(Exception):
    """A file that is not an ESG store of a version this code can read or migrate."""

    def __init__(self, reason: str, suffix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suffix = suffix  # appended to the name of the file when it is moved aside


# --------------------------------------------------------------------------- schema

# Ids are integers local to one file; sessions, elements and tests are matched across files by
# uid, key and node id. A session's rows are deleted with it explicitly (no foreign keys).
#
# What a test used is stored as a footprint: the sorted ids of the elements it used, joined by
# commas, and of those it wrote. A suite runs the same tests with the same fixtures session after
# session, so one footprint serves many (session, test) runs: a run is one small row, and the
# graph is counted from the distinct footprints. (Rejected: one row per access. At 20 sessions of
# 5,000 tests using 8 elements each that is 800,000 rows, and counting tests and co-accesses over
# them took seconds.)
_V1: Final = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER)",
    # generation: bumped when the graph changes; partitioned: generation of the saved partitions
    "INSERT INTO meta VALUES ('generation', 0), ('partitioned', NULL)",
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        started REAL NOT NULL,
        host TEXT NOT NULL,
        tests INTEGER NOT NULL,  -- tests that used a managed element
        elements INTEGER NOT NULL  -- elements used
        )""",
    "CREATE INDEX sessions_started ON sessions (started, uid)",
    # The latest measurements: *_at is the start of the session that measured *_s, so that
    # merging files in any order keeps the newest.
    """CREATE TABLE elements (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        fixture TEXT NOT NULL,
        scope TEXT NOT NULL,
        nbytes INTEGER NOT NULL,
        build_s REAL,
        build_at REAL,
        load_s REAL,
        load_at REAL)""",
    "CREATE TABLE tests (id INTEGER PRIMARY KEY, nodeid TEXT NOT NULL UNIQUE)",
    """CREATE TABLE footprints (
        id INTEGER PRIMARY KEY,
        elements TEXT NOT NULL,
        writes TEXT NOT NULL,
        UNIQUE (elements, writes))""",
    """CREATE TABLE runs (
        session INTEGER NOT NULL,
        test INTEGER NOT NULL,
        footprint INTEGER NOT NULL,
        PRIMARY KEY (session, test)) WITHOUT ROWID""",
    """CREATE TABLE setups (
        session INTEGER NOT NULL,
        fixture TEXT NOT NULL,
        scope TEXT NOT NULL,
        seconds REAL NOT NULL,
        setups INTEGER NOT NULL,
        tests INTEGER NOT NULL,
        picklable INTEGER,
        PRIMARY KEY (session, fixture)) WITHOUT ROWID""",
    "CREATE TABLE partitions (id INTEGER PRIMARY KEY, nbytes INTEGER NOT NULL)",
    """CREATE TABLE partition_elements (
        key TEXT PRIMARY KEY,
        part INTEGER NOT NULL) WITHOUT ROWID""",
)

# Version 2: each test's own seconds per session (the shard plan balances with them), for every
# test that ran, whether or not it used managed state.
_V2: Final = (
    """CREATE TABLE durations (
        session INTEGER NOT NULL,
        test INTEGER NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (session, test)) WITHOUT ROWID""",
)

# Version 3: the fixtures refused in each session, and why (``auto`` declines them).
_V3: Final = (
    """CREATE TABLE refusals (
        session INTEGER NOT NULL,
        fixture TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (session, fixture)) WITHOUT ROWID""",
)

#: MIGRATIONS[v] takes a file from schema version v to v + 1 (version 0: an empty file). A new
#: schema version appends a step; it never edits an old one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)

#: The tables this code reads and writes.
TABLES: Final = frozenset(
    {"meta", "sessions", "elements", "tests", "footprints", "runs", "setups", "durations"}
    | {"partitions", "partition_elements", "refusals"}
)


@contextmanager
def _transaction(db: sqlite3.Connection, kind: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
    """One transaction: IMMEDIATE for writers (they queue for the write lock at BEGIN)."""
    db.execute(f"BEGIN {kind}")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _prepare(db: sqlite3.Connection) -> None:
    """Bring ``db`` to the current schema version, inside the caller's transaction.

    :raises _Unusable: a newer version, a file that is not an ESG store, or a damaged schema.
    """
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    target = len(MIGRATIONS)
    if version > target:
        raise _Unusable(f"has schema version {version}, newer than this plugin's {target}", "new")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 and tables:
        raise _Unusable("is not an ESG store", "bad")
    if version < target:
        for step in MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {target}")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = TABLES - tables
    if missing:
        raise _Unusable(f"lacks the tables {', '.join(sorted(missing))}", "bad")


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (flock on the directory itself, no lock file), held
    while a process checks a bad store again and moves it aside: two processes that find it
    bad at the same moment then move it once, and the second opens the first's new store. No
    lock where flock is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _private(path: Path) -> None:
    """Make the ESG file 0600 before SQLite opens it (SQLite gives its -wal and -shm files
    the database's mode): what a suite's tests touch is not for other users to read."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    except OSError:
        return  # SQLite reports what is wrong with it
    from nodeagent.private import private_file

    private_file(path)  # one an earlier version made 0644


def _connect(path: str, uri: bool = False) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every one is an explicit _transaction.
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)


def _wal(db: sqlite3.Connection) -> None:
    """Switch to the WAL journal (persistent; a no-op once set). While another connection is
    switching a new file, sqlite says "database is locked" at once, without waiting for the
    busy timeout: retry within :data:`BUSY_TIMEOUT_S`."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def records_state(path: Path) -> bool:
    """The ESG file at ``path`` records managed values: an earlier run managed something.
    Read only, without migrating or repairing (False for anything unreadable)."""
    if not path.is_file():
        return False
    try:
        with closing(_connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM elements LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False


def _snapshot(path: Path) -> sqlite3.Connection:
    """An in-memory copy of the ESG file at ``path`` (WAL included), migrated to this version.

    :raises ESGError: it cannot be read, or is not an ESG file this code can read.
    """
    copy = _connect(":memory:")
    try:
        with closing(_connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as source:
            source.backup(copy)
        with _transaction(copy, "IMMEDIATE"):
            _prepare(copy)
    except (sqlite3.Error, _Unusable) as exc:
        copy.close()
        raise ESGError(f"{path}: {exc}") from None
    return copy


# --------------------------------------------------------------------------- the store


class ESGStore:
    """The ESG's SQLite file: the last ``history`` sessions and the partition metadata.

    Writers serialise (WAL journal, ``BEGIN IMMEDIATE``, a busy timeout of
    :data:`BUSY_TIMEOUT_S`); each session lands in one transaction and every query reads one
    snapshot, so no reader sees half a session. A file of an older schema is migrated; one this
    code cannot read (newer, damaged, not a database) is moved aside and a new store is started,
    and :attr:`notice` says so in one line. The line outlives this object: it is left in a
    file beside the store (``esg.sqlite.notice``), every later store of that path has it in
    :attr:`notice` too, and the first :meth:`add_session` or :meth:`merge_from` drops it. (A
    run's first open is a reader's, planning its prefetches or its xdist schedule, often in
    another process than the controller that records the session and writes the summary;
    rejected: keeping it in memory, which lost it there.) Methods other than the constructor
    let ``sqlite3.Error`` through (e.g. still locked after the busy timeout).

    :param path: the file, e.g. ``.statemigrate/esg.sqlite``; its directory is created.
    :param history: how many sessions to keep (the newest by start time).
    :raises ESGError: the file cannot be opened or created at all.
    """

    def __init__(self, path: Path, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, not {history}")
        self.path = path
        self.history = history
        #: One line for the summary when the file was moved aside and rebuilt, by this
        #: object or by an earlier one whose line no session has recorded since.
        self.notice: str | None = None
        self._notice_path = path.with_name(f"{path.name}.notice")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except _Unusable:
                with _directory_lock(path.parent):
                    self._db = self._open_or_move_aside()
        except (OSError, sqlite3.Error, _Unusable) as exc:
            raise ESGError(f"cannot open the ESG store {path}: {exc}") from None
        self.notice = self.notice or self._left_notice()

    def _open_or_move_aside(self) -> sqlite3.Connection:
        """Under the directory's lock: open the file again (another process may have moved
        it aside and started a new one since), and when it is still unusable, move it aside."""
        try:
            return self._open()
        except _Unusable as exc:
            aside = self._move_aside(exc.suffix)
            self.notice = (
                f"the ESG store {self.path} {exc.reason}; "
                f"moved it to {aside.name} and started a new one"
            )
            self._leave_notice(self.notice)
            return self._open()

    def _leave_notice(self, notice: str) -> None:
        """Keep the line for the run's later stores (best effort: this object has it)."""
        tmp = self._notice_path.with_name(f"{self._notice_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(notice + "\n")
            os.replace(tmp, self._notice_path)
        except OSError:
            pass

    def _left_notice(self) -> str | None:
        try:
            return self._notice_path.read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def _notice_said(self) -> None:
        """A session was recorded: the run that recorded it has had the line to report."""
        if self.notice is not None:
            with suppress(OSError):
                self._notice_path.unlink(missing_ok=True)

    def _open(self) -> sqlite3.Connection:
        _private(self.path)
        db = _connect(str(self.path))
        try:
            with _transaction(db, "IMMEDIATE"):
                _prepare(db)
            # After the check, so that a file moved aside is left as it was found.
            _wal(db)
            db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no file
        except sqlite3.OperationalError:  # locked, I/O, cannot open: not the file's fault
            db.close()
            raise
        except sqlite3.DatabaseError as exc:  # not a database, or damaged
            db.close()
            raise _Unusable(f"is not a readable database ({exc})", "bad") from None
        except _Unusable:
            db.close()
            raise
        return db

    def _move_aside(self, suffix: str) -> Path:
        aside = self.path.with_name(f"{self.path.name}.{suffix}")
        for tail in ("", "-wal", "-shm"):  # the journal files belong to the old file
            if os.path.exists(f"{self.path}{tail}"):
                os.replace(f"{self.path}{tail}", f"{aside}{tail}")
        return aside

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ESGStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------------- writing

    def add_session(self, record: SessionRecord) -> bool:
        """Store one session in one transaction, then prune to the history bound.

        Element sizes and timings: the latest measurement wins (docs/esg.md). A session whose
        id is already stored is skipped.

        :returns: whether the graph changed in a way that matters for partitioning, bumping the
            generation: an element, or a set of two or more elements that one test used,
            appeared or disappeared.
        """
        changed = self._add_session(record)
        self._notice_said()
        return changed

    def _add_session(self, record: SessionRecord) -> bool:
        with _transaction(self._db, "IMMEDIATE") as db:
            if db.execute("SELECT 1 FROM sessions WHERE uid = ?", (record.id,)).fetchone():
                return False
            before = self._shape()
            self._upsert_elements(
                (
                    e.key,
                    e.fixture,
                    e.scope,
                    e.nbytes,
                    e.build_s,
                    None if e.build_s is None else record.started,
                    e.load_s,
                    None if e.load_s is None else record.started,
                )
                for e in record.elements.values()
            )
            self._insert(record)
            return self._settle(before)

    def merge_from(self, path: Path) -> int:
        """Import the sessions of another ESG file that this one lacks, then prune.

        :returns: how many sessions were imported (those older than the kept history are
            pruned again at once).
        :raises ESGError: ``path`` is not a readable ESG file.
        """
        with closing(_snapshot(path)) as other:
            elements = other.execute(
                "SELECT key, fixture, scope, nbytes, build_s, build_at, load_s, load_at"
                " FROM elements"
            ).fetchall()
            records = _records(other)
        with _transaction(self._db, "IMMEDIATE") as db:
            have = {uid for (uid,) in db.execute("SELECT uid FROM sessions")}
            new = [r for r in records if r.id not in have]
            before = self._shape()
            self._upsert_elements(elements)
            for record in new:
                self._insert(record)
            self._settle(before)
        self._notice_said()
        return len(new)

    def _upsert_elements(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of (key, fixture, scope, nbytes, build_s, build_at, load_s, load_at)."""
        self._db.executemany(
            """INSERT INTO elements VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (key) DO UPDATE SET
                fixture = CASE WHEN excluded.fixture = '' THEN fixture ELSE excluded.fixture END,
                scope = CASE WHEN excluded.scope = '' THEN scope ELSE excluded.scope END,
                nbytes = max(nbytes, excluded.nbytes),
                build_s = CASE WHEN excluded.build_at >= coalesce(build_at, excluded.build_at)
                    THEN excluded.build_s ELSE build_s END,
                build_at = coalesce(max(build_at, excluded.build_at), build_at, excluded.build_at),
                load_s = CASE WHEN excluded.load_at >= coalesce(load_at, excluded.load_at)
                    THEN excluded.load_s ELSE load_s END,
                load_at = coalesce(max(load_at, excluded.load_at), load_at, excluded.load_at)""",
            rows,
        )

    def _insert(self, record: SessionRecord) -> None:
        """The session's row, runs and setups (its elements are upserted before)."""
        db = self._db
        used: defaultdict[str, set[str]] = defaultdict(set)
        wrote: defaultdict[str, set[str]] = defaultdict(set)
        for test, key, mode in record.accesses:
            used[test].add(key)  # a write is also a read: the test was given the value
            if mode == "write":
                wrote[test].add(key)
        keys = set().union(*used.values())
        session = db.execute(
            "INSERT INTO sessions VALUES (NULL, ?, ?, ?, ?, ?)",
            (record.id, record.started, record.host, len(used), len(keys)),
        ).lastrowid
        # An element used but never described gets a placeholder row.
        db.executemany(
            "INSERT OR IGNORE INTO elements (key, fixture, scope, nbytes) VALUES (?, '', '', 0)",
            ((key,) for key in keys),
        )
        db.executemany(
            "INSERT OR IGNORE INTO tests (nodeid) VALUES (?)",
            ((t,) for t in {*used, *record.durations}),
        )
        element_id = dict(db.execute("SELECT key, id FROM elements").fetchall())
        test_id = dict(db.execute("SELECT nodeid, id FROM tests").fetchall())
        footprint = {
            test: (
                _text(element_id[k] for k in keys),
                _text(element_id[k] for k in wrote.get(test, ())),
            )
            for test, keys in used.items()
        }
        db.executemany(
            "INSERT OR IGNORE INTO footprints (elements, writes) VALUES (?, ?)",
            set(footprint.values()),
        )
        footprint_id = {
            (elements, writes): i
            for i, elements, writes in db.execute("SELECT id, elements, writes FROM footprints")
        }
        db.executemany(
            "INSERT INTO runs VALUES (?, ?, ?)",
            ((session, test_id[test], footprint_id[f]) for test, f in footprint.items()),
        )
        db.executemany(
            "INSERT INTO durations VALUES (?, ?, ?)",
            ((session, test_id[t], seconds) for t, seconds in record.durations.items()),
        )
        db.executemany(
            "INSERT INTO setups VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (session, s.fixture, s.scope, s.seconds, s.setups, s.tests, s.picklable)
                for s in record.setups.values()
            ),
        )
        db.executemany(
            "INSERT INTO refusals VALUES (?, ?, ?)",
            ((session, fixture, why) for fixture, why in record.refused.items()),
        )

    def _shape(self) -> tuple[set[int], set[str]]:
        """What partitioning depends on: the elements, and the sets of 2+ that tests used."""
        db = self._db
        return (
            {i for (i,) in db.execute("SELECT id FROM elements")},
            {
                f
                for (f,) in db.execute(
                    "SELECT DISTINCT elements FROM footprints WHERE instr(elements, ',')"
                )
            },
        )

    def _settle(self, before: tuple[set[int], set[str]]) -> bool:
        """Prune to the history bound, drop what no kept session uses, bump the generation."""
        db = self._db
        old = db.execute(
            "SELECT id FROM sessions ORDER BY started DESC, uid DESC LIMIT -1 OFFSET ?",
            (self.history,),
        ).fetchall()
        if old:
            db.executemany("DELETE FROM runs WHERE session = ?", old)
            db.executemany("DELETE FROM setups WHERE session = ?", old)
            db.executemany("DELETE FROM durations WHERE session = ?", old)
            db.executemany("DELETE FROM refusals WHERE session = ?", old)
            db.executemany("DELETE FROM sessions WHERE id = ?", old)
            db.execute("DELETE FROM footprints WHERE id NOT IN (SELECT footprint FROM runs)")
            db.execute(
                "DELETE FROM tests WHERE id NOT IN (SELECT test FROM runs)"
                " AND id NOT IN (SELECT test FROM durations)"
            )
        used: set[int] = set()
        for elements, _ in _footprints(db).values():
            used.update(elements)
        unused = [(i,) for (i,) in db.execute("SELECT id FROM elements") if i not in used]
        db.executemany("DELETE FROM elements WHERE id = ?", unused)
        changed = self._shape() != before
        if changed:
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
        return changed

    # ----------------------------------------------------------------------- generations

    def generation(self) -> int:
        """The ESG's generation: bumped by every stored change that matters for partitioning."""
        return int(self._meta("generation") or 0)

    def last_generation(self) -> int | None:
        """The generation the saved partitions were computed from; None before any."""
        return self._meta("partitioned")

    def needs_partitioning(self) -> bool:
        """Whether the graph changed since the saved partitions were computed."""
        with _transaction(self._db):
            return self.generation() > (self.last_generation() or 0)

    def _meta(self, name: str) -> int | None:
        (value,) = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if value is None else int(value)

    # ----------------------------------------------------------------------- the graph

    def graph_data(self) -> GraphData:
        """The ESG over the kept history as plain data (what :meth:`to_networkx` reads)."""
        with _transaction(self._db) as db:
            footprints = _footprints(db)
            elements, runs = _element_stats(db, footprints)
        order = {eid: i for i, eid in enumerate(elements)}
        return GraphData(list(elements.values()), _pairs(footprints, runs, order))

    def coaccess(self) -> tuple[list[str], list[int], dict[tuple[int, int], int]]:
        """Only what partitioning reads: element keys, their sizes, and the co-access weight of
        each pair of indices into them (cheaper than :meth:`graph_data`)."""
        with _transaction(self._db) as db:
            rows = db.execute("SELECT id, key, nbytes FROM elements ORDER BY id").fetchall()
            footprints = _footprints(db)
            runs = Counter(
                dict(db.execute("SELECT footprint, count(*) FROM runs GROUP BY footprint"))
            )
        order = {eid: i for i, (eid, _, _) in enumerate(rows)}
        keys = [key for _, key, _ in rows]
        sizes = [int(nbytes) for _, _, nbytes in rows]
        return keys, sizes, _pairs(footprints, runs, order)

    def to_networkx(self) -> nx.Graph:
        """The ESG over the kept history, as an undirected networkx graph.

        Nodes are state keys with ``fixture``, ``scope``, ``bytes``, ``build_s`` and ``load_s``
        (0.0 when never measured), ``accesses`` (reads + writes), ``writes`` and ``tests``
        (distinct). An edge joins two elements that one test used in one session; its
        ``weight`` counts the (session, test) pairs that used both. A test that used more than
        :data:`PAIR_LIMIT` elements adds no edges.
        """
        import networkx as nx

        data = self.graph_data()
        elements = data.elements
        graph = nx.Graph()
        graph.add_nodes_from(
            (
                e.key,
                {
                    "fixture": e.fixture,
                    "scope": e.scope,
                    "bytes": e.nbytes,
                    "build_s": e.build_s or 0.0,
                    "load_s": e.load_s or 0.0,
                    "accesses": e.accesses,
                    "writes": e.writes,
                    "tests": e.tests,
                },
            )
            for e in elements
        )
        graph.add_weighted_edges_from(
            (elements[a].key, elements[b].key, n) for (a, b), n in data.edges.items()
        )
        return graph

    # ----------------------------------------------------------------------- partitions

    def save_partitions(self, generation: int, parts: Mapping[int, Collection[str]]) -> bool:
        """Replace the saved partitions by ``parts`` (partition id → state keys).

        :param generation: the ESG generation they were computed from (:meth:`generation`,
            read before :meth:`to_networkx`).
        :returns: False, saving nothing, if partitions of a later generation are saved already.
        :raises ValueError: a key is in two partitions.
        """
        owner: dict[str, int] = {}
        for part, keys in parts.items():
            for key in keys:
                if owner.setdefault(key, part) != part:
                    raise ValueError(f"{key} is in partitions {owner[key]} and {part}")
        with _transaction(self._db, "IMMEDIATE") as db:
            last = self.last_generation()
            if last is not None and generation < last:
                return False
            size = dict(db.execute("SELECT key, nbytes FROM elements").fetchall())
            db.execute("DELETE FROM partitions")
            db.execute("DELETE FROM partition_elements")
            db.executemany(
                "INSERT INTO partitions VALUES (?, ?)",
                ((part, sum(size.get(k, 0) for k in keys)) for part, keys in parts.items()),
            )
            db.executemany("INSERT INTO partition_elements VALUES (?, ?)", owner.items())
            db.execute("UPDATE meta SET value = ? WHERE name = 'partitioned'", (generation,))
            fresh = max([self._next_partition(), *(part + 1 for part in parts)])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_partition', ?)", (fresh,))
        return True

    def _next_partition(self) -> int:
        """Above every partition id ever saved (a retired id is never given out again)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'next_partition'").fetchone()
        saved = self._db.execute("SELECT max(id) FROM partitions").fetchone()[0]
        return max(
            0 if row is None or row[0] is None else int(row[0]), -1 if saved is None else saved + 1
        )

    def partition_sets(self) -> tuple[dict[int, tuple[str, ...]], int]:
        """The saved partitions' elements by id, without their profiles (cheap), and the next
        fresh partition id."""
        with _transaction(self._db) as db:
            members: defaultdict[int, list[str]] = defaultdict(list)
            for key, part in db.execute("SELECT key, part FROM partition_elements ORDER BY key"):
                members[part].append(key)
            return {p: tuple(keys) for p, keys in sorted(members.items())}, self._next_partition()

    def keys(self) -> list[str]:
        """The state keys the kept history holds."""
        return [key for (key,) in self._db.execute("SELECT key FROM elements ORDER BY id")]

    def totals(self) -> tuple[int, int]:
        """How many elements the kept history holds, and their bytes."""
        count, total = self._db.execute("SELECT count(*), sum(nbytes) FROM elements").fetchone()
        return int(count), int(total or 0)

    def partitions(self) -> list[Partition]:
        """The saved partitions, by id, each with its profile over the kept history."""
        with _transaction(self._db) as db:
            generation = self.last_generation()
            if generation is None:
                return []
            sessions = db.execute(
                "SELECT id, uid, started FROM sessions ORDER BY started, uid"
            ).fetchall()
            sizes = dict(db.execute("SELECT id, nbytes FROM partitions").fetchall())
            members: defaultdict[int, list[str]] = defaultdict(list)
            for key, part in db.execute("SELECT key, part FROM partition_elements ORDER BY key"):
                members[part].append(key)
            part_of = dict(
                db.execute(
                    "SELECT e.id, pe.part FROM elements e JOIN partition_elements pe USING (key)"
                ).fetchall()
            )
            # Per footprint: accesses (reads + writes) it makes to each partition.
            touches = {
                f: Counter(part_of[e] for e in [*elements, *writes] if e in part_of)
                for f, (elements, writes) in _footprints(db).items()
            }
            column = {sid: i for i, (sid, _, _) in enumerate(sessions)}
            accesses = {part: [0] * len(sessions) for part in sizes}
            runs = Counter(db.execute("SELECT session, footprint FROM runs"))
            for (sid, f), n in runs.items():
                for part, k in touches[f].items():
                    accesses[part][column[sid]] += k * n
            tests: defaultdict[int, set[str]] = defaultdict(set)
            for nodeid, f in db.execute(
                "SELECT DISTINCT t.nodeid, r.footprint FROM runs r JOIN tests t ON t.id = r.test"
            ):
                for part in touches[f]:
                    tests[part].add(nodeid)
        out = []
        for part, nbytes in sorted(sizes.items()):
            used = [i for i, n in enumerate(accesses[part]) if n]
            last = sessions[used[-1]] if used else None
            out.append(
                Partition(
                    id=part,
                    generation=generation,
                    elements=tuple(members[part]),
                    nbytes=nbytes,
                    accesses=tuple(accesses[part]),
                    tests=tuple(sorted(tests[part])),
                    last_session=None if last is None else last[1],
                    last_used=None if last is None else last[2],
                )
            )
        return out

    # ----------------------------------------------------------------------- CLI queries

    def sessions(self) -> list[SessionInfo]:
        """The kept sessions, oldest first."""
        rows = self._db.execute(
            "SELECT uid, started, host, tests, elements FROM sessions ORDER BY started, uid"
        ).fetchall()
        return [SessionInfo(*row) for row in rows]

    def last_session(self) -> SessionRecord | None:
        """The newest kept session as a record (accesses, setups, the elements it used with
        their latest measurements); None when no session is kept."""
        with _transaction(self._db) as db:
            row = db.execute(
                "SELECT id FROM sessions ORDER BY started DESC, uid DESC LIMIT 1"
            ).fetchone()
            return None if row is None else _records(db, row[0])[0]

    def prediction(self) -> Prediction:
        """The footprints and partitions the engine plans with (one read transaction)."""
        with _transaction(self._db) as db:
            key_of = dict(db.execute("SELECT id, key FROM elements"))
            nbytes = dict(db.execute("SELECT key, nbytes FROM elements"))
            cost = {
                key: float(seconds)
                for key, seconds in db.execute(
                    "SELECT key, coalesce(build_s, load_s) FROM elements"
                    " WHERE coalesce(build_s, load_s) IS NOT NULL"
                )
            }
            loads = {
                key: float(seconds)
                for key, seconds in db.execute(
                    "SELECT key, load_s FROM elements WHERE load_s IS NOT NULL"
                )
            }
            runs: defaultdict[str, list[float]] = defaultdict(list)
            for nodeid, seconds in db.execute(
                "SELECT t.nodeid, d.seconds FROM durations d JOIN tests t ON t.id = d.test"
            ):
                runs[nodeid].append(seconds)
            footprints: dict[str, tuple[str, ...]] = {}
            rows = db.execute(
                "SELECT t.nodeid, f.elements, f.writes FROM runs r"
                " JOIN tests t ON t.id = r.test JOIN footprints f ON f.id = r.footprint"
                " JOIN sessions s ON s.id = r.session ORDER BY s.started, s.uid"
            )
            for nodeid, used, written in rows:  # later sessions overwrite earlier ones
                ids = dict.fromkeys([*_ids(used), *_ids(written)])
                footprints[nodeid] = tuple(key_of[i] for i in ids if i in key_of)
            latest: dict[str, str] = {}
            for label, key in db.execute(
                "SELECT fixture, key FROM elements WHERE fixture != ''"
                " ORDER BY max(coalesce(load_at, 0), coalesce(build_at, 0)), id"
            ):
                latest[label] = key
            partition_of = dict(db.execute("SELECT key, part FROM partition_elements"))
            sizes = dict(db.execute("SELECT id, nbytes FROM partitions"))
        members: defaultdict[int, list[str]] = defaultdict(list)
        for key, part in sorted(partition_of.items()):
            members[part].append(key)
        from statistics import median  # ~3 ms of imports (fractions, decimal): here only

        return Prediction(
            footprints,
            latest,
            partition_of,
            sizes,
            {p: tuple(k) for p, k in members.items()},
            nbytes,
            cost,
            {test: median(seconds) for test, seconds in runs.items()},
            loads,
        )

    def elements(self) -> list[ElementInfo]:
        """Every kept element, by fixture label then key."""
        with _transaction(self._db) as db:
            elements, _ = _element_stats(db, _footprints(db))
        return sorted(elements.values(), key=lambda e: (e.fixture, e.key))

    def refusals(self) -> dict[str, str]:
        """Fixture label → why it was refused, in the newest kept session that refused it."""
        with _transaction(self._db) as db:
            rows = db.execute(
                "SELECT r.fixture, r.reason FROM refusals r JOIN sessions s ON s.id = r.session"
                " ORDER BY s.started, s.uid"
            ).fetchall()
        return dict(rows)

    def managed_costs(self) -> dict[str, tuple[float, float | None, int]]:
        """Fixture → (build seconds, load seconds or None, elements) summed over its stored
        elements' latest measurements (every param's): what managing it was measured to save.
        Load seconds are None unless every element's load was measured."""
        with _transaction(self._db) as db:
            rows = db.execute(
                "SELECT fixture, build_s, load_s FROM elements"
                " WHERE fixture != '' AND build_s IS NOT NULL"
            ).fetchall()
        sums: dict[str, list[Any]] = {}
        for label, build, load in rows:
            fixture = label.split("[", 1)[0]  # (an element's label ends with its param)
            total = sums.setdefault(fixture, [0.0, 0.0, 0, 0])
            total[0] += build
            total[1] += load or 0.0
            total[2] += load is not None
            total[3] += 1
        return {f: (b, lo if n_lo == n else None, n) for f, (b, lo, n_lo, n) in sums.items()}

    def suggestions(self) -> list[Suggestion]:
        """Unmanaged fixtures over the kept history, the largest estimated saving first.

        The saving per session is the setup seconds per session minus one load per setup, a
        load costing the mean measured load of this store's elements (:data:`DEFAULT_LOAD_S`
        before any was measured).
        """
        with _transaction(self._db) as db:
            (mean_load,) = db.execute("SELECT avg(load_s) FROM elements").fetchone()
            rows = db.execute(
                "SELECT fixture, count(*), sum(setups), sum(seconds), max(tests),"
                " CASE WHEN min(picklable) = 0 THEN 0 WHEN max(picklable) = 1 THEN 1 END,"
                # the scope in the latest session
                " (SELECT x.scope FROM setups x JOIN sessions s ON s.id = x.session"
                "  WHERE x.fixture = setups.fixture ORDER BY s.started DESC LIMIT 1)"
                " FROM setups GROUP BY fixture"
            ).fetchall()
        load = DEFAULT_LOAD_S if mean_load is None else mean_load
        out = [
            Suggestion(
                fixture=fixture,
                scope=scope,
                sessions=sessions,
                setups=setups,
                seconds=seconds,
                mean_s=seconds / setups if setups else 0.0,
                tests=tests,
                picklable=None if picklable is None else bool(picklable),
                saving_s=(seconds - setups * load) / sessions,
            )
            for fixture, sessions, setups, seconds, tests, picklable, scope in rows
        ]
        return sorted(out, key=lambda s: (-s.saving_s, s.fixture))


def _text(ids: Iterable[int]) -> str:
    return ",".join(map(str, sorted(ids)))


def _ids(text: str) -> list[int]:
    return list(map(int, text.split(","))) if text else []


def _footprints(db: sqlite3.Connection) -> dict[int, tuple[list[int], list[int]]]:
    """Footprint id → (element ids used, element ids written)."""
    return {
        f: (_ids(elements), _ids(writes))
        for f, elements, writes in db.execute("SELECT id, elements, writes FROM footprints")
    }


def _pairs(
    footprints: Mapping[int, tuple[list[int], list[int]]],
    runs: Mapping[int, int],
    order: Mapping[int, int],
) -> dict[tuple[int, int], int]:
    """Co-access weights: index pair (by ``order`` of element ids) → the runs that used both.
    A footprint of more than :data:`PAIR_LIMIT` elements adds no pairs."""
    pairs: dict[tuple[int, int], int] = {}
    get = pairs.get  # a plain dict and a bound get: 1.6x faster here than a Counter
    for footprint, n in runs.items():
        ids = footprints[footprint][0]
        if len(ids) <= PAIR_LIMIT:
            for a, b in combinations(ids, 2):
                pair = (order[a], order[b])
                pairs[pair] = get(pair, 0) + n
    return pairs


def _element_stats(
    db: sqlite3.Connection, footprints: Mapping[int, tuple[list[int], list[int]]]
) -> tuple[dict[int, ElementInfo], Counter[int]]:
    """Element id → its info over the kept runs; and footprint id → how many runs had it."""
    runs: Counter[int] = Counter()
    of_test: defaultdict[int, list[int]] = defaultdict(list)  # test → its footprints
    for test, f, n in db.execute(
        "SELECT test, footprint, count(*) FROM runs GROUP BY test, footprint"
    ):
        runs[f] += n
        of_test[test].append(f)
    # Distinct tests per element. Most tests keep one footprint from session to session, and
    # counting their elements in C (Counter over chain) halves the time of a loop of set adds.
    tests = Counter(
        chain.from_iterable(
            footprints[fs[0]][0] if len(fs) == 1 else set().union(*(footprints[f][0] for f in fs))
            for fs in of_test.values()
        )
    )
    reads: Counter[int] = Counter()
    writes: Counter[int] = Counter()
    for f, n in runs.items():
        used, wrote = footprints[f]
        for e in used:
            reads[e] += n
        for e in wrote:
            writes[e] += n
    elements = {
        i: ElementInfo(
            key,
            fixture,
            scope,
            nbytes,
            build_s,
            load_s,
            reads[i] + writes[i],
            writes[i],
            tests[i],
        )
        for i, key, fixture, scope, nbytes, build_s, load_s in db.execute(
            "SELECT id, key, fixture, scope, nbytes, build_s, load_s FROM elements"
        )
    }
    return elements, runs


def _records(db: sqlite3.Connection, session: int | None = None) -> list[SessionRecord]:
    """The sessions of ``db`` (or the one with id ``session``) as records, oldest first.

    Each has its accesses (a test's reads, then its writes), its setups, and the elements it
    used with their latest measurements.
    """
    which = {"session": session}  # every session when None
    records = {
        sid: SessionRecord(uid, started, host)
        for sid, uid, started, host in db.execute(
            "SELECT id, uid, started, host FROM sessions"
            " WHERE :session IS NULL OR id = :session ORDER BY started, uid",
            which,
        )
    }
    elements = {
        i: Element(*row)
        for i, *row in db.execute(
            "SELECT id, key, fixture, scope, nbytes, build_s, load_s FROM elements"
        )
    }
    nodeids = dict(db.execute("SELECT id, nodeid FROM tests").fetchall())
    footprints = _footprints(db)
    for sid, test, f in db.execute(
        "SELECT session, test, footprint FROM runs WHERE :session IS NULL OR session = :session",
        which,
    ):
        used, wrote = footprints[f]
        record = records[sid]
        for e in used:
            record.read(nodeids[test], elements[e].key)
            record.elements[elements[e].key] = elements[e]
        for e in wrote:
            record.write(nodeids[test], elements[e].key)
    for sid, fixture, scope, seconds, setups, tests, picklable in db.execute(
        "SELECT session, fixture, scope, seconds, setups, tests, picklable FROM setups"
        " WHERE :session IS NULL OR session = :session",
        which,
    ):
        records[sid].setups[fixture] = FixtureSetup(
            fixture, scope, seconds, setups, tests, None if picklable is None else bool(picklable)
        )
    for sid, test, seconds in db.execute(
        "SELECT session, test, seconds FROM durations WHERE :session IS NULL OR session = :session",
        which,
    ):
        records[sid].durations[nodeids[test]] = seconds
    for sid, fixture, why in db.execute(
        "SELECT session, fixture, reason FROM refusals"
        " WHERE :session IS NULL OR session = :session",
        which,
    ):
        records[sid].refused[fixture] = why
    return list(records.values())
