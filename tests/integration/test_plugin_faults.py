"""The plugin against real agents in trouble: killed mid-run, corrupt entries.

Each run is compared with a plain pytest run of the same suite: trouble may cost a rebuild,
never an outcome.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeagent.tiers.disk import open_cache
from tests.conftest import Suite
from tests.integration.conftest import StartAgent, mounted_tmpfs

pytestmark = pytest.mark.timeout(240)

CONFTEST = """
import time
import pytest
from pathlib import Path

def built(name):
    with open(Path(__file__).parent / "builds.log", "a") as fh:
        fh.write(name + "\\n")
    time.sleep(0.05)

@pytest.fixture(scope="module")
def dataset(request):
    built("dataset")
    return list(range(5000))

@pytest.fixture
def rows(dataset):
    built("rows")
    return dataset[:10]
"""

TESTS = """
import os, select, signal

def test_a(dataset, rows):
    assert rows == list(range(10))

def test_kill_agent():
    pid = os.environ.get("SM_KILL_PID")
    if pid:
        # The agent dies, and its socket closes, after kill() returns: the next test must
        # meet a dead agent, not one a loaded machine has not got round to ending. The
        # pidfd becomes readable when it has ended (its files closed).
        fd = os.pidfd_open(int(pid))
        try:
            os.kill(int(pid), signal.SIGKILL)
            assert select.select([fd], [], [], 60)[0], "the agent outlived SIGKILL"
        finally:
            os.close(fd)

def test_b(rows):
    assert len(rows) == 10

def test_c(dataset):
    assert sum(dataset) == 5000 * 4999 // 2
