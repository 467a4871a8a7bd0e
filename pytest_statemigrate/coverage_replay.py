"""Coverage of managed builds: what a build ran, replayed into the measurement on every hit.

A hit does not run the fixture's code, so under coverage.py (pytest-cov, ``coverage run``) the
lines its build ran would be missing from a warm run's report. While a value that is to be
stored builds under an active measurement, :func:`recording` switches coverage to a dynamic
context of the plugin's own (``statemigrate:<fixture>``), so that afterwards that context holds
exactly the lines (arcs, under branch coverage) the build ran, already run or not; it reads
them from the measurement's data, adds them to the context the test had (where a plain run has
them: ``--cov-context=test`` keeps working) and restores that context. The lines travel in the
entry's meta, per file relative to the rootdir, with the file's digest; :func:`replay` adds them
to the current measurement, in the test's context, on every hit (in xdist workers too:
pytest-cov combines the workers' data).

A value that cannot replay what the current measurement needs is not served short: an entry
stored without coverage, with line coverage under branch coverage, under another configuration
of what is measured (source, include, omit, ...) or whose recorded files changed since is
rebuilt once and stored again (:func:`stale`). Where the measurement cannot record a build
(coverage.py before 7.16, ``dynamic_context`` set, the ``sysmon`` core, the default on Python
3.14, which reports a line only the first time it runs), managed values are built in-process
while coverage measures (:func:`unsupported`).

When nothing measures, nothing here runs and coverage is never imported (:func:`measuring`).
The recording wraps the build's input recorder (inputs.py) rather than sitting inside it: what
coverage reads and writes to record (its data file, the digests of the recorded files) must not
count as what the build read or wrote. Lines other threads run during a build are recorded with
it (coverage's context is the process's); the plugin's own files are left out.

Rejected: reading the collector's pending data (``Coverage._collector``) instead of switching
contexts would leave no ``statemigrate:`` context in a cold run's data, but it is private and
its format differs by core (packed arcs in the C tracer). The leftover context is the price:
totals and missing lines are unaffected; an HTML report with ``--show-contexts`` lists it
next to the test's on the lines a cold run built.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .keys import FileDigests

#: ``Coverage.switch_context`` returns the previous context from this version on.
MIN_VERSION: Final = (7, 16)
CONTEXT_PREFIX: Final = "statemigrate:"
#: Options that decide which files a measurement records (branch is the record's mode).
_MEASURED: Final = (
    "run:source",
    "run:source_pkgs",
    "run:source_dirs",
    "run:include",
    "run:omit",
    "run:cover_pylib",
    "run:plugins",
)
#: The plugin's own files: a build's window runs some of them (the audit hook, the recorder),
#: which are not the fixture's lines.
_OWN_DIRS: Final = tuple(
    os.path.realpath(Path(__file__).resolve().parent.parent / name) + os.sep
    for name in ("pytest_statemigrate", "nodeagent")
)

#: Coverage instance → its CoverageData (read once: ``get_data`` also scans the source tree).
_DATA: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_CONTEXTS: set[str] = set()  # the build contexts used in this process (each build its own)


def measuring() -> Any | None:
    """The running coverage.py measurement (``Coverage.current()``), or None.

    Nothing measures unless coverage is imported: it is never imported here."""
    module = sys.modules.get("coverage")
    if module is None:
        return None
    current = getattr(getattr(module, "Coverage", None), "current", None)
    return current() if callable(current) else None


def unsupported(cov: Any) -> str | None:
    """Why ``cov`` cannot record what a build runs, or None when it can."""
    version = tuple(getattr(sys.modules.get("coverage"), "version_info", (0,))[:2])
    if version < MIN_VERSION:
        return f"coverage.py {'.'.join(map(str, version))} is older than 7.16"
    if _option(cov, "run:dynamic_context"):
        return "coverage.py's dynamic_context is set"
    # (Private, read-only: the core decides whether contexts can be switched; an unknown
    # layout counts as "cannot", which builds values rather than serving them short.)
    if not getattr(getattr(cov, "_core", None), "supports_dynamic_contexts", False):
        return "its coverage.py core cannot switch contexts (COVERAGE_CORE=ctrace can)"
    return None


def why_not_served(cov: Any) -> str:
    """The summary's reason for building managed values in-process under ``cov``."""
    return f"coverage measures this run and cannot record what a build runs: {unsupported(cov)}"


