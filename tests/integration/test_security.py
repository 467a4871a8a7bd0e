"""Other local users (issue 18): they read nothing the plugin or an agent keeps, get no
service from an agent, and a secret they could know is not used; revoked keys lose service.

The other user is uid 65534 (``setpriv``, as root; skipped elsewhere). What it must reach is
built in a directory made world-traversable for the test, so that only the modes the code
under test sets keep it out. It runs the real client (``AgentClient``) and plain file reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

import nodeagent
from nodeagent.client import AgentClient, AgentError
from nodeagent.curve import ClientKeys, create_keys
from tests.conftest import DATASET_CONFTEST, Suite
from tests.integration.conftest import StartAgent, wait_until

pytestmark = pytest.mark.timeout(300)

OTHER_UID = 65534
AS_OTHER = ("setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups")

#: Run as the other user: read each file given, then send every command to the agent, with
#: no token and with a guessed one. Prints what got through, as JSON.
ATTACK = r"""
import json, os, socket, sys
from nodeagent.client import AgentClient, AgentError
try:
    from nodeagent import private
except ImportError:  # a version without tokens: the guessed one is not sent
    import types
    private = types.SimpleNamespace()

endpoint, key, *files = sys.argv[1:]
out = {"uid": os.getuid(), "files": {}, "ops": {}}
for path in files:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        out["files"][path] = "read"
    except OSError as exc:
        out["files"][path] = type(exc).__name__

OPS = {
    "STATS": lambda c: c.stats(),
    "GET": lambda c: c.get(key),
    "PUT": lambda c: c.put("planted", [b"x"], {}),
    "EVICT": lambda c: c.evict(key),
    "LEASE": lambda c: c.lease("wanted", "intruder", 3600.0),
    "CLEAR": lambda c: c.clear(),
    "SHUTDOWN": lambda c: c.shutdown(),
}


def attempt(name, op):
    if endpoint.startswith("ipc://"):  # zmq retries a refused connect silently: ask first
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(endpoint[len("ipc://"):])
        except OSError as exc:
            return "refused: " + type(exc).__name__
        finally:
            s.close()
    try:
        with AgentClient(endpoint, timeout=10) as c:
            op(c)
    except AgentError as exc:
        return "refused: " + exc.error
    return "served"


for token in (None, "guessed"):
    private.read_token = lambda endpoint, token=token: token
    for name, op in OPS.items():
        out["ops"][f"{name} token={token}"] = attempt(name, op)