"""


def _project(suite: Suite, timeout: float = 2) -> None:
    suite.pytester.makeini(
        f"[pytest]\nfilterwarnings = error\nstatemigrate_timeout = {timeout:g}\n"
        "statemigrate_fixtures =\n    dataset\n    rows\n"
    )
    suite.pytester.makeconftest(CONFTEST)
    # (test_two's copy kills nothing: the agent is killed once, by test_one)
    second = TESTS.replace("test_kill_agent", "test_x").replace("SM_KILL_PID", "SM_NOTHING")
    suite.pytester.makepyfile(test_one=TESTS, test_two=second)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_agent_killed_mid_run(suite: Suite, start: StartAgent) -> None:
    """The agent serves the run's first test, then dies (SIGKILL) before the second: the
    rest is built in-process, and no outcome changes.

    Deterministic on a loaded machine: the kill happens in the plugin's run only (the plain
    run leaves the agent alone), the test that kills waits for the agent's end before the
    next test asks it anything, and the agent is never asked for a stored value while it
    lives (nothing is loaded: no load-or-build choice by measured time). A timeout of 10 s
    leaves the live requests room; the dead agent is found out within the 2 s a connection
    may take.
    """
    _project(suite, timeout=10)
    agent = start(disk_dir=str(suite.pytester.path / "agent-disk"))
    plain = suite.plain("--sm-agent", agent.endpoint)
    os.environ["SM_KILL_PID"] = str(agent.pid)
    try:
        run = suite.run("--sm-agent", agent.endpoint)
    finally:
        del os.environ["SM_KILL_PID"]
    assert agent.process.wait(10) is not None
    assert run.outcomes == plain.outcomes and set(run.outcomes.values()) == {"passed"}, run.text
    run.result.stdout.fnmatch_lines(["fallback: agent unavailable*values were built in-process*"])
    assert run.stats is not None and run.stats["bytes_stored"] > 0  # served until it died
    assert run.stats["hits_total"] == 0, run.text
    assert not any("loading took" in why for why in run.stats["built_instead"].values())
    # Built as often as plain pytest builds: dataset once per module, rows once per test.
    assert suite.builds() == 2 * (["dataset", "rows", "rows", "dataset", "rows", "rows"])


def _entries(directory: str) -> list[str]:
    cache = open_cache(directory)
    try:
        return list(cache.iterkeys())
    finally:
        cache.close()


def _rewrite(directory: str, change: bytes | None) -> int:
    """Overwrite every disk entry: with ``change`` if given, else flip its last byte."""
    cache = open_cache(directory)
    try:
        keys = list(cache.iterkeys())
        for key in keys:
            raw = bytes(cache.get(key))
            cache.set(key, change if change is not None else raw[:-1] + bytes([raw[-1] ^ 0xFF]))
        return len(keys)
    finally:
        cache.close()


@pytest.mark.parametrize("damage", ["garbage", "bitflip"])
def test_corrupt_entries_are_rebuilt(suite: Suite, damage: str) -> None:
    _project(suite)
    suite.run()  # cold: stores dataset (x2 modules) and rows
    disk = str(suite.pytester.path / ".statemigrate" / "agent-disk")
    assert _rewrite(disk, b"garbage" if damage == "garbage" else None) >= 2
    (suite.pytester.path / "builds.log").unlink()
    run = suite.same_as_plain()
    assert set(run.outcomes.values()) == {"passed"}, run.text
    assert run.stats is not None and run.stats["builds"] >= 2
    if damage == "bitflip":
        run.result.stdout.fnmatch_lines(["fallback: unreadable entry for *digest mismatch*"])
    # The rebuilt values were stored again: the next run builds nothing.
    (suite.pytester.path / "builds.log").unlink()
    again = suite.run()
    assert suite.builds() == [], again.text


@pytest.mark.parametrize("xdist", [False, True], ids=["in-process", "agent"])
def test_a_corrupt_disk_database_is_moved_aside(suite: Suite, xdist: bool) -> None:
    """A disk tier whose cache.db is not a database: moved aside, by the plugin's own reader
    (one process) or by the agent (-n 2), and the values are stored again in that run."""
    _project(suite)
    args = ("-n", "2") if xdist else ()
    suite.run(*args)  # cold: stores the values
    store = suite.pytester.path / ".statemigrate"
    garbage = b"this is not a database" * 100
    (store / "agent-disk" / "cache.db").write_bytes(garbage)
    (suite.pytester.path / "builds.log").unlink()
    run = suite.same_as_plain(*args)
    assert "Traceback" not in run.text, run.text
    assert (store / "agent-disk" / "cache.bad" / "cache.db").read_bytes() == garbage
    if xdist:  # the agent says so on its stderr, in one line
        log = (store / "agent.log").read_text()
        assert log.count("cache.db is not a readable database") == 1, log
    else:  # the summary says so, in one line
        assert run.text.count("cache.db is not a readable database") == 1, run.text
    (suite.pytester.path / "builds.log").unlink()
    again = suite.run(*args)
    assert suite.builds() == [], again.text


def test_unknown_secret_is_not_trusted(suite: Suite) -> None:
    _project(suite)
    suite.run()
    secret = suite.pytester.path / ".statemigrate" / "secret"
    secret.write_text("another project's secret, 32 bytes or more")
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines(["fallback: unverifiable entry for *bad signature*"])
    assert run.stats is not None and run.stats["builds"] >= 2


@pytest.fixture
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 1 MiB tmpfs: a real full disk (needs root and mount)."""
    with mounted_tmpfs(tmp_path_factory.mktemp("tiny"), "1m") as path:
        yield str(path)


def test_full_disk_costs_a_rebuild_not_an_outcome(
    suite: Suite, tiny_disk: str, start: StartAgent
) -> None:
    # tiny_disk comes before start: it is unmounted after the agent has stopped.
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    small\n    big\n"
    )
    suite.pytester.makeconftest("""
import time
import pytest

@pytest.fixture(scope="session")
def small():
    time.sleep(0.05)
    return list(range(100))

@pytest.fixture(scope="session")
def big():
    time.sleep(0.05)
    return bytes(4 * 2**20)
""")
    suite.pytester.makepyfile("def test_both(small, big):\n    assert len(big) == 4 * 2**20\n")
    agent = start(disk_dir=tiny_disk, ram_bytes=2**20)  # RAM cannot hold big either
    first = suite.same_as_plain("--sm-agent", agent.endpoint)
    # PUTs are acknowledged before the disk write (write-behind): the run learns of the full
    # disk from the agent's write-error count at its end.
    first.result.stdout.fnmatch_lines(["fallback: the agent could not write 1 value(s) to disk*"])
    second = suite.same_as_plain("--sm-agent", agent.endpoint)
    assert second.stats is not None and second.stats["hits_total"] == 1  # small
    assert second.stats["builds"] == 1  # big, again
    assert agent.process.poll() is None  # the agent survived its full disk


