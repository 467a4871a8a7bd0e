"""State keys: stable for the same inputs, different for anything that can change a value."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_statemigrate import keys
from pytest_statemigrate.settings import SettingsError, parse_patterns, parse_size

BASE = keys.KeyParts(fixture="conftest.py::data", code="c0")


@pytest.mark.parametrize(
    "change",
    [
        {"fixture": "tests/conftest.py::data"},
        {"code": "c1"},
        {"param": "p"},
        {"deps": (("x", "k"),)},
        {"inputs": "i"},
        {"env": "e"},
        {"node": "test_a.py::test_a"},
        {"environment": "other"},
    ],
)
def test_every_part_changes_the_key(change: dict[str, object]) -> None:
    assert keys.make_key(replace(BASE, **change)) != keys.make_key(BASE)  # type: ignore[arg-type]


def test_key_is_stable_and_named() -> None:
    assert keys.make_key(BASE) == keys.make_key(
        keys.KeyParts(fixture="conftest.py::data", code="c0")
    )
    assert keys.make_key(BASE).startswith("data-")


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


@given(st.recursive(st.integers() | st.text() | st.none(), lambda s: st.lists(s) | st.tuples(s, s)))
def test_plain_params_have_canonical_tokens(value: object) -> None:
    assert keys.param_token(value) == keys.param_token(value)


def test_param_tokens_tell_types_apart_and_ignore_set_order() -> None:
    assert keys.param_token(1) != keys.param_token("1") != keys.param_token(1.0)
    assert keys.param_token({3, 1, 2}) == keys.param_token({2, 3, 1})
    assert keys.param_token({"b": 1, "a": 2}) == keys.param_token({"a": 2, "b": 1})


def test_objects_use_ids_then_pickle_never_repr() -> None:
    assert keys.param_token(Opaque(1), "one") == keys.param_token(Opaque(2), "one")
    assert keys.param_token(Opaque(1)) == keys.param_token(Opaque(1))  # same pickle
    assert keys.param_token(Opaque(1)) != keys.param_token(Opaque(2))
    with pytest.raises(keys.Unkeyable, match="give the fixture ids="):
        keys.param_token(lambda: 1)


def test_inputs_and_env_digests(tmp_path: Path) -> None:
    files = keys.FileDigests()
    (tmp_path / "a.csv").write_text("1")
    first = keys.inputs_digest(["*.csv"], tmp_path, files)
    (tmp_path / "b.csv").write_text("2")
    second = keys.inputs_digest(["*.csv"], tmp_path, files)
    (tmp_path / "a.csv").write_text("3")
    third = keys.inputs_digest(["*.csv"], tmp_path, files)
    assert len({first, second, third}) == 3
    assert keys.env_digest(["X"], {}) != keys.env_digest(["X"], {"X": ""})


def test_code_digest_sees_source_not_position(tmp_path: Path) -> None:
    def one() -> int:
        return 1

    def two() -> int:
        return 1

    assert keys.code_digest(one, tmp_path) != keys.code_digest(two, tmp_path)  # other name


@pytest.mark.parametrize(
    ("text", "size"), [("512", 512), ("4K", 4096), ("1.5M", 1572864), ("2GiB", 2**31)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_says_how() -> None:
    with pytest.raises(ValueError, match="use bytes or a number with K, M, G or T"):
        parse_size("lots")
    assert issubclass(SettingsError, ValueError)


def test_patterns() -> None:
    assert parse_patterns(" a, b* ,,") == ("a", "b*")


def test_what_changed_names_the_part_of_the_key() -> None:
    part_digests, what_changed = keys.part_digests, keys.what_changed
    base = keys.KeyParts("c.py::model", "code1", deps=(("data", "data-k1"),), inputs="i1")
    then = part_digests(base)
    assert what_changed(then, part_digests(replace(base, code="code2"))) == "code changed"
    changed_dep = replace(base, deps=(("data", "data-k2"),))
    assert what_changed(then, part_digests(changed_dep)) == "its dependency data changed"
    assert what_changed(then, part_digests(replace(base, inputs="i2"))) == (
        "a declared input changed"
    )
    moved = replace(base, environment="fmt2|cpython|3.14.0|linux|x86_64")
    assert what_changed(then, part_digests(moved)).startswith("the interpreter or platform")
