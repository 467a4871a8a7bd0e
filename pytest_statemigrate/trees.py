"""Files a fixture builds: the directories it makes with ``tmp_path_factory.mktemp``.

A managed fixture may depend on ``tmp_path_factory`` (or the legacy ``tmpdir_factory``). While
it builds, :class:`Capture` notes the directories its ``mktemp`` calls make and every path the
build writes or deletes (an audit hook, :mod:`inputs`). After the build, :func:`capture`
reads those directories into a :class:`Tree`: a manifest (paths, kinds, modes, symlink
targets, hard links) and the files' contents, each distinct content once (content-addressed
by SHA-256). The tree travels in the value's entry, so it is signed, digested and placed in the
tiers with it. On a hit, :func:`restore` writes it into fresh ``mktemp`` directories of this
session (the same base names, so the same numbering as a build) before the value is unpickled.

Paths in the value (``pathlib`` paths, ``py.path.local``, and ``str`` that contain one) are
pickled relative to the directory they lie in, named by the owning entry's key and the
directory's index (:class:`PathMap`): on load they point into this session's copy, whether the
value is the fixture's own or a dependent's that holds a path into it.

What cannot be served is refused with the reason, and the fixture is then built as plain pytest
would: a write or a deletion outside the directories it made (scratch files removed before the
build returns, ``__pycache__`` and the user's cache directory aside), a file of them still open
when the build returns, a special file (fifo, socket, device) in them, a path under the
session's temporary directory that no managed build made, or such a path inside ``bytes``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Final

from .codec import Unpicklable

#: The pytest fixtures whose ``mktemp`` a managed fixture may use: name → defining module.
FACTORIES: Final = {"tmp_path_factory": "_pytest.tmpdir", "tmpdir_factory": "_pytest.legacypath"}


class Refused(Unpicklable):
    """The files cannot be captured or the value's paths cannot be placed; the message says
    why."""


def is_factory(name: str, func: Any) -> bool:
    """``func`` is pytest's own ``tmp_path_factory``/``tmpdir_factory`` fixture."""
    module = FACTORIES.get(name)
    return module is not None and getattr(func, "__module__", None) == module


def is_factory_value(value: Any) -> bool:
    """``value`` is a ``TempPathFactory`` or ``TempdirFactory`` (what the factories give)."""
    cls = type(value)
    return cls.__name__ in ("TempPathFactory", "TempdirFactory") and cls.__module__ in (
        FACTORIES.values()
    )


def path_factory(value: Any) -> Any:
    """The ``TempPathFactory`` behind a factory fixture's value (``tmpdir_factory`` wraps one)."""
    return getattr(value, "_tmppath_factory", value)


def basetemp(factory: Any) -> str:
    """The session's temporary directory (``pytest-12``), where ``mktemp`` makes directories."""
    return str(os.fspath(factory.getbasetemp()))


@dataclass(frozen=True)
class Made:
    """One directory a build made: where, and the ``mktemp`` arguments that made it."""

    path: str
    basename: str
    numbered: bool


@dataclass
class Capture:
    """While a build runs: the directories its ``mktemp`` calls make, and what it writes.

    ``written`` and ``removed`` are filled by :class:`inputs.BuildRecorder` (given them as
    sinks); the factory's own bookkeeping (``getbasetemp``, the numbered directory, its lock)
    happens inside ``mktemp`` and is not noted.
    """

    factory: Any
    made: list[Made] = field(default_factory=list)
    written: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    _inside: int = 0

    @contextmanager
    def watching(self) -> Iterator[Capture]:
        factory = self.factory
        real = factory.mktemp

        def mktemp(basename: str, numbered: bool = True) -> Any:
            self._inside += 1
            try:
                made = real(basename, numbered)
            finally:
                self._inside -= 1
            self.made.append(Made(os.fspath(made), basename, numbered))
            return made

        factory.mktemp = mktemp  # an instance attribute, over the class's method
        try:
            yield self
        finally:
            del factory.mktemp

    @property
    def paused(self) -> bool:
        """Inside the factory's own ``mktemp``: its writes are not the build's."""
        return self._inside > 0


@dataclass(frozen=True)
class Tree:
    """The directories one build made: ``manifest`` (msgpack-ready) and the distinct file
    contents it refers to by index."""

    manifest: list[dict[str, Any]]
    blobs: list[bytes]
    digest: str  # of the contents: the manifest and each distinct file's SHA-256


