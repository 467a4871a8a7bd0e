"""An acknowledged PUT is held somewhere; full tiers, resource caps and dead agents.

Real agents over real sockets; a full disk is a real one (a small tmpfs, which needs root:
skipped elsewhere). Plugin behaviour is checked through pytester runs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.client import AgentClient, AgentError
from nodeagent.launcher import AgentProcess, start_agent
from nodeagent.protocol import MAX_LEASES_PER_HOLDER
from nodeagent.tiers.disk import open_cache
from tests.conftest import Suite
from tests.integration.conftest import StartAgent, mounted_tmpfs

pytestmark = pytest.mark.timeout(120)

MiB = 2**20


def _killed(agent: AgentProcess) -> None:
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait(30)


@pytest.fixture
def tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that really fills up (needs root and mount)."""
    with mounted_tmpfs(tmp_path_factory.mktemp("tmpfs"), "2m") as path:
        yield path


def _fill(directory: Path) -> None:
    """Take every free byte of the file system ``directory`` is on."""
    with open(directory / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


# --------------------------------------------------------------------------- item 5


def test_two_puts_larger_than_ram_keep_the_newer(start: StartAgent) -> None:
    """Two values larger than RAM and each over half the disk limit: the second evicts the
    first and is served (diskcache's cull removed both, and write_errors said 0)."""
    agent = start(ram_bytes=MiB, disk_bytes=4 * MiB)
    big = int(2.4 * MiB)
    with AgentClient(agent.endpoint, timeout=30) as client:
        client.put("a", [b"a" * big], {})
        client.put("b", [b"b" * big], {})
        stats = client.stats()  # waits for the write-behind
        got = client.get("b")
        assert got is not None and bytes(got.frames[0]) == b"b" * big
        assert stats["write_errors"] == 0 and stats["tiers"]["disk"]["bytes"] <= 4 * MiB


def test_the_disk_tier_is_filled_not_culled_by_tens(start: StartAgent) -> None:
    """Twelve values of an eighth of the limit each, none fitting RAM: the disk tier keeps as
    many as fit, the most recent ones (it kept ~70% of its limit before)."""
    agent = start(ram_bytes=64 * 1024, disk_bytes=8 * MiB)
    with AgentClient(agent.endpoint, timeout=30) as client:
        for i in range(12):
            client.put(f"k{i}", [bytes([i]) * MiB], {})
        disk = client.stats()["tiers"]["disk"]
        kept = [i for i in range(12) if client.has(f"k{i}") is not None]
        assert kept == list(range(12 - len(kept), 12)), kept
        assert disk["bytes"] + MiB > 8 * MiB >= disk["bytes"], disk


def test_a_put_no_tier_can_hold_is_refused_and_reported(start: StartAgent) -> None:
    agent = start(ram_bytes=MiB, disk_bytes=2 * MiB)
    with AgentClient(agent.endpoint, timeout=30) as client:
        client.put("old", [b"o" * 1000], {})
        with pytest.raises(AgentError, match="too-large: put: the value of 'big'") as exc:
            client.put("big", [b"x" * MiB, b"y" * MiB, b"z" * MiB], {})  # 3 frames, 3 MiB
        assert exc.value.error == "too-large"
        assert client.has("big") is None and client.has("old") == "ram"
        assert client.stats()["write_errors"] == 0
        assert client.lease("big", "me", 10).granted  # the refused builder's lease is gone


# --------------------------------------------------------------------------- item 7


def test_a_frame_larger_than_every_tier_is_dropped_unread(start: StartAgent) -> None:
    """The agent reads no frame over its largest tier (+ 1 MiB): zmq drops the sender, whose
    request fails at once (not after its timeout); the agent serves on."""
    agent = start(ram_bytes=MiB, disk_bytes=2 * MiB)
    with AgentClient(agent.endpoint, timeout=60) as client:
        client.ping()
        with pytest.raises(AgentError) as exc:
            client.put("huge", [bytes(8 * MiB)], {})
        assert exc.value.error == "gone", exc.value
        assert client.has("huge") is None  # (a new connection)
        assert client.ping()["ok"]


def test_meta_counts_in_the_ram_budget(start: StartAgent) -> None:
    """Entries with no payload and a 20 kB meta each: RAM holds what its budget allows (it
    held all of them: 332 MiB resident on a 1 MiB budget, at scale)."""
    agent = start(ram_bytes=MiB, disk_dir=None)
    with AgentClient(agent.endpoint, timeout=30) as client:
        for i in range(200):
            client.put(f"k{i}", [], {"blob": "x" * 20_000})
        ram = client.stats()["tiers"]["ram"]
        assert ram["entries"] <= MiB // 20_000, ram
        assert ram["bytes"] + ram["meta_bytes"] <= MiB


def test_leases_per_holder_are_capped(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint, timeout=30) as client:
        for i in range(MAX_LEASES_PER_HOLDER):
            assert client.lease(f"k{i}", "greedy", 600).granted
        with pytest.raises(AgentError, match="too-many-leases: lease: holder 'greedy'") as exc:
            client.lease("one-more", "greedy", 600)
        assert exc.value.error == "too-many-leases"
        assert client.lease("k0", "greedy", 600).granted  # a renewal is no new lease
        assert client.lease("one-more", "other", 600).granted  # other holders are unaffected
        assert client.release("k0", "greedy")
        assert client.lease("one-more-again", "greedy", 600).granted  # room again
        assert client.stats()["leases"] == MAX_LEASES_PER_HOLDER + 1


# --------------------------------------------------------------------------- item 8


def test_a_request_waiting_on_an_agent_that_dies_fails_at_once(agent: AgentProcess) -> None:
    """A LEASE parked at the agent (another holder builds) when the agent is killed: the
    client fails with ``gone`` as soon as the connection closes (it waited for its whole
    timeout: 60 s here, ``timeout`` error)."""
    with (
        AgentClient(agent.endpoint, timeout=60) as holder,
        AgentClient(agent.endpoint, timeout=60) as waiter,
    ):
        assert holder.lease("k", "builder", 600).granted
        waiter.ping()
        # Whether the kill lands before or while the LEASE waits, the answer is the same.
        killer = threading.Timer(0.3, _killed, (agent,))
        killer.start()
        try:
            with pytest.raises(AgentError) as exc:
                waiter.lease("k", "waiter", 600, wait=10)
        finally:
            killer.join()
        assert exc.value.error == "gone", exc.value


def test_a_fresh_client_to_an_agent_that_was_up_fails_at_once(agent: AgentProcess) -> None:
    """The plugin opens a client per fixture setup: once the agent answered this run, a
    refused connection is a dead agent (a ``timeout`` after 60 s before)."""
    endpoint = agent.endpoint
    _killed(agent)
    with AgentClient(endpoint, timeout=60, was_up=True) as client, pytest.raises(AgentError) as exc:
        client.get("k")
    assert exc.value.error == "gone", exc.value


def test_evict_to_a_full_disk_keeps_the_entry_in_ram(tmpfs: Path) -> None:
    """EVICT tier=ram of an entry only RAM holds, on a full disk: ``disk-full``, and the
    entry stays served from RAM (it answered ``internal``)."""
    agent = start_agent(disk_dir=str(tmpfs / "disk"), ram_bytes=8 * MiB)
    with agent, AgentClient(agent.endpoint, timeout=30) as client:
        _fill(tmpfs)
        client.put("k", [os.urandom(512 * 1024)], {})  # its write-behind fails: disk full
        assert client.stats()["write_errors"] == 1
        with pytest.raises(AgentError, match="disk-full: evict: 1 of 1 key") as exc:
            client.evict("k", tier="ram")
        assert exc.value.error == "disk-full"
        assert client.has("k") == "ram" and client.get("k") is not None
        assert client.ping()["ok"]


def test_an_agent_on_a_full_disk_exits_with_one_line(tmpfs: Path) -> None:
    _fill(tmpfs)
    log = tmpfs.parent / "full-agent.log"
    with pytest.raises(AgentError, match="exited with status 2") as exc:
        start_agent(disk_dir=str(tmpfs / "disk"), log_file=str(log))
    text = log.read_text()
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nodeagent: error: cannot open the disk tier")
    assert "database or disk is full" in str(exc.value) or "No space left" in str(exc.value)


# --------------------------------------------------------------------------- through the plugin

CONFTEST = """
import time
import pytest

@pytest.fixture(scope="session")
def dataset():
    time.sleep(0.2)  # (loading must pay: a value of no cost is built, not loaded)
    return list(range(5000))
"""


def _garble_rows(directory: Path) -> int:
    cache = open_cache(str(directory))
    try:
        keys = list(cache.iterkeys())
        for key in keys:
            cache.set(key, b"garbage")
        return len(keys)
    finally:
        cache.close()


@pytest.mark.parametrize("xdist", [False, True], ids=["in-process", "agent"])
def test_corrupt_rows_are_rebuilt_with_a_summary_line(suite: Suite, xdist: bool) -> None:
    """README: a corrupt entry makes the plugin build the value itself and say so in the
    summary. A disk row that is not an entry at all was deleted and rebuilt silently."""
    suite.pytester.makeini("[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = dataset\n")
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(
        test_a="def test_a(dataset):\n    assert len(dataset) == 5000\n",
        test_b="def test_b(dataset):\n    assert sum(dataset) == 5000 * 4999 // 2\n",
    )
    args = ("-n", "2") if xdist else ()
    suite.run(*args)  # cold: stores the value
    assert _garble_rows(suite.pytester.path / ".statemigrate" / "agent-disk") >= 1
    run = suite.same_as_plain(*args)
    run.result.stdout.fnmatch_lines(
        ["*fallback: corrupt entry for *dataset: *corrupt value (bad magic), deleted; rebuilt"]
    )
    assert run.stats is not None and run.stats["builds"] >= 1
    again = suite.run(*args)  # stored again
    assert again.stats is not None and again.stats["builds"] == 0, again.text


SLOW_BUILD = """
import os, select, time
import psutil
import pytest

def _agent():
    for proc in psutil.Process(os.getppid()).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:  # gone, or a zombie: the agent killed by the first builder
            continue
        if "nodeagent" in cmd and "--bind" in cmd:
            return proc, cmd[cmd.index("--bind") + 1]
    return None, None

@pytest.fixture(scope="session")
def dataset():
    proc, endpoint = _agent()  # (the plain run has none; the second builder finds it dead)
    if proc is not None:
        from nodeagent.client import AgentClient, AgentError
        try:
            with AgentClient(endpoint, timeout=10) as client:
                deadline = time.monotonic() + 60
                while client.stats().get("waiting", 0) < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)  # the other worker's LEASE is parked at the agent
        except AgentError:
            pass
        fd = os.pidfd_open(proc.pid)
        try:
            proc.kill()
            assert select.select([fd], [], [], 60)[0], "the agent outlived SIGKILL"
        finally:
            os.close(fd)
    return list(range(5000))
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_a_worker_waiting_for_a_build_does_not_wait_out_a_dead_agent(suite: Suite) -> None:
    """Under -n 2 one worker builds ``dataset`` while the other's LEASE waits at the agent for
    it; the agent dies mid-build. The waiting worker's request fails at once and it builds
    the value itself. Before, it waited for its whole request timeout (statemigrate_timeout
    = 600 s here: past pytester's 180 s limit)."""
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_timeout = 600\n"
        "statemigrate_fixtures = dataset\n"
    )
    suite.pytester.makeconftest(SLOW_BUILD)
    body = "def test_{0}(dataset):\n    assert len(dataset) == 5000\n"
    suite.pytester.makepyfile(**{f"test_{i}": body.format(i) for i in range(8)})
    plain = suite.plain("-n", "2")
    run = suite.run("-n", "2")
    assert run.outcomes == plain.outcomes and set(run.outcomes.values()) == {"passed"}, run.text
    run.result.stdout.fnmatch_lines(["*fallback: agent unavailable*gone*"])
