"""Placement over three real agents: RING, LOCATE, ANNOUNCE, and runs that lose an agent.

The agent-level tests talk to ``python -m nodeagent`` processes directly; the run-level tests
start pytest (pytester, in a subprocess) with ``--sm-agent a,b,c`` and compare every outcome
with a plain pytest run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.client import AgentClient, AgentError
from nodeagent.launcher import AgentProcess
from nodeagent.placement import HashRing
from pytest_statemigrate.agents.link import AgentLink
from pytest_statemigrate.proxy import BuildRecord, Hit, Miss, StateProxy
from pytest_statemigrate.report import RunStats
from tests.conftest import Suite
from tests.integration.conftest import StartAgent, wait_until

pytestmark = pytest.mark.timeout(240)


def three(start: StartAgent, tmp_path: Path, **kwargs: Any) -> list[AgentProcess]:
    return [start(disk_dir=str(tmp_path / f"disk{i}"), **kwargs) for i in range(3)]


def tell_ring(agents: list[AgentProcess], names: list[str] | None = None) -> HashRing:
    names = names or [a.endpoint for a in agents]
    for agent in agents:
        with AgentClient(agent.endpoint, timeout=10) as c:
            c.ring(names, agent.endpoint)
    return HashRing(names)


def keys_homed(ring: HashRing, agent: str, count: int, prefix: str = "key") -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        key = f"{prefix}-{i}"
        if ring.home(key) == agent:
            found.append(key)
        i += 1
    return found


def locate(endpoint: str, key: str) -> list[list[Any]]:
    with AgentClient(endpoint, timeout=10) as c:
        return c.locate([key]).get(key, [])


def test_put_through_the_home_is_located_there(start: StartAgent, tmp_path: Path) -> None:
    agents = three(start, tmp_path)
    ring = tell_ring(agents)
    for agent in agents:
        key = keys_homed(ring, agent.endpoint, 1)[0]
        with AgentClient(agent.endpoint, timeout=10) as c:
            version = c.put(key, [b"value"], {"k": key})
            assert c.locate([key, "unknown"]) == {key: [[agent.endpoint, "ram", version]]}
        # The others are not its directory: they know nothing of it.
        for other in agents:
            if other is not agent:
                assert locate(other.endpoint, key) == []


def test_prefetch_on_another_agent_is_announced_to_the_directory(
    start: StartAgent, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")  # shared: B loads from it what A stored
    a, b, c = three(start, tmp_path, store=store)
    ring = tell_ring([a, b, c])
    key = keys_homed(ring, a.endpoint, 1)[0]
    with AgentClient(a.endpoint, timeout=10) as ca:
        version = ca.put(key, [b"x" * 1000], {})
        ca.stats()  # the write-behind reached the store
    with AgentClient(b.endpoint, timeout=10) as cb:
        assert cb.prefetch([key]) == {"queued": 1, "present": 0, "missing": 0}
        wait_until(lambda: cb.has(key) == "ram")
    located = wait_until(lambda: len(locate(a.endpoint, key)) == 2 and locate(a.endpoint, key))
    assert sorted(map(tuple, located)) == sorted(
        [(a.endpoint, "ram", version), (b.endpoint, "ram", version)]
    )
    # B demotes it out of RAM (to the store: on this device the disk tier is skipped), then
    # drops it: the directory follows.
    with AgentClient(b.endpoint, timeout=10) as cb:
        assert cb.evict(key, tier="ram")
        below = cb.has(key)
        assert below in ("disk", "store")
        wait_until(lambda: [b.endpoint, below, version] in locate(a.endpoint, key))
        # B drops it (from its RAM and the store it shares); A still holds it in RAM.
        assert cb.evict(key)
    wait_until(lambda: locate(a.endpoint, key) == [[a.endpoint, "ram", version]])
    with AgentClient(b.endpoint, timeout=10) as cb:
        placement = cb.stats()["placement"]
    assert placement["agents"] == 3 and placement["announced"] >= 3


def test_a_dead_directory_does_not_stall_the_holder(start: StartAgent, tmp_path: Path) -> None:
    a, b, _ = three(start, tmp_path)
    dead = f"ipc://{tmp_path}/nobody.sock"  # in the ring, never started
    ring = tell_ring([a, b], [a.endpoint, b.endpoint, dead])
    to_dead = keys_homed(ring, dead, 20, "d")
    to_b = keys_homed(ring, b.endpoint, 3, "b")
    with AgentClient(a.endpoint, timeout=10) as ca:
        started = time.monotonic()
        for key in to_dead:
            ca.put(key, [b"v"], {})
        assert time.monotonic() - started < 2.0  # the loop never waits for announcements
        wait_until(lambda: ca.stats()["placement"]["dropped"] >= 1)
        for key in to_b:
            ca.put(key, [b"v"], {})
    # Announcements to a live directory still arrive (the dead one is skipped, not retried).
    for key in to_b:
        wait_until(lambda k=key: [a.endpoint, "ram", 1] in locate(b.endpoint, k))


def test_a_joining_agent_receives_only_its_arc(start: StartAgent, tmp_path: Path) -> None:
    a, b, c = three(start, tmp_path)
    small = tell_ring([a, b])
    keys = [f"k{i}" for i in range(60)]
    for key in keys:
        with AgentClient(small.home(key), timeout=10) as client:
            client.put(key, [b"v"], {})
    big = tell_ring([a, b, c])
    moving = [k for k in keys if big.home(k) == c.endpoint]
    assert moving and all(small.home(k) != c.endpoint for k in keys)
    for key in moving:  # handed over by the old directory, naming the old holder
        wait_until(lambda k=key: locate(c.endpoint, k) == [[small.home(k), "ram", 1]])
    for key in keys:
        if key not in moving:
            assert locate(big.home(key), key) == [[big.home(key), "ram", 1]]
        else:
            assert locate(small.home(key), key) == []


def test_ring_refuses_a_name_outside_it(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint, timeout=10) as c, pytest.raises(AgentError, match="'me'"):
        c.ring(["ipc:///tmp/x.sock"], agent.endpoint)
    assert os.path.exists(agent.log_path)


# -- the proxy's round trips, one agent against three


class Recorder:
    """A real AgentClient that writes down the ops it sends."""

    def __init__(self, client: AgentClient, log: list[tuple[str, str]], name: str) -> None:
        self._client, self._log, self._name = client, log, name

    def __getattr__(self, op: str) -> Any:
        method = getattr(self._client, op)
        if op in ("close",):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append((self._name, op))
            return method(*args, **kwargs)

        return call


class Recording:
    """The link's local access handing it a :class:`Recorder` client (no first contact)."""

    def __init__(self, endpoint: str, log: list[tuple[str, str]], name: str) -> None:
        self._endpoint, self._log, self._name = endpoint, log, name

    def started_empty(self) -> bool:
        return False

    def local_get(self, key: str) -> None:
        return None

    def local_miss(self) -> bool:
        return False

    def local_client(self) -> Recorder:
        return Recorder(AgentClient(self._endpoint, 10.0), self._log, self._name)


