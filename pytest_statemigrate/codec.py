"""Values on the wire: pickle protocol 5 with out-of-band buffers, signed and digested.

A stored entry is a list of frames::

    frame 0   meta     msgpack map: format, kind, digest of the payload, build seconds, warnings,
                       fingerprints, ... (see :func:`seal`)
    frame 1   sig      HMAC-SHA256(secret, key ‖ meta)
    frame 2   body     the pickle stream (kind "value" only)
    frame 3.. buffers  its out-of-band buffers (large arrays travel without a copy)

Readers check the signature over the meta, then the payload's SHA-256 against the digest the
meta carries, and only then unpickle (DESIGN.md, invariant 4). A "build" entry has no payload:
it records that this value is to be built in-process (it does not pickle, is too large, or
loads slower than it builds) and why.

Values that refer to the value of a fixture they depend on keep that reference: such objects
are pickled as persistent ids and resolved, on load, to the live object the dependency gave the
loading test (invariant 5).
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import io
import os
import pickle
import secrets
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import msgpack

from . import fidelity
from .keys import FORMAT_VERSION

SECRET_ENV: Final = "STATEMIGRATE_SECRET"
#: Shortest signing secret accepted, in bytes: 32 hex digits carry 128 random bits (the
#: generated secret has 64, 256 bits); a shorter value may be guessed.
MIN_SECRET_BYTES: Final = 32
_MAKE_SECRET: Final = 'python -c "import secrets; print(secrets.token_hex(32))"'
#: Values no code can change in place: pickled by value, never checked for changes.
IMMUTABLE: Final = (str, bytes, int, float, bool, complex, type(None))

Buffer = bytes | bytearray | memoryview | pickle.PickleBuffer


class Unverified(Exception):
    """An entry whose signature, digest or format does not check out."""


class Unpicklable(Exception):
    """The value cannot be pickled; the message says why."""


class Shared(Unpicklable):
    """The value shares mutable parts with a dependency's value; the message says which."""


class SecretError(ValueError):
    """A signing secret that must not be used; the message is one line naming it and the fix."""


def load_secret(store_dir: Path) -> bytes:
    """The project's signing secret: ``$STATEMIGRATE_SECRET``, or ``<store_dir>/secret``.

    The file is created on first use with mode 0600, atomically, so concurrent workers agree.
    Whoever knows the secret can make this user's runs unpickle what they wrote, so a secret
    shorter than :data:`MIN_SECRET_BYTES`, or a file that another user may read or that
    another user owns, is refused (an empty ``$STATEMIGRATE_SECRET`` means unset: CI systems
    pass one for secrets a run may not see).

    :raises SecretError: naming the variable or file and the fix.
    """
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env.encode()) < MIN_SECRET_BYTES:
            raise SecretError(
                f"${SECRET_ENV} has {len(env.encode())} bytes, fewer than {MIN_SECRET_BYTES}: "
                f"set it to a random value such as the output of `{_MAKE_SECRET}`"
            )
        return env.encode()
    path = store_dir / "secret"
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore = store_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by pytest-statemigrate\n*\n")
    tmp = store_dir / f".secret-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``, checked as ssh checks a private key (mode, owner), and for its
    length. :raises FileNotFoundError: there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)  # the file opened is the file checked (fstat)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretError(f"cannot read the secret {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if os.name == "posix":
            st = os.fstat(fh.fileno())
            if st.st_uid != os.getuid():
                raise SecretError(
                    f"the secret {path} belongs to uid {st.st_uid}, not to this user (uid "
                    f"{os.getuid()}), who could then make this run load their values: remove "
                    "it to have a new one made"
                )
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretError(
                    f"the secret {path} is accessible by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):o}): chmod 600 {path}"
                )
        secret = fh.read()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the secret {path} holds {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}: "
            "remove it to have a new one made"
        )
    return secret


