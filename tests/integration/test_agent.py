"""Real ``python -m nodeagent`` processes over real zmq, faults included."""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import nodeagent
from nodeagent.__main__ import build_parser, parse_size
from nodeagent.client import AgentClient, AgentError
from nodeagent.launcher import AgentProcess, start_agent
from nodeagent.protocol import decode_reply, encode_request
from nodeagent.tiers import write_raw_disk_value

StartAgent = Callable[..., AgentProcess]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nodeagent.__file__)))
MiB = 1 << 20

pytestmark = pytest.mark.timeout(60)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def raw_socket(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def exchange(endpoint: str, frames: list[bytes]) -> dict[str, Any]:
    with raw_socket(endpoint) as sock:
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no reply"
        reply = sock.recv_multipart()
    return decode_reply(reply[0])


# --------------------------------------------------------------------------- basics


def test_ping_and_stats(agent: AgentProcess, client: AgentClient) -> None:
    pong = client.ping()
    assert pong["ok"] and pong["pid"] == agent.pid
    assert pong["version"] == nodeagent.__version__ and pong["protocol"] == 1
    stats = client.stats()
    assert stats["host"] == socket.gethostname() and stats["pid"] == agent.pid
    assert set(stats["tiers"]) == {"ram", "disk"}
    assert stats["tiers"]["ram"]["budget"] == 2**30
    assert stats["tiers"]["disk"]["limit"] == 4 * 2**30
    assert stats["mem_total"] >= stats["mem_available"] > 0
    assert stats["leases"] == 0 and isinstance(stats["cpu_load"], float)


def test_put_get_round_trip_with_a_20_mib_frame(client: AgentClient) -> None:
    big = os.urandom(20 * MiB)
    oob = pickle.PickleBuffer(bytearray(b"out-of-band" * 10_000))
    frames = [b"pickle-5 body", memoryview(big), b"", bytearray(b"tail"), oob]
    assert client.put("k", frames, {"digest": "abc", "n": [1, 2]}) == 1
    got = client.get("k")
    assert got is not None
    assert [bytes(f) for f in got.frames] == [
        b"pickle-5 body",
        big,
        b"",
        b"tail",
        b"out-of-band" * 10_000,
    ]
    assert got.meta == {"digest": "abc", "n": [1, 2]} and got.version == 1 and got.tier == "ram"
    assert client.put("k", [b"v2"], {}) == 2
    got = client.get("k")
    assert got is not None and [bytes(f) for f in got.frames] == [b"v2"] and got.version == 2


def test_has_get_missing_evict_clear(client: AgentClient) -> None:
    assert client.has("k") is None and client.get("k") is None
    client.put("k", [b"x"], {})
    client.put("j", [b"y"], {})
    assert client.has("k") == "ram"
    assert client.evict("k") is True and client.evict("k") is False
    assert client.has("k") is None
    assert client.clear() == 1 and client.has("j") is None


def test_version_conflict_is_an_error_reply(client: AgentClient) -> None:
    assert client.put("k", [b"1"], {}, expect_version=0) == 1
    with pytest.raises(AgentError) as info:
        client.put("k", [b"2"], {}, expect_version=0)
    assert info.value.error == "version-conflict"
    assert client.put("k", [b"2"], {}, expect_version=1) == 2


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"\xc1garbage", b"payload"], "bad-header"),
        ([msgpack.packb([1, 2, 3])], "bad-header"),
        ([msgpack.packb({"v": 1, "op": "frobnicate", "id": 5})], "unknown-op"),
        ([msgpack.packb({"v": 99, "op": "ping", "id": 5})], "bad-version"),
        ([msgpack.packb({"v": 1, "op": "get", "id": 5, "key": 42})], "bad-field"),
        ([msgpack.packb({"v": 1, "op": "put", "id": 5, "key": "k", "meta": "x"})], "bad-field"),
    ],
)
def test_protocol_errors_get_error_replies(
    agent: AgentProcess, client: AgentClient, frames: list[bytes], error: str
) -> None:
    reply = exchange(agent.endpoint, frames)
    assert reply["ok"] is False and reply["error"] == error
    assert reply["message"] and "\n" not in reply["message"]
    if error != "bad-header":
        assert reply["id"] == 5
    assert client.ping()["ok"]
    log = Path(agent.log_path).read_text()
    assert error in log and "Traceback" not in log


