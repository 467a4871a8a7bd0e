"""Two agents on two "hosts": real network namespaces joined to this one by veth pairs.

Where the machine allows it (root, iproute2, ``ip netns add`` permitted), each agent runs in
a network namespace of its own (``ip netns exec NS python -m nodeagent``) bound to a private
address on its side of a veth pair, with CURVE keys made by ``statemigrate keys``; clients and
pytest runs in this namespace reach it only through that link, as they would reach another
machine. Elsewhere every test skips with one line naming what is missing.

Namespaces, links and agents are removed at teardown, also after a failure, and the stale
ones of an earlier run that crashed (named after its pid, which is gone) at setup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.client import AgentClient, AgentError
from nodeagent.curve import ClientKeys
from nodeagent.launcher import AgentProcess
from nodeagent.leases import pid_alive
from tests.conftest import Suite
from tests.integration.conftest import wait_until
from tests.integration.test_agent import ROOT, child_env
from tests.integration.test_curve import REFUSED_WITHIN, keys_command
from tests.integration.test_placement_agents import tables_project

pytestmark = pytest.mark.timeout(300)

PREFIX = "smn"  # namespaces smn<pid>a, smn<pid>b; veth ends smn<pid>ah (here), smn<pid>an
NET = "10.231"  # private /24s 10.231.X.0, X chosen free at setup
LOCK = "/run/lock/sm-netns.lock" if os.path.isdir("/run/lock") else "/tmp/sm-netns.lock"
_OURS = re.compile(rf"^{PREFIX}(\d+)[a-z][hn]?$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _names(listing: str) -> list[str]:
    """Names of namespaces (``ip netns list``) or links (``ip -o link``) in a listing."""
    names = []
    for line in listing.splitlines():
        fields = line.split()
        if not fields:
            continue
        name = fields[1] if fields[0].endswith(":") else fields[0]
        names.append(name.rstrip(":").split("@", 1)[0])
    return names


def clean_stale() -> None:
    """Remove namespaces and links of earlier runs whose process is gone (a crash, a kill)."""
    for ns in _names(ip("netns", "list", check=False).stdout):
        match = _OURS.match(ns)
        if match is None or pid_alive(int(match[1])):
            continue
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)  # an agent that crashed run left behind
        ip("link", "del", f"{ns}h", check=False)
        ip("netns", "del", ns, check=False)
    for link in _names(ip("-o", "link", "show", check=False).stdout):
        match = _OURS.match(link)
        if match is not None and not pid_alive(int(match[1])):
            ip("link", "del", link, check=False)


def free_subnets(count: int) -> list[int]:
    """``count`` values X such that nothing here uses 10.231.X.0/24 (addresses or routes)."""
    used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
    start = os.getpid() * 2  # concurrent runs start at different places
    found: list[int] = []
    for i in range(254):
        x = 1 + (start + i) % 254
        if f"{NET}.{x}." not in used:
            found.append(x)
            if len(found) == count:
                return found
    raise RuntimeError(f"no free /24 in {NET}.0.0/16")


@dataclasses.dataclass
class Host:
    """One namespace: ``address`` is its side of the veth pair, ``gateway`` ours."""

    ns: str
    address: str
    gateway: str

    @property
    def outside(self) -> str:  # the veth end in this namespace
        return f"{self.ns}h"

    @property
    def inside(self) -> str:  # the veth end in the agent's namespace
        return f"{self.ns}n"

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ip("netns", "exec", self.ns, *args)

    def link(self, state: str) -> None:
        """Take the agent's side of the link ``down`` (a silent partition: packets are dropped,
        nothing answers) or back ``up``."""
        self.exec("ip", "link", "set", self.inside, state)

    def create(self) -> None:
        ip("netns", "add", self.ns)
        ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        ip("link", "set", self.inside, "netns", self.ns)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.outside)
        ip("link", "set", self.outside, "up")
        self.exec("ip", "addr", "add", f"{self.address}/24", "dev", self.inside)
        self.exec("ip", "link", "set", self.inside, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def remove(self) -> None:
        for pid in ip("netns", "pids", self.ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        # Deleting the link here, at once: a deleted namespace takes its veth pair with it
        # only later, asynchronously.
        ip("link", "del", self.outside, check=False)
        ip("netns", "del", self.ns, check=False)


def missing() -> str | None:
    """Why two namespaces cannot be made here, in one line; None when they can."""
    if not hasattr(os, "geteuid") or sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return f"network namespaces need root (uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2 (no `ip` command; apt-get install iproute2)"
    probe = f"{PREFIX}{os.getpid()}p"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    try:
        veth = ip(
            "link", "add", f"{probe}h", "type", "veth", "peer", "name", f"{probe}n", check=False
        )
        if veth.returncode != 0:
            return f"`ip link add ... type veth` is not permitted here: {veth.stderr.strip()}"
    finally:
        ip("link", "del", f"{probe}h", check=False)
        ip("netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    """Two namespaces, each joined to this one by a veth pair on a /24 of its own."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    pid = os.getpid()
    made: list[Host] = []
    try:
        # One run at a time picks its subnets and takes them (xdist workers, parallel runs).
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            clean_stale()
            for letter, x in zip("ab", free_subnets(2), strict=True):
                host = Host(f"{PREFIX}{pid}{letter}", f"{NET}.{x}.2", f"{NET}.{x}.1")
                made.append(host)
                host.create()
        yield made
    finally:
        for host in made:
            host.remove()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("netns") / "keys"
    done = keys_command(str(directory))
    assert done.returncode == 0, done.stderr
    return directory


