"""CURVE: `statemigrate keys`, a real agent serving CURVE, keyed and unkeyed clients, the plugin.

The agent binds ``tcp://0.0.0.0:PORT`` (what a shared agent does) and clients connect to a
non-loopback address of this machine when it has one, else to 127.0.0.1: the handshake and
the authenticator are the same either way.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent import private
from nodeagent.client import AgentClient, AgentError
from nodeagent.curve import ClientKeys
from nodeagent.launcher import AgentProcess
from nodeagent.placement import HashRing
from tests.conftest import DATASET_CONFTEST, Suite
from tests.integration.conftest import StartAgent
from tests.integration.test_agent import child_env
from tests.integration.test_placement_agents import keys_homed, wait_until

pytestmark = pytest.mark.timeout(240)

REFUSED_WITHIN = 1.0  # s: a refused handshake is reported this fast (the timeout is 10 s)


def keys_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_statemigrate.cli", "keys", *args],
        env=child_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only picks the outgoing interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def reachable(agent: AgentProcess) -> str:
    """The agent's endpoint through a non-loopback address when there is one."""
    port = agent.endpoint.rsplit(":", 1)[1]
    return f"tcp://{outside_address() or '127.0.0.1'}:{port}"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    done = keys_command(str(directory))
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture
def curve_agent(start: StartAgent, keys: Path) -> AgentProcess:
    return start(bind="tcp://0.0.0.0:*", curve_dir=str(keys))


def refused(endpoint: str, curve: ClientKeys | None) -> tuple[str, float]:
    """Try a PING; return the error and how long it took to get it."""
    started = time.monotonic()
    with pytest.raises(AgentError) as info, AgentClient(endpoint, timeout=10, curve=curve) as c:
        c.ping()
    return str(info.value), time.monotonic() - started


# -- statemigrate keys -----------------------------------------------------------------------


def test_keys_command_writes_secret_files_0600(tmp_path: Path) -> None:
    done = keys_command(cwd=tmp_path)  # default directory: .statemigrate/keys
    assert done.returncode == 0, done.stderr
    directory = tmp_path / ".statemigrate" / "keys"
    assert "--curve-dir .statemigrate/keys" in done.stdout
    assert "--sm-keys .statemigrate/keys" in done.stdout
    modes = {
        str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode)
        for p in directory.rglob("*")
        if p.is_file()
    }
    assert modes == {
        "server.key": 0o644,
        "server.key_secret": 0o600,
        "client.key": 0o644,
        "client.key_secret": 0o600,
        "authorized/client.key": 0o644,
    }
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    client = ClientKeys.load(directory)
    assert (directory / "authorized" / "client.key").read_bytes() == (
        directory / "client.key"
    ).read_bytes()
    assert client.public != client.server


def test_keys_command_refuses_to_overwrite_without_force(keys: Path) -> None:
    before = (keys / "server.key_secret").read_bytes()
    (keys / "authorized" / "ci.key").write_bytes((keys / "client.key").read_bytes())
    done = keys_command(str(keys))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"statemigrate keys: {keys} already holds keys (server.key, server.key_secret, "
        "client.key, client.key_secret, authorized/client.key): pass --force to replace them"
    ]
    assert (keys / "server.key_secret").read_bytes() == before
    forced = keys_command(str(keys), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (keys / "server.key_secret").read_bytes() != before
    assert (keys / "authorized" / "ci.key").exists()  # other clients' keys are kept
    assert not [p for p in keys.iterdir() if p.name.startswith(".new-keys-")]


def test_keys_command_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = keys_command(str(tmp_path / "file" / "keys"))
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"statemigrate keys: cannot write keys to {tmp_path}/file")


# -- the agent -------------------------------------------------------------------------------


def test_keyed_client_is_served(curve_agent: AgentProcess, keys: Path) -> None:
    with AgentClient(reachable(curve_agent), timeout=10, curve=ClientKeys.load(keys)) as client:
        assert client.ping()["ok"]
        version = client.put("k", [b"payload", b"more"], {"m": 1})
        fetched = client.get("k")
    assert fetched is not None and fetched.version == version
    assert [bytes(f) for f in fetched.frames] == [b"payload", b"more"] and fetched.meta == {"m": 1}


def test_client_without_keys_is_refused_at_once(curve_agent: AgentProcess) -> None:
    # Loopback needs no keys on the client's side: the agent refuses it.
    message, seconds = refused(curve_agent.endpoint, None)
    assert seconds < REFUSED_WITHIN
    assert message == (
        f"agent {curve_agent.endpoint}: auth: handshake failed: the agent requires CURVE "
        "authentication and this client has no keys (create them with `statemigrate keys`), "
        "or it is another user's agent (this user has no token file "
        f"{private.token_path(curve_agent.endpoint)})"
    )
    # A non-loopback endpoint is refused before any connection is made.
    if outside_address() is not None:
        with pytest.raises(AgentError, match=r"refused: .* without CURVE keys"):
            AgentClient(reachable(curve_agent))