def test_empty_message_and_a_storm_of_garbage(agent: AgentProcess, client: AgentClient) -> None:
    with raw_socket(agent.endpoint) as sock:
        sock.send(b"")  # read as a REQ envelope delimiter without a header after it
        assert sock.poll(10_000)
        parts = sock.recv_multipart()
        assert parts[0] == b"" and decode_reply(parts[-1])["error"] == "bad-header"
        for i in range(200):
            sock.send_multipart([os.urandom(i % 40), os.urandom(3)])
        for _ in range(200):
            assert sock.poll(10_000)
            assert decode_reply(sock.recv_multipart()[-1])["ok"] is False
    assert client.ping()["ok"]


def test_small_ram_spills_to_disk_and_serves_everything(
    start: StartAgent,
) -> None:
    agent = start(ram_bytes=MiB)
    values = {f"k{i}": os.urandom(300 * 1024) for i in range(8)}
    with AgentClient(agent.endpoint, timeout=10) as client:
        for key, value in values.items():
            client.put(key, [value], {"key": key})
        stats = client.stats()["tiers"]
        assert stats["ram"]["bytes"] <= MiB and stats["ram"]["entries"] == 3
        assert stats["ram"]["evictions"] == 5 and stats["ram"]["spills"] == 5
        assert stats["disk"]["entries"] == 8
        tiers = set()
        for key, value in values.items():
            got = client.get(key)
            assert got is not None and bytes(got.frames[0]) == value and got.meta == {"key": key}
            tiers.add(got.tier)
        assert "disk" in tiers
        assert client.stats()["tiers"]["ram"]["bytes"] <= MiB


def test_corrupt_disk_entry_is_a_miss(start: StartAgent, tmp_path: Path) -> None:
    agent = start(ram_bytes=MiB)
    with AgentClient(agent.endpoint, timeout=10) as client:
        client.put("victim", [os.urandom(2 * MiB)], {})  # too big for RAM: disk only
        client.put("healthy", [os.urandom(2 * MiB)], {})
        client.stats()  # STATS waits for the write-behind of both PUTs
        assert client.has("victim") == "disk"
        write_raw_disk_value(str(tmp_path / "disk"), "victim", b"garbage")
        with pytest.raises(AgentError, match=r"corrupt value \(bad magic\), deleted") as exc:
            client.get("victim")  # a miss that says why: the plugin's summary names it
        assert exc.value.error == "corrupt"
        assert client.get("victim") is None  # deleted: a plain miss now
        assert client.has("victim") is None
        assert client.stats()["tiers"]["disk"]["corrupt"] == 1
        assert client.get("healthy") is not None
        assert client.ping()["ok"]


def test_a_disk_database_that_is_not_one_is_moved_aside(start: StartAgent, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "cache.db").write_bytes(b"this is not a database" * 100)
    log = tmp_path / "agent.log"
    agent = start(log_file=str(log))
    with AgentClient(agent.endpoint, timeout=10) as client:
        client.put("k", [b"x" * 100], {})
        stats = client.stats()  # STATS waits for the write-behind
        assert stats["tiers"]["disk"]["entries"] == 1
        assert "moved it" in stats["tiers"]["disk"]["notice"]
    agent.stop()
    lines = log.read_text().splitlines()
    assert [line for line in lines if "cache.db" in line] == [
        line for line in lines if "moved it" in line
    ]
    assert len(lines) == 1 and "WARNING disk tier" in lines[0], lines
    assert (disk / "cache.bad" / "cache.db").exists()