print(json.dumps(out))
"""


@dataclass
class OtherUser:
    """uid 65534, with a Python that imports zmq, msgpack and this nodeagent."""

    shared: Path  # world-traversable (0755) for the test: what is inside decides
    python: str
    libs: Path

    def run(self, script: str, *args: str) -> dict[str, object]:
        home = self.shared / "other-home"
        home.mkdir(exist_ok=True)
        os.chown(home, OTHER_UID, OTHER_UID)
        env = {"PYTHONPATH": str(self.libs), "HOME": str(home), "TMPDIR": str(home)}
        done = subprocess.run(
            [*AS_OTHER, self.python, "-c", script, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        assert result["uid"] == OTHER_UID
        return result


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    shared = Path(tempfile.mkdtemp(prefix="sm-other-user-"))
    try:
        shared.chmod(0o755)
        libs = shared / "libs"
        libs.mkdir()
        for module in (zmq, __import__("msgpack"), nodeagent):
            source = Path(module.__file__ or "").parent
            shutil.copytree(source, libs / source.name)
        zmq_libs = Path(zmq.__file__ or "").parent.parent / "pyzmq.libs"
        if zmq_libs.is_dir():
            shutil.copytree(zmq_libs, libs / zmq_libs.name)
        for path in [libs, *libs.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        version = "{}.{}".format(*sys.version_info[:2])
        for python in (sys.executable, f"/usr/bin/python{version}"):
            user = OtherUser(shared, python, libs)
            try:
                user.run(
                    "import json, os, sys, zmq, msgpack, nodeagent.client\n"
                    f"assert '{{}}.{{}}'.format(*sys.version_info[:2]) == {version!r}\n"
                    "print(json.dumps({'uid': os.getuid()}))"
                )
            except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired):
                continue
            yield user
            break
        else:
            pytest.skip(f"no Python {version} with zmq runs as uid {OTHER_UID} here")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _put(endpoint: str, key: str) -> None:
    with AgentClient(endpoint, timeout=10) as c:
        c.put(key, [b"the owner's value"], {"by": "owner"})


def _owner_state_intact(endpoint: str, key: str) -> None:
    """The agent lives, still holds ``key``, holds nothing planted, and leases freely."""
    with AgentClient(endpoint, timeout=10) as c:
        assert c.ping()["pid"] > 0
        found = c.get(key)
        assert found is not None and bytes(found.frames[0]) == b"the owner's value"
        assert c.get("planted") is None
        assert c.lease("wanted", "owner", 10.0).granted


def _attack(other_user: OtherUser, endpoint: str, key: str, *files: Path) -> dict[str, object]:
    return other_user.run(ATTACK, endpoint, key, *map(str, files))


def test_another_user_gets_no_service_from_a_loopback_agent(
    other_user: OtherUser, start: StartAgent
) -> None:
    # Issue 18 (3): uid 65534 read every value, evicted a key, held its lease, and sent
    # CLEAR and SHUTDOWN to a tcp://127.0.0.1 agent.
    disk = other_user.shared / "disk"
    agent = start(bind="tcp://127.0.0.1:*", disk_dir=str(disk))
    _put(agent.endpoint, "k")
    result = _attack(other_user, agent.endpoint, "k", disk, disk / "cache.db")
    ops = result["ops"]
    assert isinstance(ops, dict) and len(ops) == 14
    assert {op: "refused: auth" for op in ops} == ops
    assert result["files"] == {
        str(disk): "PermissionError",
        str(disk / "cache.db"): ("PermissionError"),
    }
    _owner_state_intact(agent.endpoint, "k")


def test_another_user_cannot_connect_to_an_ipc_agent(
    other_user: OtherUser, start: StartAgent
) -> None:
    # Its socket was made by the umask: under umask 0 anyone could connect. Now it is 0700.
    endpoint = f"ipc://{other_user.shared}/agent.sock"
    umask = os.umask(0)
    try:
        agent = start(bind=endpoint, disk_dir=str(other_user.shared / "disk"))
    finally:
        os.umask(umask)
    _put(agent.endpoint, "k")
    result = _attack(other_user, agent.endpoint, "k")
    ops = result["ops"]
    assert isinstance(ops, dict) and len(ops) == 14
    assert {op: "refused: PermissionError" for op in ops} == ops
    _owner_state_intact(agent.endpoint, "k")


def test_a_foreign_ipc_socket_gets_nothing(other_user: OtherUser, tmp_path: Path) -> None:
    """A socket another user put where the owner's agent should be is not sent a request."""
    place = other_user.shared / "theirs"  # where the other user may make files
    place.mkdir(mode=0o755)
    os.chown(place, OTHER_UID, OTHER_UID)
    path = place / "squatted.sock"
    listener = subprocess.Popen(
        [
            *AS_OTHER,
            other_user.python,
            "-c",
            "import socket, sys, os; os.umask(0); s = socket.socket(socket.AF_UNIX); "
            f"s.bind({str(path)!r}); s.listen(); print('up', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "up\n"
        with pytest.raises(AgentError) as info:
            AgentClient(f"ipc://{path}", timeout=5)
        assert info.value.error == "auth"
        assert f"the socket {path} belongs to uid {OTHER_UID}, not to this user" in str(info.value)
    finally:
        listener.communicate("")


def _plugin_project(suite: Suite, store: Path) -> None:
    suite.pytester.makeini(
        f"[pytest]\nfilterwarnings = error\nstatemigrate_fixtures = dataset\n"
        f"statemigrate_dir = {store}\n"
    )
    suite.pytester.makeconftest(DATASET_CONFTEST)
    suite.pytester.makepyfile("def test_a(dataset):\n    assert dataset[-1] == 99\n")


def test_another_user_reads_nothing_the_plugin_keeps(other_user: OtherUser, suite: Suite) -> None:
    # Issue 18 (3): cache.db (every key), the values and the ESG were world-readable.
    store = other_user.shared / "store"
    _plugin_project(suite, store)
    first = suite.same_as_plain()
    assert first.stats is not None and first.stats["builds"] == 1
    second = suite.same_as_plain()
    assert second.stats is not None and second.stats["hits"], second.text
    files = [store, store / "secret", store / "esg.sqlite", store / "agent-disk" / "cache.db"]
    assert all(path.exists() for path in files)
    result = other_user.run(ATTACK, "ipc:///nonexistent", "k", *map(str, files))
    assert result["files"] == {str(path): "PermissionError" for path in files}
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {mode:o}"


def test_an_earlier_store_is_made_private(other_user: OtherUser, suite: Suite) -> None:
    """A store an earlier version left open (0755 directories, 0644 files) is closed where the
    plugin and the agent own what they open: the disk tier's directory and the ESG."""
    store = other_user.shared / "store"
    _plugin_project(suite, store)
    suite.run()
    disk = store / "agent-disk"
    opened = [disk, store / "esg.sqlite"]
    for path in opened:
        path.chmod(0o755 if path.is_dir() else 0o644)
    suite.run()
    for path in opened:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {mode:o}"


def test_a_secret_another_user_can_read_is_not_used(other_user: OtherUser, suite: Suite) -> None:
    # Issue 18 (4): a 0644 secret was used without a word; with item 3, another user forged
    # signed values and the owner's pytest ran that user's code.
    store = other_user.shared / "store"
    store.mkdir(mode=0o755)
    secret = store / "secret"
    secret.write_text("a secret its owner wrote with a permissive umask\n")
    secret.chmod(0o644)
    assert other_user.run(ATTACK, "ipc:///nonexistent", "k", str(secret))["files"] == {
        str(secret): "read"
    }
    _plugin_project(suite, store)
    run = suite.same_as_plain()
    run.result.stdout.fnmatch_lines(
        [f"*the secret {secret} is accessible by other users (mode 644): chmod 600 {secret}*"]
    )
    assert run.stats is not None and not run.stats.get("stored"), run.stats
    assert not (store / "agent-disk").exists()  # unmanaged: no agent, nothing kept
    secret.chmod(0o600)
    run = suite.same_as_plain()
    assert "chmod 600" not in run.text and run.stats is not None and run.stats["builds"] == 1


@pytest.mark.parametrize("value", ["", "a"])
def test_a_short_secret_variable_is_not_used(
    value: str, suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEMIGRATE_SECRET", value)
    _plugin_project(suite, suite.pytester.path / ".statemigrate")
    run = suite.same_as_plain()
    if value:
        run.result.stdout.fnmatch_lines(
            ["*$STATEMIGRATE_SECRET has 1 bytes, fewer than 32: set it to a random value*"]
        )
    else:  # set but empty, as CI passes a secret a run may not see: the file is used
        assert "STATEMIGRATE_SECRET" not in run.text
        assert run.stats is not None and run.stats["builds"] == 1


def test_owner_runs_use_a_loopback_agent_without_configuration(
    suite: Suite, start: StartAgent
) -> None:
    """The token is found by the owner's processes: the plugin, and the agent's own peers."""
    agent = start(bind="tcp://127.0.0.1:*", disk_dir=str(suite.pytester.path / "agent-disk"))
    _plugin_project(suite, suite.pytester.path / ".statemigrate")
    first = suite.same_as_plain("--sm-agent", agent.endpoint)
    second = suite.same_as_plain("--sm-agent", agent.endpoint)
    assert first.stats is not None and first.stats["builds"] == 1, first.text
    assert second.stats is not None and second.stats["hits"] == {"ram": 1}, second.text


def test_an_abstract_ipc_socket_is_refused(tmp_path: Path) -> None:
    # Issue 18 (3): ipc://@name has no file permissions: any local user could connect.
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--bind", "ipc://@sm-test-abstract", "--no-disk"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "nodeagent: error: refusing ipc://@sm-test-abstract: an abstract ipc socket has no "
        "file permissions, any local user can connect to it; use ipc://PATH, or CURVE keys: "
        "create keys with `statemigrate keys DIR` and pass --curve-dir DIR"
    )
    with pytest.raises(AgentError, match="an abstract ipc socket has no file permissions"):
        AgentClient("ipc://@sm-test-abstract")


def test_a_revoked_key_gets_no_more_service(start: StartAgent, tmp_path: Path) -> None:
    # Issue 18 (6): after its key was removed and SIGHUP, a connected client kept doing PUT
    # and STATS.
    keys = tmp_path / "keys"
    create_keys(keys)
    create_keys(tmp_path / "other")
    log = tmp_path / "curve-agent.log"
    agent = start(bind="tcp://127.0.0.1:*", curve_dir=str(keys), log_file=str(log))
    with AgentClient(agent.endpoint, timeout=10, curve=ClientKeys.load(keys)) as client:
        client.put("k", [b"v"], {})
        assert client.stats()["tiers"]
        # Another client stays authorized (an empty authorized/ is not reloaded).
        shutil.copy(tmp_path / "other" / "client.key", keys / "authorized" / "other.key")
        (keys / "authorized" / "client.key").unlink()
        os.kill(agent.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded 1 authorized client key(s)" in log.read_text())
        for request in (
            lambda: client.put("k2", [b"v"], {}),
            client.stats,
            lambda: client.get("k"),
        ):
            with pytest.raises(AgentError) as info:
                request()
            assert info.value.error == "auth"
            assert "this client's key is no longer authorized" in str(info.value)
