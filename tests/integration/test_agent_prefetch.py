"""PREFETCH, EVICT tier=ram, MIGRATE and the slow-store options, on real agent processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import msgpack
import pytest
import zmq

from nodeagent.client import AgentClient, AgentError, Fetched
from nodeagent.launcher import AgentProcess
from nodeagent.leases import LeaseTable
from nodeagent.protocol import decode_reply
from nodeagent.server import AgentServer
from nodeagent.tiers import DiskTier, RamTier, StoreTier, TieredStore
from tests.integration.conftest import StartAgent, wait_until

MiB = 1 << 20

pytestmark = pytest.mark.timeout(90)


def loads_done(client: AgentClient) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        stats = client.stats()
        return stats if stats["queued_loads"] == 0 else None

    return check


def fill(agent: AgentProcess, values: dict[str, bytes]) -> None:
    with AgentClient(agent.endpoint, timeout=20) as client:
        for key, value in values.items():
            client.put(key, [b"head", value], {"key": key})
        client.stats()  # waits for the write-behind


def same(got: Fetched | None, value: bytes) -> bool:
    return got is not None and [bytes(f) for f in got.frames] == [b"head", value]


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


# --------------------------------------------------------------------------- PREFETCH


def test_prefetch_disk_to_ram_after_a_restart(start: StartAgent) -> None:
    values = {f"k{i}": os.urandom(256 * 1024) for i in range(4)}
    first = start()
    fill(first, values)
    assert first.stop() == 0
    agent = start()
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert {client.has(k) for k in values} == {"disk"}
        reply = client.prefetch([*values, "k0", "nobody"])
        assert reply == {"queued": 4, "present": 0, "missing": 1}
        wait_until(lambda: all(client.has(k) == "ram" for k in values))
        stats = wait_until(loads_done(client))
        got = client.get("k1")
        assert got is not None and got.tier == "ram" and got.version == 1
        assert same(got, values["k1"]) and got.meta == {"key": "k1"}
        assert client.get("k1") is not None  # a second GET of the same copy
        assert client.prefetch(list(values)) == {"queued": 0, "present": 4, "missing": 0}
        stats = client.stats()
        prefetch = stats["prefetch"]
        entry_bytes = len(values["k1"]) + len(b"head")
        assert prefetch["loads"] == 4 and prefetch["bytes"] == 4 * entry_bytes
        assert prefetch["used_bytes"] == entry_bytes  # counted once
        assert prefetch["failed"] == prefetch["cancelled"] == prefetch["waits"] == 0
        assert stats["read_bandwidth"]["disk"] > 0 and "store" not in stats["read_bandwidth"]
        assert stats["queued_loads"] == 0 and stats["queued_bytes"] == 0
        ram = stats["tiers"]["ram"]
        assert ram["budget"] == 2**30 and ram["bytes"] == 4 * entry_bytes


def test_prefetch_store_to_ram(start: StartAgent, store_dir: str) -> None:
    values = {f"s{i}": os.urandom(100 * 1024) for i in range(3)}
    fill(start(ram_bytes=1024, store=store_dir), values)  # RAM too small: store only
    agent = start(store=store_dir)
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert {client.has(k) for k in values} == {"store"}
        assert client.prefetch(list(values))["queued"] == 3
        stats = wait_until(loads_done(client))
        assert {client.has(k) for k in values} == {"ram"}
        assert stats["read_bandwidth"]["store"] > 0
        assert stats["tiers"]["store"]["hits"] == 3
        for key, value in values.items():
            got = client.get(key)
            assert got is not None and got.tier == "ram" and same(got, value)
        assert client.stats()["tiers"]["store"]["hits"] == 3  # no second read


def test_prefetch_to_disk_tier(start: StartAgent, store_dir: str) -> None:
    agent = start(store=store_dir)
    with AgentClient(agent.endpoint, timeout=20) as client:
        client.put("k", [b"x"], {})
        client.stats()
        client.evict("k", tier="ram")
        # the store shares the disk tier's device: it is the local copy already
        assert client.prefetch(["k", "gone"], tier="disk") == {
            "queued": 0,
            "present": 1,
            "missing": 1,
        }
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(store_dir).st_dev:
        return
    remote = tempfile.mkdtemp(dir="/dev/shm", prefix="sm-test-")
    try:
        value = os.urandom(64 * 1024)
        fill(start(store=remote, ram_bytes=1024), {"far": value})
        agent = start(store=remote, disk_dir=str(Path(store_dir).parent / "disk2"))
        with AgentClient(agent.endpoint, timeout=20) as client:
            assert client.has("far") == "store"
            assert client.prefetch(["far"], tier="disk")["queued"] == 1
            wait_until(loads_done(client))
            assert client.has("far") == "disk"  # on the local disk, not in RAM
            assert same(client.get("far"), value)
    finally:
        shutil.rmtree(remote, ignore_errors=True)


def test_get_waits_for_the_load_in_flight(start: StartAgent, store_dir: str) -> None:
    value = os.urandom(4 * MiB)
    fill(start(ram_bytes=1024, store=store_dir), {"k": value})
    agent = start(store=store_dir, store_latency=1.0)
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert client.prefetch(["k"])["queued"] == 1
        got = client.get("k")  # arrives while the store read sleeps: waits for it
        assert same(got, value) and got is not None and got.version == 1
        stats = wait_until(loads_done(client))
        assert stats["prefetch"]["waits"] == 1 and stats["prefetch"]["loads"] == 1
        assert stats["tiers"]["store"]["hits"] == 1  # the store was read once
        assert stats["prefetch"]["used_bytes"] == len(value) + len(b"head")
        assert client.has("k") == "ram"


def test_agent_answers_while_a_slow_store_loads(start: StartAgent, store_dir: str) -> None:
    values = {f"k{i}": os.urandom(1024) for i in range(3)}
    fill(start(ram_bytes=16, store=store_dir), values)
    agent = start(store=store_dir, store_latency=2.0)
    with AgentClient(agent.endpoint, timeout=20) as client:
        client.put("fresh", [b"v"], {})
        assert client.prefetch(list(values))["queued"] == 3
        began = time.monotonic()
        for _ in range(5):
            assert client.ping()["ok"]
            got = client.get("fresh")  # served at once, not parked behind the loads
            assert got is not None and got.tier == "ram"
        stats = client.stats()
        assert time.monotonic() - began < 1.5  # none of it waited for the 2 s reads
        assert stats["queued_loads"] >= 2 and stats["queued_bytes"] > 0
        # stopping the agent does not wait for the remaining loads either (see below)


def test_a_put_during_a_load_wins(start: StartAgent, store_dir: str) -> None:
    fill(start(ram_bytes=16, store=store_dir), {"k": b"old"})
    agent = start(store=store_dir, store_latency=1.0)
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert client.prefetch(["k"])["queued"] == 1
        assert client.put("k", [b"head", b"new"], {}) == 2
        stats = wait_until(loads_done(client))
        got = client.get("k")
        assert got is not None and got.version == 2 and same(got, b"new")
        assert stats["prefetch"]["loads"] == 0
        assert stats["prefetch"]["discarded"] + stats["prefetch"]["cancelled"] == 1


def test_shutdown_does_not_wait_for_slow_loads(start: StartAgent, store_dir: str) -> None:
    values = {f"k{i}": os.urandom(1024) for i in range(3)}
    fill(start(ram_bytes=16, store=store_dir), values)
    agent = start(store=store_dir, store_latency=60.0)
    out: dict[str, Any] = {}
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert client.prefetch(list(values))["queued"] == 3

        def parked_get() -> None:
            with AgentClient(agent.endpoint, timeout=30) as other:
                out["got"] = other.get("k2")

        thread = threading.Thread(target=parked_get)
        thread.start()
        wait_until(lambda: client.stats()["prefetch"]["waits"] == 1)
        began = time.monotonic()
        assert agent.stop(timeout=30) == 0
        assert time.monotonic() - began < 20  # not the 60 s of simulated latency
        thread.join(30)
    assert same(out["got"], values["k2"])  # the waiting GET was answered on the way out


# --------------------------------------------------------------------------- EVICT tier=ram


def test_evict_ram_demotes_and_keeps_the_value(agent: AgentProcess, client: AgentClient) -> None:
    value = os.urandom(MiB)
    client.put("k", [b"head", value], {"m": 1})
    assert client.evict("k", tier="ram") is True  # its write-behind may still be pending
    assert client.has("k") == "disk"
    got = client.get("k")
    assert got is not None and got.tier == "disk" and same(got, value) and got.meta == {"m": 1}
    assert client.has("k") == "ram"  # the GET promoted it
    assert client.evict("k", tier="ram") is True and client.evict("k", tier="ram") is False
    assert client.evict("nobody", tier="ram") is False
    client.put("j", [b"head", b"j"], {})
    assert client.evict_many(["k", "j", "j", "nobody"]) == 1
    assert client.has("j") == "disk" and same(client.get("j"), b"j")
    assert client.evict_many(["k", "j"], tier=None) == 2
    assert client.has("k") is None and client.has("j") is None


def test_evict_ram_never_loses_the_only_copy(start: StartAgent, tmp_path: Path) -> None:
    agent = start()
    with AgentClient(agent.endpoint, timeout=20) as client:
        value = os.urandom(256 * 1024)
        client.put("k", [b"head", value], {})
        client.stats()
        cache = diskcache.Cache(str(tmp_path / "disk"))  # as if the disk tier culled it
        try:
            assert cache.delete("k")
        finally:
            cache.close()
        assert client.has("k") == "ram"
        assert client.evict("k", tier="ram") is True
        assert client.has("k") == "disk" and same(client.get("k"), value)
    ramonly = start(disk_dir=None)
    with AgentClient(ramonly.endpoint, timeout=20) as client:
        client.put("k", [b"head", b"only"], {})
        assert client.evict("k", tier="ram") is False  # nowhere to keep it: stays
        assert client.has("k") == "ram" and same(client.get("k"), b"only")
        assert client.prefetch(["k"]) == {"queued": 0, "present": 1, "missing": 0}


def test_evict_cancels_queued_loads(start: StartAgent, store_dir: str) -> None:
    values = {f"k{i}": os.urandom(1024) for i in range(6)}
    fill(start(ram_bytes=16, store=store_dir), values)
    agent = start(store=store_dir, store_latency=1.0)
    keys = list(values)
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert client.prefetch(keys)["queued"] == 6
        assert client.evict_many(keys[1:4], tier="ram") == 0  # none was in RAM yet
        assert client.evict(keys[4]) is True  # every tier: gone
        stats = wait_until(loads_done(client))
        assert stats["prefetch"]["cancelled"] == 4
        assert stats["tiers"]["store"]["hits"] <= 3  # the first, the last, maybe the second
        assert {client.has(k) for k in keys[1:4]} == {"store"}
        assert client.has(keys[4]) is None and client.has(keys[5]) == "ram"


# --------------------------------------------------------------------------- MIGRATE


def test_migrate_copies_from_a_live_peer(start: StartAgent, tmp_path: Path) -> None:
    source = start(disk_dir=str(tmp_path / "src-disk"))
    target = start(disk_dir=str(tmp_path / "dst-disk"), store=str(tmp_path / "dst-store"))
    value = os.urandom(2 * MiB)
    with (
        AgentClient(source.endpoint, timeout=20) as src,
        AgentClient(target.endpoint, timeout=20) as dst,
    ):
        src.put("k", [b"head", b"first"], {})
        assert src.put("k", [b"head", value], {"m": 2}) == 2
        assert dst.migrate(["k", "absent", "k"], source.endpoint) == {"queued": 2, "present": 0}
        got = dst.get("k")  # waits for the copy instead of missing
        assert got is not None and got.version == 2 and same(got, value) and got.meta == {"m": 2}
        assert same(src.get("k"), value)  # the source still serves it
        stats = wait_until(loads_done(dst))
        assert stats["prefetch"]["loads"] == 1 and stats["prefetch"]["failed"] == 1
        assert stats["read_bandwidth"]["migrate"] > 0
        tiers = stats["tiers"]
        assert tiers["disk"]["entries"] == 1 and tiers["store"]["entries"] == 0
        assert dst.put("k", [b"head", b"local"], {}) == 3  # versions go on from the copy
        # the source's version 3 is not newer than the target's 3: not installed
        src.put("k", [b"head", b"source v3"], {})
        assert dst.migrate(["k"], source.endpoint)["queued"] == 1
        stats = wait_until(loads_done(dst))
        assert stats["prefetch"]["discarded"] == 1
        got = dst.get("k")
        assert got is not None and got.version == 3 and same(got, b"local")
        assert same(src.get("k"), b"source v3")


def test_migrate_of_a_key_the_target_has_below_loads_its_own_copy(
    start: StartAgent, tmp_path: Path
) -> None:
    """Two agents sharing a store: the peer's copy is not newer than the target's own (the
    same entry in the store), so it is refused, and the target's own copy goes to RAM."""
    store = str(tmp_path / "store")
    source = start(disk_dir=str(tmp_path / "src-disk"), store=store)
    target = start(disk_dir=str(tmp_path / "dst-disk"), store=store)
    with (
        AgentClient(source.endpoint, timeout=20) as src,
        AgentClient(target.endpoint, timeout=20) as dst,
    ):
        version = src.put("k", [b"head", b"shared"], {})
        src.stats()  # the write-behind reached the store
        assert dst.migrate(["k"], source.endpoint)["queued"] == 1
        wait_until(lambda: dst.has("k") == "ram")
        stats = wait_until(loads_done(dst))
        assert stats["prefetch"]["discarded"] == 1  # the peer's copy
        assert stats["prefetch"]["loads"] == 1  # its own, from the store
        got = dst.get("k")
        assert got is not None and got.version == version and same(got, b"shared")
        assert got.tier == "ram"


