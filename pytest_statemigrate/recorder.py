"""What each test reads and writes: pytest's view of one test, turned into ESG records.

The session object (session.py) feeds this module fixture setups and test boundaries; it
appends to an :class:`esg.SessionRecord` (O(1) each) and never touches the ESG file, which is
written once at the end of the run. docs/esg.md gives what is recorded and what it costs.

* **Reads.** At the start of a test's teardown every fixture the test used is still set up,
  including those it asked for with ``request.getfixturevalue`` while it ran: each managed one
  is a read of the element its current value is; each unmanaged one counts a use.
* **Writes.** A test that mutates a managed value it was given writes it. Detecting that means
  pickling the value before and after the test and comparing digests, so it is bounded:
  only values whose pickle is at most ``statemigrate_write_check_bytes`` (default 64 KiB, 0 turns
  it off) are checked, each once before (when a test first gets it) and once after every
  test that used it. Function-scoped values are the test's own and are not checked; values
  asked for during the test body have no "before" and are not checked.
* **Unmanaged setups.** Each setup of a plain-return fixture that is not managed is timed, so
  ``statemigrate suggest`` can name the ones worth managing; whether such a value pickles (and
  comes back as it was, as a store would check) is checked once per fixture per run, only when
  one setup took at least 50 ms, and only up to the size limit of stored values.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .codec import dump, quiet
from .esg import SessionRecord
from .fixtures import relative_path, unwrap

SUGGEST_MIN_SECONDS: Final = 0.05  # setups faster than this are not checked for pickling


class _Full(Exception):
    pass


class _CappedSink:
    """A write-only file that counts bytes and gives up past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        if self.size > self.limit:
            raise _Full
        return n


def pickles(value: Any, limit: int) -> bool:
    """Whether ``value`` pickles within ``limit`` bytes and comes back as it was: the verdict
    a managed store would give (codec.dump's fidelity check; the state-key rules aside)."""
    try:
        with quiet():  # the plugin's pickle, not the test's: no warning
            pickle.Pickler(_CappedSink(limit), protocol=5).dump(value)
        dump(value, {})
    except Exception:
        return False
    return True


def fixture_label(fixturedef: Any, rootdir: Path) -> str:
    """``"tests/conftest.py::name"``: where a fixture is defined (its module outside the
    rootdir), as the plugin's summary and the ESG name fixtures."""
    func = unwrap(fixturedef.func)
    code = getattr(func, "__code__", None)
    rel = relative_path(code.co_filename, rootdir) if code is not None else None
    where = rel or getattr(func, "__module__", None) or "?"
    return f"{where}::{getattr(func, '__qualname__', fixturedef.argname)}"


def used_fixturedefs(item: Any) -> Iterator[Any]:
    """The fixture definitions whose values ``item`` got (pytest's request bookkeeping)."""
    request = getattr(item, "_request", None)
    defs: Mapping[str, Any] = getattr(request, "_fixture_defs", None) or {}
    yield from defs.values()


class AccessRecorder:
    """Records one process's accesses into ``record``.

    ``digest_of`` (passed to :meth:`after_test`) pickles a managed fixture's current value as
    the store would (its dependencies by reference) and returns the pickle's digest and size;
    None if it cannot.
    """

    def __init__(
        self,
        record: SessionRecord,
        rootdir: Path,
        write_check_bytes: int,
        max_value_bytes: int,
    ) -> None:
        self.record = record
        self.rootdir = rootdir
        self.write_check_bytes = write_check_bytes
        self.max_value_bytes = max_value_bytes
        self._labels: dict[Any, str] = {}  # fixturedef → label (unmanaged)
        self._checked: set[str] = set()  # unmanaged labels checked for pickling
        #: fixturedef → (key, digest before the current test) for write checks
        self._before: dict[Any, tuple[str, str]] = {}

    def label(self, fixturedef: Any) -> str:
        label = self._labels.get(fixturedef)
        if label is None:
            label = self._labels[fixturedef] = fixture_label(fixturedef, self.rootdir)
        return label

    # -- unmanaged fixtures

    def unmanaged_setup(self, fixturedef: Any, seconds: float, value: Any) -> None:
        if getattr(fixturedef.func, "__name__", "") == "get_direct_param_fixture_func":
            return  # pytest's stand-in for a parametrize argument, not a fixture
        label = self.label(fixturedef)
        picklable: bool | None = None
        if seconds >= SUGGEST_MIN_SECONDS and label not in self._checked:
            self._checked.add(label)
            picklable = pickles(value, self.max_value_bytes)
        self.record.setup(label, fixturedef.scope, seconds, picklable)

    # -- tests

    def checks_writes(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.write_check_bytes

    def before_test(self, fixturedef: Any, key: str, digest: str | None) -> None:
        """Note the digest of a managed value a test is about to get (None: not checked)."""
        if digest is None:
            self._before.pop(fixturedef, None)
        else:
            self._before[fixturedef] = (key, digest)

    def has_before(self, fixturedef: Any, key: str) -> bool:
        before = self._before.get(fixturedef)
        return before is not None and before[0] == key

    def after_test(
        self,
        nodeid: str,
        fixturedefs: list[Any],
        keys: Mapping[Any, str],
        digest_of: Any,
        refused: Collection[str] = (),
    ) -> None:
        """The test ``nodeid`` is over (its fixtures still set up): record its accesses.

        ``keys``: the managed fixtures' current keys; ``refused``: keys of values that are not
        state elements (refused when built). Unmanaged fixtures count a use only once one of
        their setups was timed (so not pytest's parametrize pseudo-fixtures, nor fixtures that
        are selected but refused).
        """
        record = self.record
        for fixturedef in fixturedefs:
            key = keys.get(fixturedef)
            if key is None:
                label = self._labels.get(fixturedef)
                if label is not None:
                    record.use(label, fixturedef.scope)
                continue
            if key in refused:
                continue
            record.read(nodeid, key)
            before = self._before.get(fixturedef)
            if before is None or before[0] != key:
                continue
            now = digest_of(fixturedef)
            if now is not None and now[0] != before[1]:
                record.write(nodeid, key)
                self._before[fixturedef] = (key, now[0])  # the next test gets the mutated value

    def forget(self, fixturedef: Any) -> None:
        """The fixture was torn down: its value is gone."""
        self._before.pop(fixturedef, None)
