"""What keeps other users of this machine out: private files, and the token of a tcp agent.

Files and directories the agent and the plugin make are private to their user (0600 and
0700). An ``ipc://`` socket is a file: the agent creates it 0700 (only its user may connect),
and the socket of the agent the plugin starts lives in a 0700 directory of its own. A
loopback ``tcp://`` port has no owner: any local user can connect to it, so an agent bound to
one without CURVE serves only clients that present its token in the zmq handshake (PLAIN,
checked by a ZAP authenticator).

The token is made by the agent when it binds (32 random bytes, new at every start) and
written, with its pid, to a file named after its endpoint in this user's runtime directory
(``$XDG_RUNTIME_DIR/statemigrate``, else ``<tempdir>/statemigrate-<uid>``, 0700). Clients of
the same user find it there with no configuration; other users cannot read it. A client
sends the token only when the file's agent is alive, so a port another user took after the
agent stopped learns at most the token of an agent that is gone (docs/security.md).

Rejected: a token derived from the project's signing secret (an agent serves several
projects, and knows no project), and CURVE on every loopback connection (it encrypts every
frame: measured to cost about 45% of the throughput of a 100 MiB value on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Final

# secrets and tempfile (~4 ms of imports) are imported where a token is made or looked up:
# a client of an ipc agent, the plugin's own, needs neither.

__all__ = [
    "PLAIN_USER",
    "LocalAuthError",
    "make_token",
    "private_dir",
    "private_file",
    "publish_token",
    "read_token",
    "runtime_dir",
    "token_path",
    "withdraw_token",
]

PLAIN_USER: Final = "statemigrate"  # the PLAIN user name; the token is the password
TOKEN_BYTES: Final = 32  # random bytes of a token (64 hex characters)
_UNSAFE = re.compile(r"[^A-Za-z0-9.]+")


class LocalAuthError(ValueError):
    """The runtime directory or a token file cannot be trusted or used; one line."""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (os.kill: psutil's import is not paid where a client connects)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        from nodeagent.leases import pid_alive

        return pid_alive(pid)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now: the agent (ours) is gone
        return False
    return True


def _owned(st: os.stat_result) -> bool:
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and its parents) if missing; the directory itself is 0700.

    A directory that exists, belongs to this user and is open to others is made 0700: this
    is for directories that hold only what the agent or the plugin keeps (a disk tier, the
    socket directory), never for a directory a user named for something else.
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        st = directory.stat()
        if stat.S_IMODE(st.st_mode) & 0o077 and _owned(st):
            os.chmod(directory, stat.S_IMODE(st.st_mode) & 0o700)
    return directory


def private_file(path: str | os.PathLike[str]) -> None:
    """Make ``path`` 0600 (less when it was less) when it exists, is this user's and is open
    to others; a file created 0600 needs no call."""
    if os.name != "posix":
        return
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & 0o077 and _owned(st):
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o600)


def runtime_dir() -> Path:
    """This user's private directory for token files (made 0700 when missing).

    :raises LocalAuthError: it is not a directory of this user's that only they can reach
        (another user made it first, or it was opened up).
    """
    import tempfile

    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = Path(base) / "statemigrate"
    else:
        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        path = Path(tempfile.gettempdir()) / f"statemigrate-{uid}"
        if not hasattr(os, "getuid"):  # Windows: the temp directory is the user's own
            path = Path(tempfile.gettempdir()) / "statemigrate"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if os.name == "posix":
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or not _owned(st) or stat.S_IMODE(st.st_mode) & 0o077:
            raise LocalAuthError(
                f"{path} is not a private directory of this user's (uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):o}): remove it, or set XDG_RUNTIME_DIR to a "
                "directory only you can reach"
            )
    return path


def _name(endpoint: str) -> str:
    """The file name for a tcp endpoint: ``localhost`` is 127.0.0.1, as zmq resolves it."""
    address = endpoint.removeprefix("tcp://")
    if address.startswith("localhost:"):
        address = "127.0.0.1:" + address[len("localhost:") :]
    return "tcp-" + _UNSAFE.sub("-", address).strip("-") + ".token"


def token_path(endpoint: str) -> Path:
    """Where the agent at the tcp ``endpoint`` keeps its token."""
    return runtime_dir() / _name(endpoint)


def make_token() -> str:
    import secrets

    return secrets.token_hex(TOKEN_BYTES)


def publish_token(endpoint: str, token: str, pid: int) -> Path:
    """Write the token of the agent bound to ``endpoint`` (0600, atomically: a client reads
    the old file or the new one, never half of one).

    :raises LocalAuthError: naming the file, when it cannot be written.
    """
    import tempfile

    target = token_path(endpoint)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".token-")  # mode 0600
        with os.fdopen(fd, "w") as fh:
            json.dump({"token": token, "pid": pid, "endpoint": endpoint}, fh)
        os.replace(tmp, target)
    except OSError as exc:
        raise LocalAuthError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def read_token(endpoint: str) -> str | None:
    """The token of this user's agent at the tcp ``endpoint``; None when no agent of this
    user's published one there (then nothing is sent: the agent refuses the handshake).

    :raises LocalAuthError: the file is unreadable, or its agent is gone.
    """
    path = token_path(endpoint)
    try:
        with open(path) as fh:
            record = json.load(fh)
        token, pid = str(record["token"]), int(record["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalAuthError(f"cannot read the token file {path}: {exc}") from None
    if not _alive(pid):
        raise LocalAuthError(
            f"the agent that listened at {endpoint} (pid {pid}) is gone; not sending its "
            f"token to whatever listens there now (remove {path} once it is stopped)"
        )
    return token


def withdraw_token(endpoint: str, token: str) -> None:
    """Remove the token file of the agent at ``endpoint`` if it is still this token's."""
    with contextlib.suppress(LocalAuthError, OSError, ValueError, KeyError, TypeError):
        path = token_path(endpoint)
        with open(path) as fh:
            if json.load(fh)["token"] == token:
                path.unlink()