@dataclass(frozen=True)
class Measurement:
    """What a record must match to be replayed: lines or arcs, and which files are measured."""

    mode: str  # "lines" | "arcs"
    config: str  # digest of the options that select the measured files

    @classmethod
    def of(cls, cov: Any, rootdir: Path) -> Measurement:
        options = {name: _option(cov, name) for name in _MEASURED}
        # Relative sources and patterns are taken from the directory coverage started in.
        cwd = _start_dir()
        try:
            where = os.path.relpath(cwd, rootdir).replace(os.sep, "/")
        except ValueError:  # another drive on Windows
            where = cwd
        text = json.dumps([options, where], sort_keys=True, default=str)
        return cls(
            mode="arcs" if _option(cov, "run:branch") else "lines",
            config=hashlib.sha256(text.encode()).hexdigest()[:16],
        )


@dataclass
class Recording:
    """What one build ran under coverage, set when :func:`recording` ends (None: nothing
    measured, or it could not be read: :attr:`trouble` says why)."""

    record: dict[str, Any] | None = None
    trouble: str | None = None


@contextmanager
def recording(label: str, rootdir: Path, files: FileDigests) -> Iterator[Recording]:
    """Record the lines a build runs, when coverage measures (see the module docstring).

    :param label: names the build's context (the fixture's id and param).
    :param files: digests the recorded files (a record is replayed while they are unchanged).
    """
    rec = Recording()
    cov = measuring()
    if cov is None or unsupported(cov) is not None:
        yield rec
        return
    try:
        previous = cov.switch_context(_fresh_context(label))
    except Exception as exc:
        rec.trouble = f"could not record the coverage of a build ({exc!r})"
        yield rec
        return
    try:
        yield rec
    finally:
        try:
            # Flushes the build's lines into its context, then back to the test's.
            ours = cov.switch_context(_dynamic(cov, previous))
            data = _data(cov)
            executed = _read(data, ours)
            _add(cov, data, executed)  # where plain pytest has them: the test's context
            rec.record = _to_record(executed, Measurement.of(cov, rootdir), rootdir, files)
        except Exception as exc:
            rec.trouble = f"could not record the coverage of a build ({exc!r})"


def stale(record: Any, cov: Any, rootdir: Path, files: FileDigests) -> str | None:
    """Why a stored coverage record cannot be replayed into ``cov`` (None: it can)."""
    if not isinstance(record, Mapping):
        return "it was stored without coverage data, and coverage measures this run"
    now = Measurement.of(cov, rootdir)
    if record.get("mode") == "lines" and now.mode == "arcs":
        return "it was stored with line coverage, and this run measures branches"
    if record.get("config") != now.config:
        return "it was stored under another coverage configuration (source, include, omit)"
    try:
        for key, (digest, _) in dict(record.get("files") or {}).items():
            if files.digest(_path(str(key), rootdir)) != digest:
                return f"{key} changed since its build's coverage was recorded"
    except (TypeError, ValueError):  # (signed, so written by a plugin that meant otherwise)
        return "its coverage record is unreadable"
    return None


def checker(
    cov: Any, rootdir: Path, files: FileDigests
) -> Callable[[Mapping[str, Any]], str | None] | None:
    """For a lookup under ``cov``: given an entry's meta, why it cannot be served (None: no
    check, nothing measures)."""
    if cov is None:
        return None
    return lambda meta: stale(meta.get("coverage"), cov, rootdir, files)


def replay(record: Any, rootdir: Path) -> str | None:
    """Add a stored record's lines (or arcs) to the current measurement, in the current
    context: what the build did that coverage would see. Nothing when nothing measures.

    :returns: None, or what went wrong (for the summary: a hit never fails a test)."""
    cov = measuring()
    if cov is None or not isinstance(record, Mapping) or not record.get("files"):
        return None
    try:
        arcs = record.get("mode") == "arcs"
        executed: dict[str, list[Any]] = {}
        for key, (_, numbers) in dict(record["files"]).items():
            name = _mapped(cov, _path(key, rootdir))
            if arcs:
                executed[name] = list(zip(numbers[::2], numbers[1::2], strict=True))
            else:
                executed[name] = list(numbers)
        _add(cov, _data(cov), executed, arcs=arcs)
    except Exception as exc:
        return f"could not replay the coverage of a stored build ({exc!r})"
    return None