def _under(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d + os.sep) for d in dirs)


def _harmless(path: str) -> bool:
    """Writes that never change what a test sees: bytecode caches and the user's cache."""
    if f"{os.sep}__pycache__{os.sep}" in path or path.endswith((".pyc", ".pyo")):
        return True
    caches = [os.environ.get("XDG_CACHE_HOME"), os.path.expanduser("~/.cache")]
    return path.startswith("/dev/") or _under(path, [c for c in caches if c])


def side_effect(cap: Capture, exclude: Sequence[str]) -> str | None:
    """Why the build's writes cannot be captured: the first write or deletion outside the
    directories it made that is still there, as a refusal; None when there is none."""
    made = [m.path for m in cap.made]
    skip = [*made, *exclude]
    for path in sorted(cap.written):
        if os.path.lexists(path) and not _under(path, skip) and not _harmless(path):
            return (
                f"writes {path} outside the directories it made with tmp_path_factory.mktemp: "
                "a loaded value would not write it"
            )
    for path in sorted(cap.removed - cap.written):
        if not _under(path, skip) and not _harmless(path):
            return f"deletes {path}, outside the directories it made: a loaded value would not"
    return None


def still_open(dirs: Sequence[str]) -> str | None:
    """A file under ``dirs`` this process still has open, or None."""
    if not dirs:
        return None
    if os.path.isdir("/proc/self/fd"):  # Linux: 50 readlinks, not psutil's 30 ms
        paths = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # closed meanwhile (the listing's own descriptor)
                continue
    else:
        psutil: Any = importlib.import_module("psutil")  # (no stubs here)
        try:
            paths = [str(f.path) for f in psutil.Process().open_files()]
        except (psutil.Error, OSError):
            return None
    for path in paths:
        if _under(os.path.abspath(path), dirs):
            return path
    return None


def capture(cap: Capture, exclude: Sequence[str], max_bytes: int) -> Tree:
    """Read the directories a build made (after it returned).

    :raises Refused: a side effect outside them, a file of them still open, a special file,
        or more than ``max_bytes`` of contents.
    """
    why = side_effect(cap, exclude)
    if why is not None:
        raise Refused(why)
    held = kept_open(cap)
    if held is not None:
        raise Refused(held)
    return _read(cap.made, max_bytes)


def kept_open(cap: Capture) -> str | None:
    """Why the directories a build made cannot be stored yet: a file of them still open."""
    held = still_open([m.path for m in cap.made])
    if held is None:
        return None
    return (
        f"keeps {held} open when it returns: what it writes later would be missing from "
        "a loaded copy"
    )


def content_digest(made: Sequence[Made]) -> str:
    """The digest of what the directories hold now, as :attr:`Tree.digest` gives it."""
    return _read(made, None, keep=False).digest


def _read(made: Sequence[Made], max_bytes: int | None, keep: bool = True) -> Tree:
    dirs = [m.path for m in made]
    manifest: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    by_digest: dict[str, int] = {}
    total = 0
    for one in made:
        entries: list[list[Any]] = []
        inodes: dict[tuple[int, int], str] = {}
        root_mode = stat.S_IMODE(os.lstat(one.path).st_mode)
        for rel, st in _walk(one.path):
            full = os.path.join(one.path, rel)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append([rel, "l", 0, _link_target(os.readlink(full), dirs)])
            elif stat.S_ISDIR(st.st_mode):
                entries.append([rel, "d", mode, None])
            elif stat.S_ISREG(st.st_mode):
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in inodes:
                    entries.append([rel, "h", mode, inodes[inode]])
                    continue
                inodes[inode] = rel
                total += st.st_size
                if max_bytes is not None and total > max_bytes:
                    raise Refused(
                        f"the files it made are over {max_bytes / 2**20:.0f} MiB "
                        "(statemigrate_max_value_bytes)"
                    )
                with open(full, "rb") as fh:
                    data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                index = by_digest.get(digest)
                if index is None:
                    index = by_digest[digest] = len(by_digest)
                    if keep:
                        blobs.append(data)
                entries.append([rel, "f", mode, index])
            else:
                raise Refused(f"it made {full}, a special file that cannot be stored")
        manifest.append(
            {"base": one.basename, "numbered": one.numbered, "mode": root_mode, "entries": entries}
        )
    whole = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for digest in by_digest:
        whole.update(digest.encode())
    return Tree(manifest, blobs, whole.hexdigest())


