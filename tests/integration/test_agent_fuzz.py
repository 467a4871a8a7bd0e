"""Hostile input and concurrent clients against a real agent, bounded in count and time.

* Hypothesis-generated messages (arbitrary frames, and well-formed headers with hostile
  fields) at a real agent: each gets a well-formed reply whose error, if any, is one of the
  protocol's names and never ``internal``; the agent keeps serving and a value stored
  before is untouched.
* Tampered disk rows: every damage is a miss (or, for the payload bytes the agent does not
  check, a well-formed entry the plugin's digest check refuses); never an error reply.
* Clients on threads doing GET, PUT, LEASE and RELEASE on a few keys of an agent whose RAM
  and disk are small (evictions all the time): one lease holder per key at a time, no torn
  read, no version going back, no write error, tiers within their limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.client import AgentClient, AgentError, Fetched
from nodeagent.launcher import AgentProcess, start_agent
from nodeagent.protocol import ERRORS, FIELDS, PROTOCOL_VERSION, Op, decode_reply
from nodeagent.tiers.disk import open_cache

pytestmark = pytest.mark.timeout(120)

#: An agent log line of a handler that failed (an ``internal`` reply) or a lost write.
INTERNAL = re.compile(r"request \S+ failed:|deferred write failed|could not answer")

MiB = 2**20
CANARY = "canary"
CANARY_VALUE = [b"head", os.urandom(100_000)]  # a file on disk, not a database row


@pytest.fixture(scope="module")
def hostile_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    agent = start_agent(
        disk_dir=str(base / "disk"),
        ram_bytes=4 * MiB,
        disk_bytes=16 * MiB,
        log_file=str(base / "agent.log"),
    )
    try:
        with AgentClient(agent.endpoint, timeout=10) as client:
            client.put(CANARY, CANARY_VALUE, {"m": 1})
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def raw(hostile_agent: AgentProcess) -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(hostile_agent.endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


# --------------------------------------------------------------------------- hostile messages

# Ops that end or empty the agent are left out: they are allowed to (SHUTDOWN, CLEAR).
HOSTILE_OPS = sorted(op.value for op in Op if op not in (Op.SHUTDOWN, Op.CLEAR))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A msgpack header: mostly well-formed around hostile fields, sometimes broken."""
    op = draw(st.sampled_from(HOSTILE_OPS))
    names = sorted(FIELDS[Op(op)])
    fields: dict[Any, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True)) if names else []:
        fields[name] = draw(
            st.one_of(
                values,
                st.text(min_size=1, max_size=20),  # often a valid key or holder
                st.lists(st.text(min_size=1, max_size=8), max_size=5),
            )
        )
    keys = fields.get("keys")
    if fields.get("key") == CANARY or (isinstance(keys, list) and CANARY in keys):
        fields.pop("key", None)
        fields.pop("keys", None)
    if op == "lease" and not isinstance(fields.get("wait"), bool):
        wait = fields.get("wait")
        if isinstance(wait, int | float) and wait > 0.2:
            fields["wait"] = 0.2  # a parked LEASE is answered when its wait ends: keep it short
    header: dict[Any, Any] = {
        "v": draw(st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, "1", None])),
        "op": draw(st.sampled_from([op, op, op, "nope", 7])),
        "id": draw(st.one_of(st.integers(0, 2**63 - 1), scalars)),
        **fields,
    }
    drop = draw(st.sets(st.sampled_from(["v", "op", "id"]), max_size=1))
    for name in drop:
        header.pop(name, None)
    return bytes(msgpack.packb(header, use_bin_type=True))


frames = st.one_of(
    st.lists(st.binary(max_size=200), min_size=1, max_size=4),  # anything at all
    st.tuples(headers(), st.lists(st.binary(max_size=2000), max_size=3)).map(
        lambda parts: [parts[0], *parts[1]]
    ),
)


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(message=frames)
def test_hostile_messages_get_protocol_errors_only(
    raw: zmq.Socket[bytes], message: list[bytes]
) -> None:
    raw.send_multipart(message)
    assert raw.poll(15_000), f"no reply to {message!r}"
    parts = raw.recv_multipart()
    if message[0] == b"":  # a REQ peer's delimiter comes first: it is echoed back
        assert parts[0] == b""
        parts = parts[1:]
    reply = decode_reply(parts[0])
    if not reply["ok"]:
        assert reply["error"] in ERRORS and reply["error"] != "internal", reply
        assert "\n" not in reply["message"]


def test_the_agent_survived_the_hostile_messages(hostile_agent: AgentProcess) -> None:
    """(After the test above, in this module's order.)"""
    with AgentClient(hostile_agent.endpoint, timeout=10) as client:
        assert client.ping()["ok"]
        got = client.get(CANARY)
        assert got is not None and [bytes(f) for f in got.frames] == CANARY_VALUE
        assert got.meta == {"m": 1} and got.version == 1
    assert hostile_agent.process.poll() is None
    log = Path(hostile_agent.log_path).read_text()
    assert not INTERNAL.search(log) and "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------------------- tampered rows


def _flip(raw: bytes, at: int) -> bytes:
    at %= len(raw)
    return raw[:at] + bytes([raw[at] ^ 0x55]) + raw[at + 1 :]


TAMPER = {
    "empty": lambda raw, other: b"",
    "garbage": lambda raw, other: b"not an entry at all",
    "truncated-header": lambda raw, other: raw[:12],
    "truncated-payload": lambda raw, other: raw[:-1],
    "appended": lambda raw, other: raw + b"x",
    "magic": lambda raw, other: b"SMe2" + raw[4:],
    "header-length": lambda raw, other: raw[:4] + b"\xff\xff\xff\xff" + raw[8:],
    "header-byte": lambda raw, other: _flip(raw, 10),
    "another-key": lambda raw, other: other,
    "payload-byte": lambda raw, other: _flip(raw, len(raw) - 3),
}


