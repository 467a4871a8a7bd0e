"""Several client processes against one real agent for a few seconds: no torn or mixed read,
no lost write, no downgrade, no deadlock.

Every value is self-describing: frame 0 is a msgpack header (key, counter), frame 1 a body
derived from it, frame 2 the sha256 of both; the meta repeats the counter. A reply that mixes
frames or meta of two versions, or is torn, fails the digest or the counter check.

Keys and what may happen to them (so that the final count is exact):

* ``c*`` counters on agent A: only compare-and-set increments (counter == version - 1), GETs,
  PREFETCH and EVICT tier=ram. Never evicted from every tier, so none may ever be missing, and
  the final counter must equal the number of successful increments.
* ``m*`` live on agent B, where workers increment them (counter == version); A receives them
  only by MIGRATE, keeping B's version, so on A too counter == version, and no reader of A may
  see a version older than one it saw before.
* ``e*`` on A: plain PUTs, GETs and EVICTs of every tier; reads must only be well formed.

Run as a script (``python test_agent_stress.py worker ARGS``) this file is one worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from nodeagent.client import AgentClient, AgentError, Fetched
from nodeagent.launcher import AgentProcess

ROOT = str(Path(__file__).resolve().parents[2])  # on the workers' PYTHONPATH

StartAgent = Callable[..., AgentProcess]

COUNTERS = [f"c{i}" for i in range(4)]
MIGRATED = [f"m{i}" for i in range(3)]
EVICTED = [f"e{i}" for i in range(2)]
WORKERS = 4
DURATION = 4.0  # s each worker runs
BASE = 1  # version of every counter key when the workers start (counter 0)

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- values


def make_value(key: str, counter: int, size: int) -> tuple[list[bytes], dict[str, Any]]:
    header: bytes = msgpack.packb({"key": key, "counter": counter})
    seed = hashlib.sha256(header).digest()
    body = (seed * (size // len(seed) + 1))[:size]
    return [header, body, hashlib.sha256(header + body).digest()], {"counter": counter}


def check_value(key: str, got: Fetched) -> int:
    """The counter of a well-formed value of ``key``; AssertionError when torn or mixed."""
    assert len(got.frames) == 3, f"{key}: {len(got.frames)} frames"
    header, body, digest = (bytes(f) for f in got.frames)
    assert hashlib.sha256(header + body).digest() == digest, f"{key}: torn or mixed frames"
    fields = msgpack.unpackb(header)
    assert fields["key"] == key, f"{key}: value of {fields['key']}"
    assert got.meta == {"counter": fields["counter"]}, f"{key}: meta of another version"
    counter = int(fields["counter"])
    if key in COUNTERS:
        assert counter == got.version - BASE, f"{key}: counter {counter} at v{got.version}"
    if key in MIGRATED:
        assert counter == got.version, f"{key}: counter {counter} at v{got.version}"
    return counter


# --------------------------------------------------------------------------- one worker


def worker(endpoint: str, peer: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    increments = dict.fromkeys(COUNTERS, 0)
    seen: dict[str, int] = {}  # key -> highest version this worker read from A
    ops: dict[str, int] = {}

    def size() -> int:
        return rng.choice([64, 4096, 70_000, 200_000])

    def read(client: AgentClient, key: str) -> Fetched | None:
        got = client.get(key)
        if got is None:
            assert key not in COUNTERS, f"{key}: lost"
            return None
        check_value(key, got)
        if key not in EVICTED:
            assert got.version >= seen.get(key, 0), f"{key}: v{got.version} after v{seen[key]}"
            seen[key] = got.version
        return got

    def increment(client: AgentClient, key: str, got: Fetched | None) -> bool:
        current = 0 if got is None else check_value(key, got)
        frames, meta = make_value(key, current + 1, size())
        expect = 0 if got is None else got.version
        try:
            version = client.put(key, frames, meta, expect_version=expect)
        except AgentError as exc:
            if exc.error != "version-conflict":
                raise
            return False
        assert version == expect + 1
        return True

    with AgentClient(endpoint, timeout=30) as a, AgentClient(peer, timeout=30) as b:
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline:
            op = rng.choices(
                [
                    "cas",
                    "race",
                    "get",
                    "prefetch",
                    "demote",
                    "put_e",
                    "evict_e",
                    "migrate",
                    "cas_b",
                ],
                weights=[25, 10, 20, 10, 10, 8, 5, 6, 6],
            )[0]
            ops[op] = ops.get(op, 0) + 1
            if op == "cas":
                key = rng.choice(COUNTERS)
                if increment(a, key, read(a, key)):
                    increments[key] += 1
            elif op == "race":  # a PUT while the key's load is in flight, on purpose
                key = rng.choice(COUNTERS)
                got = read(a, key)
                a.evict(key, tier="ram")
                a.prefetch([key])
                if increment(a, key, got):
                    increments[key] += 1
            elif op == "get":
                read(a, rng.choice(COUNTERS + MIGRATED + EVICTED))
            elif op == "prefetch":
                keys = rng.sample(COUNTERS + MIGRATED, 3)
                reply = a.prefetch(keys, tier=rng.choice(["ram", "disk"]))
                assert sum(reply.values()) == 3
            elif op == "demote":
                a.evict_many(rng.sample(COUNTERS + MIGRATED, 2), tier="ram")
            elif op == "put_e":
                key = rng.choice(EVICTED)
                a.put(key, *make_value(key, rng.randrange(1000), size()))
            elif op == "evict_e":
                a.evict(rng.choice(EVICTED))
            elif op == "migrate":
                assert a.migrate(rng.sample(MIGRATED, 2), peer)["queued"] <= 2
            else:  # cas_b: the source's versions move on while A migrates
                key = rng.choice(MIGRATED)
                got = b.get(key)
                assert got is not None
                current = check_value(key, got)
                frames, meta = make_value(key, current + 1, size())
                try:
                    b.put(key, frames, meta, expect_version=got.version)
                except AgentError as exc:
                    if exc.error != "version-conflict":
                        raise
        for key in COUNTERS + MIGRATED:  # a last look after everything this worker did
            read(a, key)
    return {"increments": increments, "ops": ops}


# --------------------------------------------------------------------------- the test


def test_concurrent_clients_never_see_torn_lost_or_older_values(
    start: StartAgent, tmp_path: Path
) -> None:
    a = start(  # small RAM: spills; a store slow enough that loads overlap PUTs
        ram_bytes=512 * 1024,
        disk_dir=str(tmp_path / "a-disk"),
        store=str(tmp_path / "a-store"),
        store_latency=0.003,
    )
    b = start(disk_dir=str(tmp_path / "b-disk"))
    with AgentClient(a.endpoint, timeout=30) as ca, AgentClient(b.endpoint, timeout=30) as cb:
        for key in COUNTERS:
            assert ca.put(key, *make_value(key, 0, 1000), expect_version=0) == BASE
        for key in MIGRATED:
            assert cb.put(key, *make_value(key, 1, 1000), expect_version=0) == 1
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", a.endpoint, b.endpoint, str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(WORKERS)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)  # a deadlock ends here
            assert proc.returncode == 0, err.decode()[-3000:]
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    with AgentClient(a.endpoint, timeout=30) as ca, AgentClient(b.endpoint, timeout=30) as cb:
        assert ca.ping()["ok"] and cb.ping()["ok"]
        deadline = time.monotonic() + 30
        while ca.stats()["queued_loads"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = ca.stats()
        assert stats["queued_loads"] == 0 and stats["write_errors"] == 0
        for key in COUNTERS:
            got = ca.get(key)
            assert got is not None, f"{key} lost"
            done = sum(r["increments"][key] for r in results)
            assert check_value(key, got) == done, f"{key}: lost increments"
            assert got.version == BASE + done
        for key in MIGRATED:
            source = cb.get(key)
            assert source is not None
            check_value(key, source)
            copy = ca.get(key)
            assert copy is None or check_value(key, copy) <= source.version
    total = sum(sum(r["ops"].values()) for r in results)
    assert total >= 40 * WORKERS, results  # they really interleaved
    assert sum(r["ops"].get("migrate", 0) for r in results) > 0


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    endpoint, peer, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(json.dumps(worker(endpoint, peer, seed)))
