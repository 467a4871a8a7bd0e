"""Which fixtures are managed and the key of each managed value: the analysis of a fixture
definition (fixtures.py) cached per definition, the key material of its dependencies (their
keys when managed, else their code and param, with the refusals for dependencies a key cannot
see), and why a key differs from the one its fixture's last build had (keys.PARTS_FILE)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fixtures as fx
from . import trees
from .keys import (
    PARTS_FILE,
    FileDigests,
    KeyParts,
    Unkeyable,
    code_digest,
    digest,
    env_digest,
    inputs_digest,
    load_parts,
    make_key,
    param_token,
    part_digests,
    save_parts,
    what_changed,
)
from .recorder import fixture_label
from .report import RunStats
from .settings import Settings

if TYPE_CHECKING:
    from .managed import Current

__all__ = ["FixtureKeys"]


class FixtureKeys:
    """The run's analyses and keys.

    :param records: the session's fixturedef → :class:`Current` (a managed dependency's key).
    :param files: the proxy's file digests, shared by every key of the run.
    """

    def __init__(
        self,
        settings: Settings,
        rootdir: Path,
        stats: RunStats,
        files: FileDigests,
        records: Mapping[Any, Current],
    ) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.stats = stats
        self._files = files
        self._records = records
        #: ``auto``: the fixture labels to manage besides those the patterns select
        self.auto_labels: frozenset[str] = frozenset()
        self._analysis: dict[Any, fx.Analysis | None] = {}
        self._unmanaged: dict[Any, tuple[str | None, str]] = {}  # fixturedef → (refusal, code)
        #: key → (its variant, its parts' digests), for the keys made in this run
        self._key_parts: dict[str, tuple[str, dict[str, Any]]] = {}
        self._parts_then: dict[str, dict[str, Any]] | None = None  # PARTS_FILE, once read
        self._parts_now: dict[str, dict[str, Any]] = {}  # variant → parts of the key it built

    def analysis(self, fixturedef: Any) -> fx.Analysis | None:
        """The analysis of a managed fixturedef; None when it is not selected."""
        try:
            return self._analysis[fixturedef]
        except KeyError:
            pass
        result: fx.Analysis | None = None
        # (``auto``: the ESG names unmanaged setups by label, stored values by id)
        chosen = bool(self.auto_labels) and (
            fixture_label(fixturedef, self.rootdir) in self.auto_labels
            or fx.id_of(fixturedef.argname, fixturedef.func, self.rootdir) in self.auto_labels
        )
        if fx.is_selected(fixturedef.argname, fixturedef.func, self.settings.patterns, chosen):
            result = fx.analyse(
                fixturedef.argname, fixturedef.func, fixturedef.argnames, self.rootdir
            )
        self._analysis[fixturedef] = result
        return result

    def _dep_token(
        self, request: Any, argname: str, seen: frozenset[str], via: str | None = None
    ) -> str:
        """Key material for one dependency: its key if managed, else its code and param."""
        dep = request._get_active_fixturedef(argname)
        known = self._records.get(dep)
        if known is not None and known.key is not None:
            return known.key
        if trees.is_factory(argname, fx.unwrap(dep.func)):
            if via is not None:  # asked for by a fixture that is not managed
                raise Unkeyable(
                    f"depends on {via}, which makes files with {argname} and is not managed: "
                    f"manage {via} too, and its files are stored with its value"
                )
            return argname  # the directories it makes are captured with the value
        managed = self.analysis(dep)
        if managed is not None and managed.refused is None:
            # Selected and manageable, yet this setup found no key for it.
            why = self.stats.refused.get(managed.fixture_id, "no key")
            raise Unkeyable(f"depends on {argname}, which runs unmanaged ({why})")
        # Not selected, or refused by the rules: the rules for unmanaged dependencies apply.
        static = self._unmanaged.get(dep)
        if static is None:  # parsing source is costly: once per definition
            static = self._unmanaged[dep] = (
                fx.unmanaged_dependency_refusal(argname, dep.func, self.rootdir),
                # pytest's parametrize stand-in: the same token wherever pytest is installed
                "direct-param"
                if fx.is_direct_param(dep.func)
                else code_digest(fx.unwrap(dep.func), self.rootdir),
            )
        refusal, code = static
        if refusal is not None:
            raise Unkeyable(refusal)
        if argname in seen:
            return "cycle"
        parts = [code]
        cached = dep.cached_result
        if cached is not None and cached[1] is not None:
            parts.append(param_token(cached[1]))
        for sub in dep.argnames:
            if sub != "request":
                parts.append(self._dep_token(request, sub, seen | {argname}, argname))
        return digest(*parts)

    def key_for(self, fixturedef: Any, request: Any, analysis: fx.Analysis) -> str:
        param = fx.param_part(request, fixturedef)
        deps = tuple(
            (name, self._dep_token(request, name, frozenset({analysis.name})))
            for name in fixturedef.argnames
            if name != "request"
        )
        spec = analysis.spec
        inputs = env = None
        if spec is not None and spec.inputs:
            inputs = inputs_digest(spec.inputs, self.rootdir, self._files)
        if spec is not None and spec.env:
            env = env_digest(spec.env)
        node = request.node.nodeid if analysis.uses_node else None
        parts = KeyParts(
            # Where it is registered too: one function may serve under several names, or
            # under one name in several modules (a factory's fixtures).
            fixture=f"{analysis.fixture_id}|{fixturedef.argname}|{fixturedef.baseid}",
            code=analysis.code,
            param=param,
            deps=deps,
            inputs=inputs,
            env=env,
            node=node,
        )
        key = make_key(parts)
        if node is None:  # (a key per test: no value of it is rebuilt for another reason)
            self._key_parts[key] = (self._variant(request, parts), part_digests(parts))
        return key

    def _variant(self, request: Any, parts: KeyParts) -> str:
        """Which value of the fixture ``parts`` names, the same from run to run whatever the
        code: where it is defined, its param, and which value each dependency gave (a
        dependency's param), so that a changed key is told from another value's."""
        given = []
        for name, token in parts.deps:
            if token in self._key_parts:  # a managed dependency: its own variant
                given.append(self._key_parts[token][0])
                continue
            cached = request._get_active_fixturedef(name).cached_result
            given.append("" if cached is None else param_token(cached[1]))
        return digest(parts.fixture, parts.param or "", *given)[:24]

    def why_rebuilt(self, key: str) -> str | None:
        """Why ``key`` is built when its fixture's last build had another key (its code
        changed, a dependency's...), from the parts of the keys last built (PARTS_FILE in the
        store directory); None when nothing is known or it is the same key."""
        if key not in self._key_parts or self.settings.refresh:
            return None
        if self._parts_then is None:
            self._parts_then = load_parts(self.settings.store_dir / PARTS_FILE)
        variant, now = self._key_parts[key]
        self._parts_now[variant] = {**now, "key": key}
        then = self._parts_then.get(variant)
        if then is None or then.get("key") == key:
            return None
        return what_changed(then, now)

    def save_parts(self) -> None:
        """Write the parts of the keys built in this run, for the next run's reasons."""
        if self._parts_now:
            try:
                save_parts(self.settings.store_dir / PARTS_FILE, self._parts_now)
            except OSError as exc:  # only the reason a later rebuild is given depends on it
                self.stats.fallback(f"could not write {PARTS_FILE} ({exc})")