def start_in(
    host: Host, keys: Path, disk_dir: Path, log: Path, bind: str | None = None
) -> AgentProcess:
    """``ip netns exec NS python -m nodeagent`` bound to the namespace's address (or
    ``bind``); ready when it answers a PING from this namespace, over the link."""
    bind = bind or f"tcp://{host.address}:*"
    cmd = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "nodeagent"]
    cmd += ["--bind", bind, "--curve-dir", str(keys), "--disk-dir", str(disk_dir)]
    temp_dir = tempfile.mkdtemp(prefix="sm-netns-")
    with open(log, "ab") as log_fh:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fh,
            close_fds=True,
            start_new_session=True,
            env=child_env(),  # this checkout's code: `ip netns exec` keeps the environment
        )
    agent = AgentProcess(process, bind, temp_dir, str(log), ClientKeys.load(keys))
    if not bind.startswith("tcp://0.0.0.0:"):
        return agent.wait_ready(timeout=20)
    # A wildcard address: the ready line names it, and the launcher would make it loopback,
    # which is this namespace's, not the agent's. Other hosts use the agent's own address.
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        process.stdout.close()
        assert line.startswith(f"nodeagent ready {bind.rsplit(':', 1)[0]}:"), line
        agent.endpoint = f"tcp://{host.address}:{line.strip().rsplit(':', 1)[1]}"
        with AgentClient(agent.endpoint, timeout=10, curve=agent.client_keys) as client:
            client.ping()
        agent.ready = True
    except BaseException:
        agent.stop()
        raise
    return agent


