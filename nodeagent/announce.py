"""Announcements: a holder tells each key's directory agent what it now holds, off the loop.

The agent's loop only queues ``(directory, holder, [key, tier, version])`` items (a tier of
None: dropped); one thread batches them per directory and sends ANNOUNCE with a short timeout.
Best effort: location records are hints (docs/placement.md), so an announcement that cannot be
delivered is counted and dropped, never retried into a queue that grows. A directory that does
not answer is skipped for :data:`DEAD_SECONDS`, so a dead directory costs one short timeout,
not one per announcement, and never the loop's time.

Rejected alternative: sending from the loop with a non-blocking DEALER and no reply. The loop
would then own one socket per peer, and a dead peer's queue would fill zmq's buffers (its
high-water mark) silently; a thread with replies knows what was delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Final

from nodeagent.client import AgentClient, AgentError
from nodeagent.curve import ClientKeys
from nodeagent.protocol import OPERATION_ERRORS

__all__ = ["Announcer"]

log = logging.getLogger("nodeagent")

ANNOUNCE_TIMEOUT: Final = 0.5  # s: one ANNOUNCE; a directory slower than that is skipped
DEAD_SECONDS: Final = 5.0  # s: a directory that did not answer is skipped this long
BATCH: Final = 1000  # entries sent per round, at most (the queue is drained in rounds)

Item = tuple[str, str, list[Any]]  # (directory, holder, [key, tier or None, version])


class Announcer:
    """One thread sending ANNOUNCE batches; :meth:`send` never blocks.

    :param curve: client keys for directories that are not ipc:// or loopback.
    """

    def __init__(self, curve: ClientKeys | None = None) -> None:
        self._curve = curve  # client keys for directories on other hosts
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._clients: dict[str, AgentClient] = {}
        self._dead_until: dict[str, float] = {}
        self.sent = 0  # entries a directory acknowledged
        self.dropped = 0  # entries given up (directory dead, slow or refusing)
        self._thread = threading.Thread(target=self._main, name="announcer", daemon=True)
        self._thread.start()

    def send(self, directory: str, holder: str, key: str, tier: str | None, version: int) -> None:
        self._queue.put((directory, holder, [key, tier, version]))

    def stop(self) -> None:
        """Send what is queued (within the timeouts), then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _main(self) -> None:
        try:
            running = True
            while running:
                item = self._queue.get()
                batch: dict[tuple[str, str], dict[str, list[Any]]] = {}
                count = 0
                while item is not None:
                    directory, holder, entry = item
                    batch.setdefault((directory, holder), {})[entry[0]] = entry  # latest wins
                    count += 1
                    if count >= BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if item is None:
                    running = False
                for (directory, holder), entries in batch.items():
                    self._deliver(directory, holder, list(entries.values()))
        finally:
            for client in self._clients.values():
                # The loop may be sending zero-copy right now: leave pyzmq's gc thread be.
                client.close(stop_zmq_gc=False)
            self._clients.clear()

    def _deliver(self, directory: str, holder: str, entries: list[list[Any]]) -> None:
        if self._dead_until.get(directory, 0.0) > time.monotonic():
            self.dropped += len(entries)
            return
        try:
            client = self._clients.get(directory)
            if client is None:
                client = AgentClient(directory, timeout=ANNOUNCE_TIMEOUT, curve=self._curve)
                self._clients[directory] = client
            client.announce(holder, entries)
            self.sent += len(entries)
            self._dead_until.pop(directory, None)
        except AgentError as exc:
            self.dropped += len(entries)
            if exc.error in OPERATION_ERRORS:  # it is alive, and refused the batch
                log.error("directory %s refused announcements: %s", directory, exc)
                return
            log.warning("directory %s does not answer; announcements dropped: %s", directory, exc)
            self._dead_until[directory] = time.monotonic() + DEAD_SECONDS
            stale = self._clients.pop(directory, None)
            if stale is not None:
                stale.close(stop_zmq_gc=False)
