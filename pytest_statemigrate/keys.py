"""State keys: the digest that names one value of a managed fixture.

A key changes whenever anything that can change the value changes (DESIGN.md, invariant 2):
the fixture's code and where it is defined, its param, the keys (or code) of the fixtures it
depends on, its declared inputs and environment variables, the interpreter and platform, and
the format version. What a build touches beyond that (files that run, files it opens, installed
packages) is fingerprinted by :mod:`pytest_statemigrate.inputs` and checked on every hit.

Pure: takes plain data, never pytest objects.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import pickle
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

#: In the store directory: the parts of the key each fixture's value last had when built
#: (:func:`part_digests` by variant), so that a rebuild can say what changed.
PARTS_FILE: Final = "key-parts.json"

#: Bumped whenever the stored format or the key recipe changes: old entries then miss.
#: 2: entries record their dependencies' states; 3: builds with side effects are refused.
FORMAT_VERSION: Final = 3

_PLAIN: Final = (str, int, float, bool, bytes, type(None))


class Unkeyable(Exception):
    """The value cannot be given a key that sees everything it depends on."""


def digest(*parts: bytes | str) -> str:
    """SHA-256 over length-prefixed parts, hex."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def environment() -> str:
    """What of the interpreter and platform a value may depend on."""
    impl = sys.implementation
    return "|".join(
        (
            f"fmt{FORMAT_VERSION}",
            impl.name,
            ".".join(map(str, impl.version[:3])),
            sys.platform,
            platform.machine(),
        )
    )


def code_digest(func: Any, rootdir: Path) -> str:
    """Digest of a fixture function: where it is defined, its qualified name and source text.

    The same name in two modules or two classes gives two digests; moving the function within
    its file does not change it.
    """
    func = inspect.unwrap(getattr(func, "__func__", func))
    code = getattr(func, "__code__", None)
    filename = code.co_filename if code is not None else "?"
    try:
        where = os.path.relpath(filename, rootdir)
    except ValueError:  # another drive on Windows
        where = filename
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        # No source (generated code): the bytecode and constants stand in for it.
        source = repr((code.co_code, code.co_consts, code.co_names)) if code else repr(func)
    return digest(where.replace(os.sep, "/"), getattr(func, "__qualname__", "?"), source)


