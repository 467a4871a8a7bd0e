"""placement: ring movement on join and leave, balance, determinism; the location map; the
order in which a reader asks agents."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_statemigrate.placement import (
    VNODES,
    HashRing,
    Location,
    LocationMap,
    fetch_order,
    parse,
)

names = st.text(alphabet="abcdefghijklmnop:/0123456789", min_size=1, max_size=24)
agent_sets = st.sets(names, min_size=1, max_size=8)
key_lists = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=200, unique=True)
SMALL = 16  # vnodes in hypothesis tests: movement does not depend on the count


@settings(max_examples=150, deadline=None)
@given(agents=agent_sets, joining=names, keys=key_lists)
def test_join_moves_only_the_keys_the_new_agent_takes(
    agents: set[str], joining: str, keys: list[str]
) -> None:
    before = HashRing(agents, SMALL)
    after = before.join(joining)
    for key in keys:
        old, new = before.home(key), after.home(key)
        if old != new:
            assert new == joining
        # Whatever stays with an old agent keeps its fallbacks in the same order.
        if joining not in agents:
            assert [a for a in after.homes(key) if a != joining] == before.homes(key)


@settings(max_examples=150, deadline=None)
@given(agents=st.sets(names, min_size=2, max_size=8), data=st.data(), keys=key_lists)
def test_leave_moves_only_the_leaving_agents_keys(
    agents: set[str], data: st.DataObject, keys: list[str]
) -> None:
    leaving = data.draw(st.sampled_from(sorted(agents)))
    before = HashRing(agents, SMALL)
    after = before.leave(leaving)
    for key in keys:
        old, new = before.home(key), after.home(key)
        if old == leaving:
            # Its keys go to the next agent on the ring: the first fallback.
            assert new == before.homes(key, 2)[1]
        else:
            assert new == old


@settings(max_examples=100, deadline=None)
@given(agents=agent_sets, key=st.text(min_size=1, max_size=40), n=st.integers(0, 10))
def test_homes_are_distinct_and_start_at_home(agents: set[str], key: str, n: int) -> None:
    ring = HashRing(agents, SMALL)
    found = ring.homes(key, n)
    assert len(found) == min(n, len(agents)) == len(set(found))
    assert set(found) <= agents
    if n:
        assert found[0] == ring.home(key)
    assert sorted(ring.homes(key)) == sorted(agents)


def test_join_then_leave_is_the_same_ring() -> None:
    ring = HashRing(["a", "b", "c"])
    assert ring.join("d").leave("d") == ring
    assert ring.join("a") == ring
    with pytest.raises(ValueError, match="at least one agent"):
        HashRing(["a"]).leave("a")


@pytest.mark.parametrize("count", [3, 5, 10])
def test_balance_with_enough_virtual_nodes(count: int) -> None:
    agents = [f"tcp://127.0.0.1:{5500 + i}" for i in range(count)]
    ring = HashRing(agents, VNODES)
    keys = [f"key-{i:06d}" for i in range(20_000)]
    shares = Counter(ring.home(k) for k in keys)
    mean = len(keys) / count
    assert set(shares) == set(agents)
    assert max(shares.values()) <= 1.35 * mean, shares
    assert min(shares.values()) >= 0.65 * mean, shares


def test_few_virtual_nodes_are_unbalanced() -> None:
    """The bound above is the virtual nodes' doing: with one point per agent it fails (so the
    balance test can fail)."""
    agents = [f"tcp://127.0.0.1:{5500 + i}" for i in range(10)]
    shares = Counter(HashRing(agents, 1).home(f"key-{i:06d}") for i in range(20_000))
    assert max(shares.values()) > 1.35 * 2_000


def test_movement_fraction_on_join_is_about_one_share() -> None:
    agents = [f"ipc:///tmp/a{i}" for i in range(4)]
    before, after = HashRing(agents), HashRing([*agents, "ipc:///tmp/a4"])
    keys = [f"k{i}" for i in range(10_000)]
    moved = sum(before.home(k) != after.home(k) for k in keys)
    assert 0.1 * len(keys) < moved < 0.3 * len(keys)  # about 1/5


def test_deterministic_across_processes() -> None:
    """blake2b, not hash(): another interpreter with another hash seed agrees."""
    code = (
        "from nodeagent.placement import HashRing\n"
        "r = HashRing(['ipc:///a', 'ipc:///b', 'tcp://127.0.0.1:9'])\n"
        "print(','.join(r.home(f'k{i}') for i in range(300)))\n"
    )
    ring = HashRing(["ipc:///a", "ipc:///b", "tcp://127.0.0.1:9"])
    here = ",".join(ring.home(f"k{i}") for i in range(300))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        assert out == here


# -- the location map


def test_location_map_records_tiers_and_drops() -> None:
    m = LocationMap()
    assert m.record("k", "b", "disk", 1)
    assert m.record("k", "a", "ram", 1)
    assert not m.record("k", "a", "ram", 1)  # no change
    assert m.locate("k") == [Location("a", "ram", 1), Location("b", "disk", 1)]
    assert m.record("k", "a", None, 1)
    assert m.locate("k") == [Location("b", "disk", 1)]
    assert m.record("k", "b", None, 0)
    assert "k" not in m and m.locate("k") == []
    assert not m.record("k", "b", None, 0)


def test_location_map_never_offers_a_stale_version() -> None:
    m = LocationMap()
    m.record("k", "a", "ram", 1)
    m.record("k", "b", "ram", 1)
    m.record("k", "a", "disk", 2)  # rebuilt and stored again at a
    assert m.locate("k") == [Location("a", "disk", 2)]
    assert not m.record("k", "b", "ram", 1)  # b's late news of version 1 is ignored
    assert m.locate("k") == [Location("a", "disk", 2)]


def test_location_map_forget_rename_take() -> None:
    m = LocationMap()
    for key in ("k1", "k2", "k3"):
        m.record(key, "a", "ram", 1)
    m.record("k1", "b", "disk", 1)
    assert m.forget("b") == 1
    m.rename("a", "A")
    assert m.locate("k2") == [Location("A", "ram", 1)]
    moved = m.take(lambda key: key != "k3")
    assert moved == {"k3": [Location("A", "ram", 1)]}
    assert sorted(m.keys()) == ["k1", "k2"]
    with pytest.raises(ValueError, match="unknown tier"):
        m.record("k", "a", "tape", 1)


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["ram", "disk", "store", None]),
            st.integers(1, 4),
        ),
        max_size=40,
    )
)
def test_location_map_against_a_model(ops: list[tuple[str, str, str | None, int]]) -> None:
    """Every located holder is at the newest version the map accepted for that key."""
    m = LocationMap()
    newest: dict[str, int] = {}
    for key, agent, tier, version in ops:
        m.record(key, agent, tier, version)
        if tier is not None and version >= newest.get(key, 0):
            newest[key] = version
    for key in ("k1", "k2"):
        located = m.locate(key)
        assert len({loc.agent for loc in located}) == len(located)
        assert all(loc.version == newest[key] for loc in located)


# -- the reader's order


def test_fetch_order_prefers_ram_then_near_then_the_ring() -> None:
    ring = HashRing(["a", "b", "c"])
    key = "some-key"
    homes = ring.homes(key)
    located = [
        Location("b", "disk", 3),
        Location("c", "ram", 3),
        Location("a", "ram", 3),
        Location("x", "ram", 3),  # not in this process's ring
    ]
    order = fetch_order(key, ring, located, up=lambda a: True, rtt={"a": 0.01, "c": 0.001})
    assert order == [("c", 3), ("a", 3), ("b", 3)]
    # Down agents are skipped; the ring's homes follow the holders.
    holder, down = homes[2], homes[0]
    order = fetch_order(key, ring, [Location(holder, "ram", 2)], up=lambda a: a != down)
    assert order == [(holder, 2), (homes[1], 2)]
    # Nothing located: the ring's homes, any version.
    assert fetch_order(key, ring, [], up=lambda a: True) == [(h, 0) for h in homes]
    # With a live directory, the holders and the home only.
    located = [Location(homes[2], "disk", 1)]
    assert fetch_order(key, ring, located, up=bool, fallbacks=False) == [
        (homes[2], 1),
        (homes[0], 1),
    ]


def test_fetch_order_skips_holders_of_older_versions() -> None:
    ring = HashRing(["a", "b"])
    order = fetch_order("k", ring, [Location("a", "ram", 1), Location("b", "disk", 2)], up=bool)
    assert order[0] == ("b", 2)
    assert all(version == 2 for _, version in order)


def test_parse_skips_malformed_records() -> None:
    assert parse([["a", "ram", 1], ["b", "tape", 1], ["c", "disk"], [1, "ram", 1]]) == [
        Location("a", "ram", 1)
    ]
