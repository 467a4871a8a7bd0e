"""The execution state graph (ESG): which tests read and write which state elements.

Two halves, both pure (no pytest):

* :class:`SessionRecord` is what one run records in memory: elements (values of managed
  fixtures, by state key) with size and timings, accesses (test, element, read or write), and
  the setups of unmanaged fixtures. Every recording call is an O(1) append or dict update. A
  record is plain data: xdist workers send :meth:`SessionRecord.to_json` through
  ``workeroutput`` and the controller folds them in with :meth:`SessionRecord.merge`.
* :class:`ESGStore` is the SQLite file that keeps the last N sessions (``esg.sqlite`` in the
  store directory). It answers the graph (:meth:`ESGStore.to_networkx`), keeps the partition
  metadata the migration engine reads, imports other ESG files (CI shards) and answers the
  queries of the ``statemigrate`` command.

:mod:`.record` and :mod:`.store` hold the two halves; this package names what they export.
Only the standard library is imported at module level; networkx is imported by
:meth:`ESGStore.to_networkx`. docs/esg.md describes the schema, its versioning, the history
bound, concurrency and the graph's attributes.
"""

from __future__ import annotations

from .record import Access, Element, FixtureSetup, Mode, SessionRecord
from .store import (
    BUSY_TIMEOUT_S,
    DEFAULT_HISTORY,
    DEFAULT_LOAD_S,
    MIGRATIONS,
    PAIR_LIMIT,
    ElementInfo,
    ESGError,
    ESGStore,
    GraphData,
    Partition,
    Prediction,
    SessionInfo,
    Suggestion,
    records_state,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "DEFAULT_HISTORY",
    "DEFAULT_LOAD_S",
    "MIGRATIONS",
    "PAIR_LIMIT",
    "Access",
    "ESGError",
    "ESGStore",
    "Element",
    "ElementInfo",
    "FixtureSetup",
    "GraphData",
    "Mode",
    "Partition",
    "Prediction",
    "SessionInfo",
    "SessionRecord",
    "Suggestion",
    "",
    "records_state",
]