def _proxy(endpoints: list[str], log: list[tuple[str, str]], tmp_path: Path) -> StateProxy:
    many = len(endpoints) > 1
    links = [
        AgentLink(
            lambda e=e: e,
            10.0,
            name=e if many else "",
            local=Recording(e, log, f"agent{endpoints.index(e)}"),
        )
        for e in endpoints
    ]
    (tmp_path / "secret").write_bytes(b"s" * 32)
    return StateProxy(
        link=links[0],
        peers=links[1:],
        secret=lambda: b"s" * 32,
        rootdir=tmp_path,
        stats=RunStats(),
        refresh=False,
        max_value_bytes=2**20,
        lease_seconds=10.0,
    )


def _cold_then_warm(proxy: StateProxy, key: str) -> tuple[Any, Any]:
    miss = proxy.lookup(key, "f", {}.__getitem__)
    assert isinstance(miss, Miss) and miss.store and miss.holder is not None
    proxy.store(key, "f", [1, 2, 3], {}, BuildRecord(seconds=0.5), miss)
    proxy.close_link()
    proxy._fresh.clear()  # as another process would: it did not store the key itself
    hit = proxy.lookup(key, "f", {}.__getitem__)
    proxy.close_link()
    return miss, hit


def test_one_agent_costs_no_extra_round_trip(start: StartAgent, tmp_path: Path) -> None:
    """The single-agent path sends what it always sent: GET, LEASE, PUT cold; GET warm. No
    RING, no LOCATE."""
    agent = start(disk_dir=str(tmp_path / "disk"))
    log: list[tuple[str, str]] = []
    proxy = _proxy([agent.endpoint], log, tmp_path)
    _, hit = _cold_then_warm(proxy, "k-single")
    assert isinstance(hit, Hit) and hit.value == [1, 2, 3]
    assert [op for _, op in log] == ["get", "lease", "put", "get"]