def test_store_tier(start: StartAgent, tmp_path: Path) -> None:
    agent = start(ram_bytes=16, store=str(tmp_path / "store"))
    with AgentClient(agent.endpoint, timeout=10) as client:
        client.put("k", [b"x" * 100], {"a": 1})
        client.stats()  # STATS waits for the write-behind
        assert client.has("k") == "store"  # same device as the disk tier: store only
        got = client.get("k")
        assert got is not None and got.tier == "store" and bytes(got.frames[0]) == b"x" * 100
        stats = client.stats()["tiers"]
        assert stats["store"]["entries"] == 1 and stats["disk"]["entries"] == 0


# --------------------------------------------------------------------------- leases


def test_lease_single_flight_between_two_clients(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a, AgentClient(agent.endpoint) as b:
        first = a.lease("k", "worker-a", ttl=30)
        assert first.granted and not first.present and first.holder == "worker-a"
        second = b.lease("k", "worker-b", ttl=30)
        assert not second.granted and second.holder == "worker-a" and second.expires_in > 0
        assert a.stats()["leases"] == 1
        assert b.release("k", "worker-b") is False
        a.put("k", [b"built"], {})  # a PUT ends the build and its lease
        third = b.lease("k", "worker-b", ttl=30)
        assert third.present and not third.granted
        assert a.stats()["leases"] == 0
        granted = a.lease("j", "worker-a", ttl=30)
        assert granted.granted and a.release("j", "worker-a") is True
        assert b.lease("j", "worker-b", ttl=30).granted


def _lease_in_thread(
    endpoint: str, holder: str, wait: float
) -> tuple[threading.Thread, dict[str, Any]]:
    """A waiting LEASE from another client; the result lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        with AgentClient(endpoint) as c:
            start = time.monotonic()
            out["reply"] = c.lease("k", holder, ttl=30, wait=wait)
            out["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_waiting_lease_is_answered_by_the_put(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a:
        assert a.lease("k", "builder", ttl=30).granted
        thread, out = _lease_in_thread(agent.endpoint, "waiter", wait=5.0)
        time.sleep(0.3)
        assert a.ping()["ok"]  # the agent keeps serving while a LEASE waits
        assert "reply" not in out
        a.put("k", [b"built"], {})
        thread.join(10)
    reply = out["reply"]
    assert reply.present and not reply.granted
    assert 0.25 < out["seconds"] < 2.0


def test_waiting_lease_is_granted_on_release(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a:
        assert a.lease("k", "builder", ttl=30).granted
        thread, out = _lease_in_thread(agent.endpoint, "waiter", wait=5.0)
        time.sleep(0.2)
        assert a.release("k", "builder")
        thread.join(10)
    assert out["reply"].granted and out["reply"].holder == "waiter"
    assert out["seconds"] < 2.0


def test_waiting_lease_times_out_with_the_holder_named(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a:
        assert a.lease("k", "builder", ttl=30).granted
        thread, out = _lease_in_thread(agent.endpoint, "waiter", wait=0.4)
        thread.join(10)
    reply = out["reply"]
    assert not reply.granted and not reply.present and reply.holder == "builder"
    assert 0.35 < out["seconds"] < 2.0


def test_waiting_lease_is_granted_when_the_holder_dies(agent: AgentProcess) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, socket, sys
                from nodeagent.client import AgentClient
                with AgentClient({agent.endpoint!r}) as c:
                    r = c.lease("k", "doomed", ttl=60, pid=os.getpid(), host=socket.gethostname())
                    assert r.granted, r
                print("leased", flush=True)
                sys.stdin.readline()
                """
            ),
        ],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    with holder:  # closes its pipes
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"leased\n"
            thread, out = _lease_in_thread(agent.endpoint, "survivor", wait=8.0)
            time.sleep(0.3)
            assert "reply" not in out
        finally:
            holder.kill()
    thread.join(10)
    assert out["reply"].granted and out["reply"].holder == "survivor"
    assert out["seconds"] < 2.0  # noticed by the agent's periodic check, not at the deadline


