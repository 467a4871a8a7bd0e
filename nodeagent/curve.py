"""CURVE keys of the node agent and its clients: file layout, creation, loading.

A key directory, as ``statemigrate keys DIR`` writes it::

    server.key              the agent's public key          → copy to every client
    server.key_secret       the agent's key pair (0600)     → the agent only
    client.key              the clients' public key         → the agent's authorized/
    client.key_secret       the clients' key pair (0600)    → every client
    authorized/client.key   public keys the agent accepts (every ``*.key`` file in it)

The agent (``--curve-dir DIR``) reads ``server.key_secret`` and ``authorized/``; a client
(``AgentClient(curve=...)``, the plugin's ``--sm-keys DIR``) reads ``client.key_secret`` and
``server.key``. On one machine both sides can use the same directory; across machines each
side gets only its own files (docs/security.md).

Files are zmq certificates (``zmq.auth``). zmq is imported inside the functions: the plugin
validates its keys at configure time without paying for zmq when no keys are configured.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "AUTHORIZED",
    "CLIENT",
    "SERVER",
    "ClientKeys",
    "KeysError",
    "ServerKeys",
    "create_keys",
]

SERVER: Final = "server"  # server.key, server.key_secret
CLIENT: Final = "client"  # client.key, client.key_secret
AUTHORIZED: Final = "authorized"  # the agent accepts the public keys of the *.key files in it
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"


class KeysError(ValueError):
    """Keys that are missing, unreadable, malformed or too open; the message is one line."""


@dataclass(frozen=True)
class ServerKeys:
    """What an agent needs to serve CURVE: its key pair and its authorized directory."""

    directory: Path
    public: bytes
    secret: bytes = field(repr=False)
    authorized: Path
    clients: int  # public keys found in ``authorized`` when loaded
    #: those keys in Z85, as the ZAP authenticator names a connection's user (its User-Id)
    allowed: frozenset[str] = frozenset()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ServerKeys:
        """:raises KeysError: one line naming the file and the fix."""
        base = Path(directory)
        _check_curve()
        public, secret = _load_pair(base / (SERVER + SECRET_SUFFIX))
        authorized = base / AUTHORIZED
        allowed = _load_authorized(authorized)
        return cls(base, public, secret, authorized, len(allowed), allowed)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to talk CURVE to an agent: its key pair and the agent's public key."""

    directory: Path
    public: bytes
    secret: bytes = field(repr=False)
    server: bytes

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ClientKeys:
        """:raises KeysError: one line naming the file and the fix."""
        base = Path(directory)
        _check_curve()
        public, secret = _load_pair(base / (CLIENT + SECRET_SUFFIX))
        server = _load_public(base / (SERVER + PUBLIC_SUFFIX))
        return cls(base, public, secret, server)


def key_files(directory: Path) -> list[Path]:
    """The files :func:`create_keys` writes into ``directory``."""
    return [
        directory / (SERVER + PUBLIC_SUFFIX),
        directory / (SERVER + SECRET_SUFFIX),
        directory / (CLIENT + PUBLIC_SUFFIX),
        directory / (CLIENT + SECRET_SUFFIX),
        directory / AUTHORIZED / (CLIENT + PUBLIC_SUFFIX),
    ]


def create_keys(directory: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Create a server and a client key pair in ``directory`` (see the module docstring).

    Secret files are 0600 from the moment they appear under their name: they are written in a
    private (0700) temporary directory inside ``directory`` and then renamed into place.
    Other ``*.key`` files in ``authorized/`` (other clients' keys) are kept.

    :param force: replace existing keys; otherwise any existing key file is an error.
    :returns: the files written.
    :raises KeysError: keys exist (without ``force``), or a file cannot be written.
    """
    base = Path(directory)
    targets = key_files(base)
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        names = ", ".join(str(p.relative_to(base)) for p in existing)
        raise KeysError(f"{base} already holds keys ({names}): pass --force to replace them")
    _check_curve()
    import zmq.auth

    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        (base / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".new-keys-", dir=base) as tmp:
            for name in (SERVER, CLIENT):
                public, secret = zmq.auth.create_certificates(tmp, name)
                os.chmod(secret, 0o600)
                os.chmod(public, 0o644)
            staged = Path(tmp)
            shutil.copyfile(staged / (CLIENT + PUBLIC_SUFFIX), staged / "authorized.key")
            os.chmod(staged / "authorized.key", 0o644)
            sources = [
                staged / (SERVER + PUBLIC_SUFFIX),
                staged / (SERVER + SECRET_SUFFIX),
                staged / (CLIENT + PUBLIC_SUFFIX),
                staged / (CLIENT + SECRET_SUFFIX),
                staged / "authorized.key",
            ]
            for source, target in zip(sources, targets, strict=True):
                os.replace(source, target)
    except OSError as exc:
        where = exc.filename or base
        raise KeysError(f"cannot write keys to {where}: {exc.strerror or exc}") from None
    return targets


# --------------------------------------------------------------------------- loading


def _check_curve() -> None:
    import zmq

    if not zmq.has("curve"):
        raise KeysError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")


def _read(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise KeysError(f"{path} is not a zmq certificate (no public-key line)") from None
    except OSError as exc:
        if not path.exists():
            raise KeysError(
                f"no key file {path}: create keys with `statemigrate keys` and copy the file there"
            ) from None
        raise KeysError(f"cannot read {path}: {exc.strerror or exc}") from None
    for key in (public, secret):
        if key is not None and len(key) != 40:
            raise KeysError(f"{path} holds a malformed key (not 40 Z85 characters)")
    return public, secret


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _read(path)
    if secret is None:
        raise KeysError(f"{path} holds no secret-key: it is a public key file")
    if os.name == "posix":
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeysError(
                f"{path} is accessible by other users (mode {stat.S_IMODE(mode):o}): "
                f"chmod 600 {path}"
            )
    return public, secret


def _load_public(path: Path) -> bytes:
    return _read(path)[0]


def _load_authorized(directory: Path) -> frozenset[str]:
    """Check the authorized directory the way the ZAP authenticator will read it.

    :returns: the public keys of its ``*.key`` files, in Z85.
    """
    if not directory.is_dir():
        raise KeysError(
            f"no directory {directory}: put the public keys (client.key) of the clients the "
            "agent accepts there"
        )
    files = sorted(directory.glob("*" + PUBLIC_SUFFIX))
    # a malformed file is an error here, not a silently ignored client
    keys = frozenset(_read(path)[0].decode("ascii") for path in files)
    if not files:
        raise KeysError(
            f"no client public keys (*.key) in {directory}: copy the clients' client.key there"
        )
    return keys
