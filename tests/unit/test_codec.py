"""Signing, verification and the identity-keeping pickle: pure, no agent."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_statemigrate import codec

SECRET = b"s" * 32

plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(plain_values)
@settings(max_examples=100, deadline=None)
def test_round_trip(value: Any) -> None:
    frames = codec.seal(SECRET, "k", {"kind": "value"}, codec.dump(value, {}))
    opened = codec.open_sealed(SECRET, "k", frames)
    codec.verify(opened)
    assert codec.load(opened.payload, {}.__getitem__) == value


def test_references_to_dependencies_resolve_to_live_objects() -> None:
    corpus = ["a", "b"]
    config = {"n": 1}
    model = {"corpus": corpus, "config": config, "again": corpus, "n": 1}
    frames = codec.dump(model, {"corpus": corpus, "config": config, "n": 1})
    live_corpus, live_config = ["a", "b"], {"n": 1}
    loaded = codec.load(frames, {"corpus": live_corpus, "config": live_config}.__getitem__)
    assert loaded["corpus"] is live_corpus and loaded["again"] is live_corpus
    assert loaded["config"] is live_config
    assert loaded == model


def test_out_of_band_buffers_come_back_writable() -> None:
    data = bytearray(b"x" * 1_000_000)
    frames = codec.dump(pickle.PickleBuffer(data), {})
    assert len(frames) == 2  # body + one out-of-band buffer, not copied into the body
    loaded = codec.load([bytes(f) for f in frames], {}.__getitem__)
    view = memoryview(loaded)
    assert not view.readonly and view.tobytes() == bytes(data)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_body_that_is_a_slice_of_a_larger_buffer_loads_without_copies(protocol: int) -> None:
    # A disk tier entry's body is a view into the entry; text opcodes (protocol 0) use readline.
    value = {"lines": "a\nb\n" * 3, "data": bytearray(b"\n" * 70_000), "n": [1.5, 2**70]}
    blob = b"head" + pickle.dumps(value, protocol=protocol) + b"tail"
    body = memoryview(blob)[4:-4]
    loaded = codec.load([body], {}.__getitem__)
    assert loaded == value
    body.release()  # nothing loaded refers to the entry's memory
    loaded["data"][0] = 0


def test_unpicklable_is_named() -> None:
    import threading

    with pytest.raises(codec.Unpicklable, match="lock value cannot be pickled"):
        codec.dump(threading.Lock(), {})


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda f: [f[0], b"0" * 32, *f[2:]], "bad signature"),
        (lambda f: [f[0][:-1] + b"\x00", *f[1:]], "bad signature"),
        (lambda f: f[:1], "too few frames"),
    ],
)
def test_tampered_entries_are_refused(tamper: Any, message: str) -> None:
    frames = [bytes(memoryview(f)) for f in codec.seal(SECRET, "k", {}, codec.dump([1, 2], {}))]
    with pytest.raises(codec.Unverified, match=message):
        codec.open_sealed(SECRET, "k", tamper(frames))


def test_payload_corruption_is_caught_before_unpickling() -> None:
    frames = [bytes(memoryview(f)) for f in codec.seal(SECRET, "k", {}, codec.dump([1, 2], {}))]
    frames[2] = frames[2][:-1] + b"\x00"
    opened = codec.open_sealed(SECRET, "k", frames)
    with pytest.raises(codec.Unverified, match="digest mismatch"):
        codec.verify(opened)


def test_entry_under_another_key_is_refused() -> None:
    frames = codec.seal(SECRET, "one", {}, codec.dump(1, {}))
    with pytest.raises(codec.Unverified, match="bad signature"):
        codec.open_sealed(SECRET, "two", frames)


def test_secret_file_is_private_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(codec.SECRET_ENV, raising=False)
    first = codec.load_secret(tmp_path / "store")
    assert codec.load_secret(tmp_path / "store") == first and len(first) == 64
    mode = stat.S_IMODE(os.stat(tmp_path / "store" / "secret").st_mode)
    assert mode == 0o600
    assert (tmp_path / "store" / ".gitignore").read_text().strip().endswith("*")
    monkeypatch.setenv(codec.SECRET_ENV, "from-env-" + "x" * 32)
    assert codec.load_secret(tmp_path / "elsewhere") == b"from-env-" + b"x" * 32
    monkeypatch.setenv(codec.SECRET_ENV, "")  # set but empty (a CI secret a fork cannot see)
    assert codec.load_secret(tmp_path / "store") == first


@pytest.mark.parametrize("value", ["a", "x" * 31])
def test_a_short_secret_in_the_environment_is_refused(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 18 (4): STATEMIGRATE_SECRET=a was accepted; anyone could forge signed values.
    monkeypatch.setenv(codec.SECRET_ENV, value)
    with pytest.raises(codec.SecretError) as info:
        codec.load_secret(tmp_path)
    assert str(info.value) == (
        f"$STATEMIGRATE_SECRET has {len(value)} bytes, fewer than 32: set it to a random value "
        'such as the output of `python -c "import secrets; print(secrets.token_hex(32))"`'
    )
    monkeypatch.setenv(codec.SECRET_ENV, "x" * 32)
    assert codec.load_secret(tmp_path) == b"x" * 32


@pytest.mark.parametrize("content", [b"", b"short"])
def test_a_short_secret_file_is_refused(
    content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(codec.SECRET_ENV, raising=False)
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(codec.SecretError) as info:
        codec.load_secret(tmp_path)
    assert str(info.value) == (
        f"the secret {path} holds {len(content)} bytes, fewer than 32: remove it to have a "
        "new one made"
    )


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secret_file_others_may_access_is_refused(
    mode: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 18 (4): a 0644 secret was used without a word (CURVE key files at 0644 are not).
    monkeypatch.delenv(codec.SECRET_ENV, raising=False)
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 64)
    path.chmod(mode)
    with pytest.raises(codec.SecretError) as info:
        codec.load_secret(tmp_path)
    assert str(info.value) == (
        f"the secret {path} is accessible by other users (mode {mode:o}): chmod 600 {path}"
    )
    path.chmod(0o600)
    assert codec.load_secret(tmp_path) == b"s" * 64


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_secret_file_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(codec.SECRET_ENV, raising=False)
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 64)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(codec.SecretError, match=r"belongs to uid 65534, not to this user"):
        codec.load_secret(tmp_path)


class Swallows:
    """A __getattr__ that answers for __setstate__: unpickling silently loses the state."""

    def __init__(self) -> None:
        self.items = [1]

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class Careful(Swallows):
    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def test_values_that_would_unpickle_wrongly_are_refused() -> None:
    with pytest.raises(codec.Unpicklable, match=r"does not survive pickling \(Swallows"):
        codec.dump({"x": Swallows()}, {})
    loaded = codec.load(codec.dump(Careful(), {}), {}.__getitem__)
    assert loaded.items == [1]


class _Raising:
    """In a cycle, so only the collector frees it; its finalizer raises and warns."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        import warnings

        warnings.warn("unclosed", ResourceWarning, stacklevel=1)
        raise RuntimeError("half-built")


def test_what_a_thrown_away_load_left_is_collected_silently() -> None:
    import gc
    import sys
    import weakref

    seen: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with codec.quietly_collected():
            leftover = _Raising()
            gone = weakref.ref(leftover)
            del leftover
        assert gone() is None  # collected when the block ended, not at some later test
        assert seen == []
        assert sys.unraisablehook == seen.append  # the hook is the caller's again
        _Raising()
        gc.collect()  # outside the block: reported as usual
        assert len(seen) == 1
    finally:
        sys.unraisablehook = hook