def test_three_agents_locate_then_get_from_the_holder(start: StartAgent, tmp_path: Path) -> None:
    agents = three(start, tmp_path)
    endpoints = [a.endpoint for a in agents]
    log: list[tuple[str, str]] = []
    proxy = _proxy(endpoints, log, tmp_path)
    ring = tell_ring(agents)  # (Recording.local_client skips the first contact that would send it)
    key = "k-multi"
    home = f"agent{endpoints.index(ring.home(key))}"
    _, hit = _cold_then_warm(proxy, key)
    assert isinstance(hit, Hit) and hit.value == [1, 2, 3]
    # Cold: LOCATE at the home (nothing), GET there, LEASE and PUT there; warm: LOCATE names
    # the home as holder, GET there.
    assert locate(ring.home(key), key) == [[ring.home(key), "ram", 1]]
    cold = [(home, "locate"), (home, "get"), (home, "lease"), (home, "put")]
    assert log == [*cold, (home, "locate"), (home, "get")]


# -- whole runs with --sm-agent a,b,c


def tables_project(values: int, rows: int, build_s: float) -> tuple[str, str]:
    """A conftest of ``values`` module-scoped tables ``table_i`` and as many function-scoped
    ``row_i`` (each build logged to builds.log, taking ``build_s``, a dict of ``rows`` rows),
    and a test module that uses them all (one test fails)."""
    conftest = f"""
import time
import pytest
from pathlib import Path

def built(name):
    with open(Path(__file__).parent / "builds.log", "a") as fh:
        fh.write(name + "\\n")
    time.sleep({build_s})

def _make(name, scope):
    @pytest.fixture(scope=scope, name=name)
    def fixture():
        built(name)
        return {{"name": name, "rows": list(range({rows}))}}
    return fixture

for _i in range({values}):
    globals()[f"table_{{_i}}"] = _make(f"table_{{_i}}", "module")
    globals()[f"row_{{_i}}"] = _make(f"row_{{_i}}", "function")
"""
    tables = ", ".join(f"table_{i}" for i in range(values))
    rows_ = ", ".join(f"row_{i}" for i in range(values))
    uses = f"""
def test_tables({tables}):
    assert [t["name"] for t in ({tables},)] == [f"table_{{i}}" for i in range({values})]

def test_rows({rows_}):
    assert sum(len(r["rows"]) for r in ({rows_},)) == {values * rows}

def test_fails(row_0):
    assert row_0["name"] == "row_1"
"""
    return conftest, uses


# (builds well above a load's cost, even on a loaded machine: no value is built by decision)
CONFTEST, USES = tables_project(values=4, rows=2000, build_s=0.08)

KILL = """
import os, signal

def test_kill_agent():
    pid = os.environ.get("SM_KILL_PID")
    if pid:
        os.kill(int(pid), signal.SIGKILL)
"""

MANAGED = 8  # values: four module tables, four function rows


def _project(suite: Suite) -> None:
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_timeout = 2\n"
        "statemigrate_fixtures =\n    table_*\n    row_*\n"
    )
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_a=USES, test_b_kill=KILL, test_c=USES)


def _stats(agent: AgentProcess) -> dict[str, Any]:
    with AgentClient(agent.endpoint, timeout=10) as c:
        return c.stats()


def _ram_entries(agent: AgentProcess) -> int:
    return int(_stats(agent)["tiers"]["ram"]["entries"])


