"""effects.py: what a build does to the process besides returning its value."""

from __future__ import annotations

import logging
import os
import signal
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_statemigrate.effects import ProjectModules, Snapshot


@pytest.fixture
def project(tmp_path: Path) -> Iterator[types.ModuleType]:
    """A project module, as if imported from tmp_path."""
    module = types.ModuleType("sm_project_mod")
    module.__file__ = str(tmp_path / "sm_project_mod.py")
    module.SETTING = 1
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _effect_of(
    change: Callable[[], None], modules: Callable[[], list[types.ModuleType]]
) -> str | None:
    before = Snapshot.take(modules)
    change()
    return before.changed()


def test_each_kind_of_effect_is_named(
    project: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = ProjectModules(str(tmp_path))
    monkeypatch.delenv("SM_X", raising=False)
    assert _effect_of(lambda: os.environ.__setitem__("SM_X", "1"), modules) == (
        "sets the environment variable SM_X"
    )
    assert _effect_of(lambda: os.environ.__delitem__("SM_X"), modules) == (
        "unsets the environment variable SM_X"
    )
    monkeypatch.chdir(tmp_path)
    assert _effect_of(lambda: os.chdir(tmp_path.parent), modules) == "changes the current directory"
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert _effect_of(lambda: sys.path.insert(0, "x"), modules) == "changes sys.path"
    with warnings.catch_warnings():
        assert _effect_of(lambda: warnings.simplefilter("ignore"), modules) == (
            "changes the warnings filters"
        )
    old = signal.getsignal(signal.SIGUSR2)
    try:
        assert _effect_of(lambda: signal.signal(signal.SIGUSR2, lambda *a: None), modules) == (
            "sets a handler for SIGUSR2"
        )
    finally:
        signal.signal(signal.SIGUSR2, old)
    logger = logging.getLogger("sm.effects.test")
    handler = logging.NullHandler()
    try:
        assert _effect_of(lambda: logger.addHandler(handler), modules) == (
            "changes the handlers of 'sm.effects.test'"
        )
        assert _effect_of(lambda: logger.setLevel(logging.DEBUG), modules) == (
            "changes the level of 'sm.effects.test'"
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert _effect_of(lambda: setattr(project, "SETTING", 2), modules) == (
        "rebinds sm_project_mod.SETTING"
    )
    assert _effect_of(lambda: setattr(project, "NEW", 2), modules) == "sets sm_project_mod.NEW"
    assert _effect_of(lambda: delattr(project, "NEW"), modules) == "deletes sm_project_mod.NEW"


def test_what_is_put_back_or_only_imported_is_no_effect(
    project: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = ProjectModules(str(tmp_path))
    monkeypatch.delenv("SM_Y", raising=False)

    def tidy() -> None:
        os.environ["SM_Y"] = "1"
        del os.environ["SM_Y"]
        project.sub = types.ModuleType("sm_project_mod.sub")  # an import binds a submodule
        logging.getLogger("sm.effects.fresh")  # a logger made, not configured
        project.__warningregistry__ = {}  # a warning raised from the module

    assert _effect_of(tidy, modules) is None


def test_project_modules_are_those_below_the_rootdir(tmp_path: Path) -> None:
    def module(name: str, path: Path | None) -> types.ModuleType:
        made = types.ModuleType(name)
        if path is not None:
            made.__file__ = str(path)
        return made

    made = {
        "sm_mine": module("sm_mine", tmp_path / "mine.py"),
        "sm_venv": module("sm_venv", tmp_path / ".venv/lib/site-packages/dep.py"),
        "sm_store": module("sm_store", tmp_path / ".statemigrate" / "x.py"),
        "sm_elsewhere": module("sm_elsewhere", tmp_path.parent / "other.py"),
        "sm_builtin": module("sm_builtin", None),
    }
    for name, mod in made.items():
        sys.modules[name] = mod
    try:
        found = ProjectModules(str(tmp_path), [str(tmp_path / ".statemigrate")])()
        assert [m.__name__ for m in found if m.__name__.startswith("sm_")] == ["sm_mine"]
    finally:
        for name in made:
            del sys.modules[name]