@pytest.fixture
def agents(hosts: list[Host], keys: Path, tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """A fresh agent in each namespace (links up), stopped at teardown."""
    started: list[AgentProcess] = []
    try:
        for i, host in enumerate(hosts):
            host.link("up")
            started.append(start_in(host, keys, tmp_path / f"disk{i}", tmp_path / f"agent{i}.log"))
        yield started
    finally:
        for host in hosts:
            host.link("up")  # so that SHUTDOWN reaches an agent cut off by a test
        for agent in started:
            agent.stop()


@pytest.fixture
def client_keys(keys: Path) -> ClientKeys:
    return ClientKeys.load(keys)


def stats(agent: AgentProcess) -> dict[str, Any]:
    assert agent.client_keys is not None
    with AgentClient(agent.endpoint, timeout=10, curve=agent.client_keys) as c:
        return c.stats()


# -- clients ---------------------------------------------------------------------------------


def test_agents_listen_only_on_their_namespace_address(
    hosts: list[Host], agents: list[AgentProcess]
) -> None:
    for host, agent in zip(hosts, agents, strict=True):
        assert agent.endpoint.startswith(f"tcp://{host.address}:")
        # Nothing in this namespace has that address: the agent is on another "host".
        assert f" {host.address}/" not in ip("-4", "-o", "addr", "show").stdout


def test_an_agent_bound_to_every_interface_is_reached_by_its_host_address(
    hosts: list[Host], keys: Path, client_keys: ClientKeys, tmp_path: Path
) -> None:
    """``--bind tcp://0.0.0.0:PORT``, as docs/security.md runs a shared agent."""
    with start_in(
        hosts[0], keys, tmp_path / "disk", tmp_path / "agent.log", bind="tcp://0.0.0.0:7600"
    ) as agent:
        assert agent.endpoint == f"tcp://{hosts[0].address}:7600"
        with AgentClient(agent.endpoint, timeout=10, curve=client_keys) as client:
            assert client.put("k", [b"v"], {}) == 1
            assert client.has("k") == "ram"
    assert agent.process.returncode == 0


def test_keyed_client_pings_puts_and_gets_over_the_link(
    agents: list[AgentProcess], client_keys: ClientKeys
) -> None:
    payload = os.urandom(3 << 20)  # several MiB, so the link carries more than one segment
    for i, agent in enumerate(agents):
        with AgentClient(agent.endpoint, timeout=10, curve=client_keys) as client:
            assert client.ping()["ok"]
            version = client.put(f"k{i}", [payload, b"tail"], {"agent": i})
            fetched = client.get(f"k{i}")
            assert client.get(f"k{1 - i}") is None  # the other agent's value is not here
        assert fetched is not None and fetched.version == version
        assert [bytes(f) for f in fetched.frames] == [payload, b"tail"]
        assert fetched.meta == {"agent": i}


def test_client_without_keys_is_refused(
    agents: list[AgentProcess], keys: Path, tmp_path: Path
) -> None:
    agent = agents[0]
    # No keys: refused before a packet is sent (a non-loopback endpoint needs them).
    with pytest.raises(AgentError, match=r"refused: .* without CURVE keys"):
        AgentClient(agent.endpoint)
    # Keys the agent does not list: the handshake fails over the link, at once.
    assert keys_command(str(tmp_path / "other")).returncode == 0
    stranger = dataclasses.replace(
        ClientKeys.load(tmp_path / "other"), server=ClientKeys.load(keys).server
    )
    started = time.monotonic()
    with (
        pytest.raises(AgentError) as info,
        AgentClient(agent.endpoint, timeout=10, curve=stranger) as client,
    ):
        client.ping()
    assert time.monotonic() - started < REFUSED_WITHIN
    assert info.value.error == "auth"
    assert "the agent refused this client's key (status 400)" in str(info.value)


# -- pytest runs with --sm-agent A,B ---------------------------------------------------------

VALUES = 8  # managed fixtures of each scope: 16 values over two agents

# Builds well above a load across the veth pair with CURVE (~30 ms under load): else the
# plugin rightly builds instead of loading, and the warm assertions fail.
CONFTEST, USES = tables_project(values=VALUES, rows=5000, build_s=0.1)

# Cuts the agent's link from inside the run, between two test modules: a silent partition.
CUT = """
import os, subprocess

def test_cut_link():
    ns, dev = os.environ.get("SM_CUT_NS"), os.environ.get("SM_CUT_DEV")
    if ns:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", dev, "down"], check=True)
"""

#: Longest the managed run with a partition may take: the default statemigrate_timeout
#: (30 s) is not paid for a host that cannot be reached (no connection is made), only the
#: connection's own deadline (agents.link.FIRST_PING_SECONDS, 2 s) is.
CUT_RUN_SECONDS = 15


def _project(suite: Suite) -> None:
    suite.pytester.makeini(  # statemigrate_timeout: the default, as a user would have it
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures =\n    table_*\n    row_*\n"
    )
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_a=USES, test_b_cut=CUT, test_c=USES)


