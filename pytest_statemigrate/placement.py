"""Where a state element lives among several agents (DHT lookup), as the plugin sees it.

The ring and the location map are in :mod:`nodeagent.placement` (the agents use them too, and
the agent never imports the plugin); this module re-exports them and adds the reader's side:
the order in which to ask agents for a key (:func:`fetch_order`). Pure: no sockets.

A lookup over several agents (see docs/placement.md)::

    directory = first live agent of ring.homes(key)        # the key's home
    LOCATE key at the directory  → holders [(agent, tier, version)]
    GET from each holder of the newest version, nearest first (RAM before disk, then the
        lowest measured round trip), then from the home, then from the next agents on the
        ring (they reach tier 3 through their store), skipping agents that are down
    a copy older than the located version is skipped (never a stale version)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from nodeagent.placement import TIERS, VNODES, HashRing, Location, LocationMap
from nodeagent.protocol import TIER_RANK

__all__ = ["TIERS", "VNODES", "HashRing", "Location", "LocationMap", "fetch_order", "parse"]


def parse(located: Sequence[Sequence[object]]) -> list[Location]:
    """A LOCATE reply's list for one key as Locations; malformed items are skipped (records
    are hints: a bad one costs a fallback, never a run)."""
    out: list[Location] = []
    for item in located:
        if len(item) != 3:
            continue
        agent, tier, version = item
        if isinstance(agent, str) and tier in TIER_RANK and isinstance(version, int):
            out.append(Location(agent, str(tier), version))
    return out


def fetch_order(
    key: str,
    ring: HashRing,
    located: Sequence[Location],
    *,
    up: Callable[[str], bool],
    rtt: Mapping[str, float] | None = None,
    fallbacks: bool = True,
) -> list[tuple[str, int]]:
    """The agents to GET ``key`` from, in order, each with the lowest version to accept.

    :param located: the directory's records for ``key`` (agents outside the ring are ignored:
        this process cannot reach them under a name it knows).
    :param up: whether an agent may be asked (not marked down in this run).
    :param rtt: measured round trip per agent, in seconds (unknown: last among equals).
    :param fallbacks: go on to the ring's later agents after the home. The proxy asks them
        only when the home is down or its directory did not answer: a live directory's
        records (and the home's own tiers) cover the rest.
    :returns: ``[(agent, min_version), ...]``: holders of the newest located version first
        (RAM, then disk, then store; nearer first), then the ring's homes for ``key``.
    """
    rtt = rtt or {}
    known = [loc for loc in located if loc.agent in ring and up(loc.agent)]
    newest = max((loc.version for loc in located), default=0)
    holders = sorted(
        (loc for loc in known if loc.version == newest),
        key=lambda loc: (TIER_RANK[loc.tier], rtt.get(loc.agent, float("inf")), loc.agent),
    )
    order: list[tuple[str, int]] = [(loc.agent, newest) for loc in holders]
    asked = {agent for agent, _ in order}
    for agent in ring.homes(key) if fallbacks else ring.homes(key, 1):
        if agent not in asked and up(agent):
            order.append((agent, newest))
            asked.add(agent)
    return order