def test_lease_wait_out_of_range_is_refused(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a, pytest.raises(AgentError, match="wait"):
        a.lease("k", "x", ttl=30, wait=3600)


def test_lease_expires(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as a:
        assert a.lease("k", "worker-a", ttl=0.2).granted
        assert not a.lease("k", "worker-b", ttl=10).granted
        time.sleep(0.3)
        assert a.lease("k", "worker-b", ttl=10).granted


def test_lease_freed_when_holder_process_dies(agent: AgentProcess) -> None:
    script = textwrap.dedent(
        f"""
        import os, socket
        from nodeagent.client import AgentClient
        with AgentClient({agent.endpoint!r}) as c:
            r = c.lease("k", "doomed", ttl=60, pid=os.getpid(), host=socket.gethostname())
            assert r.granted, r
        print("leased", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"leased"
    with AgentClient(agent.endpoint) as c:
        reply = c.lease("k", "survivor", ttl=60)
        assert reply.granted and reply.holder == "survivor"


# --------------------------------------------------------------------------- lifecycle


def test_restart_serves_what_the_first_agent_wrote(start: StartAgent) -> None:
    first = start()
    payload = [b"head", os.urandom(MiB)]
    with AgentClient(first.endpoint) as client:
        client.put("k", payload, {"m": 1})
        client.put("k", payload, {"m": 2})
    assert first.stop() == 0
    second = start()
    with AgentClient(second.endpoint) as client:
        got = client.get("k")
        assert got is not None and got.tier == "disk" and got.version == 2
        assert [bytes(f) for f in got.frames] == payload and got.meta == {"m": 2}
        assert client.put("k", payload, {}) == 3


def test_shutdown_stops_the_process(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint) as client:
        client.shutdown()
    assert agent.process.wait(10) == 0


def test_stop_removes_the_ipc_directory(agent: AgentProcess) -> None:
    assert agent.endpoint.startswith("ipc://")
    directory = os.path.dirname(agent.endpoint[len("ipc://") :])
    assert os.path.isdir(directory)
    assert agent.stop() == 0
    assert not os.path.exists(directory)


def test_tcp_loopback_random_port(start: StartAgent) -> None:
    agent = start(bind="tcp://127.0.0.1:*")
    assert agent.endpoint.startswith("tcp://127.0.0.1:") and not agent.endpoint.endswith("*")
    with AgentClient(agent.endpoint) as client:
        assert client.ping()["ok"]


def test_non_loopback_bind_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--bind", "tcp://0.0.0.0:*", "--no-disk"],
        env=child_env(),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert lines == [
        "nodeagent: error: refusing tcp://0.0.0.0:*: only ipc:// and loopback tcp:// are "
        "allowed without CURVE keys: create keys with `statemigrate keys DIR` and pass "
        "--curve-dir DIR"
    ]
    with pytest.raises(AgentError, match="without CURVE keys"):
        start_agent(bind="tcp://0.0.0.0:*", disk_dir=None, log_file=str(tmp_path / "log"))


def test_parent_pid_gone_makes_the_agent_exit(start: StartAgent) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        agent = start(parent_pid=parent.pid)
        assert agent.process.poll() is None
    finally:
        parent.kill()
        parent.wait()
    assert agent.process.wait(10) == 0


def test_client_times_out_naming_the_endpoint(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    with AgentClient(endpoint, timeout=0.2) as client:
        with pytest.raises(AgentError, match=r"nobody\.sock.*timeout") as info:
            client.ping()
        assert info.value.error == "timeout"
        with pytest.raises(AgentError):
            client.ping()  # a fresh socket, still nobody there


def test_connect_timeout_fails_fast_where_no_connection_is_made(tmp_path: Path) -> None:
    """A host that cannot be reached costs the connect timeout, not the request timeout."""
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    with AgentClient(endpoint, timeout=30, connect_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(AgentError) as info:
            client.ping()
        assert time.monotonic() - started < 2.0
    assert info.value.error == "timeout"
    assert str(info.value) == (
        f"agent {endpoint}: timeout: no reply to ping within 0.2 s (no connection made: is "
        "the agent running at this endpoint?)"
    )


def test_connect_timeout_does_not_cut_a_slow_reply(agent: AgentProcess) -> None:
    """Once connected, a reply is awaited for the request's whole timeout."""
    with AgentClient(agent.endpoint) as holder:
        assert holder.lease("k", "builder", ttl=30).granted
        with AgentClient(agent.endpoint, timeout=5, connect_timeout=0.1) as waiter:
            started = time.monotonic()
            reply = waiter.lease("k", "waiter", ttl=30, wait=0.5)  # the agent answers in 0.5 s
            assert time.monotonic() - started >= 0.45
    assert not reply.granted and reply.holder == "builder"


def test_client_refuses_non_loopback() -> None:
    with pytest.raises(AgentError, match="refusing"):
        AgentClient("tcp://10.1.2.3:5555")


def test_no_thread_left_after_close(agent: AgentProcess) -> None:
    before = threading.active_count()
    with AgentClient(agent.endpoint) as client:
        client.put("k", [os.urandom(4 * MiB)], {})  # a zero-copy send starts pyzmq's gc thread
        got = client.get("k")
        assert got is not None
        del got
    assert threading.active_count() == before == 1


def test_late_reply_is_not_taken_for_another(agent: AgentProcess) -> None:
    with AgentClient(agent.endpoint, timeout=5) as client:
        # a request id the client never sent: the stale reply is discarded
        sock = client._socket
        assert sock is not None
        sock.send(encode_request("ping", 10**6))
        assert client.has("nothing") is None
        assert client.ping()["ok"]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", MiB),
        ("512M", 512 * MiB),
        ("2G", 2 << 30),
        ("64KiB", 64 << 10),
        ("1t", 1 << 40),
        ("1.5G", 3 << 29),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5.2G", "12X", "G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
        parse_size(text)


def test_slow_store_options() -> None:
    base = ["--bind", "ipc:///tmp/x.sock", "--no-disk", "--store", "/tmp/s"]
    args = build_parser().parse_args(base)
    assert args.store_latency == 0.0 and args.store_bandwidth is None
    args = build_parser().parse_args(
        [*base, "--store-latency", "0.05", "--store-bandwidth", "200M"]
    )
    assert args.store_latency == 0.05 and args.store_bandwidth == 200 * MiB
    assert "slow-store simulation" in build_parser().format_help()


@pytest.mark.parametrize(
    "option", [["--store-latency", "-1"], ["--store-latency", "x"], ["--store-bandwidth", "0"]]
)
def test_slow_store_options_refuse_bad_values(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--bind", "ipc:///tmp/x.sock", "--no-disk", *option])
    assert info.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_req_socket_peer_is_answered(agent: AgentProcess) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(agent.endpoint)
        sock.send(encode_request("ping", 1))
        assert sock.poll(10_000)
        assert decode_reply(sock.recv())["pid"] == agent.pid
    finally:
        sock.close(linger=0)
        ctx.term()


def test_agent_modules_import_neither_pytest_nor_the_plugin() -> None:
    script = (
        "import sys, nodeagent.server, nodeagent.client, nodeagent.launcher, nodeagent.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pytest', '_pytest', 'pytest_statemigrate', 'psutil'})\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"[]"


@pytest.mark.timeout(60)
def test_write_behind_serves_what_it_acknowledged(start: StartAgent) -> None:
    agent = start(ram_bytes=MiB)
    with AgentClient(agent.endpoint, timeout=10) as client:
        blobs = [os.urandom(8 * MiB) for _ in range(3)]  # too big for RAM: disk only
        for i, blob in enumerate(blobs):
            client.put(f"big{i}", [blob], {})
        for i, blob in enumerate(blobs):  # asked at once: some writes are still pending
            got = client.get(f"big{i}")
            assert got is not None and bytes(got.frames[0]) == blob
        stats = client.stats()  # waits for the writes
        assert stats["write_errors"] == 0 and stats["tiers"]["disk"]["entries"] == 3
        assert all(client.has(f"big{i}") == "disk" for i in range(3))
