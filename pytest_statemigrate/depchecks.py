"""What a managed build did to its dependencies, as the session checks it: their states
before a build, a build that changed them in place, the states a stored value was built
from, and whether a stored value may serve the dependencies as they are now (depstate.py
holds the pure parts: pickles, digests, sharing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import codec, depstate, trees
from .codec import IMMUTABLE, Unpicklable
from .keys import digest

if TYPE_CHECKING:
    from .managed import Current

__all__ = ["DependencyChecks"]


class DependencyChecks:
    """The dependency checks of one run's managed setups.

    :param records: the session's fixturedef → :class:`Current` (read, never changed here).
    :param paths: the proxy's map of the directories this session's values own: a value
        holding a path into one is digested as placed.
    """

    def __init__(self, records: Mapping[Any, Current], paths: trees.PathMap) -> None:
        self._records = records
        self._paths = paths
        #: id(value) → (value, digest) of dependencies' values checked in this test's setup
        #: (emptied whenever code the plugin does not watch may have run: a test, a setup)
        self._dep_digests: dict[int, tuple[Any, depstate.Snapshot]] = {}
        self._placed: dict[int, tuple[Any, str]] = {}  # ... their codec.placed_digest
        #: fixturedefs set up since then: no code the plugin does not watch ran since
        self.fresh: set[Any] = set()

    def forget(self) -> None:
        """Code the plugin does not watch may run (a test, a setup): any value may change."""
        self._dep_digests.clear()
        self._placed.clear()
        self.fresh.clear()

    def owned(self, fixturedef: Any) -> trees.Owned | None:
        known = self._records.get(fixturedef)
        return known.owned if known is not None else None

    def entry(self, fixturedef: Any) -> str | None:
        known = self._records.get(fixturedef)
        return known.entry if known is not None else None

    def fresh_entries(self, defs: Mapping[str, Any], deps: Mapping[str, Any]) -> dict[str, str]:
        """Which stored value each fresh stored dependency is, before a build (for
        :meth:`unchanged`)."""
        return {
            name: entry
            for name in deps
            if defs[name] in self.fresh and (entry := self.entry(defs[name])) is not None
        }

    def states(
        self,
        defs: Mapping[str, Any],
        deps: Mapping[str, Any],
        before: Mapping[str, depstate.Snapshot],
        entries: Mapping[str, str],
    ) -> dict[str, Any]:
        """What a value was built from, for :meth:`unchanged`: each dependency's state
        (its value's digest, with its files' digest), taken after a build that changed none
        of them, and ``entries`` (:meth:`fresh_entries`)."""
        states: dict[str, str] = {}
        for name, value in deps.items():
            dep = defs[name]
            owned = self.owned(dep)
            snap = before.get(name)
            if snap is None and owned is None:
                continue  # a number, a string: it cannot change
            try:
                states[name] = self.state(dep, value, snap.digest if snap else None)
            except Unpicklable:
                entries = {n: e for n, e in entries.items() if n != name}
                continue  # (then no stored value of it serves: it is built)
        return {"states": states, "entries": dict(entries)}

    def state(self, dep: Any, value: Any, value_digest: str | None = None) -> str:
        """One dependency's state now: its value's digest, and its files' if it has some.

        With files in the session, the value's paths into them are placed (a value holding
        a path into this session's copy is the same value as one holding a path into the copy
        it was built with).

        :raises Unpicklable: when the value does not pickle or holds a path that cannot be
            placed.
        """
        paths = self._paths
        if isinstance(value, IMMUTABLE):
            part = "immutable"
        elif paths.active:
            known = self._placed.get(id(value))
            if known is None or known[0] is not value:
                known = self._placed[id(value)] = (value, codec.placed_digest(value, paths))
            part = known[1]
        else:
            part = value_digest or self._value_digest(value)
        owned = self.owned(dep)
        if owned is None:
            return part
        return digest(part, owned.digest_now())

    def unchanged(
        self, defs: Mapping[str, Any], deps: Mapping[str, Any], built_from: Mapping[str, Any]
    ) -> str | None:
        """Why a stored value cannot serve now: a dependency differs from the state it was
        built from (a test changed it, or its files, first); None when none does.

        A dependency set up in this chain from the same stored value needs no check."""
        states = built_from.get("states") or {}
        entries = built_from.get("entries") or {}
        for name, value in deps.items():
            dep = defs[name]
            if isinstance(value, IMMUTABLE) and self.owned(dep) is None:
                continue
            if trees.is_factory_value(value):
                continue
            if name not in states:
                return f"it was stored without the state of {name}"
            entry = entries.get(name)
            if entry is not None and dep in self.fresh and self.entry(dep) == entry:
                continue
            try:
                now = self.state(dep, value)
            except Unpicklable:
                return f"{name} does not pickle: whether a test changed it cannot be checked"
            if now != states[name]:
                return (
                    f"{name} is not in the state it was built from (a test changed it or its "
                    "files, or it was built anew)"
                )
        return None

    def before(self, deps: Mapping[str, Any]) -> tuple[dict[str, depstate.Snapshot], str | None]:
        """Snapshots of the mutable dependencies' values before a build (see depstate.py),
        and why the build cannot be checked, if it cannot."""
        snaps: dict[str, depstate.Snapshot] = {}
        for dep, value in deps.items():
            if isinstance(value, IMMUTABLE):
                continue
            known = self._dep_digests.get(id(value))
            if known is not None and known[0] is value:
                snaps[dep] = known[1]
                continue
            try:
                snaps[dep] = depstate.snapshot(value, retain=True)
            except Unpicklable:
                return snaps, (
                    f"depends on {dep}, whose value does not pickle: what building changes in "
                    f"{dep} cannot be checked"
                )
        return snaps, None

    def _value_digest(self, value: Any) -> str:
        """The digest of a dependency's value (depstate.py), once per value while no code
        the plugin does not watch runs."""
        known = self._dep_digests.get(id(value))
        if known is None or known[0] is not value:
            known = self._dep_digests[id(value)] = (value, depstate.snapshot(value))
        return known[1].digest

    def after(
        self, deps: Mapping[str, Any], before: Mapping[str, depstate.Snapshot]
    ) -> tuple[str | None, Any]:
        """After a build: why its value must not be stored (it changed a dependency in place),
        or None and the check of what the value shares with the dependencies' values (for
        :meth:`StateProxy.store`)."""
        snaps: dict[str, depstate.Snapshot] = {}
        for dep, earlier in before.items():
            value = deps[dep]
            try:
                snap = depstate.unchanged(earlier, value)
            except Unpicklable:
                return f"its build leaves {dep} unpicklable", None
            finally:
                earlier.release()
            if snap is None:
                self._dep_digests.pop(id(value), None)
                return (
                    f"its build changes {dep} in place: a loaded value would leave {dep} as it was"
                ), None
            self._dep_digests[id(value)] = (value, earlier)
            snaps[dep] = snap
        if not snaps:
            return None, None
        return None, depstate.SharingCheck(list(deps.values()), snaps)
