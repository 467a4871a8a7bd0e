"""Background loads for PREFETCH and MIGRATE, run off the agent's ROUTER loop.

A loader thread only *reads*: a key from this agent's own disk or store tier, or from a peer
agent over an :class:`~nodeagent.client.AgentClient`. It hands the entry back to the loop,
which alone decides whether to keep it (the key may have been evicted or overwritten in the
meantime), answers the GETs that waited for it, and schedules any disk write on the writer
thread. So the loop stays the only thread that changes RAM, versions and pending writes, and
one agent stays linearizable per key.

Rejected alternative: installing the entry from the loader thread under a lock. Every
handler would then need that lock, and a write-behind racing a load could put an older
version on disk after a newer one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from nodeagent.client import AgentClient, AgentError
from nodeagent.curve import ClientKeys
from nodeagent.protocol import LINK_ERRORS
from nodeagent.tiers import Entry

__all__ = ["Load", "Loader", "PeerReader"]

log = logging.getLogger("nodeagent")

PEER_TIMEOUT: Final = 30.0  # s: one GET from a peer (a large value, a slow store behind it)
PEER_PING_TIMEOUT: Final = 2.0  # s: a peer that does not answer PING by then is dead

QUEUED: Final = "queued"
RUNNING: Final = "running"
CANCELLED: Final = "cancelled"
DONE: Final = "done"


@dataclass(eq=False)
class Load:
    """One key to load.

    :param source: ``"local"`` (this agent's disk, else its store) or ``"migrate"`` (``peer``).
    :param target: ``"ram"`` or ``"disk"``; the loop may raise ``"disk"`` to ``"ram"``.
    :param nbytes: its size when known beforehand (for STATS ``queued_bytes``), else 0.
    """

    key: str
    source: str
    target: str
    peer: str | None = None
    nbytes: int = 0
    #: GETs parked until the load ends: (routing envelope, request id).
    waiters: list[tuple[list[Any], int]] = field(default_factory=list)
    #: Still the key's current load; an EVICT or CLEAR detaches it (its copy is then not kept).
    attached: bool = True
    # Written under the loader's lock (state) or by the loader thread before it hands the
    # load back (the rest); the loop reads them only after that.
    state: str = QUEUED
    entry: Entry | None = None
    found_in: str | None = None  # "disk", "store" or "migrate": where the bytes came from
    error: str | None = None
    seconds: float = 0.0


class Loader:
    """One thread running loads in order; a queued load can be moved first or cancelled.

    :param read: fills ``load.entry`` and ``load.found_in`` (or leaves ``entry`` None for a
        miss); an exception becomes ``load.error``. Runs in the thread.
    :param done: called in the thread with each load that ran (it must be thread-safe).
    :param idle: called in the thread whenever the queue runs empty and when it stops.
    :param exit: called in the thread as it ends.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[Load], None],
        done: Callable[[Load], None],
        idle: Callable[[], None] | None = None,
        exit: Callable[[], None] | None = None,
    ) -> None:
        self._read = read
        self._done = done
        self._idle = idle
        self._exit = exit  # run in the thread as it ends (closes its own connections)
        # Cancelled and hurried loads stay in the deque and are skipped when their turn comes
        # (state is no longer QUEUED): removing them would cost O(n) each.
        self._queue: deque[Load] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, load: Load) -> None:
        with self._cond:
            self._queue.append(load)
            self._cond.notify()

    def hurry(self, load: Load) -> None:
        """Run ``load`` next if it has not started (a GET waits for it)."""
        with self._cond:
            if load.state == QUEUED:
                self._queue.appendleft(load)

    def cancel(self, load: Load) -> bool:
        """Drop ``load`` if it has not started; returns whether it was dropped."""
        with self._cond:
            if load.state != QUEUED:
                return False
            load.state = CANCELLED
            return True

    def stop(self) -> list[Load]:
        """Stop after the running load; returns the loads that never started."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        with self._cond:
            left = [load for load in dict.fromkeys(self._queue) if load.state == QUEUED]
            for load in left:
                load.state = CANCELLED
            self._queue.clear()
        return left

    def _next(self) -> Load | None:
        with self._cond:
            while True:
                while self._queue and self._queue[0].state != QUEUED:
                    self._queue.popleft()
                if self._stopping:
                    return None
                if self._queue:
                    load = self._queue.popleft()
                    load.state = RUNNING
                    return load
                if self._idle is not None:
                    self._cond.release()
                    try:
                        self._idle()
                    finally:
                        self._cond.acquire()
                    if self._queue or self._stopping:
                        continue
                self._cond.wait()

    def _main(self) -> None:
        try:
            while (load := self._next()) is not None:
                started = time.monotonic()
                try:
                    self._read(load)
                except Exception as exc:
                    load.entry = None
                    load.error = f"{type(exc).__name__}: {exc}"
                load.seconds = time.monotonic() - started
                load.state = DONE
                self._done(load)
        finally:
            if self._idle is not None:
                self._idle()
            if self._exit is not None:
                self._exit()


class PeerReader:
    """Reads keys from peer agents (MIGRATE), one client per peer while its loads are queued.

    A peer that does not answer PING within 2 s, or whose GET times out, is dead for the rest
    of the queue: its other keys fail at once instead of waiting for a timeout each.

    :param stopping: set when the agent stops; a GET in progress is then given up.
    :param curve: client keys for peers that are not ipc:// or loopback.
    """

    def __init__(self, stopping: threading.Event, curve: ClientKeys | None = None) -> None:
        self._stopping = stopping
        self._curve = curve
        self._clients: dict[str, AgentClient] = {}
        self._dead: set[str] = set()

    def __call__(self, load: Load) -> None:
        peer = load.peer
        assert peer is not None
        client = self._client(peer)
        try:
            fetched = client.get(load.key)
        except AgentError as exc:
            if exc.error == "corrupt":  # the peer deleted its damaged copy: it lacks the key
                load.found_in = "migrate"
                load.error = f"{peer} held a corrupt copy: {exc}"
                return
            if exc.error in LINK_ERRORS:
                self._forget(peer, dead=True)
            raise
        load.found_in = "migrate"
        if fetched is None:
            load.error = f"{peer} does not hold the key"
            return
        load.entry = Entry(tuple(fetched.frames), fetched.meta, fetched.version)

    def _client(self, peer: str) -> AgentClient:
        if peer in self._dead:
            raise AgentError(peer, "dead", "did not answer earlier in this batch")
        client = self._clients.get(peer)
        if client is None:
            client = AgentClient(
                peer, timeout=PEER_TIMEOUT, interrupt=self._stopping.is_set, curve=self._curve
            )
            self._clients[peer] = client
            try:
                client.ping(timeout=PEER_PING_TIMEOUT)
            except AgentError:
                self._forget(peer, dead=True)
                raise
        return client

    def _forget(self, peer: str, dead: bool) -> None:
        client = self._clients.pop(peer, None)
        if client is not None:
            # The agent's loop may be sending zero-copy right now: leave pyzmq's gc thread be.
            client.close(stop_zmq_gc=False)
        if dead:
            log.warning("migration source %s does not answer", peer)
            self._dead.add(peer)

    def idle(self) -> None:
        """The queue ran empty: close the clients and give dead peers another chance."""
        for peer in list(self._clients):
            self._forget(peer, dead=False)
        self._dead.clear()
