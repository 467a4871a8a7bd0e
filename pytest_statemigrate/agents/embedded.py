"""The run's own agent: spawned early, used when it answers, stopped at the end; or none at
all, when this process alone reads or writes the disk tier (:mod:`.disk`)."""

from __future__ import annotations

import functools
import os
import select
from typing import Any

from nodeagent.protocol import Fetched
from pytest_statemigrate.settings import Settings

from .disk import DiskClient, open_disk_tier

__all__ = ["EmbeddedAgent"]


class EmbeddedAgent:
    """An agent for this run: spawned early (it boots while pytest collects), waited for on
    first use, stopped at the end; in a single-process run on a stored disk tier, spawned at
    the first miss (:attr:`deferred`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: Any = None
        #: Nothing was stored when the agent was spawned: no disk tier yet and no tier 3.
        self.empty = False
        self._disk: Any = None  # the disk tier, opened in this process by local_get
        self._no_local = False  # opening it here failed: always ask the agent
        #: This process is the run's only client (not xdist's controller): on an empty store
        #: it writes the disk tier itself (:class:`DiskClient`) and no agent is started.
        self.single = True
        self.direct: DiskClient | None = None
        #: A single-process run on a stored disk tier and no tier 3: the agent starts only when
        #: a key misses (:meth:`local_miss`); until then this process reads the disk tier
        #: itself. A run whose values are all stored starts none.
        self.deferred = False
        #: Why the agent could not start (its log cannot be opened, Python cannot run): raised
        #: again to every later user, which reports it and builds in-process, without retrying.
        self.failed: Exception | None = None
        #: One line each: what opening the disk tier here had to repair (a corrupt database
        #: moved aside), for the summary.
        self.notices: list[str] = []

    def started_empty(self) -> bool:
        """This run's agent started on an empty store, and this process is its only client
        (a single-process run): a key it did not store itself can only miss."""
        return self.empty and (self.process is not None or self.direct is not None)

    def up(self) -> bool:
        """The agent has booted (answers now): True without waiting for it."""
        process = self.process
        if process is None:
            return False
        if not process.ready:
            out = process.process.stdout
            try:
                if out is None or out.closed or not select.select([out], [], [], 0)[0]:
                    return False
                process.wait_ready(self.settings.timeout)  # its ready line is there: fast
            except Exception:  # (select on a pipe is POSIX-only) the proxy finds out later
                return False
        return bool(process.ready)

    def local_client(self) -> DiskClient | None:
        """The disk tier as this run's client, when this process alone uses a store that was
        empty at the start (a cold single-process run): then an agent could serve nothing
        (nothing is stored, nobody else asks), and starting one and shipping every value to
        it costs CPU the tests need. The next run starts an agent on what this one wrote."""
        if self.direct is None and self.process is None and self.single:
            self.spawn(direct=True)
        return self.direct

    def local_get(self, key: str) -> Any:
        """Read ``key`` straight from the disk tier while the agent boots; None otherwise.

        The disk tier is a diskcache directory on this machine, safe to read from several
        processes: a warm run's hits need not wait for the agent (it is waited for only when
        something must be written or leased). An agent started at a miss (:attr:`deferred`)
        holds in RAM only what this process stored since, so hits go on reading the disk tier
        here. Returns a Fetched, or None to ask the agent.
        """
        process = self.process
        booted = process is not None and process.ready and not self.deferred
        if self.empty or self._no_local or booted:
            return None
        if process is None and not self.deferred:
            return None
        self.open_disk()
        if self._disk is None:
            return None
        corrupt: list[str] = []
        entry = self._disk.get(key, corrupt)
        if entry is None:
            if corrupt:  # (deleted; the proxy's summary line names the fixture)
                from nodeagent.tiers import CorruptEntry

                raise CorruptEntry(corrupt[0])
            return None
        frames = [memoryview(f) for f in entry.frames]
        return Fetched(frames, dict(entry.meta), entry.version, "disk")

    def local_miss(self) -> bool:
        """A key :meth:`local_get` did not find is a miss when no agent has started yet: one
        would serve the same disk tier, with nothing in RAM but what this process stores. The
        agent starts now, so that it boots while the value builds; the PUT waits for it."""
        if not self.deferred or self.process is not None or self._disk is None:
            return False
        try:
            self.spawn()
        except Exception:  # the link finds out, and the run builds in-process
            return False
        return True

    def open_disk(self) -> None:
        """Open the disk tier in this process (for warm runs, before the first lookup, so that
        opening it is not counted as the cost of loading a value)."""
        if self._disk is None and not self.empty and not self._no_local:
            self._disk = open_disk_tier(self.settings)
            # Reading locally is an optimisation: when it cannot open, the agent serves.
            self._no_local = self._disk is None
            if self._disk is not None and getattr(self._disk, "notice", None):
                self.notices.append(str(self._disk.notice))

    def close_disk(self) -> None:
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()
        direct, self.direct = self.direct, None
        if direct is not None:
            direct.shut()

    def spawn(self, direct: bool = False) -> None:
        """Start the agent, or with ``direct`` on an empty store, open the disk tier here."""
        if self.process is None and self.direct is None:
            s = self.settings
            self.empty = s.store is None and not s.disk_dir.exists()
            s.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if direct and self.empty and self.single:
                from nodeagent.tiers import DiskTier  # (imported here: not on a thread)

                self.direct = DiskClient(
                    functools.partial(DiskTier, str(s.disk_dir), s.disk_bytes), str(s.disk_dir)
                )
                return
            if direct and self.single and s.store is None and not s.refresh and not self.deferred:
                self.deferred = True  # started by local_miss, or when a link connects
                return
            if self.failed is not None:
                raise self.failed
            from nodeagent.launcher import spawn_agent

            try:
                self.process = spawn_agent(
                    disk_dir=str(s.disk_dir),
                    ram_bytes=s.ram_bytes,
                    disk_bytes=s.disk_bytes,
                    store=s.store,
                    parent_pid=os.getpid(),
                    log_file=str(s.store_dir / "agent.log"),
                )
            except Exception as exc:
                self.failed = exc
                raise

    def endpoint(self) -> str:
        self.spawn()
        if self.process is None:  # writing the disk tier directly: there is no agent
            raise RuntimeError("no agent in a direct run")
        return str(self.process.wait_ready(self.settings.timeout).endpoint)

    def planned_endpoint(self) -> str:
        """The endpoint without waiting for the agent, when it is known in advance (ipc).

        Clients may connect before the agent binds: zmq connects when it can, and the first
        request waits for the reply within the client's timeout.
        """
        self.single = False
        self.spawn()
        planned = str(self.process.endpoint)
        return planned if planned.startswith("ipc://") else self.endpoint()

    def stop(self) -> None:
        self.close_disk()
        process, self.process = self.process, None
        if process is not None:
            process.stop()
