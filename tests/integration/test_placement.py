"""Placement over three real agents: RING, LOCATE, ANNOUNCE, and runs that lose an agent.

The agent-level tests talk to ``python -m nodeagent`` processes directly; the run-level tests
start pytest (pytester, in a subprocess) with ``--sm-agent a,b,c`` and compare every outcome
with a plain pytest run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodeagent.client import AgentClient, AgentError
from nodeagent.launcher import AgentProcess
from nodeagent.placement import HashRing
from tests.integration.conftest import StartAgent

pytestmark = pytest.mark.timeout(240)


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.02)


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
