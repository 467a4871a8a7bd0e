"""Placement over several agents: a consistent-hash ring and the directory's location map.

Pure: no sockets, no zmq, stdlib only. Both sides use it: the plugin (through
``pytest_statemigrate.placement``) to name a key's directory agent and its fallbacks, the agent
to know which directory to announce a key to and to keep the records it is directory for. It
lives here because the agent never imports the plugin.

The ring
========

Every agent (named by its endpoint, as every client spells it) owns :data:`VNODES` points on a
64-bit circle; a point is ``blake2b(name, index)``, so the ring is the same in every process
(Python's ``hash()`` is salted per process). A key's **home** is the owner of the first point
at or after the key's own point, clockwise; :meth:`HashRing.homes` goes on clockwise to list
distinct owners, the fallbacks. When an agent joins, only keys whose new home is that agent
move (to it); when one leaves, only its keys move (to their next owner).

The location map
================

The home agent of a key is its **directory**: it records which agents hold the key, in which
tier, at which version (:class:`LocationMap`). Records are hints: a reader that finds the value
missing at a named holder goes on to the next; a newer version recorded for a key drops the
records of older ones, so a reader never picks a holder known to be stale.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Final, NamedTuple

from nodeagent.protocol import TIER_RANK, TIERS

__all__ = ["TIERS", "VNODES", "HashRing", "Location", "LocationMap", "point"]

#: Points per agent on the ring. 128 keeps the largest agent's share of keys within about
#: +-30% of the mean for up to ~16 agents (tests/unit/test_placement.py checks a bound), at
#: a ring of 128 * agents ints: built once per run, searched with one bisect per key.
VNODES: Final = 128


def point(text: str) -> int:
    """A stable 64-bit position on the ring (blake2b, the same in every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring over agent names; immutable (``join``/``leave`` make new rings).

    :param agents: agent names (endpoints); duplicates are ignored.
    :param vnodes: points per agent.
    :raises ValueError: no agents, an empty name, or ``vnodes`` < 1.
    """

    def __init__(self, agents: Iterable[str], vnodes: int = VNODES) -> None:
        names = tuple(sorted(set(agents)))
        if not names:
            raise ValueError("a ring needs at least one agent")
        if any(not name for name in names):
            raise ValueError("agent names must not be empty")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.agents = names
        self.vnodes = vnodes
        # Ties between points (a 2**-64 chance) go to the smaller name: sorted pairs.
        pairs = sorted((point(f"{name}\0{i}"), name) for name in names for i in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [name for _, name in pairs]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HashRing)
            and self.agents == other.agents
            and self.vnodes == other.vnodes
        )

    def __hash__(self) -> int:
        return hash((self.agents, self.vnodes))

    def __repr__(self) -> str:
        return f"HashRing({list(self.agents)!r}, vnodes={self.vnodes})"

    def __len__(self) -> int:
        return len(self.agents)

    def __contains__(self, agent: object) -> bool:
        return agent in self.agents

    def _walk(self, key: str) -> Iterator[str]:
        start = bisect.bisect_left(self._points, point(key))
        n = len(self._owners)
        for i in range(n):
            yield self._owners[(start + i) % n]

    def home(self, key: str) -> str:
        """The agent whose arc holds ``key``: its directory, and where it is built and PUT."""
        return next(self._walk(key))

    def homes(self, key: str, n: int | None = None) -> list[str]:
        """The first ``n`` distinct agents clockwise from ``key`` (all when None): the home,
        then the agents that take its keys if it leaves, in that order."""
        want = len(self.agents) if n is None else min(n, len(self.agents))
        found: list[str] = []
        for owner in self._walk(key):
            if len(found) >= want:
                break
            if owner not in found:
                found.append(owner)
        return found

    def join(self, agent: str) -> HashRing:
        return HashRing((*self.agents, agent), self.vnodes)

    def leave(self, agent: str) -> HashRing:
        """The ring without ``agent``. :raises ValueError: when it is the last one."""
        return HashRing((a for a in self.agents if a != agent), self.vnodes)


class Location(NamedTuple):
    """One holder of a key, as its directory knows it."""

    agent: str
    tier: str
    version: int


class LocationMap:
    """Key → holders, as kept by a key's directory agent (one per agent process).

    Not thread-safe: the agent's loop alone uses it.
    """

    def __init__(self) -> None:
        self._records: dict[str, dict[str, tuple[str, int]]] = {}  # key → agent → (tier, ver)
        # key → the newest version recorded, kept after its last holder dropped it, so that
        # late news of an older copy is still refused.
        self._newest: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def keys(self) -> list[str]:
        return list(self._records)

    def holders(self) -> set[str]:
        """Every agent some record names."""
        return {agent for holders in self._records.values() for agent in holders}

    def record(self, key: str, agent: str, tier: str | None, version: int) -> bool:
        """``agent`` now holds ``key`` at ``version`` in ``tier``; ``tier`` None: it dropped it.

        A version older than one recorded for the key is ignored (that holder is stale), even
        after every holder of the newer one dropped it; a newer one drops the records of older
        versions.

        :returns: whether the map changed.
        """
        holders = self._records.get(key)
        if tier is None:
            if holders is None or holders.pop(agent, None) is None:
                return False
            if not holders:
                del self._records[key]
            return True
        if tier not in TIER_RANK:
            raise ValueError(f"unknown tier {tier!r}")
        newest = self._newest.get(key, 0)
        if version < newest:
            return False
        self._newest[key] = version
        if holders is None:
            self._records[key] = {agent: (tier, version)}
            return True
        if version > newest:
            holders.clear()
        if holders.get(agent) == (tier, version):
            return False
        holders[agent] = (tier, version)
        return True

    def locate(self, key: str) -> list[Location]:
        """Holders of ``key``: RAM before disk before store, then by name."""
        holders = self._records.get(key, {})
        found = [Location(agent, tier, version) for agent, (tier, version) in holders.items()]
        found.sort(key=lambda loc: (TIER_RANK[loc.tier], loc.agent))
        return found

    def forget(self, agent: str) -> int:
        """Drop every record of ``agent`` (it left the ring); returns how many."""
        dropped = 0
        for key in list(self._records):
            if self.record(key, agent, None, 0):
                dropped += 1
        return dropped

    def rename(self, old: str, new: str) -> None:
        """Records of ``old`` now name ``new`` (an agent learnt the name clients use for it)."""
        if old == new:
            return
        for holders in self._records.values():
            if old in holders:
                holders[new] = holders.pop(old)

    def take(self, keep: Callable[[str], bool]) -> dict[str, list[Location]]:
        """Remove and return the records of the keys ``keep`` refuses (their directory moved
        to another agent: hand them over)."""
        moved = {key: self.locate(key) for key in self._records if not keep(key)}
        for key in moved:
            del self._records[key]
            self._newest.pop(key, None)
        return moved