class Paths(Protocol):
    """Paths into the directories managed builds made (``trees.PathMap``): pickled relative to
    their directory, loaded pointing into this session's copy."""

    @property
    def active(self) -> bool:
        """Whether any such directory exists in this session."""

    def mentioned(self, body: Any) -> bool:
        """Whether a pickle body may hold such a path (then it is pickled again, through
        :meth:`persistent_id`)."""

    def persistent_id(self, obj: Any) -> Any:
        """A tuple for such a path or str, None for any other object; raises for a path that
        cannot be placed."""

    def persistent_load(self, pid: tuple[Any, ...]) -> Any:
        """The object :meth:`persistent_id` gave ``pid`` for, in this session."""


class _Body:
    """A read-only file over a pickle body that hands the unpickler views, not copies.

    ``io.BytesIO(memoryview(body))`` copies the whole body first (a body that is not a
    ``bytes`` object of its own: a slice of a disk tier entry, a zmq frame), and each of its
    ``read()`` calls copies again: 36-45 ms for the example's 16 MB model, 6-18 ms this way.
    The C unpickler accepts any buffer from ``read()``; what it builds (str, bytes, arrays)
    copies out of it, so no loaded object refers to the body's memory.
    """

    def __init__(self, body: Any) -> None:
        self._view = memoryview(body).cast("B")
        self._pos = 0

    def read(self, size: int = -1) -> memoryview:
        view, start = self._view, self._pos
        end = len(view) if size is None or size < 0 else min(len(view), start + size)
        self._pos = end
        return view[start:end]

    def readinto(self, buffer: Any) -> int:
        view, start = self._view, self._pos
        out = memoryview(buffer).cast("B")
        size = min(len(out), len(view) - start)
        out[:size] = view[start : start + size]
        self._pos = start + size
        return size

    def readline(self) -> memoryview:
        """(Text opcodes only, which protocol 5 does not write; correct, not fast.)"""
        view, start = self._view, self._pos
        end = start
        while end < len(view):
            found = bytes(view[end : end + 4096]).find(b"\n")
            if found >= 0:
                end += found + 1
                break
            end += 4096
        end = min(end, len(view))
        self._pos = end
        return view[start:end]


class _Unpickler(pickle.Unpickler):
    def __init__(
        self,
        file: _Body,
        resolve: Callable[[str], Any],
        buffers: Sequence[Any],
        paths: Paths | None = None,
    ) -> None:
        # (The stubs want bytes from read(); the C unpickler takes any buffer.)
        super().__init__(file, buffers=buffers)  # type: ignore[arg-type]
        self._resolve = resolve
        self._paths = paths

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, str):
            return self._resolve(pid)
        if isinstance(pid, tuple) and self._paths is not None:
            return self._paths.persistent_load(pid)
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _prologue(names: Sequence[str]) -> bytes:
    """Opcodes that put each dependency's live value into the unpickler's memo, in order.

    The body is pickled with those objects pre-memoised at the same indices, so a reference
    to a dependency is a plain memo GET: the C pickler runs at full speed, with no Python
    callback per object (a ``persistent_id`` method made pickling 2-3x slower).
    """
    out = bytearray(pickle.PROTO + b"\x05")
    for name in names:
        raw = name.encode()
        out += pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw
        out += pickle.BINPERSID + pickle.MEMOIZE + pickle.POP
    return bytes(out)


def _seed_memo(pickler: pickle.Pickler, names: Sequence[str], deps: Mapping[str, Any]) -> None:
    """Pre-memoise the dependencies' values at the indices :func:`_prologue` loads them to."""
    pickler.memo = {id(deps[n]): (i, deps[n]) for i, n in enumerate(names)}


class SharingCheck(Protocol):
    """What a stored value shares with its dependencies' values (``depstate.SharingCheck``)."""

    def watch(self, obj: Any) -> None:
        """Called for each object the value's pickle reaches that is not a builtin."""

    def verdict(self, value: Any) -> str | None:
        """After pickling: the shared part, or None."""