@pytest.mark.parametrize("mode", sorted(TAMPER))
def test_tampered_disk_rows_are_misses_never_errors(tmp_path: Path, mode: str) -> None:
    disk = tmp_path / "disk"
    agent = start_agent(disk_dir=str(disk), ram_bytes=1024, log_file=str(tmp_path / "a.log"))
    try:
        with AgentClient(agent.endpoint, timeout=10) as client:
            for key in ("k", "other"):
                client.put(key, [b"value of " + key.encode(), os.urandom(50_000)], {"m": key})
            client.stats()  # the write-behind is done
            cache = open_cache(str(disk))
            try:
                raw, other = bytes(cache.get("k")), bytes(cache.get("other"))
                cache.set("k", TAMPER[mode](raw, other))
            finally:
                cache.close()
            try:
                got = client.get("k")
            except AgentError as exc:
                assert exc.error == "corrupt" and mode != "payload-byte", exc
                got = None
            if mode == "payload-byte":  # the agent never checks payloads: the plugin does
                assert got is not None and got.meta == {"m": "k"}
                assert bytes(got.frames[0]) == b"value of k"
            else:
                assert got is None and client.has("k") is None  # deleted
            assert client.get("other") is not None and client.ping()["ok"]
            assert client.put("k", [b"again"], {}) >= 1  # a fresh value replaces it
    finally:
        agent.stop()


# --------------------------------------------------------------------------- concurrency

THREADS = 6
LEASED = [f"leased{i}" for i in range(3)]  # PUT only by the lease's holder
PLAIN = [f"plain{i}" for i in range(4)]  # PUT by anyone (a PUT ends the key's lease)
KEYS = LEASED + PLAIN
SECONDS = 3.0


def _value(key: str, writer: int, n: int, size: int) -> list[bytes]:
    head = msgpack.packb([key, writer, n])
    body = hashlib.sha256(head).digest() * (size // 32 + 1)
    return [head, body[:size], hashlib.sha256(head + body[:size]).digest()]


def _check(key: str, got: Fetched) -> None:
    head, body, digest = (bytes(f) for f in got.frames)
    assert hashlib.sha256(head + body).digest() == digest, f"{key}: torn or mixed frames"
    assert msgpack.unpackb(head)[0] == key, f"{key}: another key's value"


@contextlib.contextmanager
def _threaded(client: AgentClient) -> Iterator[AgentClient]:
    """A client of one of several threads: closed without stopping pyzmq's process-wide
    garbage-collector thread, through which the other threads' clients may be sending
    zero-copy at that moment (stopping it then blocks in its context's term, and later sends
    in this process fail with "Context was terminated")."""
    try:
        yield client
    finally:
        client.close(stop_zmq_gc=False)


def test_concurrent_get_put_lease_keep_single_flight_and_limits(tmp_path: Path) -> None:
    agent = start_agent(
        disk_dir=str(tmp_path / "disk"),
        ram_bytes=MiB // 2,
        disk_bytes=4 * MiB,
        log_file=str(tmp_path / "agent.log"),
    )
    holders: dict[str, str] = {}  # key -> the thread that holds its lease, by the agent's word
    lock = threading.Lock()
    problems: list[str] = []
    counts = [0] * THREADS

    def run(index: int) -> None:
        rng = random.Random(index)
        me = f"thread{index}"
        seen: dict[str, int] = {}
        try:
            with _threaded(AgentClient(agent.endpoint, timeout=30)) as client:
                deadline = time.monotonic() + SECONDS
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    op = rng.choices(["get", "lease", "put"], weights=[5, 3, 2])[0]
                    key = rng.choice({"get": KEYS, "lease": LEASED, "put": PLAIN}[op])
                    if op == "get":
                        got = client.get(key)
                        if got is not None:
                            _check(key, got)
                            assert got.version >= seen.get(key, 0), f"{key} went back"
                            seen[key] = got.version
                    elif op == "lease":
                        reply = client.lease(key, me, 600, wait=rng.choice([0, 0, 0.05]))
                        if reply.granted:
                            with lock:
                                other = holders.get(key)
                                assert other in (None, me), f"{key}: {me} and {other} hold it"
                                holders[key] = me
                            # While it "builds", the others may ask: none may be granted.
                            assert client.lease(key, me, 600).granted  # (a renewal)
                            size = rng.choice([100, 40_000, 300_000, 1_200_000])
                            with lock:
                                del holders[key]  # (before the agent can grant it again)
                            if rng.random() < 0.8:
                                client.put(key, _value(key, index, n, size), {"w": index})
                            else:
                                assert client.release(key, me)
                    else:
                        size = rng.choice([100, 40_000, 300_000])
                        client.put(key, _value(key, index, n, size), {"w": index})
                    counts[index] += 1
        except Exception as exc:
            problems.append(f"{me}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not problems, problems
        assert sum(counts) >= 20 * THREADS, counts  # they really interleaved
        with AgentClient(agent.endpoint, timeout=30) as client:
            stats = client.stats()
            ram, disk = stats["tiers"]["ram"], stats["tiers"]["disk"]
            assert stats["write_errors"] == 0, stats["last_write_error"]
            assert ram["bytes"] + ram["meta_bytes"] <= ram["budget"]
            assert disk["bytes"] <= disk["limit"]
            assert ram["evictions"] > 0  # the limits were really met
            for key in KEYS:
                got = client.get(key)
                if got is not None:
                    _check(key, got)
        log = Path(agent.log_path).read_text()
        assert not INTERNAL.search(log) and "Traceback" not in log, log[-3000:]
    finally:
        agent.stop()
