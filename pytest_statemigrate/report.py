"""What happened in a run: counters, the terminal summary and the JSON stats.

Pure: the plugin feeds :class:`RunStats` and asks it for lines; workers' stats merge into the
controller's with :meth:`RunStats.merge`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunStats:
    """Counters of one run (or of one xdist worker, before merging)."""

    managed: set[str] = field(default_factory=set)
    hits: Counter[str] = field(default_factory=Counter)  # by tier: ram, disk, store
    builds: int = 0
    stale: dict[str, str] = field(default_factory=dict)  # fixture → the input that changed
    waited: int = 0  # values another process was building, waited for instead of built
    bytes_loaded: int = 0
    bytes_stored: int = 0
    build_seconds: float = 0.0
    load_seconds: float = 0.0
    store_seconds: float = 0.0
    saved_seconds: float = 0.0  # sum over hits of (build seconds - load seconds)
    refused: dict[str, str] = field(default_factory=dict)  # fixture → why it runs unmanaged
    built_instead: dict[str, str] = field(default_factory=dict)  # fixture → why it is built
    fallbacks: dict[str, int] = field(default_factory=dict)  # trouble → how often

    def fallback(self, message: str) -> None:
        self.fallbacks[message] = self.fallbacks.get(message, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "managed": sorted(self.managed),
            "hits": dict(self.hits),
            "hits_total": sum(self.hits.values()),
            "builds": self.builds,
            "stale": dict(self.stale),
            "waited": self.waited,
            "bytes_loaded": self.bytes_loaded,
            "bytes_stored": self.bytes_stored,
            "build_seconds": round(self.build_seconds, 6),
            "load_seconds": round(self.load_seconds, 6),
            "store_seconds": round(self.store_seconds, 6),
            "saved_seconds": round(self.saved_seconds, 6),
            "refused": dict(sorted(self.refused.items())),
            "built_instead": dict(sorted(self.built_instead.items())),
            "fallbacks": dict(self.fallbacks),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStats:
        return cls(
            managed=set(data["managed"]),
            hits=Counter(data["hits"]),
            builds=data["builds"],
            stale=dict(data["stale"]),
            waited=data["waited"],
            bytes_loaded=data["bytes_loaded"],
            bytes_stored=data["bytes_stored"],
            build_seconds=data["build_seconds"],
            load_seconds=data["load_seconds"],
            store_seconds=data["store_seconds"],
            saved_seconds=data["saved_seconds"],
            refused=dict(data["refused"]),
            built_instead=dict(data["built_instead"]),
            fallbacks=dict(data["fallbacks"]),
        )

    def merge(self, other: RunStats) -> None:
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
        self.refused.update(other.refused)
        self.built_instead.update(other.built_instead)
        for message, count in other.fallbacks.items():
            self.fallbacks[message] = self.fallbacks.get(message, 0) + count

    def is_empty(self) -> bool:
        return not (self.managed or self.refused or self.fallbacks)

    def lines(self) -> list[str]:
        """The terminal summary, one fact a line."""
        hits = sum(self.hits.values())
        by_tier = ", ".join(f"{tier} {n}" for tier, n in sorted(self.hits.items()))
        out = [
            f"managed fixtures: {len(self.managed)}"
            + (f" ({', '.join(sorted(self.managed))})" if self.managed else ""),
            f"hits: {hits}"
            + (f" ({by_tier})" if by_tier else "")
            + f"; builds: {self.builds}"
            + (f" ({len(self.stale)} fixtures rebuilt: an input changed)" if self.stale else "")
            + (f"; waited for another worker's build: {self.waited}" if self.waited else ""),
            f"loaded {_size(self.bytes_loaded)} in {self.load_seconds:.2f}s; "
            f"stored {_size(self.bytes_stored)} in {self.store_seconds:.2f}s; "
            f"built in {self.build_seconds:.2f}s; saved ~{self.saved_seconds + 0.0:.2f}s",
        ]
        for name, why in sorted(self.stale.items()):
            out.append(f"rebuilt {name}: {why}")
        for name, why in sorted(self.refused.items()):
            out.append(f"refused {name}: {why}; it runs unmanaged")
        for name, why in sorted(self.built_instead.items()):
            out.append(f"built {name} in-process: {why}")
        for message, count in self.fallbacks.items():
            out.append(f"fallback: {message}" + (f" (x{count})" if count > 1 else ""))
        return out

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