def test_migrate_from_a_dead_peer_fails_and_the_agent_goes_on(
    start: StartAgent, tmp_path: Path
) -> None:
    dead = start(disk_dir=str(tmp_path / "dead-disk"))
    endpoint = dead.endpoint
    assert dead.stop() == 0
    agent = start()
    with AgentClient(agent.endpoint, timeout=20) as client:
        assert client.migrate(["a", "b", "c"], endpoint)["queued"] == 3
        assert client.ping()["ok"]
        stats = wait_until(loads_done(client))
        assert stats["prefetch"]["failed"] == 3 and stats["prefetch"]["loads"] == 0
        assert client.get("a") is None and client.ping()["ok"]


# --------------------------------------------------------------------------- slow store, errors


def test_store_bandwidth_caps_reads(start: StartAgent, store_dir: str) -> None:
    value = os.urandom(20 * MiB)
    agent = start(ram_bytes=MiB, store=store_dir, store_bandwidth=100 * MiB)
    with AgentClient(agent.endpoint, timeout=30) as client:
        client.put("big", [b"head", value], {})  # too big for RAM: store only
        client.stats()
        began = time.monotonic()
        assert same(client.get("big"), value)
        assert time.monotonic() - began >= 0.15  # 20 MiB at 100 MiB/s: 0.2 s
        assert client.prefetch(["big"], tier="ram")["queued"] == 1  # RAM too small
        stats = wait_until(loads_done(client))
        assert stats["read_bandwidth"]["store"] <= 100 * MiB
        assert stats["prefetch"]["discarded"] == 1  # read, but RAM cannot hold it
        assert stats["tiers"]["store"]["bandwidth"] == 100 * MiB


