"""What happened in a run: counters, the terminal summary and the JSON stats.

Pure: the plugin feeds :class:`RunStats` and asks it for lines; workers' stats merge into the
controller's with :meth:`RunStats.merge`. Fixtures are identified by where they are defined
(``conftest.py::dataset``), so two fixtures of one name never clobber each other; the summary
shows the bare name unless two fixtures of the run share it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

#: Names listed in one grouped summary line before "and N more".
GROUP_NAMES: Final = 4


@dataclass
class FixtureCounts:
    """One fixture's share of a run's counters (what the run report shows per fixture)."""

    builds: int = 0
    build_seconds: float = 0.0
    hits: Counter[str] = field(default_factory=Counter)  # by tier
    load_seconds: float = 0.0
    saved_seconds: float = 0.0  # sum over its hits of (build seconds - load seconds)
    bytes_loaded: int = 0
    bytes_stored: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "builds": self.builds,
            "build_seconds": round(self.build_seconds, 6),
            "hits": dict(sorted(self.hits.items())),
            "load_seconds": round(self.load_seconds, 6),
            "saved_seconds": round(self.saved_seconds, 6),
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FixtureCounts:
        return cls(
            builds=int(data.get("builds", 0)),
            build_seconds=float(data.get("build_seconds", 0.0)),
            hits=Counter({str(t): int(n) for t, n in dict(data.get("hits", {})).items()}),
            load_seconds=float(data.get("load_seconds", 0.0)),
            saved_seconds=float(data.get("saved_seconds", 0.0)),
            bytes_loaded=int(data.get("bytes_loaded", 0)),
            bytes_stored=int(data.get("bytes_stored", 0)),
        )

    def merge(self, other: FixtureCounts) -> None:
        self.builds += other.builds
        self.build_seconds += other.build_seconds
        self.hits.update(other.hits)
        self.load_seconds += other.load_seconds
        self.saved_seconds += other.saved_seconds
        self.bytes_loaded += other.bytes_loaded
        self.bytes_stored += other.bytes_stored


@dataclass
class RunStats:
    """Counters of one run (or of one xdist worker, before merging)."""

    names: dict[str, str] = field(default_factory=dict)  # fixture id → fixture name
    managed: set[str] = field(default_factory=set)  # fixture ids
    hits: Counter[str] = field(default_factory=Counter)  # by tier: ram, disk, store
    builds: int = 0
    stale: dict[str, str] = field(default_factory=dict)  # fixture id → the input that changed
    waited: int = 0  # values another process was building, waited for instead of built
    bytes_loaded: int = 0
    bytes_stored: int = 0
    build_seconds: float = 0.0
    load_seconds: float = 0.0
    store_seconds: float = 0.0
    saved_seconds: float = 0.0  # sum over hits of (build seconds - load seconds)
    #: wall seconds the plugin's own work took in managed setups (keys, lookups, loads,
    #: checks, stores): what a hit's saving must pay for
    plugin_seconds: float = 0.0
    refused: dict[str, str] = field(default_factory=dict)  # fixture id → why it runs unmanaged
    built_instead: dict[str, str] = field(default_factory=dict)  # fixture id → why it is built
    fallbacks: dict[str, int] = field(default_factory=dict)  # trouble → how often
    prefetched: int = 0  # keys sent in PREFETCH or MIGRATE before the tests needing them
    prefetch_bytes: int = 0  # bytes the agent loaded for them (single process only)
    prefetch_used_bytes: int = 0  # of those, bytes a GET then served
    planned: dict[str, Any] = field(default_factory=dict)  # the plan's own measures
    #: lines about the run's configuration (an option that selects nothing), each said once
    notes: list[str] = field(default_factory=list)
    #: xdist's controller: each worker's net saving, as merged (they ran side by side, so
    #: the sum is build time saved, not wall time)
    worker_saved: list[float] = field(default_factory=list)
    #: fixture id → its share of the counters above
    per_fixture: dict[str, FixtureCounts] = field(default_factory=dict)

    def fixture(self, ident: str, name: str) -> str:
        """Note a fixture's name; returns ``ident`` for chaining."""
        self.names[ident] = name
        return ident

    def _counts(self, ident: str) -> FixtureCounts:
        counts = self.per_fixture.get(ident)
        if counts is None:
            counts = self.per_fixture[ident] = FixtureCounts()
        return counts

    def count_hit(self, ident: str, tier: str, nbytes: int, load_s: float, build_s: float) -> None:
        """A value of fixture ``ident`` was served from ``tier``."""
        counts = self._counts(ident)
        self.hits[tier] += 1
        counts.hits[tier] += 1
        self.bytes_loaded += nbytes
        counts.bytes_loaded += nbytes
        self.load_seconds += load_s
        counts.load_seconds += load_s
        self.saved_seconds += build_s - load_s
        counts.saved_seconds += build_s - load_s

    def count_build(self, ident: str, seconds: float) -> None:
        """A value of fixture ``ident`` was built, in ``seconds``."""
        counts = self._counts(ident)
        self.builds += 1
        counts.builds += 1
        self.build_seconds += seconds
        counts.build_seconds += seconds

    def count_store(self, ident: str, nbytes: int, seconds: float) -> None:
        """A built value of fixture ``ident`` was stored."""
        self.bytes_stored += nbytes
        self._counts(ident).bytes_stored += nbytes
        self.store_seconds += seconds

    def fallback(self, message: str) -> None:
        self.fallbacks[message] = self.fallbacks.get(message, 0) + 1

    def note(self, line: str) -> None:
        """A line about the run's configuration; said once however often it is noted."""
        if line not in self.notes:
            self.notes.append(line)

    def label(self, ident: str) -> str:
        """The fixture's name, with where it is defined when another fixture shares the name:
        its file, or its file and class when the other one is in the same file."""
        name = self.names.get(ident, ident)
        twins = [i for i, n in self.names.items() if n == name and i != ident]
        if not twins:
            return name
        path, _, qualname = ident.rpartition("::")
        owner = qualname.rpartition(".")[0]
        same_file = any(i.rpartition("::")[0] == path for i in twins)
        return f"{name} ({path}::{owner})" if same_file and owner else f"{name} ({path})"

    def _labels(self, idents: Iterable[str]) -> list[str]:
        return sorted(self.label(i) for i in idents)

    def to_json(self) -> dict[str, Any]:
        return {
            "names": dict(sorted(self.names.items())),
            "managed": self._labels(self.managed),
            "managed_ids": sorted(self.managed),
            "hits": dict(self.hits),
            "hits_total": sum(self.hits.values()),
            "builds": self.builds,
            "stale": _by_label(self, self.stale),
            "waited": self.waited,
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
            "build_seconds": round(self.build_seconds, 6),
            "load_seconds": round(self.load_seconds, 6),
            "store_seconds": round(self.store_seconds, 6),
            "saved_seconds": round(self.saved_seconds, 6),
            "plugin_seconds": round(self.plugin_seconds, 6),
            "net_saved_seconds": round(self.net_saved(), 6),
            "refused": _by_label(self, self.refused),
            "refused_ids": dict(sorted(self.refused.items())),
            "built_instead": _by_label(self, self.built_instead),
            "built_instead_ids": dict(sorted(self.built_instead.items())),
            "stale_ids": dict(sorted(self.stale.items())),
            "fallbacks": dict(self.fallbacks),
            "prefetched": self.prefetched,
            "prefetch_bytes": self.prefetch_bytes,
            "prefetch_used_bytes": self.prefetch_used_bytes,
            "planned": dict(self.planned),
            "notes": list(self.notes),
            "worker_saved_seconds": [round(w, 6) for w in self.worker_saved],
            "per_fixture": {i: c.to_json() for i, c in sorted(self.per_fixture.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStats:
        return cls(
            names=dict(data["names"]),
            managed=set(data["managed_ids"]),
            hits=Counter(data["hits"]),
            builds=data["builds"],
            stale=dict(data["stale_ids"]),
            waited=data["waited"],
            bytes_loaded=data["bytes_loaded"],
            bytes_stored=data["bytes_stored"],
            build_seconds=data["build_seconds"],
            load_seconds=data["load_seconds"],
            store_seconds=data["store_seconds"],
            saved_seconds=data["saved_seconds"],
            plugin_seconds=float(data.get("plugin_seconds", 0.0)),
            refused=dict(data["refused_ids"]),
            built_instead=dict(data["built_instead_ids"]),
            fallbacks=dict(data["fallbacks"]),
            prefetched=int(data.get("prefetched", 0)),
            prefetch_bytes=int(data.get("prefetch_bytes", 0)),
            prefetch_used_bytes=int(data.get("prefetch_used_bytes", 0)),
            planned=dict(data.get("planned", {})),
            notes=list(data.get("notes", [])),
            worker_saved=[float(w) for w in data.get("worker_saved_seconds", [])],
            per_fixture={
                str(i): FixtureCounts.from_json(c)
                for i, c in dict(data.get("per_fixture", {})).items()
            },
        )

    def merge(self, other: RunStats) -> None:
        self.names.update(other.names)
        self.managed |= other.managed
        self.hits.update(other.hits)
        self.builds += other.builds
        self.stale.update(other.stale)
        self.waited += other.waited
        self.bytes_loaded += other.bytes_loaded
        self.bytes_stored += other.bytes_stored
        self.build_seconds += other.build_seconds
        self.load_seconds += other.load_seconds
        self.store_seconds += other.store_seconds
        self.saved_seconds += other.saved_seconds
        self.plugin_seconds += other.plugin_seconds
        self.refused.update(other.refused)
        self.built_instead.update(other.built_instead)
        for message, count in other.fallbacks.items():
            self.fallbacks[message] = self.fallbacks.get(message, 0) + count
        self.prefetched += other.prefetched
        self.prefetch_bytes += other.prefetch_bytes
        self.prefetch_used_bytes += other.prefetch_used_bytes
        for line in other.notes:
            self.note(line)
        self.worker_saved.extend(other.worker_saved or [other.net_saved()])
        for ident, counts in other.per_fixture.items():
            self._counts(ident).merge(counts)

    def net_saved(self) -> float:
        """Seconds of building the hits saved, less what the plugin's work in managed setups
        cost beyond the loads themselves (negative: the plugin cost more than it saved)."""
        return self.saved_seconds - max(0.0, self.plugin_seconds - self.load_seconds)

    def is_empty(self) -> bool:
        return not (self.managed or self.refused or self.fallbacks or self.notes)

    def lines(self) -> list[str]:
        """The terminal summary, one fact a line; refusals grouped by reason. A run that
        managed, refused and built nothing (its store could not be used) has only the lines
        saying why: no counters of zeros."""
        if not (self.managed or self.refused or self.builds or self.hits or self.stale):
            return self.notes + self._fallback_lines()
        hits = sum(self.hits.values())
        by_tier = ", ".join(f"{tier} {n}" for tier, n in sorted(self.hits.items()))
        managed = self._labels(self.managed)
        saved = self.net_saved()
        # A rebuild whose value was then refused is said once, as the refusal.
        stale = {i: why for i, why in self.stale.items() if i not in self.refused}
        out = [
            f"managed fixtures: {len(managed)}" + (f" ({', '.join(managed)})" if managed else ""),
            f"hits: {hits}"
            + (f" ({by_tier})" if by_tier else "")
            + f"; builds: {self.builds}"
            + (f" ({len(stale)} rebuilt: why below)" if stale else "")
            + (f"; waited for another worker's build: {self.waited}" if self.waited else ""),
            f"loaded {_size(self.bytes_loaded)} in {self.load_seconds:.2f}s; "
            f"stored {_size(self.bytes_stored)} in {self.store_seconds:.2f}s; "
            f"built in {self.build_seconds:.2f}s; "
            + _saving(saved, hits, self.plugin_seconds, len(self.worker_saved)),
        ]
        # A prefetch that loaded nothing ahead on a run that loaded nothing (a cold run: the
        # agent had none of the values asked) made no difference: no line for it.
        if self.prefetched and (hits or self.prefetch_bytes):
            line = f"prefetched {self.prefetched} value(s) before the tests that need them"
            if self.prefetch_bytes:
                used = self.prefetch_used_bytes / self.prefetch_bytes
                line += f": {_size(self.prefetch_bytes)} loaded ahead, {used:.0%} of it used"
            out.append(line)
        out += [f"rebuilt {names}: {why}" for why, names, _ in self._grouped(stale)]
        out += [
            f"refused {names}: {why}; {'they run' if n > 1 else 'it runs'} unmanaged"
            for why, names, n in self._grouped(self.refused)
        ]
        out += [
            f"built {names} in-process: {why}"
            for why, names, _ in self._grouped(self.built_instead)
        ]
        return out + self.notes + self._fallback_lines()

    def _fallback_lines(self) -> list[str]:
        return [
            f"fallback: {message}" + (f" (x{count})" if count > 1 else "")
            for message, count in self.fallbacks.items()
        ]

    def _grouped(self, reasons: Mapping[str, str]) -> list[tuple[str, str, int]]:
        """(reason, "a, b, c and 4 more", count) for each distinct reason, by reason."""
        groups: dict[str, list[str]] = {}
        for ident, why in reasons.items():
            groups.setdefault(why, []).append(self.label(ident))
        out = []
        for why, labels in sorted(groups.items()):
            labels.sort()
            shown = ", ".join(labels[:GROUP_NAMES])
            rest = len(labels) - GROUP_NAMES
            out.append((why, shown + (f" and {rest} more" if rest > 0 else ""), len(labels)))
        return out

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def _saving(net: float, hits: int, plugin_seconds: float, workers: int = 0) -> str:
    """The summary's claim: never a saving the run did not make (see RunStats.net_saved).
    Under xdist the workers' savings add up to build time, not wall time: the line says how
    much wall time that is when the workers share the work evenly."""
    if not hits:
        return f"the plugin's own work took {plugin_seconds:.2f}s"
    if net >= 0:
        if workers > 1:
            return (
                f"saved ~{net:.2f}s of building across {workers} workers "
                f"(~{net / workers:.2f}s of wall time if they share the work evenly)"
            )
        return f"saved ~{net:.2f}s"
    return f"loading and checking cost ~{-net:.2f}s more than building would have"


def _by_label(stats: RunStats, reasons: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted((stats.label(i), why) for i, why in reasons.items()))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
