"""What a build does to the process besides returning its value.

A hit hands a test the stored value without running the fixture, so anything else the build
did is not done: an environment variable it set, the directory it changed to, an entry it put
on ``sys.path``, a warnings filter, a signal handler, a logging handler or level, a global of a
project module it rebound. Plain pytest's later tests see those effects; with a hit they would
not (DESIGN.md, invariant 3). :class:`Snapshot` takes the process's state before a build and
names the first difference after it; the session refuses such a fixture, naming the effect.

Pure of pytest; each snapshot is a few shallow copies (the environment, ``sys.path``, the
filters, the handlers of every signal and logger, the globals of the project's modules).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

_PKG_DIRS: Final = ("site-packages", "dist-packages")


class ProjectModules:
    """The project's modules (their file below the rootdir, not an installed package's nor
    one of ``exclude``), classified once per module name."""

    def __init__(self, rootdir: str, exclude: Sequence[str] = ()) -> None:
        self._root = os.path.join(os.path.abspath(rootdir), "")
        self._exclude = tuple(os.path.join(os.path.abspath(e), "") for e in exclude)
        self._known: dict[str, bool] = {}

    def __call__(self) -> list[ModuleType]:
        found = []
        for name, module in list(sys.modules.items()):
            mine = self._known.get(name)
            if mine is None:
                mine = self._known[name] = self._is_project(module)
            if mine and module is not None:
                found.append(module)
        return found

    def _is_project(self, module: ModuleType | None) -> bool:
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            return False
        path = os.path.abspath(path)
        if not path.startswith(self._root) or path.startswith(self._exclude):
            return False
        return not any(part in _PKG_DIRS for part in path[len(self._root) :].split(os.sep))


def _logger_state(logger: logging.Logger) -> tuple[Any, ...]:
    return (tuple(logger.handlers), logger.level, logger.propagate, logger.disabled)


@dataclass
class Snapshot:
    env: dict[str, str]
    cwd: str
    path: list[str]
    filters: list[Any]
    signals: dict[int, Any]
    loggers: dict[str, tuple[Any, ...]]
    disable: int
    modules: dict[str, tuple[ModuleType, dict[str, Any]]]

    @classmethod
    def take(cls, modules: Callable[[], Sequence[ModuleType]] | None = None) -> Snapshot:
        manager = logging.Logger.manager
        loggers = {
            name: _logger_state(lg)
            for name, lg in list(manager.loggerDict.items())
            if isinstance(lg, logging.Logger)
        }
        loggers[""] = _logger_state(logging.root)
        return cls(
            env=dict(os.environ),
            cwd=_cwd(),
            path=list(sys.path),
            filters=list(warnings.filters),
            signals={s: signal.getsignal(s) for s in _signals()},
            loggers=loggers,
            disable=manager.disable,
            modules={m.__name__: (m, dict(vars(m))) for m in (modules() if modules else ())},
        )

    def changed(self) -> str | None:
        """The first effect the process shows since this snapshot, in words (``"sets the
        environment variable SEED"``), or None."""
        now = Snapshot.take()
        return (
            _env(self.env, now.env)
            or ("changes the current directory" if now.cwd != self.cwd else None)
            or ("changes sys.path" if now.path != self.path else None)
            or ("changes the warnings filters" if now.filters != self.filters else None)
            or _signal(self.signals, now.signals)
            or _logging(self.loggers, now.loggers)
            or ("calls logging.disable" if now.disable != self.disable else None)
            or _globals(self.modules)
        )


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # (removed under us)
        return ""


def _signals() -> list[int]:
    valid = getattr(signal, "valid_signals", None)
    return sorted(int(s) for s in valid()) if valid is not None else []


def _env(before: Mapping[str, str], after: Mapping[str, str]) -> str | None:
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) == after.get(name):
            continue
        if name not in after:
            return f"unsets the environment variable {name}"
        return f"sets the environment variable {name}"
    return None


def _signal(before: Mapping[int, Any], after: Mapping[int, Any]) -> str | None:
    for number, handler in after.items():
        if handler != before.get(number, handler):
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = str(number)
            return f"sets a handler for {name}"
    return None


def _logging(
    before: Mapping[str, tuple[Any, ...]], after: Mapping[str, tuple[Any, ...]]
) -> str | None:
    fresh = ((), logging.NOTSET, True, False)  # a logger made since: as getLogger makes it
    for name, state in after.items():
        old = before.get(name, fresh)
        if state == old:
            continue
        shown = repr(name) if name else "the root logger"
        if state[0] != old[0]:
            return f"changes the handlers of {shown}"
        if state[1] != old[1]:
            return f"changes the level of {shown}"
        return f"configures {shown}"
    return None


def _globals(before: Mapping[str, tuple[ModuleType, dict[str, Any]]]) -> str | None:
    for name, (module, names) in before.items():
        now = vars(module)
        for attr in sorted(names.keys() | now.keys()):
            if attr.startswith("__"):  # (__warningregistry__, __builtins__, ...)
                continue
            if attr not in now:
                return f"deletes {name}.{attr}"
            if attr not in names:
                if isinstance(now[attr], ModuleType):
                    continue  # a submodule the build imported: the import system binds it
                return f"sets {name}.{attr}"
            if now[attr] is not names[attr]:
                return f"rebinds {name}.{attr}"
    return None
