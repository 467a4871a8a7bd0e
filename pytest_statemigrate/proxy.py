"""The state access proxy: find a value, fetch it, verify it, hand it over; or say "build it".

Pure of pytest: it takes keys, dependency resolvers and built values. Every agent or entry
trouble turns into a miss plus one line in the run's fallbacks (DESIGN.md, invariant 1); the
caller then builds the value in-process.

No zmq context outlives a call into the proxy: :meth:`StateProxy.close_link` runs after every
fixture setup, so no thread lives while a test body runs (invariant 6).

With several agents (``--sm-agent a,b,c``) a hash ring names each key's home
(:mod:`.placement`): the lookup asks the home's directory (LOCATE) and GETs from the nearest
holder, then the home, then, when the home is down, the ring's next agents; LEASE and PUT go
to the home (its first live successor when it is down), so one process builds a key whatever
agent it asks. An agent that fails is down for the run and the others carry on. With one
agent none of this runs: no LOCATE, no ring, the same round trips as before.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nodeagent.protocol import OPERATION_ERRORS

from . import codec, placement, trees
from .agents.link import AgentLink
from .inputs import Distributions, Fingerprints
from .keys import FileDigests
from .report import RunStats

if TYPE_CHECKING:
    from nodeagent.client import AgentClient


NONE_VALUE: Final = "returns None: it runs for its side effects, which a loaded value would skip"
LOAD_MARGIN: Final = 1.25  # build in-process when loading took this many times the build
LEASE_WAIT: Final = 1.0  # s: one LEASE waits this long for the holder; then it is asked again
LEASE_POLL: Final = 0.02  # s: pause between LEASEs when the agent answered without waiting


@dataclass(frozen=True)
class Hit:
    value: Any
    warnings: list[Any]
    nbytes: int = 0  # of the stored payload
    load_s: float = 0.0  # fetching, verifying and unpickling it
    entry: str = ""  # which stored value this is (its meta's "entry")
    owned: trees.Owned | None = None  # the directories restored with it
    random_after: dict[str, Any] = field(default_factory=dict)  # see BuildRecord
    coverage: Any = None  # what its build ran, for coverage.py (coverage_replay.py)


@dataclass(frozen=True)
class _Wanted:
    """What a lookup needs besides the key to serve a value: how the value's references to its
    dependencies resolve, the ``TempPathFactory`` its files are restored with, and why the
    dependencies differ now from the states an entry was built from (None: they do not)."""

    resolve: Callable[[str], Any]
    factory: Any = None
    deps_valid: Callable[[Mapping[str, Any]], str | None] | None = None
    meta_valid: Callable[[Mapping[str, Any]], str | None] | None = None


@dataclass(frozen=True)
class Miss:
    """Build the value. ``store`` says whether the result should then be offered to the agent."""

    store: bool = True
    holder: str | None = None  # the lease this process holds, if any


@dataclass
class BuildRecord:
    """What the caller learnt while building a value."""

    seconds: float
    warnings: list[Any] = field(default_factory=list)
    fingerprints: Fingerprints = field(default_factory=Fingerprints)
    #: The states the build left the global random generators it drew from in (a hit leaves
    #: them so: inputs.restore_random)
    random_after: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] | None = None  # what it ran, when coverage measured the build


class StateProxy:
    """Locate, fetch, verify and deserialise managed values; store built ones."""

    def __init__(
        self,
        *,
        link: AgentLink,
        peers: Sequence[AgentLink] = (),
        secret: Callable[[], bytes],
        rootdir: Path,
        stats: RunStats,
        refresh: bool,
        max_value_bytes: int,
        lease_seconds: float,
    ) -> None:
        self.link = link
        link.on_down = stats.fallback  # reported once: the link stays down for the run
        #: Several agents: every link by its name on the ring (``link`` among them), else
        #: None and ``link`` is the only agent.
        self.ring: placement.HashRing | None = None
        self.links: dict[str, AgentLink] = {link.name: link}
        if peers:
            self.links.update((peer.name, peer) for peer in peers)
            self.ring = placement.HashRing(self.links)
            for each in self.links.values():
                each.on_down = stats.fallback
                each.ring = self.ring.agents
        self._secret_source = secret
        self._secret: bytes | None = None
        self.rootdir = rootdir
        self.stats = stats
        self.refresh = refresh
        self.max_value_bytes = max_value_bytes
        self.lease_seconds = lease_seconds
        self.files = FileDigests()
        self.dists = Distributions()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._build_only: dict[str, str] = {}  # key → why; decided earlier in this run
        self._fresh: set[str] = set()  # keys stored by this process in this run
        self.refused_keys: set[str] = set()  # keys whose values are refused: not state elements
        self.paths = trees.PathMap()  # the directories managed builds made, in this session
        #: key → the identity of its entry this process loaded or stored last
        self.entries: dict[str, str] = {}

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = self._secret_source()
        return self._secret

    def close_link(self) -> None:
        for link in self.links.values():
            link.close()

    @property
    def down(self) -> bool:
        """Every agent is down: values are built in-process for the rest of the run."""
        return all(link.down is not None for link in self.links.values())

    def home(self, key: str) -> AgentLink | None:
        """The link that builds and stores ``key``: the one agent, or the first agent on the
        ring for ``key`` that is not down (None when all are)."""
        if self.ring is None:
            return self.link
        for name in self.ring.homes(key):
            link = self.links[name]
            if link.down is None:
                return link
        return None

    def _unreachable(self, key: str) -> bool:
        if self.ring is None:
            return self.link.down is not None
        return self.home(key) is None

    def call(
        self, what: Callable[[AgentClient], Any], link: AgentLink | None = None, name: str = ""
    ) -> Any:
        """Run one agent call (on ``link``, default the first agent); None on failure.

        An error *reply* (say, the agent's disk is full) costs this one operation; a transport
        failure (timeout, dead socket, the agent gone) marks the agent down for the rest of
        the run. ``name``: the fixture the call is for, named in the summary line.
        """
        link = self.link if link is None else link
        client = link.client()
        if client is None:
            return None
        try:
            return what(client)
        except Exception as exc:
            error = getattr(exc, "error", None)
            if error == "disk-full":
                self.stats.fallback(f"{exc}: built again next run")
                return None
            if error == "corrupt":
                self.stats.fallback(f"corrupt entry for {name or 'a value'}: {exc}; rebuilt")
                return None
            if error in OPERATION_ERRORS:
                self.stats.fallback(f"agent refused an operation ({exc}); built in-process")
                return None
            link.fail(exc)
            return None

    def call_home(self, key: str, what: Callable[[AgentClient], Any], name: str = "") -> Any:
        """:meth:`call` on ``key``'s home; when that agent fails now, on the next one."""
        if self.ring is None:
            return self.call(what, name=name)
        while (link := self.home(key)) is not None:
            reply = self.call(what, link, name)
            if reply is not None or link.down is None:
                return reply
        return None

    def each_home(self, keys: Sequence[str], what: Callable[[AgentClient, list[str]], Any]) -> bool:
        """``what(client, keys)`` for each home's share of ``keys``; whether any succeeded."""
        if self.ring is None:
            return self.call(lambda c: what(c, list(keys))) is not None
        done = False
        for name, share in self._by_home(keys).items():
            done |= self.call(lambda c, s=share: what(c, s), self.links[name]) is not None  # type: ignore[misc]
        return done

    def _by_home(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """``keys`` by the name of their first live home (keys with none are left out)."""
        shares: dict[str, list[str]] = {}
        for key in keys:
            link = self.home(key)
            if link is not None:
                shares.setdefault(link.name, []).append(key)
        return shares

    def locate_many(self, keys: Sequence[str]) -> dict[str, list[placement.Location]]:
        """Several agents: the directories' records for ``keys``, one LOCATE per directory
        (each key's first live home); a directory that fails is down and its keys have no
        records (records are hints). Empty with one agent (no directories)."""
        if self.ring is None:
            return {}
        found: dict[str, list[placement.Location]] = {}
        for name, share in self._by_home(dict.fromkeys(keys)).items():
            reply = self.call(lambda c, s=share: c.locate(s), self.links[name])  # type: ignore[misc]
            for key, located in (reply or {}).items():
                found[key] = placement.parse(located)
        return found

    def each_agent(self, what: Callable[[AgentClient], Any]) -> list[Any]:
        """``what`` on every agent not down; the replies of those that answered."""
        replies = (self.call(what, link) for link in self.links.values() if link.down is None)
        return [reply for reply in replies if reply is not None]

    # -- reading ---------------------------------------------------------------------------
    def lookup(
        self,
        key: str,
        name: str,
        resolve: Callable[[str], Any],
        factory: Any = None,
        deps_valid: Callable[[Mapping[str, Any]], str | None] | None = None,
        meta_valid: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> Hit | Miss:
        """The value for ``key`` if a valid entry exists; otherwise a miss to build.

        On a miss this process takes the build lease, or waits for the process that holds it.
        ``factory``: the ``TempPathFactory`` a value with files is restored with;
        ``deps_valid``: given the dependencies' states an entry was built from, why they
        differ now (a test changed one), or None; ``meta_valid``: given an entry's meta, why
        this run cannot be served it (it cannot replay what the run measures), or None.
        """
        if key in self._build_only:
            return Miss(store=False)
        if key not in self._fresh and self.link.cold_start():
            # Only this process can have stored it: build now, without a round trip (and,
            # early on, while the agent still boots; storing waits for it).
            return Miss(store=True)
        if self.refresh and key not in self._fresh:
            # Rebuild whatever is stored; once stored in this run, it is loaded as usual.
            return Miss(store=not self._unreachable(key))
        wanted = _Wanted(resolve, factory, deps_valid, meta_valid)
        found = self._load(key, name, wanted)
        if found is not None:
            return found
        if self._unreachable(key):
            return Miss(store=False)
        return self._claim(key, name, wanted)

    def _load(self, key: str, name: str, wanted: _Wanted) -> Hit | Miss | None:
        # What loading costs: the GET, verification and unpickling. Connecting and checking
        # the inputs are paid once per process and by a build too, so they do not count.
        start = time.perf_counter()
        try:
            fetched = self.link.local_get(key)
        except Exception as exc:  # a local read is an optimisation: the agent answers instead
            if getattr(exc, "error", None) == "corrupt":  # (deleted: the agent misses too)
                self.stats.fallback(f"corrupt entry for {name}: {exc}; rebuilt")
            fetched = None
        if fetched is None and self.ring is not None:
            start = time.perf_counter()
            fetched = self._fetch_placed(key)
            if fetched is None:
                return None
        elif fetched is None:
            if key not in self._fresh and self.link.local_miss():
                return Miss(store=True)  # (the agent that stores it serves this process alone)
            if self.link.client() is None:
                return None
            start = time.perf_counter()
            fetched = self.call(lambda c: c.get(key), name=name)
            if fetched is None:
                return None
        try:
            opened = codec.open_sealed(self.secret, key, fetched.frames)
        except codec.Unverified as exc:
            self.stats.fallback(f"unverifiable entry for {name}: {exc}; rebuilt")
            return None
        meta = opened.meta
        checking = time.perf_counter()
        prints = Fingerprints.from_wire(meta.get("inputs", {}))
        changed = prints.changed(self.rootdir, self.files, self.dists)
        start += time.perf_counter() - checking
        if changed is not None:
            self.stats.stale[name] = changed
            return None
        if meta.get("kind") == "build":
            why = str(meta.get("reason", "decided earlier"))
            self._build_only[key] = why
            if meta.get("refused"):
                self.refused_keys.add(key)
            (self.stats.refused if meta.get("refused") else self.stats.built_instead)[name] = why
            return Miss(store=False)
        if wanted.deps_valid is not None:
            changed = wanted.deps_valid(meta.get("deps") or {})
            if changed is not None:
                self.stats.stale[name] = changed
                return None
        if wanted.meta_valid is not None:
            changed = wanted.meta_valid(meta)
            if changed is not None:
                self.stats.stale[name] = changed
                return None
        try:
            codec.verify(opened)
        except codec.Unverified as exc:
            self.stats.fallback(f"unreadable entry for {name}: {exc}; rebuilt")
            return None
        payload = opened.payload
        owned = None
        if meta.get("tree"):
            restored = self._restore(name, key, opened, wanted.factory)
            if restored is None:
                return None
            payload, owned = restored
        unpickling = time.perf_counter()
        lost: str | None = None
        unplaced = False
        try:
            value = codec.load(payload, wanted.resolve, self.paths)
        except Exception as exc:
            unplaced = isinstance(exc, trees.Unplaced)
            lost = codec.lost(exc)
        if lost is not None:
            # What it loaded half-way is collected now, silently: a build makes none of it.
            with codec.quietly_collected():
                pass
            if unplaced:
                return None  # it points into files this session does not have: build it
            # Signed and intact, yet it does not load: the value does not survive pickling
            # (a __getattr__ or __reduce__ that misbehaves). Refuse it from now on.
            self._mark_build(key, name, lost, prints, refused=True)
            return Miss(store=False)
        if value is None:  # stored before None values were refused
            self._mark_build(key, name, NONE_VALUE, prints, refused=True)
            return Miss(store=False)
        load_s = time.perf_counter() - start
        build_s = float(meta.get("build_s", 0.0))
        nbytes = sum(memoryview(f).nbytes for f in opened.payload)
        self.stats.count_hit(name, str(getattr(fetched, "tier", "agent")), nbytes, load_s, build_s)
        if load_s > build_s * LOAD_MARGIN:
            load_s = self._reload_seconds(payload, wanted.resolve, load_s, unpickling)
        if load_s > build_s * LOAD_MARGIN:
            why = f"loading took {load_s * 1e3:.1f} ms, building {build_s * 1e3:.1f} ms"
            self._mark_build(key, name, why, prints)
        digest = str(meta.get("entry") or meta.get("digest"))  # (entries stored before "entry")
        self.entries[key] = digest
        return Hit(
            value,
            list(meta.get("warnings", [])),
            nbytes,
            load_s,
            digest,
            owned,
            dict(meta.get("random_after") or {}),
            meta.get("coverage"),
        )

    def _restore(
        self, name: str, key: str, opened: codec.Opened, factory: Any
    ) -> tuple[list[Any], trees.Owned] | None:
        """Write the files of an entry into fresh directories of this session: the payload
        without them, and those directories (None when they cannot be written)."""
        meta = opened.meta
        count = int(meta.get("blobs", 0))
        split = len(opened.payload) - count
        if factory is None or split < 1:
            return None
        try:
            made = trees.restore(meta["tree"], opened.payload[split:], factory)
        except (OSError, LookupError, TypeError, ValueError) as exc:
            self.stats.fallback(f"could not restore the files of {name} ({exc}); built it")
            return None
        self.paths.add(key, made, trees.basetemp(factory))
        return opened.payload[:split], trees.Owned(made, str(meta.get("tree_digest")))

    def _reload_seconds(
        self,
        payload: Sequence[Any],
        resolve: Callable[[str], Any],
        load_s: float,
        unpickling: float,
    ) -> float:
        """The load time with the unpickling timed again. The first unpickling of a value may
        import the modules of its classes (astropy.table: 0.55 s, against a 0.4 s build that
        imported them too); once imported, a load costs what every later one will. One more
        unpickling, only for a value about to be built from now on."""
        first = time.perf_counter() - unpickling
        gc.collect()  # (then only the copy is collected quietly, below)
        with codec.quietly_collected():
            again = time.perf_counter()
            try:
                codec.load(payload, resolve, self.paths)
            except Exception:
                return load_s
            seconds = time.perf_counter() - again
        return load_s - first + min(first, seconds)

    def _fetch_placed(self, key: str) -> Any:
        """Several agents: LOCATE at the key's directory, then GET from the holders, nearest
        first, then from the home (and, when the home is down or its directory did not answer,
        from the ring's next agents). A copy older than the located version is passed over."""
        ring = self.ring
        assert ring is not None
        directory = self.home(key)
        if directory is None:
            return None
        reply = self.call(lambda c: c.locate([key]), directory)
        located = placement.parse(reply.get(key, [])) if reply is not None else []
        answered = reply is not None and directory.name == ring.home(key)
        order = placement.fetch_order(
            key,
            ring,
            located,
            up=lambda name: self.links[name].down is None,
            rtt={n: link.rtt for n, link in self.links.items() if link.rtt is not None},
            fallbacks=not answered,
        )
        for name, least in order:
            link = self.links[name]
            if link.down is not None:  # failed during this lookup
                continue
            fetched = self.call(lambda c: c.get(key), link)
            if fetched is not None and fetched.version >= least:
                return fetched
        return None

    def _claim(self, key: str, name: str, wanted: _Wanted) -> Hit | Miss:
        """Take the build lease, or wait for whoever holds it to store the value.

        The agent holds a LEASE while another process builds the key and answers as soon as
        the value is stored (or the lease released), so waiting costs no polling.
        """
        deadline = time.monotonic() + self.lease_seconds
        waited = False
        while True:
            asked = time.monotonic()
            wait = max(0.0, min(LEASE_WAIT, deadline - asked))
            reply = self._lease(key, wait)
            if reply is None:
                return Miss(store=False)
            if reply.granted:
                return Miss(store=True, holder=self.holder)
            if reply.present:
                found = self._load(key, name, wanted)
                if found is not None:
                    self.stats.waited += waited
                    return found
                return Miss(store=True)  # present but unusable: build and overwrite
            if time.monotonic() >= deadline:
                self.stats.fallback(f"waited {self.lease_seconds:.0f}s for {name}; built it too")
                return Miss(store=False)
            waited = True
            if time.monotonic() - asked < wait / 2:  # the agent did not wait: do not spin
                time.sleep(LEASE_POLL)

    # -- writing ---------------------------------------------------------------------------
    def store(
        self,
        key: str,
        name: str,
        value: Any,
        deps: Mapping[str, Any],
        record: BuildRecord,
        miss: Miss,
        shares: codec.SharingCheck | None = None,
        tree: trees.Tree | None = None,
        states: Mapping[str, Any] | None = None,
    ) -> int:
        """Offer a freshly built value to the agent (or record why it is built in-process).

        :param shares: see :func:`codec.dump`: a value sharing parts with a dependency's
            value is refused.
        :param tree: the files its build made, stored with it.
        :param states: the states of the dependencies it was built from (for ``deps_valid``
            of :meth:`lookup`).
        Returns the size of its pickle, 0 when it was not pickled."""
        self.stats.count_build(name, record.seconds)
        if not miss.store:
            return 0
        if value is None:
            self._mark_build(key, name, NONE_VALUE, record.fingerprints, refused=True)
            return 0
        start = time.perf_counter()
        try:
            payload = codec.dump(value, deps, shares, self.paths)
        except codec.Unpicklable as exc:
            self._mark_build(key, name, str(exc), record.fingerprints, refused=True)
            return 0
        files: dict[str, Any] = {}
        if tree is not None:
            files = {"tree": tree.manifest, "blobs": len(tree.blobs), "tree_digest": tree.digest}
            payload = [*payload, *tree.blobs]
        nbytes = sum(memoryview(f).nbytes for f in payload)
        if nbytes > self.max_value_bytes:
            why = (
                f"its value is {nbytes / 2**20:.1f} MiB, over statemigrate_max_value_bytes "
                f"({self.max_value_bytes / 2**20:.0f} MiB)"
            )
            self._mark_build(key, name, why, record.fingerprints)
            return nbytes
        meta = {
            "kind": "value",
            "fixture": name,
            "build_s": record.seconds,
            "warnings": record.warnings,
            "inputs": record.fingerprints.to_wire(),
            "deps": dict(states or {}),
            **files,
        }
        if record.random_after:
            meta["random_after"] = record.random_after
        if record.coverage is not None:
            meta["coverage"] = record.coverage
        # The entry's identity (what a dependent was built from: ``deps_valid``), known now;
        # its payload digest may be computed by a client that writes behind.
        entry = meta["entry"] = uuid.uuid4().hex
        unsealed = codec.Unsealed(self.secret, key, meta, payload)

        too_large: list[str] = []

        def put_to(client: Any) -> Any:
            frames = unsealed if getattr(client, "seals_later", False) else unsealed.frames()
            try:
                return client.put(key, frames, {"fixture": name, "nbytes": nbytes})
            except Exception as exc:
                if getattr(exc, "error", None) != "too-large":
                    raise
                too_large.append(str(exc))  # (the agent refused it before keeping anything)
                return None

        put = self.call_home(key, put_to, name)
        if too_large:
            why = (
                f"its value is {nbytes / 2**20:.1f} MiB, more than the agent's tiers can hold "
                "(statemigrate_ram_bytes, statemigrate_disk_bytes)"
            )
            self._mark_build(key, name, why, record.fingerprints)
            return nbytes
        if put is None:
            return nbytes
        self._fresh.add(key)
        self.entries[key] = entry
        self.stats.count_store(name, nbytes, time.perf_counter() - start)
        return nbytes

    def rebuild(self, key: str) -> Miss:
        """Build ``key`` again whatever is stored (its dependency was just rebuilt), holding
        its lease when free so other workers wait for this build instead of repeating it."""
        if self._unreachable(key):
            return Miss(store=False)
        reply = self._lease(key)
        if reply is None:
            return Miss(store=False)
        if reply.granted:
            return Miss(store=True, holder=self.holder)
        return Miss(store=bool(reply.present))  # another holder builds it: do not race it

    def _lease(self, key: str, wait: float = 0.0) -> Any:
        """One LEASE for this process's holder, at the key's home (None when no agent
        answered)."""
        return self.call_home(
            key,
            lambda c: c.lease(
                key,
                self.holder,
                self.lease_seconds,
                pid=os.getpid(),
                host=socket.gethostname(),
                wait=wait,
            ),
        )

    def stored_now(self, key: str) -> bool:
        """This process stored ``key``'s value in this run."""
        return key in self._fresh

    def check_writes(self) -> None:
        """Report values the agents acknowledged but could not write (write-behind)."""
        if not self.stats.bytes_stored:
            return
        for link in self.links.values():
            before = link.write_errors
            if before is None or link.down is not None:
                continue
            reply = self.call(lambda c: c.stats(), link)
            if reply is not None and int(reply.get("write_errors") or 0) > before:
                failed = int(reply["write_errors"]) - before
                if reply.get("writer"):  # this process wrote the disk tier itself
                    self.stats.fallback(
                        f"{reply['writer']}: cannot write {failed} value(s) "
                        f"({reply.get('last_write_error')}); they are built again next run"
                    )
                    continue
                agent = f"agent {link.name}" if self.ring is not None else "the agent"
                self.stats.fallback(
                    f"{agent} could not write {failed} value(s) to disk "
                    f"({reply.get('last_write_error')}); they are built again next run"
                )

    def abandon(self, key: str, miss: Miss) -> None:
        """The build failed: let the next process build it."""
        holder = miss.holder
        if holder is not None:
            self.call_home(key, lambda c: c.release(key, holder))

    def refuse(self, key: str, name: str, why: str, record: BuildRecord) -> None:
        """A built value that must not be stored (and is built from now on): say why."""
        self.stats.count_build(name, record.seconds)
        self._mark_build(key, name, why, record.fingerprints, refused=True)

    def _mark_build(
        self, key: str, name: str, why: str, prints: Fingerprints, *, refused: bool = False
    ) -> None:
        self._build_only[key] = why
        if refused:
            self.refused_keys.add(key)
            self.stats.refused[name] = why
        else:
            self.stats.built_instead[name] = why
        meta = {
            "kind": "build",
            "fixture": name,
            "reason": why,
            "refused": refused,
            "inputs": prints.to_wire(),
        }
        frames = codec.seal(self.secret, key, meta, [])
        self.call_home(key, lambda c: c.put(key, frames, {"fixture": name, "nbytes": 0}))


def warning_to_wire(message: Any) -> list[Any]:
    """A recorded ``warnings.WarningMessage`` as plain data."""
    category = message.category
    return [
        f"{category.__module__}:{category.__qualname__}",
        str(message.message),
        str(message.filename),
        int(message.lineno or 0),
    ]


def warnings_from_wire(items: Sequence[Any]) -> list[tuple[type[Warning], str, str, int]]:
    """Stored warnings back as (category, text, filename, lineno); unknown categories as
    UserWarning."""
    import importlib

    out: list[tuple[type[Warning], str, str, int]] = []
    for cat, text, filename, lineno in items:
        module, _, qualname = str(cat).partition(":")
        category: Any = UserWarning
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type) and issubclass(obj, Warning):
                category = obj
        except Exception:
            pass
        out.append((category, str(text), str(filename), int(lineno)))
    return out