def exchange(endpoint: str, header: dict[str, Any]) -> dict[str, Any]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": 1, "id": 9, **header}))
        assert sock.poll(10_000), "no reply"
        return decode_reply(sock.recv_multipart()[0])
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"op": "prefetch", "keys": "k"}, "keys"),
        ({"op": "prefetch", "keys": ["k"], "tier": "store"}, "tier"),
        (
            {"op": "migrate", "keys": ["k"], "source": "tcp://0.0.0.0:5555"},
            "source",
        ),  # no host to reach
        ({"op": "migrate", "keys": [1], "source": "tcp://127.0.0.1:5555"}, "keys"),
        ({"op": "evict", "key": "k", "keys": ["k"]}, "key"),
        ({"op": "evict", "keys": ["k"], "tier": "disk"}, "tier"),
        ({"op": "migrate", "keys": ["k"], "source": "SELF"}, "source"),
    ],
)
def test_bad_fields_are_refused_and_the_agent_serves_on(
    agent: AgentProcess, client: AgentClient, header: dict[str, Any], field: str
) -> None:
    if header.get("source") == "SELF":
        header = {**header, "source": agent.endpoint}
    reply = exchange(agent.endpoint, header)
    assert reply["ok"] is False and reply["error"] == "bad-field" and reply["id"] == 9
    assert repr(field) in reply["message"]
    assert client.ping()["ok"] and client.stats()["queued_loads"] == 0