def _canonical(value: Any, depth: int = 0) -> bytes | None:
    """A canonical encoding of plain data, or None when the value is not plain."""
    if depth > 20:
        return None
    if isinstance(value, _PLAIN):
        return f"{type(value).__name__}:{value!r}".encode()
    if isinstance(value, (tuple, list, frozenset, set)):
        maybe = [_canonical(v, depth + 1) for v in value]
        items = [i for i in maybe if i is not None]
        if len(items) != len(maybe):
            return None
        parts = sorted(items) if isinstance(value, (set, frozenset)) else items
        return type(value).__name__.encode() + b"[" + b",".join(parts) + b"]"
    if isinstance(value, dict):
        pairs = [(_canonical(k, depth + 1), _canonical(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return b"dict{" + b",".join(sorted(k + b":" + v for k, v in pairs if k and v)) + b"}"
    return None


def param_token(value: Any, given_id: str | None = None) -> str:
    """A stable token for a fixture param: never a repr that holds a memory address.

    Plain data (numbers, strings, containers of them) is encoded canonically; an id given with
    ``ids=`` is used next; other objects by their pickle. A param none of these can name is
    :class:`Unkeyable`.
    """
    plain = _canonical(value)
    if plain is not None:
        return digest(b"plain", plain)
    if given_id is not None:
        return digest(b"id", given_id)
    try:
        return digest(b"pickle", pickle.dumps(value, protocol=4))
    except Exception as exc:
        raise Unkeyable(
            f"its param {type(value).__name__} has no stable id ({exc}); give the fixture ids="
        ) from None


def inputs_digest(patterns: Sequence[str], rootdir: Path, files: FileDigests) -> str:
    """Digest of the files the ``inputs=`` globs match below the rootdir (their absence too)."""
    parts: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(rootdir / pattern), recursive=True))
        parts.append(pattern)
        for path in matches:
            if os.path.isfile(path):
                rel = os.path.relpath(path, rootdir).replace(os.sep, "/")
                parts.extend((rel, files.digest(path)))
    return digest(*parts)


def env_digest(names: Iterable[str], environ: Mapping[str, str] = os.environ) -> str:
    parts: list[str] = []
    for name in names:
        value = environ.get(name)
        parts.extend((name, "\0unset" if value is None else "=" + value))
    return digest(*parts)


@dataclass(frozen=True)
class KeyParts:
    """Everything that names one value of a fixture."""

    fixture: str  # where the fixture is defined and its name: "tests/conftest.py::dataset"
    code: str  # code_digest of its function
    param: str | None = None  # param_token, when the fixture is parametrized
    deps: tuple[tuple[str, str], ...] = ()  # (argname, key or code digest of that dependency)
    inputs: str | None = None  # inputs_digest
    env: str | None = None  # env_digest
    node: str | None = None  # the requesting node's id, for fixtures that read request.node
    environment: str = field(default_factory=environment)


def make_key(parts: KeyParts) -> str:
    """The state key: a hex digest over every part, prefixed by the fixture's name."""
    name = parts.fixture.rsplit("::", 1)[-1]
    body = digest(
        parts.fixture,
        parts.code,
        parts.param or "",
        *[x for dep in parts.deps for x in dep],
        parts.inputs or "",
        parts.env or "",
        parts.node or "",
        parts.environment,
    )
    return f"{name}-{body[:40]}"


class FileDigests:
    """Content digests of files, memoised on (size, mtime) for the length of a run."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[int, int, str]] = {}

    def digest(self, path: str) -> str:
        """SHA-256 of the file's bytes, or ``"missing"``."""
        try:
            st = os.stat(path)
        except OSError:
            return "missing"
        memo = self._memo.get(path)
        if memo is not None and memo[0] == st.st_size and memo[1] == st.st_mtime_ns:
            return memo[2]
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return "missing"
        value = h.hexdigest()
        self._memo[path] = (st.st_size, st.st_mtime_ns, value)
        return value


def part_digests(parts: KeyParts) -> dict[str, Any]:
    """What :func:`make_key` hashes, part by part and short, for :func:`what_changed` to tell
    a later key's parts apart from (short digests only: no value of an input is kept)."""
    return {
        "code": parts.code[:16],
        "deps": {name: digest(token)[:16] for name, token in parts.deps},
        "inputs": (parts.inputs or "")[:16],
        "env": (parts.env or "")[:16],
        "environment": parts.environment,
    }


def what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Why a fixture's key differs from the one its last build had, as a short phrase, from
    the two :func:`part_digests`."""
    if old.get("environment") != new.get("environment"):
        return f"the interpreter or platform changed (was {old.get('environment')})"
    if old.get("code") != new.get("code"):
        return "code changed"
    old_deps, new_deps = dict(old.get("deps") or {}), dict(new.get("deps") or {})
    if set(old_deps) != set(new_deps):
        return "code changed (its dependencies are not the same)"
    for name, token in new_deps.items():
        if old_deps[name] != token:
            return f"its dependency {name} changed"
    if old.get("inputs") != new.get("inputs"):
        return "a declared input changed"
    if old.get("env") != new.get("env"):
        return "a declared environment variable changed"
    return "its key changed"


def load_parts(path: Path) -> dict[str, dict[str, Any]]:
    """The :data:`PARTS_FILE` at ``path``; empty when missing or unreadable (it only words a
    rebuild's reason)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def save_parts(path: Path, parts: Mapping[str, Mapping[str, Any]]) -> None:
    """Add ``parts`` (variant → parts of its key) to the file at ``path``, under an exclusive
    lock (xdist workers finish together), replacing it atomically.

    :raises OSError: when it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows: the last writer wins)
            pass
        else:
            fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {**load_parts(path), **parts}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
