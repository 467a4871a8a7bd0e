"""What one run records in memory (the ESG's first half; docs/esg.md): elements (values of
managed fixtures, by state key) with size and timings, accesses (test, element, read or
write), and the setups of unmanaged fixtures. Every recording call is an O(1) append or dict
update. A record is plain data: xdist workers send :meth:`SessionRecord.to_json` through
``workeroutput`` and the controller folds them in with :meth:`SessionRecord.merge`."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

Mode = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Element:
    """One state element: a value of a managed fixture, named by its state key.

    ``build_s`` / ``load_s`` are None when this run did not build / load it.
    """

    key: str
    fixture: str  # a readable label, e.g. "conftest.py::model[short]"
    scope: str
    nbytes: int
    build_s: float | None = None
    load_s: float | None = None


class Access(NamedTuple):
    """A test read an element (its setup got the value) or wrote it (mutated the value).

    A named tuple: the recorder makes one or more per test, and this is the cheapest hashable
    record to make (about a third of a frozen dataclass's cost).
    """

    test: str  # node id
    element: str  # state key
    mode: Mode


@dataclass(slots=True)
class FixtureSetup:
    """An unmanaged fixture in one session: what its setups cost and how many tests used it."""

    fixture: str  # label
    scope: str
    seconds: float = 0.0  # total setup seconds
    setups: int = 0
    tests: int = 0
    picklable: bool | None = None  # None: not checked


@dataclass
class SessionRecord:
    """What one run (or one xdist worker) recorded, in memory."""

    id: str
    started: float  # time.time() when the session started
    host: str
    elements: dict[str, Element] = field(default_factory=dict)
    accesses: list[Access] = field(default_factory=list)
    setups: dict[str, FixtureSetup] = field(default_factory=dict)
    #: node id → the test's own seconds: setup, call and teardown, less the managed values'
    #: builds and loads (which the shard plan counts per element, where they are paid)
    durations: dict[str, float] = field(default_factory=dict)
    #: fixture label → why it was refused in this session (``auto`` declines it later)
    refused: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls) -> SessionRecord:
        """A record for a session starting now on this host, with a fresh id."""
        return cls(uuid.uuid4().hex, time.time(), socket.gethostname())

    # The recording calls: O(1) each, on the hot path of every test.

    def element(
        self,
        key: str,
        fixture: str,
        scope: str,
        nbytes: int,
        build_s: float | None = None,
        load_s: float | None = None,
    ) -> None:
        """Describe an element; timings already known for it are kept when these are None."""
        new = Element(key, fixture, scope, nbytes, build_s, load_s)
        old = self.elements.get(key)
        self.elements[key] = new if old is None else _combine(old, new)

    def duration(self, test: str, seconds: float) -> None:
        self.durations[test] = self.durations.get(test, 0.0) + max(0.0, seconds)

    def read(self, test: str, key: str) -> None:
        self.accesses.append(Access(test, key, "read"))

    def write(self, test: str, key: str) -> None:
        self.accesses.append(Access(test, key, "write"))

    def setup(
        self, fixture: str, scope: str, seconds: float, picklable: bool | None = None
    ) -> None:
        """One setup of an unmanaged fixture took ``seconds``."""
        entry = self._fixture(fixture, scope)
        entry.seconds += seconds
        entry.setups += 1
        entry.picklable = _picklable(entry.picklable, picklable)

    def use(self, fixture: str, scope: str) -> None:
        """One more test used an unmanaged fixture: call once per test and fixture."""
        self._fixture(fixture, scope).tests += 1

    def _fixture(self, fixture: str, scope: str) -> FixtureSetup:
        entry = self.setups.get(fixture)
        if entry is None:
            entry = self.setups[fixture] = FixtureSetup(fixture, scope)
        return entry

    def merge(self, other: SessionRecord) -> None:
        """Fold in another worker's record of the same run (this record keeps its id).

        Elements combine by key (known sizes and timings kept), accesses are united, fixture
        setups are summed by fixture.
        """
        for key, element in other.elements.items():
            old = self.elements.get(key)
            self.elements[key] = element if old is None else _combine(old, element)
        self.accesses = list(dict.fromkeys([*self.accesses, *other.accesses]))
        for name, theirs in other.setups.items():
            mine = self._fixture(name, theirs.scope)
            mine.seconds += theirs.seconds
            mine.setups += theirs.setups
            mine.tests += theirs.tests
            mine.picklable = _picklable(mine.picklable, theirs.picklable)
        for test, seconds in other.durations.items():
            self.duration(test, seconds)
        self.refused.update(other.refused)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (what execnet and ``json`` can carry)."""
        return {
            "id": self.id,
            "started": self.started,
            "host": self.host,
            "elements": [asdict(e) for e in self.elements.values()],
            "accesses": [list(a) for a in self.accesses],
            "setups": [asdict(s) for s in self.setups.values()],
            "durations": self.durations,
            "refused": self.refused,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionRecord:
        return cls(
            id=data["id"],
            started=data["started"],
            host=data["host"],
            elements={e["key"]: Element(**e) for e in data["elements"]},
            accesses=[Access(*a) for a in data["accesses"]],
            setups={s["fixture"]: FixtureSetup(**s) for s in data["setups"]},
            durations=dict(data.get("durations", {})),
            refused=dict(data.get("refused", {})),
        )


def _combine(old: Element, new: Element) -> Element:
    """``new``, keeping what only ``old`` knew (a label, timings) and the larger size."""
    return Element(
        new.key,
        new.fixture or old.fixture,
        new.scope or old.scope,
        max(old.nbytes, new.nbytes),
        old.build_s if new.build_s is None else new.build_s,
        old.load_s if new.load_s is None else new.load_s,
    )


def _picklable(a: bool | None, b: bool | None) -> bool | None:
    """Unknown unless checked; one failed check makes it not picklable."""
    if a is None or b is None:
        return b if a is None else a
    return a and b


# --------------------------------------------------------------------------- query results
