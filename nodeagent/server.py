"""The agent's ROUTER loop: decode ▸ handler ▸ encode.

Any failure while handling a message (bad header, bad field, a bug in a handler) becomes an
error reply and one log line; the server keeps serving. A message without a routing identity
cannot be answered and is dropped.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq

from nodeagent import __version__
from nodeagent.leases import LeaseTable, pid_alive
from nodeagent.protocol import (
    PROTOCOL_VERSION,
    BindRefused,
    Op,
    ProtocolError,
    check_endpoint,
    decode_request,
    encode_error,
    encode_reply,
)
from nodeagent.tiers import TieredStore, VersionConflict

__all__ = ["AgentServer", "BindRefused", "check_endpoint"]

log = logging.getLogger("nodeagent")

POLL_MS: Final = 200  # ms between checks of the parent process and the stop flag

Payload = Sequence[Any]  # buffers: bytes, memoryview, zmq.Frame
Reply = tuple[dict[str, Any], Payload]
Handler = Callable[[dict[str, Any], list[memoryview]], Reply]


@dataclass
class _Parked:
    """A LEASE that waits (its ``wait`` field) for the key's holder to PUT or RELEASE."""

    envelope: list[Any]
    req_id: int
    fields: dict[str, Any]
    deadline: float


class AgentServer:
    """Serve ``tiers`` and ``leases`` on ``endpoint``.

    :param endpoint: an ``ipc://`` or loopback ``tcp://`` endpoint (see ``check_endpoint``).
    :param parent_pid: when given, the loop exits once that process is gone.
    """

    def __init__(
        self,
        endpoint: str,
        tiers: TieredStore,
        leases: LeaseTable,
        parent_pid: int | None = None,
    ) -> None:
        check_endpoint(endpoint)
        self.requested_endpoint = endpoint
        self.tiers = tiers
        self.leases = leases
        self.parent_pid = parent_pid
        self.endpoint: str | None = None
        self._running = False
        self._deferred: list[Callable[[], None]] = []  # writes to run after the reply
        self._parked: dict[str, list[_Parked]] = {}  # key -> LEASEs waiting for its holder
        self._woken: set[str] = set()  # keys whose parked LEASEs to answer after this reply
        self._writes: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._writer_thread = threading.Thread(target=self._writer, name="writer", daemon=True)
        self._writer_thread.start()
        self.write_errors = 0  # deferred writes that failed (a full disk)
        self.last_write_error: str | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._handlers: dict[Op, Handler] = {
            Op.PING: self._ping,
            Op.STATS: self._stats,
            Op.HAS: self._has,
            Op.GET: self._get,
            Op.PUT: self._put,
            Op.EVICT: self._evict,
            Op.CLEAR: self._clear,
            Op.LEASE: self._lease,
            Op.RELEASE: self._release,
            Op.SHUTDOWN: self._shutdown,
        }

    # -- lifecycle

    def bind(self) -> str:
        """Bind the ROUTER socket; returns the real endpoint (a ``*`` port resolved)."""
        self._context = zmq.Context()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self._socket = sock
        try:
            sock.bind(self.requested_endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def close(self) -> None:
        """Finish pending writes, stop the writer, close the socket (the tiers stay open)."""
        if self._writer_thread.is_alive():
            self._writes.put(None)
            self._writer_thread.join()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def _parent_gone(self) -> bool:
        if self.parent_pid is None:
            return False
        return not pid_alive(self.parent_pid)

    def serve_forever(self) -> None:
        """Answer requests until SHUTDOWN or the parent process is gone."""
        if self._socket is None:
            self.bind()
        sock = self._socket
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        self._running = True
        next_check = time.monotonic() + POLL_MS / 1000
        while self._running:
            if poller.poll(self._poll_ms()):
                frames = sock.recv_multipart(copy=False)
                self._handle(sock, frames)
            now = time.monotonic()
            if self._parked:
                self._answer_parked(sock, now, recheck=now >= next_check)
            if now >= next_check:
                next_check = now + POLL_MS / 1000
                if self._parent_gone():
                    log.warning("parent process %s is gone; exiting", self.parent_pid)
                    break
        self._answer_parked(sock, math.inf)  # stopping: nobody is left waiting for a reply

    # -- one message

    def _handle(self, sock: zmq.Socket[bytes], frames: list[zmq.Frame]) -> None:
        if len(frames) < 1 or len(frames[0].bytes) == 0:
            log.error("dropped a message without a routing identity")
            return
        # A DEALER peer sends [identity, header, payload...]; a REQ peer adds an empty delimiter
        # after the identity. A header is never empty, so the two cannot be confused.
        split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope: list[Any] = frames[:split]
        body = frames[split:]
        req_id: int | None = None
        try:
            if not body:
                raise ProtocolError("bad-header", "message has no header frame")
            op, req_id, fields = decode_request(body[0].buffer)
            if op is Op.LEASE and self._park(envelope, req_id, fields):
                return
            reply, payload = self._handlers[op](fields, [f.buffer for f in body[1:]])
            out = [encode_reply(req_id, **reply), *payload]
        except ProtocolError as exc:
            req_id = exc.req_id if exc.req_id is not None else req_id
            log.error("request %s refused: %s: %s", req_id, exc.error, exc.message)
            out = [encode_error(req_id, exc.error, exc.message)]
        except VersionConflict as exc:
            log.info("request %s: version conflict: %s", req_id, exc)
            out = [encode_error(req_id, VersionConflict.error, str(exc))]
        except Exception as exc:
            log.error("request %s failed: %s: %s", req_id, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            out = [encode_error(req_id, "internal", f"{type(exc).__name__}: {exc}")]
        try:
            sock.send_multipart([*envelope, *out], copy=False)
        except zmq.ZMQError as exc:  # e.g. the peer vanished; nothing to answer
            log.error("could not send reply to request %s: %s", req_id, exc)
        deferred, self._deferred = self._deferred, []
        for write in deferred:
            self._writes.put(write)
        woken, self._woken = self._woken, set()
        for key in sorted(woken):
            self._answer_parked(sock, math.inf, key)

    # -- LEASEs that wait for the holder (long poll)

    def _park(self, envelope: list[Any], req_id: int, fields: dict[str, Any]) -> bool:
        """Keep a LEASE unanswered while another live holder builds the key, up to ``wait`` s.

        The waiter is answered as soon as the holder PUTs (``present``) or RELEASEs (it may
        then be granted), or at its deadline with the usual "held" reply; so it neither polls
        nor sleeps, and a dead holder is still noticed within ``wait`` seconds.
        """
        wait = fields.get("wait")
        key = fields["key"]
        if not wait or self._decided(key, fields["holder"]):
            return False
        deadline = time.monotonic() + float(wait)
        self._parked.setdefault(key, []).append(_Parked(envelope, req_id, fields, deadline))
        return True

    def _poll_ms(self) -> int:
        """Poll timeout: the next check of the parent, or the next parked LEASE's deadline."""
        if not self._parked:
            return POLL_MS
        first = min(p.deadline for waiting in self._parked.values() for p in waiting)
        return max(0, min(POLL_MS, math.ceil((first - time.monotonic()) * 1000)))

    def _answer_parked(
        self,
        sock: zmq.Socket[bytes],
        now: float,
        key: str | None = None,
        *,
        recheck: bool = True,
    ) -> None:
        """Answer the parked LEASEs of ``key`` (all keys when None) that are due at ``now`` or,
        with ``recheck``, decided by now (the holder's lease expired or its process died).

        ``now=inf`` answers them whatever their deadline: the key was PUT or released, or the
        agent is stopping. Each is evaluated afresh, in arrival order: the first may be granted
        a released lease, the others then wait on (until their own deadline).
        """
        keys = [key] if key is not None else list(self._parked)
        for k in keys:
            waiting = self._parked.pop(k, [])
            still: list[_Parked] = []
            for parked in waiting:
                due = parked.deadline <= now
                if not due and not (recheck and self._decided(k, parked.fields["holder"])):
                    still.append(parked)
                    continue
                reply, _ = self._lease(parked.fields, [])
                try:
                    out = encode_reply(parked.req_id, **reply)
                    sock.send_multipart([*parked.envelope, out], copy=False)
                except zmq.ZMQError as exc:
                    log.error("could not answer parked lease %s: %s", parked.req_id, exc)
            if still:
                self._parked[k] = still

    def _decided(self, key: str, holder: str) -> bool:
        """Would a LEASE of ``key`` by ``holder`` get a definite answer now?"""
        if self.tiers.has(key) is not None:
            return True
        current = self.leases.holder(key)
        return current is None or current == holder

    # -- write-behind: one writer thread, in order

    def _writer(self) -> None:
        """Run the writes handlers left for after their reply (a PUT's disk and store writes).

        Reads never wait for them (the tiers serve pending entries from memory); a failure (a
        full disk) is counted and reported in PING and STATS. Rejected alternative: running
        them in the loop after each reply; the next request, often a GET miss of another
        worker, then waited for a disk write of tens of MiB.
        """
        while True:
            write = self._writes.get()
            try:
                if write is None:
                    return
                write()
            except Exception as exc:
                self.write_errors += 1
                self.last_write_error = f"{type(exc).__name__}: {exc}"
                log.error("deferred write failed: %s", self.last_write_error)
            finally:
                self._writes.task_done()

    def _drain(self) -> None:
        """Wait for every pending write (before STATS, EVICT, CLEAR and shutting down)."""
        self._writes.join()

    # -- handlers: (fields, payload frames) -> (reply fields, payload frames)

    def _ping(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "write_errors": self.write_errors,
        }, ()

    def _stats(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        psutil: Any = importlib.import_module("psutil")  # lazy: only STATS needs it

        self._drain()  # counts and write errors include every acknowledged PUT
        memory = psutil.virtual_memory()
        try:
            cpu_load: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows
            cpu_load = None
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tiers": self.tiers.stats(),
            "leases": len(self.leases),
            "mem_total": int(memory.total),
            "mem_available": int(memory.available),
            "cpu_load": cpu_load,
            "write_errors": self.write_errors,
            "last_write_error": self.last_write_error,
        }, ()

    def _has(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        return {"tier": self.tiers.has(fields["key"])}, ()

    def _get(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        found = self.tiers.get(fields["key"])
        if found is None:
            return {"found": False, "tier": None, "version": None, "meta": None}, ()
        entry, tier = found
        reply = {"found": True, "tier": tier, "version": entry.version, "meta": dict(entry.meta)}
        return reply, entry.frames

    def _put(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        key = fields["key"]
        version = self.tiers.put(
            key, payload, fields["meta"], fields["expect_version"], defer=self._deferred
        )
        self.leases.drop(key)
        if key in self._parked:
            self._woken.add(key)
        return {"version": version}, ()

    def _evict(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        self._drain()  # a pending write must not bring the entry back
        return {"removed": self.tiers.evict(fields["key"])}, ()

    def _clear(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        self._drain()
        return {"removed": self.tiers.clear()}, ()

    def _lease(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        key = fields["key"]
        if self.tiers.has(key) is not None:
            return {"granted": False, "present": True, "holder": None, "expires_in": 0.0}, ()
        result = self.leases.acquire(
            key, fields["holder"], float(fields["ttl"]), fields["pid"], fields["host"]
        )
        return {
            "granted": result.granted,
            "present": False,
            "holder": result.holder,
            "expires_in": result.expires_in,
        }, ()

    def _release(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        if fields["key"] in self._parked:
            self._woken.add(fields["key"])
        return {"released": self.leases.release(fields["key"], fields["holder"])}, ()

    def _shutdown(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        self._running = False
        return {}, ()
