"""nodeagent.private: private files and directories, and the token files of tcp agents."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent import private

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and uids")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "statemigrate"


def test_private_dir_makes_and_tightens(tmp_path: Path) -> None:
    made = private.private_dir(tmp_path / "a" / "b")
    assert made.is_dir() and mode(made) == 0o700
    opened = tmp_path / "open"
    opened.mkdir(mode=0o755)
    opened.chmod(0o755)
    private.private_dir(opened)
    assert mode(opened) == 0o700


def test_private_file_tightens_only_what_is_open(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    for before, after in ((0o644, 0o600), (0o640, 0o600), (0o400, 0o400), (0o666, 0o600)):
        path.chmod(before)
        private.private_file(path)
        assert mode(path) == after
    private.private_file(tmp_path / "missing")  # nothing to do


def test_runtime_dir_is_made_private(runtime: Path) -> None:
    assert private.runtime_dir() == runtime
    assert mode(runtime) == 0o700


def test_runtime_dir_without_xdg_is_per_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert private.runtime_dir() == tmp_path / f"statemigrate-{os.getuid()}"


def test_an_opened_runtime_dir_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o755)
    with pytest.raises(private.LocalAuthError) as info:
        private.runtime_dir()
    assert str(info.value) == (
        f"{runtime} is not a private directory of this user's (uid {os.getuid()}, mode 755): "
        "remove it, or set XDG_RUNTIME_DIR to a directory only you can reach"
    )


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_runtime_dir_another_user_made_first_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    with pytest.raises(private.LocalAuthError, match="uid 65534, mode 700"):
        private.runtime_dir()


def test_token_round_trip(runtime: Path) -> None:
    endpoint = "tcp://127.0.0.1:7600"
    assert private.read_token(endpoint) is None  # no agent published one
    token = private.make_token()
    assert len(token) == 64 and token != private.make_token()
    path = private.publish_token(endpoint, token, os.getpid())
    assert path.parent == runtime and mode(path) == 0o600
    assert private.read_token(endpoint) == token
    assert private.read_token("tcp://localhost:7600") == token  # as zmq resolves it
    assert private.read_token("tcp://127.0.0.1:7601") is None
    private.withdraw_token(endpoint, "another agent's")
    assert path.exists()
    private.withdraw_token(endpoint, token)
    assert not path.exists()


def test_the_token_of_an_agent_that_is_gone_is_not_sent(runtime: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(done.stdout)  # reaped: no process has this pid until it is reused
    endpoint = "tcp://127.0.0.1:7602"
    path = private.publish_token(endpoint, "t" * 64, gone)
    with pytest.raises(private.LocalAuthError) as info:
        private.read_token(endpoint)
    assert str(info.value) == (
        f"the agent that listened at {endpoint} (pid {gone}) is gone; not sending its token to "
        f"whatever listens there now (remove {path} once it is stopped)"
    )


def test_a_damaged_token_file_is_one_line(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    path = runtime / "tcp-127.0.0.1-7603.token"
    path.write_text(json.dumps({"pid": 1}))
    with pytest.raises(private.LocalAuthError, match=f"cannot read the token file {path}"):
        private.read_token("tcp://127.0.0.1:7603")