def test_three_agents_cold_then_warm(suite: Suite, start: StartAgent, tmp_path: Path) -> None:
    _project(suite)
    agents = three(start, tmp_path)
    flag = ",".join(a.endpoint for a in agents)
    cold = suite.same_as_plain("--sm-agent", flag)
    assert cold.stats is not None and cold.stats["builds"] == MANAGED
    assert not cold.stats["fallbacks"], cold.text
    assert sorted(set(suite.builds())) == sorted(
        [f"table_{i}" for i in range(4)] + [f"row_{i}" for i in range(4)]
    )
    # Each value was stored once, at its home, which records itself as its holder. (Not
    # asserted: that all three got some; 8 keys land on one agent with p = 3**-7.)
    held = [_ram_entries(a) for a in agents]
    assert sum(held) == MANAGED, (held, cold.text)
    # Announcements are batched by a thread of each agent: under load they may land late.
    wait_until(lambda: [_stats(a)["placement"]["records"] for a in agents] == held)
    (suite.pytester.path / "builds.log").unlink()
    warm = suite.run("--sm-agent", flag)  # (the plain run would write builds.log)
    assert warm.outcomes == cold.outcomes  # which equal a plain run's
    assert warm.stats is not None
    assert warm.stats["builds"] == 0 and sum(warm.stats["hits"].values()) >= MANAGED
    assert suite.builds() == []  # no managed fixture body ran
    assert not warm.stats["fallbacks"], warm.text


def test_an_agent_killed_mid_run(suite: Suite, start: StartAgent, tmp_path: Path) -> None:
    _project(suite)
    agents = three(start, tmp_path)
    flag = ",".join(a.endpoint for a in agents)
    suite.run("--sm-agent", flag)  # values stored, spread over the three
    victim = max(agents, key=_ram_entries)  # the home of the most values
    os.environ["SM_KILL_PID"] = str(victim.pid)
    try:
        run = suite.same_as_plain("--sm-agent", flag)
    finally:
        del os.environ["SM_KILL_PID"]
    assert victim.process.wait(10) is not None
    assert run.stats is not None
    assert set(run.outcomes.values()) == {"passed", "failed"}
    # The victim's values were rebuilt after the kill (stored on the next agent of the ring);
    # the others' were still served.
    assert run.stats["builds"] >= 1 and sum(run.stats["hits"].values()) >= 1
    run.result.stdout.fnmatch_lines([f"*agent {victim.endpoint} down*other agents*"])
    down_lines = [line for line in run.result.stdout.lines if " down (" in line]
    assert len(down_lines) == 1, down_lines
    # The survivors serve the next run: nothing is rebuilt.
    again = suite.same_as_plain("--sm-agent", flag)
    assert again.stats is not None and again.outcomes == run.outcomes
    assert again.stats["builds"] == 0, again.text


def test_the_scheduler_learns_which_values_are_stored(start: StartAgent, tmp_path: Path) -> None:
    """``--dist statemigrate`` balances units on what this run pays: the controller asks each
    key's home whether it holds the key (HAS), and keys it holds are loaded, not built."""
    from pytest_statemigrate import settings as st
    from pytest_statemigrate.session import StateMigrateSession

    agents = three(start, tmp_path)
    endpoints = [a.endpoint for a in agents]
    ring = tell_ring(agents)
    held = [keys_homed(ring, e, 1, prefix="held")[0] for e in endpoints]
    for key in held:
        with AgentClient(ring.home(key), timeout=10) as c:
            c.put(key, [b"x"], {})
    missing = [f"missing-{i}" for i in range(5)]
    ini = {"statemigrate_agent": ",".join(endpoints)}
    settings = st.build(
        rootdir=tmp_path,
        ini=lambda name: [] if name == "statemigrate_fixtures" else ini.get(name, ""),
        option=lambda name: None,
    )
    session = StateMigrateSession(settings, tmp_path, settings.agent)
    try:
        assert session.stored([*held, *missing]) == set(held)
        assert session.stored([*held, *missing], seconds=0.0) == set()  # out of time: built
    finally:
        session.close()