def test_full_disk_without_an_agent_costs_a_rebuild(suite: Suite, tiny_disk: str) -> None:
    """A cold single-process run writes the disk tier itself; a full disk is one summary line."""
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = big\n")
    suite.pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(scope='session')\n"
        "def big():\n    return bytes(4 * 2**20)\n"
    )
    suite.pytester.makepyfile("def test_big(big):\n    assert len(big) == 4 * 2**20\n")
    run = suite.same_as_plain(f"--sm-dir={tiny_disk}")
    run.result.stdout.fnmatch_lines(["fallback: disk tier *cannot write*built again next run"])
    assert run.stats is not None and run.stats["builds"] == 1
    again = suite.same_as_plain(f"--sm-dir={tiny_disk}")
    assert again.stats is not None and again.stats["builds"] == 1 and not again.stats["hits"]


@pytest.fixture
def own_tmpdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the runs' own, to see what they leave behind in it."""
    path = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(path))
    return path


@pytest.fixture
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], None]]:
    """``read_only(dir)`` makes ``dir`` a read-only bind mount of itself (needs root and
    mount: chmod does not stop root)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    mounted: list[Path] = []

    def _read_only(path: Path) -> None:
        for cmd in (
            ["mount", "--bind", str(path), str(path)],
            ["mount", "-o", "remount,bind,ro", str(path)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
            if "--bind" in cmd:
                mounted.append(path)

    yield _read_only
    for path in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@pytest.mark.parametrize("xdist", [False, True], ids=["in-process", "n2"])
def test_a_read_only_store_runs_unmanaged(
    suite: Suite, xdist: bool, own_tmpdir: Path, read_only: Callable[[Path], None]
) -> None:
    """A read-only ``.statemigrate`` (a read-only mount, another user's checkout): one line,
    the run unmanaged, no outcome changed and nothing left in the temp directory."""
    _project(suite)
    args = ("-n", "2") if xdist else ()
    suite.run(*args)  # cold: the store exists, with values in it
    read_only(suite.pytester.path / ".statemigrate")
    run = suite.same_as_plain(*args)
    assert "INTERNALERROR" not in run.text and "Traceback" not in run.text, run.text
    run.result.stdout.fnmatch_lines(
        [
            "fallback: the store directory *: cannot write in it (read-only); name a writable "
            "directory: fixtures run unmanaged"
        ]
    )
    assert list(own_tmpdir.iterdir()) == []


@pytest.mark.parametrize("xdist", [False, True], ids=["in-process", "n2"])
def test_an_agent_that_cannot_start_costs_builds_not_outcomes(
    suite: Suite, xdist: bool, own_tmpdir: Path
) -> None:
    """The agent's log cannot be opened (here: a directory is in its place), so no agent
    starts: the run builds in-process. One line says why; nothing is left in the temp
    directory."""
    _project(suite)
    args = ("-n", "2") if xdist else ()
    suite.run(*args)
    log = suite.pytester.path / ".statemigrate" / "agent.log"
    log.unlink(missing_ok=True)
    log.mkdir()
    run = suite.same_as_plain("--sm-refresh", *args)  # it builds: the agent would start
    assert "INTERNALERROR" not in run.text and "Traceback" not in run.text, run.text
    run.result.stdout.fnmatch_lines(
        ["fallback: agent * cannot open its log *agent.log: Is a directory*"]
    )
    assert list(own_tmpdir.iterdir()) == []
