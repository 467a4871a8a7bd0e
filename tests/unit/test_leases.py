"""nodeagent.leases: single-flight leases with expiry and dead-holder detection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from nodeagent.leases import LeaseTable, pid_alive


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> LeaseTable:
    return LeaseTable(clock=clock, is_alive=lambda pid, host: True, hostname="here")


def test_grant_then_deny_while_held(table: LeaseTable, clock: FakeClock) -> None:
    first = table.acquire("k", "w1", ttl=10)
    assert first.granted and first.holder == "w1" and first.expires_in == 10
    clock.now += 4
    second = table.acquire("k", "w2", ttl=10)
    assert not second.granted and second.holder == "w1" and second.expires_in == pytest.approx(6)
    assert table.acquire("other", "w2", ttl=10).granted
    assert len(table) == 2


def test_renew_by_same_holder(table: LeaseTable, clock: FakeClock) -> None:
    table.acquire("k", "w1", ttl=10)
    clock.now += 9
    assert table.acquire("k", "w1", ttl=10).granted
    clock.now += 9  # 18 s after the first grant, 9 s after the renewal
    assert not table.acquire("k", "w2", ttl=10).granted


def test_expiry(table: LeaseTable, clock: FakeClock) -> None:
    table.acquire("k", "w1", ttl=10)
    clock.now += 10
    assert table.holder("k") is None and len(table) == 0
    assert table.acquire("k", "w2", ttl=10).granted


def test_release_by_holder_only(table: LeaseTable) -> None:
    table.acquire("k", "w1", ttl=10)
    assert table.release("k", "w2") is False
    assert table.holder("k") == "w1"
    assert table.release("k", "w1") is True
    assert table.release("k", "w1") is False
    assert table.acquire("k", "w2", ttl=10).granted


def test_drop(table: LeaseTable) -> None:
    table.acquire("k", "w1", ttl=10)
    assert table.drop("k") is True
    assert table.drop("k") is False
    assert table.acquire("k", "w2", ttl=10).granted


def test_ttl_must_be_positive(table: LeaseTable) -> None:
    with pytest.raises(ValueError):
        table.acquire("k", "w1", ttl=0)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_holder_frees_the_lease() -> None:
    pid = dead_pid()
    assert not pid_alive(pid)
    assert pid_alive(os.getpid())
    table = LeaseTable()
    host = socket.gethostname()
    assert table.acquire("k", "w1", ttl=60, pid=pid, host=host).granted
    assert table.acquire("k", "w2", ttl=60, pid=os.getpid(), host=host).granted
    assert not table.acquire("k", "w3", ttl=60).granted  # w2 is alive


def test_pid_on_another_host_is_not_checked() -> None:
    table = LeaseTable(is_alive=lambda pid, host: False, hostname="here")
    assert table.acquire("k", "w1", ttl=60, pid=123, host="elsewhere").granted
    assert not table.acquire("k", "w2", ttl=60).granted
    assert table.acquire("j", "w1", ttl=60, pid=123, host="here").granted
    assert table.acquire("j", "w2", ttl=60).granted  # w1's process is dead


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()