class _Pickler(pickle.Pickler):
    """Notes the classes it pickles (builtin containers are never passed to the hook), and
    shows every such object to ``watch``."""

    def __init__(
        self,
        file: io.BytesIO,
        buffers: list[Any],
        classes: set[type],
        watch: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        self._classes = classes
        self._watch = watch

    def reducer_override(self, obj: Any) -> Any:
        self._classes.add(type(obj))
        if self._watch is not None:
            self._watch(obj)
        return NotImplemented


class _PathPickler(_Pickler):
    """A :class:`_Pickler` that pickles paths into the session's build directories as
    persistent ids (a Python call per object: only for values that may hold one)."""

    def __init__(self, paths: Paths, *args: Any) -> None:
        super().__init__(*args)
        self._paths = paths

    def persistent_id(self, obj: Any) -> Any:
        return self._paths.persistent_id(obj)


def _pickle(
    value: Any,
    names: Sequence[str],
    deps: Mapping[str, Any],
    classes: set[type] | None = None,
    watch: Callable[[Any], None] | None = None,
    paths: Paths | None = None,
) -> list[Any]:
    """The body and out-of-band buffers of ``value``; with ``classes``, also note there the
    classes pickled (a Python callback per object: only the store needs it), and show those
    objects to ``watch``; with ``paths``, pickle paths through it."""
    buffers: list[Any] = []
    stream = io.BytesIO()
    stream.write(_prologue(names))
    pickler: pickle.Pickler
    if paths is not None:
        pickler = _PathPickler(paths, stream, buffers, set() if classes is None else classes, watch)
    elif classes is not None:
        pickler = _Pickler(stream, buffers, classes, watch)
    else:
        pickler = pickle.Pickler(stream, protocol=5, buffer_callback=buffers.append)
    _seed_memo(pickler, names, deps)
    with quiet():
        pickler.dump(value)
    frames: list[Any] = [stream.getbuffer()]
    for buf in buffers:
        raw = buf.raw()
        frames.append(raw if raw.contiguous else bytes(raw))
    return frames


def _by_reference(deps: Mapping[str, Any]) -> list[str]:
    """The dependencies pickled as references (immutable ones are pickled as values)."""
    return [name for name, v in deps.items() if not isinstance(v, IMMUTABLE)]


def state_digest(value: Any, deps: Mapping[str, Any]) -> tuple[str, int] | None:
    """The digest and size of ``value``'s pickle (dependencies by reference), to tell whether
    a test mutated it; None when it does not pickle."""
    try:
        frames = _pickle(value, _by_reference(deps), deps)
    except Exception:
        return None
    return payload_digest(frames), sum(memoryview(f).nbytes for f in frames)


def placed_digest(value: Any, paths: Paths) -> str:
    """The digest of ``value``'s pickle with its paths into the session's build directories
    placed: equal for equal values in any session, whichever copy of the files they point to.

    :raises Unpicklable: when it does not pickle, or holds a path that cannot be placed.
    """
    try:
        frames = _pickle(value, [], {})
        if paths.active and paths.mentioned(frames[0]):
            frames = _pickle(value, [], {}, set(), None, paths)
    except Unpicklable:
        raise
    except Exception as exc:
        raise Unpicklable(f"{type(value).__name__} value cannot be pickled ({exc})") from None
    return payload_digest(frames)


def dump(
    value: Any,
    deps: Mapping[str, Any],
    shares: SharingCheck | None = None,
    paths: Paths | None = None,
) -> list[Buffer]:
    """Pickle ``value`` into a body and its out-of-band buffers.

    :param deps: the values of the fixtures it depends on, by name; references to them are
        kept as references (resolved on load by :func:`load`'s ``resolve``).
    :param shares: what the value shares with its dependencies' values beyond those
        references (``depstate.SharingCheck``).
    :param paths: the session's build directories, when there are any: paths into them are
        pickled relative to them.
    :raises Unpicklable: when it does not pickle, holds a path it cannot place, or (for
        values holding instances of a :func:`fidelity.fragile` class) does not come back the
        same from a round trip.
    :raises Shared: when ``shares`` names a shared part.
    """
    names = _by_reference(deps)
    classes: set[type] = set()
    watch = shares.watch if shares else None
    try:
        frames = _pickle(value, names, deps, classes, watch)
        if paths is not None and paths.active and paths.mentioned(frames[0]):
            # Again, with its paths placed (the watcher may see objects twice: no matter).
            frames = _pickle(value, names, deps, classes, watch, paths)
        else:
            paths = None
    except Unpicklable:  # a path that cannot be placed: the message is the reason
        raise
    except Exception as exc:
        raise Unpicklable(f"{type(value).__name__} value cannot be pickled ({exc})") from None
    if shares is not None:
        part = shares.verdict(value)
        if part is not None:
            raise Shared(f"its value shares {part}: a loaded copy would not")
    verdicts = {c: fidelity.fragile(c) for c in classes}
    if any(verdicts.values()):
        # Only such values pay for a round trip: the fragile instances of the value and of
        # what loads from it, in pickling order, must hold the same state (fidelity.py).
        gc.collect()  # (garbage made before is collected under the usual hooks)
        with quietly_collected():
            why = _round_trip_difference(value, frames, names, deps, verdicts, paths)
        if why is not None:
            raise Unpicklable(why)
    return frames


def _round_trip_difference(
    value: Any,
    frames: Sequence[Any],
    names: Sequence[str],
    deps: Mapping[str, Any],
    verdicts: dict[type, str | None],
    paths: Paths | None,
) -> str | None:
    """Why the fragile instances of ``value`` do not come back from its pickle the same,
    or None. Holds the copy only while it runs (see :func:`quietly_collected`)."""
    try:
        reason = fidelity.first_difference(
            _fragile_instances(value, names, deps, verdicts),
            _fragile_instances(_round_trip(frames, deps, paths), names, deps, verdicts),
            lambda cls: verdicts.get(cls) or "changed",  # (every class seen has a verdict)
        )
    except Unpicklable as exc:
        return str(exc)
    return None if reason is None else lost(reason)


@contextmanager
def quietly_collected() -> Iterator[None]:
    """Collect, when the block ends, the objects of a load that is thrown away or failed
    half-way, with their finalizers' warnings and exceptions silenced.

    Plain pytest never made those objects (a round trip's copy of a reader that reopened its
    file, a half-built instance whose ``__del__`` raises): nothing of them may reach a test
    as an unraisable exception or a ResourceWarning. The block must drop its references to
    them before it ends. Garbage made before the block is collected with them: a caller that
    can afford it collects first (``gc.collect()``), under the usual hooks."""
    hook = sys.unraisablehook
    sys.unraisablehook = _ignore_unraisable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                gc.collect()
    finally:
        sys.unraisablehook = hook


def _ignore_unraisable(unraisable: Any) -> None:
    return None


def lost(why: str | BaseException) -> str:
    """The refusal of a value that does not come back from pickling as it was."""
    if isinstance(why, BaseException):
        why = f"{type(why).__name__}: {why}"
    return f"its value does not survive pickling ({why})"


def _round_trip(frames: Sequence[Any], deps: Mapping[str, Any], paths: Paths | None) -> Any:
    try:
        return load(frames, deps.__getitem__, paths)
    except Exception as exc:
        raise Unpicklable(lost(exc)) from None


def _fragile_instances(
    value: Any, names: Sequence[str], deps: Mapping[str, Any], verdicts: dict[type, str | None]
) -> list[Any]:
    """The instances of fragile classes ``value``'s pickle reaches, in pickling order."""
    found: list[Any] = []

    def watch(obj: Any) -> None:
        cls = type(obj)
        if cls not in verdicts:
            verdicts[cls] = fidelity.fragile(cls)
        if verdicts[cls]:
            found.append(obj)

    try:
        _pickle(value, names, deps, set(), watch)
    except Exception as exc:
        raise Unpicklable(lost(exc)) from None
    return found


def load(frames: Sequence[Any], resolve: Callable[[str], Any], paths: Paths | None = None) -> Any:
    """Unpickle a body and its buffers. Buffers are copied, so every array comes out writable.

    Warnings raised while unpickling are dropped: a hit raises again the warnings its build
    raised (invariant 7), and a class that rebuilds itself on load (an MDAnalysis Universe
    reopening its trajectory: "Reader has no dt information") would add its own to them, which
    plain pytest never shows.
    """
    body, *buffers = frames
    own = [bytearray(memoryview(b)) for b in buffers]
    with quiet():
        return _Unpickler(_Body(body), resolve, own, paths).load()


@contextmanager
def quiet() -> Iterator[None]:
    """No warning from pickling or unpickling reaches the run: the plugin's own pickles (to
    store, digest, check) are not the test's, and a hit replays its build's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def payload_digest(frames: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for frame in frames:
        view = memoryview(frame)
        h.update(view.nbytes.to_bytes(8, "little"))
        h.update(view)
    return h.hexdigest()


def _sign(secret: bytes, key: str, meta: bytes) -> bytes:
    return hmac.new(secret, key.encode() + b"\0" + meta, hashlib.sha256).digest()


def seal(secret: bytes, key: str, meta: Mapping[str, Any], payload: Sequence[Any]) -> list[Any]:
    """Frames for an entry: meta (with format and payload digest), signature, payload."""
    full = {**meta, "fmt": FORMAT_VERSION, "digest": payload_digest(payload)}
    packed = msgpack.packb(full, use_bin_type=True)
    return [packed, _sign(secret, key, packed), *payload]


class Unsealed:
    """An entry to be sealed (:func:`seal`) when it is written. Its payload digest hashes
    every byte of the value: a client that writes behind (``seals_later``) pays for it on its
    writing thread, while the tests run (hashlib lets them); the others seal it at once."""

    def __init__(
        self, secret: bytes, key: str, meta: Mapping[str, Any], payload: Sequence[Any]
    ) -> None:
        self.payload = payload
        self._args = (secret, key, meta)
        self._frames: list[Any] | None = None
        self._lock = threading.Lock()

    def frames(self) -> list[Any]:
        """The sealed frames (computed once, by whichever thread asks first)."""
        with self._lock:
            if self._frames is None:
                secret, key, meta = self._args
                self._frames = seal(secret, key, meta, self.payload)
            return self._frames


@dataclass(frozen=True)
class Opened:
    meta: dict[str, Any]
    payload: list[Any]


def open_sealed(secret: bytes, key: str, frames: Sequence[Any]) -> Opened:
    """Check an entry's signature and format; the payload digest is checked by :func:`verify`."""
    if len(frames) < 2:
        raise Unverified("entry has too few frames")
    packed = bytes(memoryview(frames[0]))
    if not hmac.compare_digest(_sign(secret, key, packed), bytes(memoryview(frames[1]))):
        raise Unverified("bad signature (another project's secret, or tampered)")
    try:
        meta = msgpack.unpackb(packed, raw=False)
    except Exception as exc:
        raise Unverified(f"unreadable meta ({exc})") from None
    if not isinstance(meta, dict) or meta.get("fmt") != FORMAT_VERSION:
        raise Unverified("entry of another format version")
    return Opened(meta=meta, payload=list(frames[2:]))


def verify(opened: Opened) -> None:
    """Check the payload against the signed digest."""
    if payload_digest(opened.payload) != opened.meta.get("digest"):
        raise Unverified("payload digest mismatch (corrupt entry)")