# -- helpers -----------------------------------------------------------------------------------
def _option(cov: Any, name: str) -> Any:
    try:
        return cov.get_option(name)
    except Exception:  # an option this coverage.py does not know
        return None


def _fresh_context(label: str) -> str:
    name, n = CONTEXT_PREFIX + label, 1
    while name in _CONTEXTS:  # (built again in this process: --sm-refresh, a rebuild)
        n += 1
        name = f"{CONTEXT_PREFIX}{label}#{n}"
    _CONTEXTS.add(name)
    return name


def _dynamic(cov: Any, full: str | None) -> str:
    """The dynamic part of a full context name (coverage prefixes a static context)."""
    static = _option(cov, "run:context")
    if not full:
        return ""
    if static:
        if full == static:
            return ""
        if full.startswith(static + "|"):
            return full[len(static) + 1 :]
    return full


def _data(cov: Any) -> Any:
    """``cov``'s CoverageData, the object its collector writes to. ``get_data`` is asked once:
    it also looks for unexecuted source files, and may warn about what it finds (as it does
    again when the data is saved): a test must not see that."""
    data = _DATA.get(cov)
    if data is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = cov.get_data()
        _DATA[cov] = data
    return data


def _read(data: Any, context: str | None) -> dict[str, list[Any]]:
    """Lines (or arcs) of each measured file in one context, the plugin's own files aside."""
    arcs = data.has_arcs()
    out: dict[str, list[Any]] = {}
    data.set_query_context(context or "")
    try:
        for name in data.measured_files():
            if _absolute(name).startswith(_OWN_DIRS):
                continue
            got = data.arcs(name) if arcs else data.lines(name)
            if got:
                out[name] = got
    finally:
        data.set_query_contexts(None)
    return out


def _add(cov: Any, data: Any, executed: Mapping[str, list[Any]], arcs: bool | None = None) -> None:
    """Add lines or arcs to ``data`` in its current context; arcs under line coverage become
    the lines they join (as coverage.py reads them)."""
    if not executed:
        return
    if arcs is None:
        arcs = bool(data.has_arcs())
    if _option(cov, "run:branch"):
        if arcs:
            data.add_arcs({name: [tuple(a) for a in got] for name, got in executed.items()})
        return  # (line records under branch coverage are stale: never replayed here)
    if arcs:
        executed = {
            name: sorted({n for arc in got for n in arc if n > 0}) for name, got in executed.items()
        }
    data.add_lines(executed)


def _to_record(
    executed: Mapping[str, list[Any]], now: Measurement, rootdir: Path, files: FileDigests
) -> dict[str, Any]:
    """The entry's meta: per file (rootdir-relative where it can be), its digest and its
    sorted line numbers (arcs as a flat list of pairs)."""
    out: dict[str, list[Any]] = {}
    for name, got in executed.items():
        path = _absolute(name)
        numbers = [n for arc in sorted(got) for n in arc] if now.mode == "arcs" else sorted(got)
        out[_key(path, rootdir)] = [files.digest(path), numbers]
    return {"mode": now.mode, "config": now.config, "files": out}


def _absolute(name: str) -> str:
    """A data file name as an absolute path (``relative_files`` names are relative to the
    directory coverage started in)."""
    return name if os.path.isabs(name) else os.path.join(_start_dir(), name)


def _start_dir() -> str:
    """The working directory coverage started in (it resolves relative names from there)."""
    return str(getattr(sys.modules.get("coverage.files"), "RELATIVE_DIR", "") or os.getcwd())


def _key(path: str, rootdir: Path) -> str:
    root = os.path.realpath(rootdir) + os.sep
    real = os.path.realpath(path)
    if real.startswith(root):
        return real[len(root) :].replace(os.sep, "/")
    return real


def _path(key: str, rootdir: Path) -> str:
    return key if os.path.isabs(key) else os.path.join(os.path.realpath(rootdir), key)


def _mapped(cov: Any, path: str) -> str:
    """``path`` named as ``cov`` names measured files."""
    # (Imported by now: ``cov`` is running. By name, so that type checks need no coverage.)
    files = importlib.import_module("coverage.files")
    mapper = files.relative_filename if _option(cov, "run:relative_files") else files.abs_file
    return str(mapper(path))