def test_unauthorized_client_key_is_refused(
    curve_agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    assert keys_command(str(tmp_path / "other")).returncode == 0
    stranger = dataclasses.replace(
        ClientKeys.load(tmp_path / "other"), server=ClientKeys.load(keys).server
    )
    message, seconds = refused(reachable(curve_agent), stranger)
    assert seconds < REFUSED_WITHIN
    assert "auth: the agent refused this client's key (status 400)" in message
    assert "authorized directory" in message


def test_wrong_server_key_is_refused(curve_agent: AgentProcess, keys: Path, tmp_path: Path) -> None:
    assert keys_command(str(tmp_path / "other")).returncode == 0
    wrong = dataclasses.replace(
        ClientKeys.load(keys), server=ClientKeys.load(tmp_path / "other").server
    )
    message, seconds = refused(reachable(curve_agent), wrong)
    assert seconds < REFUSED_WITHIN
    assert "auth: CURVE handshake failed: does the agent run with --curve-dir, and is the " in (
        message
    )
    assert f"server.key in {keys} its public key?" in message


def test_keyed_client_of_an_agent_without_curve_is_told(start: StartAgent, keys: Path) -> None:
    plain = start()  # ipc, no keys
    message, seconds = refused(plain.endpoint, ClientKeys.load(keys))
    assert seconds < REFUSED_WITHIN
    # zmq reports a mechanism mismatch, or (first, at times) a failure without detail.
    assert "the agent does not (start it with --curve-dir)" in message or (
        "does the agent run with --curve-dir" in message
    )


def test_loopback_agent_with_keys_authenticates_too(start: StartAgent, keys: Path) -> None:
    agent = start(bind="tcp://127.0.0.1:*", curve_dir=str(keys))
    with AgentClient(agent.endpoint, timeout=10, curve=ClientKeys.load(keys)) as client:
        assert client.ping()["ok"]
    assert "auth: handshake failed" in refused(agent.endpoint, None)[0]


def test_sighup_rereads_the_authorized_keys(
    curve_agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    assert keys_command(str(tmp_path / "new")).returncode == 0
    newcomer = dataclasses.replace(
        ClientKeys.load(tmp_path / "new"), server=ClientKeys.load(keys).server
    )
    assert "refused this client's key" in refused(curve_agent.endpoint, newcomer)[0]
    (keys / "authorized" / "new.key").write_bytes((tmp_path / "new" / "client.key").read_bytes())
    os.kill(curve_agent.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        try:
            with AgentClient(curve_agent.endpoint, timeout=10, curve=newcomer) as client:
                assert client.ping()["ok"]
            break
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", "--no-disk", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_non_loopback_bind_without_keys_names_the_fix() -> None:
    done = run_agent("--bind", "tcp://0.0.0.0:*")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "nodeagent: error: refusing tcp://0.0.0.0:*: only ipc:// and loopback tcp:// are "
        "allowed without CURVE keys: create keys with `statemigrate keys DIR` and pass "
        "--curve-dir DIR"
    ]


@pytest.mark.parametrize("damage", ["no-authorized-keys", "missing-dir", "open-secret"])
def test_bad_curve_dir_is_one_line(keys: Path, damage: str) -> None:
    if damage == "no-authorized-keys":
        (keys / "authorized" / "client.key").unlink()
        expected = f"no client public keys (*.key) in {keys}/authorized"
    elif damage == "missing-dir":
        keys = keys / "nowhere"
        expected = f"no key file {keys}/server.key_secret"
    else:
        (keys / "server.key_secret").chmod(0o640)
        expected = f"{keys}/server.key_secret is accessible by other users (mode 640)"
    done = run_agent("--bind", "tcp://0.0.0.0:*", "--curve-dir", str(keys))
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nodeagent: error: --curve-dir: {expected}")


# -- the plugin ------------------------------------------------------------------------------

CONFTEST = DATASET_CONFTEST


def _project(suite: Suite, ini: str = "") -> None:
    suite.pytester.makeini(
        "[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = dataset\n"
        f"statemigrate_timeout = 10\n{ini}"
    )
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(
        "def test_a(dataset):\n    assert dataset[-1] == 99\n\n"
        "def test_b(dataset):\n    assert len(dataset) == 100\n"
    )


def test_plugin_with_keys_is_served(suite: Suite, curve_agent: AgentProcess, keys: Path) -> None:
    _project(suite)
    endpoint = reachable(curve_agent)
    # "--sm-keys=DIR": a separate DIR argument would count as a path in pytest's choice of
    # the rootdir (and so of the ini file).
    args = ("--sm-agent", endpoint, f"--sm-keys={keys}", "--strict-config")
    first = suite.same_as_plain(*args)
    second = suite.same_as_plain(*args)
    assert first.stats is not None and first.stats["builds"] == 1, first.text
    assert second.stats is not None and second.stats["hits"] == {"ram": 1}, second.text
    assert second.stats["builds"] == 0 and "fallback" not in second.text
    # The same through the ini key, relative to the rootdir.
    (suite.pytester.path / "keys").symlink_to(keys)
    _project(suite, f"statemigrate_agent = {endpoint}\nstatemigrate_keys = keys\n")
    third = suite.same_as_plain("--strict-config")
    assert third.stats is not None and third.stats["hits"] == {"ram": 1}, third.text


def test_plugin_without_keys_falls_back_fast(suite: Suite, curve_agent: AgentProcess) -> None:
    """Loopback needs no keys from the plugin; the CURVE agent refuses it, the plugin notices
    at the first PING (not after statemigrate_timeout) and builds."""
    _project(suite)
    plain = suite.plain()
    started = time.monotonic()
    run = suite.run("--sm-agent", curve_agent.endpoint)
    seconds = time.monotonic() - started
    assert run.outcomes == plain.outcomes and set(run.outcomes.values()) == {"passed"}, run.text
    assert run.stats is not None and run.stats["builds"] == 1 and not run.stats["hits"]
    run.result.stdout.fnmatch_lines(
        ["fallback: agent unavailable (*auth: handshake failed*); values were built in-process"]
    )
    assert seconds < 30, run.text  # generous: a loaded machine; a hang would be far longer


def test_plugin_refuses_a_non_loopback_agent_without_keys(
    suite: Suite, curve_agent: AgentProcess
) -> None:
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    _project(suite)
    run = suite.run("--sm-agent", reachable(curve_agent))
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    run.result.stderr.fnmatch_lines(
        [
            "ERROR: statemigrate: bad agent endpoint: refusing tcp://*without CURVE keys: pass "
            "--sm-keys DIR (or the ini key statemigrate_keys)*"
        ]
    )


# -- several agents on other hosts -----------------------------------------------------------


def test_agents_on_other_hosts_form_a_ring(start: StartAgent, keys: Path, tmp_path: Path) -> None:
    """Agents named by non-loopback endpoints accept the ring, and announce to each other
    with the client keys of their --curve-dir (tests/integration/test_netns.py does the same
    across network namespaces)."""
    if outside_address() is None:
        pytest.skip("this machine has no non-loopback address")
    agents = [
        start(bind="tcp://0.0.0.0:*", curve_dir=str(keys), disk_dir=str(tmp_path / f"d{i}"))
        for i in range(2)
    ]
    names = [reachable(agent) for agent in agents]
    client = ClientKeys.load(keys)
    for name in names:
        with AgentClient(name, timeout=10, curve=client) as c:
            assert c.ring(names, name)["changed"]
    ring = HashRing(names)
    # A value PUT at the agent that is not its home is announced to the home, over CURVE.
    key = keys_homed(ring, names[1], 1)[0]
    with AgentClient(names[0], timeout=10, curve=client) as c:
        version = c.put(key, [b"v"], {})

    def located() -> list[list[Any]]:
        with AgentClient(names[1], timeout=10, curve=client) as c:
            return c.locate([key]).get(key, [])

    wait_until(lambda: located() == [[names[0], "ram", version]])
    # The home copies it from the other agent (MIGRATE), over CURVE too.
    with AgentClient(names[1], timeout=10, curve=client) as c:
        assert c.migrate([key], source=names[0]) == {"queued": 1, "present": 0}
        wait_until(lambda: c.has(key) == "ram")
        assert c.get(key) is not None
    for name in names:
        with AgentClient(name, timeout=10, curve=client) as c:
            assert c.stats()["placement"]["dropped"] == 0


def test_an_agent_without_client_keys_warns_and_drops_announcements(
    keys: Path, tmp_path: Path
) -> None:
    if outside_address() is None:
        pytest.skip("this machine has no non-loopback address")
    server_only = tmp_path / "server-only"  # what the agent's host gets without the ring note
    (server_only / "authorized").mkdir(parents=True)
    for name in ("server.key_secret", "authorized/client.key"):
        (server_only / name).write_bytes((keys / name).read_bytes())
    (server_only / "server.key_secret").chmod(0o600)
    # (Not the launcher: it wants client keys in the --curve-dir to talk to its agent.)
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_fh:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodeagent",
                "--no-disk",
                "--bind",
                "tcp://0.0.0.0:*",
                "--curve-dir",
                str(server_only),
            ],
            stdout=subprocess.PIPE,
            stderr=log_fh,
            env=child_env(),
        )
    temp_dir = str(tmp_path / "temp")
    os.mkdir(temp_dir)
    agent = AgentProcess(process, "tcp://0.0.0.0:*", temp_dir, str(log_path), ClientKeys.load(keys))
    with agent:
        agent.wait_ready()
        _no_client_keys(agent, keys)


def _no_client_keys(agent: AgentProcess, keys: Path) -> None:
    me, peer = reachable(agent), f"tcp://{outside_address()}:9"  # the peer is never reached
    client = ClientKeys.load(keys)
    key = keys_homed(HashRing([me, peer]), peer, 1)[0]
    with AgentClient(me, timeout=10, curve=client) as c:
        c.ring([me, peer], me)
        c.put(key, [b"v"], {})
        wait_until(lambda: c.stats()["placement"]["dropped"] == 1)
    log = Path(agent.log_path).read_text()
    assert f"ring: no client keys to announce to {peer}: put client.key_secret and server.key" in (
        log
    )