def test_client_refuses_a_str_for_keys(client: AgentClient) -> None:
    with pytest.raises(TypeError):
        client.prefetch("abc")
    with pytest.raises(AgentError, match="tier"):
        client.prefetch(["k"], tier="tape")


def test_big_batches_are_split(client: AgentClient) -> None:
    keys = [f"k{i}" for i in range(10_001)]
    assert client.prefetch(keys) == {"queued": 0, "present": 0, "missing": 10_001}
    assert client.evict_many(keys) == 0


def test_no_thread_is_left_when_the_server_closes(tmp_path: Path) -> None:
    """In-process server: its writer, loader and migrator threads end with it, even with a
    store read sleeping and a migration waiting for a dead peer."""
    store = StoreTier(str(tmp_path / "store"), latency=30.0)
    tiers = TieredStore(RamTier(4), DiskTier(str(tmp_path / "disk"), 1 << 26), store)
    server = AgentServer(f"ipc://{tmp_path}/agent.sock", tiers, LeaseTable())
    endpoint = server.bind()
    thread = threading.Thread(target=server.serve_forever, name="serve")
    thread.start()
    try:
        with AgentClient(endpoint, timeout=20) as client:
            client.put("k", [b"too big for RAM"], {})
            client.stats()
            assert client.prefetch(["k"])["queued"] == 1
            assert client.migrate(["j"], f"ipc://{tmp_path}/nobody.sock")["queued"] == 1
            assert client.stats()["queued_loads"] == 2
    finally:
        with AgentClient(endpoint, timeout=20) as client:
            client.shutdown()
        thread.join(20)
        server.close()
        tiers.close()
    assert not thread.is_alive()
    left = {t.name for t in threading.enumerate()}
    assert not left & {"writer", "loader", "migrator", "serve"}