#: Files changed less than this before their metadata was noted may change again unseen
#: within the file system's timestamp granularity (git's "racily clean" entries).
RACY_NS: Final = 50_000_000


def stat_print(made: Sequence[Made]) -> str:
    """A digest of the directories' metadata (paths, modes, sizes, times, inodes): equal
    while nothing below them was written (cheap, unlike :func:`content_digest`). "racy" when
    something in them changed too recently for its time to tell a later change apart."""
    h = hashlib.sha256()
    newest = 0
    for one in made:
        try:
            items = [(rel, st) for rel, st in _walk(one.path)]
        except OSError:
            return "gone"
        for rel, st in items:
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
            h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    if time.time_ns() - newest < RACY_NS:
        return "racy"
    return h.hexdigest()


def print_of(made: Sequence[Made], before: str | None = None) -> str:
    """What tells the directories' state apart cheaply: their :func:`stat_print`, or their
    contents' digest (``"content:..."``) while that is racy. ``before``: the print taken
    earlier, whose kind is taken again."""
    if before is None or not before.startswith("content:"):
        now = stat_print(made)
        if now != "racy" or before is not None:
            return now
    return "content:" + content_digest(made)


@dataclass
class Owned:
    """The directories a fixture's current value owns: as made (or restored), the digest of
    their contents then (None: unknown, read when needed) and their :func:`stat_print`."""

    made: list[Made]
    digest: str | None
    stat: str = "racy"

    def digest_now(self) -> str:
        """The contents' digest now: the known one while their metadata is unchanged (and
        was noted long enough after the last change), else read."""
        if self.digest is not None and self.stat not in ("racy", "gone"):
            now = stat_print(self.made)
            if now == self.stat:
                return self.digest
        current = content_digest(self.made)
        if current == self.digest:
            self.stat = stat_print(self.made)  # unchanged: trust the metadata from now on
        return current


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` (relative, parents before children), not following links."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as it:
            for entry in sorted(it, key=lambda e: e.name):
                sub = os.path.join(rel, entry.name)
                st = entry.stat(follow_symlinks=False)
                yield sub, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(sub)


def _link_target(target: str, dirs: Sequence[str]) -> list[Any]:
    """A symlink's target: kept as it is, or (absolute into a made directory) by index."""
    for index, d in enumerate(dirs):
        if _under(target, [d]):
            return [index, os.path.relpath(target, d)]
    return [None, target]


def restore(manifest: Sequence[Any], blobs: Sequence[Any], factory: Any) -> list[Made]:
    """Write a :class:`Tree` into fresh ``mktemp`` directories; those, in order."""
    dirs: list[Made] = []
    for item in manifest:
        base, numbered = str(item["base"]), bool(item["numbered"])
        dirs.append(Made(os.fspath(factory.mktemp(base, numbered)), base, numbered))
    made = [d.path for d in dirs]
    for root, item in zip(made, manifest, strict=True):
        modes: list[tuple[str, int]] = []
        for rel, kind, mode, ref in item["entries"]:
            full = os.path.join(root, rel)
            if kind == "d":
                os.mkdir(full, 0o700)
                modes.append((full, mode))
            elif kind == "f":
                with open(full, "wb") as fh:
                    fh.write(memoryview(blobs[ref]))
                os.chmod(full, mode)
            elif kind == "h":
                os.link(os.path.join(root, ref), full)
            elif kind == "l":
                index, target = ref
                os.symlink(target if index is None else os.path.join(made[index], target), full)
        for full, mode in reversed(modes):  # children first: a read-only directory last
            os.chmod(full, mode)
        os.chmod(root, int(item.get("mode", 0o700)))
    return dirs


class PathMap:
    """Where the directories of this session's managed builds are, and the value's paths in
    terms of them.

    A directory is named by ``(key, index)``: the entry whose build made it and its place
    among that build's ``mktemp`` calls. ``base`` is the session's temporary directory; a path
    under it in a stored value must lie in a known directory.
    """

    def __init__(self) -> None:
        self.base: str | None = None
        self._token: dict[str, tuple[str, int]] = {}  # directory → (key, index)
        self._where: dict[tuple[str, int], str] = {}  # (key, index) → directory now
        self._base: dict[tuple[str, int], str] = {}  # (key, index) → its mktemp basename
        self._pattern: re.Pattern[str] | None = None

    def add(self, key: str, made: Sequence[Made], base: str) -> None:
        """The directories ``key``'s build made (or a hit restored), in ``mktemp`` order."""
        self.base = base
        for index, m in enumerate(made):
            self._token[m.path] = (key, index)
            self._where[(key, index)] = m.path
            self._base[(key, index)] = m.basename
        self._pattern = None

    @property
    def active(self) -> bool:
        return self.base is not None

    def mentioned(self, body: Any) -> bool:
        """Whether a pickle may hold a path under the session's temporary directory: its name
        (``pytest-12``) is in the bytes (a ``str`` holds it whole, a path has it as a part)."""
        if self.base is None:
            return False
        # (re searches the buffer itself: no copy of a large body)
        name = re.compile(re.escape(os.path.basename(self.base).encode()))
        return name.search(memoryview(body).cast("B")) is not None

    def _split(self) -> re.Pattern[str]:
        if self._pattern is None:
            dirs = sorted(self._token, key=len, reverse=True)  # data10 before data1
            alternatives = "|".join(re.escape(d) for d in dirs) or "(?!)"
            self._pattern = re.compile(f"({alternatives})(?=$|{re.escape(os.sep)})")
        return self._pattern

    def persistent_id(self, obj: Any) -> Any:
        """The persistent id of a path or ``str`` that names a place under a known directory;
        None for any other object.

        :raises Refused: for a path under the session's temporary directory that no managed
            build made, and for ``bytes`` that hold one.
        """
        base = self.base
        if base is None:
            return None
        if isinstance(obj, str):
            if base not in obj:
                return None
            pieces = self._split().split(obj)
            if len(pieces) == 1:
                raise Refused(_stray(obj))
            parts: list[Any] = []
            for i, piece in enumerate(pieces):
                if i % 2:
                    parts.append(self._named(piece))
                else:
                    if base in piece:
                        raise Refused(_stray(obj))
                    parts.append(piece)
            return ("sm-str", parts)
        if isinstance(obj, (bytes, bytearray)):
            if base.encode() in obj:
                raise Refused(
                    f"its value holds the path {base}... in bytes: only paths and str can be "
                    "pointed at this session's copy"
                )
            return None
        if isinstance(obj, PurePath) or _is_local_path(obj):
            text = os.fspath(obj)
            for d in self._token:
                if text == d or text.startswith(d + os.sep):
                    return ("sm-path", type(obj), self._named(d), os.path.relpath(text, d))
            if text == base or text.startswith(base + os.sep):
                raise Refused(_stray(text))
        return None

    def persistent_load(self, pid: Any) -> Any:
        """The object a persistent id of :meth:`persistent_id` names, in this session."""
        kind = pid[0]
        if kind == "sm-str":
            return "".join(p if isinstance(p, str) else self._dir(p) for p in pid[1])
        if kind == "sm-path":
            _, cls, token, rel = pid
            where = self._dir(token)
            return cls(where if rel == "." else os.path.join(where, rel))
        raise Refused(f"unknown persistent id {kind!r}")

    def _named(self, directory: str) -> list[Any]:
        """A directory as (key, index, basename): the basename guards against a build whose
        ``mktemp`` calls come in another order."""
        key, index = self._token[directory]
        return [key, index, self._base[(key, index)]]

    def _dir(self, token: Sequence[Any]) -> str:
        at = (str(token[0]), int(token[1]))
        where = self._where.get(at)
        if where is None or self._base.get(at) != token[2]:
            raise Unplaced("a directory its value refers to was not made in this session")
        return where


class Unplaced(Refused):
    """A stored value refers to files no entry of this session restored: build it instead."""


def _is_local_path(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "LocalPath" and cls.__module__.startswith("_pytest")


def _stray(path: str) -> str:
    return (
        f"its value holds {path}, under this session's temporary directory but not in a "
        "directory its build made with tmp_path_factory.mktemp"
    )