@pytest.fixture
def netsuite(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> Suite:
    # The pytest runs (subprocesses) import this checkout's plugin.
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    assert ROOT in os.environ["PYTHONPATH"]
    _project(suite)
    return suite


def _args(agents: list[AgentProcess], keys: Path) -> tuple[str, ...]:
    # "--sm-keys=DIR": a separate DIR would count as a path in pytest's choice of rootdir.
    return ("--sm-agent", ",".join(a.endpoint for a in agents), f"--sm-keys={keys}")


def test_two_hosts_cold_then_warm(netsuite: Suite, agents: list[AgentProcess], keys: Path) -> None:
    args = _args(agents, keys)
    cold = netsuite.same_as_plain(*args)
    assert cold.stats is not None and cold.stats["builds"] == 2 * VALUES, cold.text
    assert not cold.stats["fallbacks"], cold.text
    # Each value stored once, at its home on the ring, which records itself as its holder;
    # both agents got some (all 16 on one: p = 2**-15).
    held = [int(stats(a)["tiers"]["ram"]["entries"]) for a in agents]
    assert sum(held) == 2 * VALUES, held
    # Announcements are batched by a thread of each agent: under load they may land late.
    wait_until(lambda: [stats(a)["placement"]["records"] for a in agents] == held)
    assert all(held), held
    assert [stats(a)["placement"]["dropped"] for a in agents] == [0, 0]
    (netsuite.pytester.path / "builds.log").unlink()
    warm = netsuite.run(*args)  # (the plain run would write builds.log)
    assert warm.outcomes == cold.outcomes  # which equal a plain run's
    assert warm.stats is not None and warm.stats["builds"] == 0, warm.text
    assert sum(warm.stats["hits"].values()) >= 2 * VALUES
    assert not warm.stats["fallbacks"], warm.text
    assert netsuite.builds() == []  # no managed fixture body ran


def test_a_host_cut_off_mid_run(
    netsuite: Suite, agents: list[AgentProcess], keys: Path, hosts: list[Host]
) -> None:
    args = _args(agents, keys)
    netsuite.run(*args)  # values stored, spread over the two
    held = [int(stats(a)["tiers"]["ram"]["entries"]) for a in agents]
    victim = max(range(len(agents)), key=held.__getitem__)
    host, endpoint = hosts[victim], agents[victim].endpoint
    plain = netsuite.plain(*args)  # (with the link up: only the managed run cuts it)
    os.environ["SM_CUT_NS"], os.environ["SM_CUT_DEV"] = host.ns, host.inside
    try:
        started = time.monotonic()
        run = netsuite.run(*args)
        seconds = time.monotonic() - started
    finally:
        del os.environ["SM_CUT_NS"], os.environ["SM_CUT_DEV"]
    assert "state DOWN" in host.exec("ip", "link", "show", host.inside).stdout
    assert run.outcomes == plain.outcomes, run.text
    assert set(run.outcomes.values()) == {"passed", "failed"}
    assert run.stats is not None
    # The victim's values were rebuilt after the cut (stored on the other agent); the
    # other's were still served.
    assert run.stats["builds"] >= 1 and sum(run.stats["hits"].values()) >= 1, run.text
    run.result.stdout.fnmatch_lines(
        [f"*agent {endpoint} down (*no connection made*); its keys went to the other agents"]
    )
    down_lines = [line for line in run.result.stdout.lines if " down (" in line]
    assert len(down_lines) == 1, down_lines
    assert seconds < CUT_RUN_SECONDS, run.text
    # The survivor serves the next run (the victim still cut off): nothing is rebuilt.
    again = netsuite.same_as_plain(*args)
    assert again.stats is not None and again.outcomes == run.outcomes
    assert again.stats["builds"] == 0, again.text
    again.result.stdout.fnmatch_lines([f"*agent {endpoint} down*other agents*"])
