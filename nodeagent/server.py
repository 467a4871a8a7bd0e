"""The agent's ROUTER loop: decode ▸ handler ▸ encode.

Any failure while handling a message (bad header, bad field, a bug in a handler) becomes an
error reply and one log line; the server keeps serving. A message without a routing identity
cannot be answered and is dropped.

Threads: the loop is the only one that touches RAM, versions, leases and the socket, which is
what makes one agent linearizable per key. Besides it run the writer (write-behind of PUTs and
of loaded copies, in order) and two loaders (``nodeagent.loads``: PREFETCH reads of this
agent's disk and store, MIGRATE reads from peers), which hand their results back through a
socket pair the loop polls. All are joined when the agent stops. With CURVE keys a ZAP
authenticator thread (``zmq.auth.thread.ThreadAuthenticator``) answers the handshakes; it
accepts the client public keys found in the keys' authorized directory, is told to reread
them by :meth:`AgentServer.reload_keys`, and is stopped with the socket. Once told a ring of
several agents (RING), an announcer thread (``nodeagent.announce``) tells each key's directory
agent what this agent now holds; the loop only queues those announcements.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import zmq

from nodeagent import __version__, private
from nodeagent.announce import Announcer
from nodeagent.curve import ClientKeys, KeysError, ServerKeys
from nodeagent.leases import LeaseTable, TooManyLeases, pid_alive
from nodeagent.loads import QUEUED, Load, Loader, PeerReader
from nodeagent.placement import HashRing, LocationMap
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
from nodeagent.tiers import DiskFull, Entry, TieredStore, TierError, TooLarge, VersionConflict

__all__ = ["AgentServer", "BindRefused", "check_endpoint"]

log = logging.getLogger("nodeagent")

POLL_MS: Final = 200  # ms between checks of the parent process and the stop flag
#: Bytes a message frame may have beyond the largest value a tier holds (its header, meta).
FRAME_SLACK: Final = 2**20  # 1 MiB
#: The frame cap (zmq MAXMSGSIZE) of an agent with a store, whose size nothing bounds.
STORE_FRAME_BYTES: Final = 4 * 2**30  # 4 GiB

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


@dataclass
class PrefetchCounters:
    """STATS ``prefetch``: what background loads (PREFETCH and MIGRATE) did and whether the
    copies they made were used."""

    loads: int = 0  # copies kept
    bytes: int = 0  # their bytes
    used_bytes: int = 0  # bytes of kept copies later served by a GET (each copy once)
    waits: int = 0  # GETs that waited for a load in flight instead of reading a tier
    failed: int = 0  # loads that found nothing (key gone, peer without it, dead peer, error)
    cancelled: int = 0  # loads dropped by an EVICT, CLEAR or PUT of their key
    discarded: int = 0  # copies read but not kept: the agent held that or a newer version


class AgentServer:
    """Serve ``tiers`` and ``leases`` on ``endpoint``.

    :param endpoint: an ``ipc://`` or loopback ``tcp://`` endpoint, or with ``curve`` any
        ``tcp://`` endpoint (see ``check_endpoint``).
    :param parent_pid: when given, the loop exits once that process is gone.
    :param curve: serve CURVE with these keys: only clients whose public key is in
        ``curve.authorized`` get through the handshake.
    :param peer_keys: client keys this agent talks to its peers with (ANNOUNCE to a key's
        directory, MIGRATE from a source); without them it reaches only ipc:// and loopback
        peers.
    """

    def __init__(
        self,
        endpoint: str,
        tiers: TieredStore,
        leases: LeaseTable,
        parent_pid: int | None = None,
        curve: ServerKeys | None = None,
        peer_keys: ClientKeys | None = None,
    ) -> None:
        check_endpoint(endpoint, curve=curve is not None)
        self.curve = curve
        self.peer_keys = peer_keys
        self._auth: Any = None  # the ZAP authenticator, while bound with CURVE or a token
        self._token: str | None = None  # PLAIN password of a loopback tcp agent without CURVE
        #: Z85 public keys authorized now; with CURVE, a request from a connection made with
        #: any other key (one removed from authorized/ since) is refused.
        self._allowed: frozenset[str] = frozenset() if curve is None else curve.allowed
        self._reload = threading.Event()  # reload_keys() was called: reread authorized/
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
        # Background loads. A key has at most one attached load (``_loading``); ``_open``
        # holds every load not yet finished, detached ones included, for STATS.
        self._loading: dict[str, Load] = {}
        self._open: set[Load] = set()
        self._unanswered: list[Load] = []  # cancelled loads whose waiters get a plain GET
        self._finished: queue.SimpleQueue[Load] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()  # a loader tells the loop: load done
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._loaders_stopped = False
        self._local = Loader("loader", self._read_local, self._loaded, exit=tiers.close_thread)
        peers = PeerReader(self._stopping, curve=peer_keys)
        self._migrations = Loader(
            "migrator", peers, self._loaded, idle=peers.idle, exit=tiers.close_thread
        )
        self.prefetch = PrefetchCounters()
        self._bandwidth: dict[str, list[float]] = {}  # source -> [bytes, seconds] of loads
        self._prefetched: dict[str, tuple[int, int]] = {}  # key -> (version, bytes), unused
        # Placement over several agents (docs/placement.md): the ring a client told this agent
        # (None: it serves alone, and nothing is announced), its name on it, the location
        # records it keeps as the directory of its arc, and the thread announcing to others.
        self.ring: HashRing | None = None
        self.name: str | None = None
        self.locations = LocationMap()
        self._announcer: Announcer | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._handlers: dict[Op, Handler] = {
            Op.PING: self._ping,
            Op.STATS: self._stats,
            Op.HAS: self._has,
            Op.GET: self._get,
            Op.PUT: self._put,
            Op.PREFETCH: self._prefetch,
            Op.MIGRATE: self._migrate,
            Op.EVICT: self._evict,
            Op.CLEAR: self._clear,
            Op.LEASE: self._lease,
            Op.RELEASE: self._release,
            Op.RING: self._ring,
            Op.LOCATE: self._locate,
            Op.ANNOUNCE: self._announce_op,
            Op.SHUTDOWN: self._shutdown,
        }

    # -- lifecycle

    def bind(self) -> str:
        """Bind the ROUTER socket; returns the real endpoint (a ``*`` port resolved).

        Who gets served (docs/security.md): with CURVE keys, the authorized clients; on a
        loopback tcp port without keys, clients that present this agent's token
        (``nodeagent.private``); on ``ipc://``, this user (the socket is made 0700).

        :raises LocalAuthError: the token file cannot be written.
        """
        self._context = zmq.Context()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes())  # (before bind: it is copied)
        self._socket = sock
        try:
            if self.curve is not None:
                self._start_auth(sock)
            elif self.requested_endpoint.startswith("tcp://"):
                self._start_token_auth(sock)
            # The umask makes the ipc socket 0700 from the moment it exists (a chmod after
            # bind leaves a moment in which any user could connect). It is the process's:
            # an agent process keeps 077 anyway (__main__).
            umask = os.umask(0o077)
            try:
                sock.bind(self.requested_endpoint)
            finally:
                os.umask(umask)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if self._token is not None:
                private.publish_token(self.endpoint, self._token, os.getpid())
        except (zmq.ZMQError, private.LocalAuthError):
            self.close()
            raise
        return self.endpoint

    def _start_token_auth(self, sock: zmq.Socket[bytes]) -> None:
        """Serve only clients that send this agent's token (PLAIN, checked by ZAP): a
        loopback port is open to every user of the machine. The check is made once per
        connection, in the handshake; requests pay nothing for it."""
        from zmq.auth.thread import ThreadAuthenticator

        assert self._context is not None
        self._token = private.make_token()
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("nodeagent.auth"))
        self._auth.start()
        self._auth.configure_plain(domain="*", passwords={private.PLAIN_USER: self._token})
        sock.plain_server = True

    def max_frame_bytes(self) -> int:
        """The largest frame the agent reads: the largest value a tier can hold, plus
        :data:`FRAME_SLACK`. zmq drops a peer that sends a larger frame before it is read
        into memory (the client then fails at once: see AgentClient); a PUT whose frames
        together exceed every tier is refused as ``too-large`` after it is read."""
        largest = self.tiers.max_entry_bytes()
        return (STORE_FRAME_BYTES if largest is None else largest) + FRAME_SLACK

    def _start_auth(self, sock: zmq.Socket[bytes]) -> None:
        """Start the ZAP authenticator and make ``sock`` a CURVE server (before it binds)."""
        from zmq.auth.thread import ThreadAuthenticator

        curve = self.curve
        assert curve is not None and self._context is not None
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("nodeagent.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(curve.authorized))
        sock.curve_secretkey = curve.secret
        sock.curve_publickey = curve.public
        sock.curve_server = True
        log.info("CURVE on: %d client key(s) authorized in %s", curve.clients, curve.authorized)

    def reload_keys(self) -> None:
        """Reread the authorized client keys (thread- and signal-safe: the loop does it)."""
        self._reload.set()

    def _reload_keys(self) -> None:
        self._reload.clear()
        if self._auth is None or self.curve is None:
            return
        try:
            self.curve = ServerKeys.load(self.curve.directory)
        except KeysError as exc:  # keep the keys loaded before
            log.error("keys not reloaded: %s", exc)
            return
        self._auth.configure_curve(domain="*", location=str(self.curve.authorized))
        self._allowed = self.curve.allowed
        log.warning("reloaded %d authorized client key(s)", self.curve.clients)

    def close(self) -> None:
        """Stop the loaders, finish pending writes, stop the writer, close the socket (the
        tiers stay open)."""
        self._stop_loads()
        if self._announcer is not None:
            self._announcer.stop()
        self._wake_r.close()
        self._wake_w.close()
        if self._writer_thread.is_alive():
            self._writes.put(None)
            self._writer_thread.join()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._token is not None and self.endpoint is not None:
            private.withdraw_token(self.endpoint, self._token)
            self._token = None
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
        poller.register(self._wake_r, zmq.POLLIN)
        self._running = True
        next_check = time.monotonic() + POLL_MS / 1000
        while self._running:
            events = dict(poller.poll(self._poll_ms()))
            if sock in events:
                frames = sock.recv_multipart(copy=False)
                self._handle(sock, frames)
            if self._wake_r.fileno() in events:  # zmq reports plain sockets by fd
                self._finish_loads(sock)
            now = time.monotonic()
            if self._parked:
                self._answer_parked(sock, now, recheck=now >= next_check)
            if now >= next_check:
                next_check = now + POLL_MS / 1000
                if self._reload.is_set():
                    self._reload_keys()
                if self._parent_gone():
                    log.warning("parent process %s is gone; exiting", self.parent_pid)
                    break
        self._answer_parked(sock, math.inf)  # stopping: nobody is left waiting for a reply
        self._stop_loads(sock)
        self.tiers.close_thread()  # this loop's own disk connection (it may run in a thread)

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
            if self.curve is not None and not self._authorized(frames[0]):
                raise ProtocolError("auth", "this client's key is no longer authorized")
            if not body:
                raise ProtocolError("bad-header", "message has no header frame")
            op, req_id, fields = decode_request(body[0].buffer)
            if op is Op.LEASE and self._park(envelope, req_id, fields):
                return
            if op is Op.GET and self._park_get(envelope, req_id, fields["key"]):
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
        except (TierError, TooManyLeases) as exc:
            log.warning("request %s refused: %s: %s", req_id, exc.error, exc)
            out = [encode_error(req_id, exc.error, str(exc))]
        except Exception as exc:
            log.error("request %s failed: %s: %s", req_id, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            out = [encode_error(req_id, "internal", f"{type(exc).__name__}: {exc}")]
        self._send(sock, envelope, out, req_id)
        self._after_reply(sock)

    def _authorized(self, frame: zmq.Frame) -> bool:
        """Whether the connection ``frame`` came on was made with a key authorized now: a
        reload (SIGHUP) that removed a key leaves its connections open, and zmq does not
        check them again (the ZAP user id is the key in Z85)."""
        if self._reload.is_set():
            self._reload_keys()
        try:
            return frame.get("User-Id") in self._allowed
        except zmq.ZMQError:  # no ZAP metadata
            return False

    def _send(
        self, sock: zmq.Socket[bytes], envelope: list[Any], out: list[Any], req_id: Any
    ) -> None:
        try:
            sock.send_multipart([*envelope, *out], copy=False)
        except zmq.ZMQError as exc:  # e.g. the peer vanished; nothing to answer
            log.error("could not send reply to request %s: %s", req_id, exc)

    def _after_reply(self, sock: zmq.Socket[bytes] | None) -> None:
        """Hand deferred writes to the writer; answer what the last step woke up (with a
        socket: a server closed without serving has nobody to answer)."""
        deferred, self._deferred = self._deferred, []
        for write in deferred:
            self._writes.put(write)
        if sock is None:
            return
        unanswered, self._unanswered = self._unanswered, []
        for load in unanswered:
            self._answer_waiters(sock, load, None)
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
                try:
                    reply, _ = self._lease(parked.fields, [])
                    out = encode_reply(parked.req_id, **reply)
                except TooManyLeases as exc:
                    out = encode_error(parked.req_id, exc.error, str(exc))
                try:
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

    # -- background loads (PREFETCH, MIGRATE) and the GETs that wait for them

    def _loader(self, load: Load) -> Loader:
        return self._migrations if load.source == "migrate" else self._local

    def _start(self, load: Load) -> None:
        self._loading[load.key] = load
        self._open.add(load)
        self._loader(load).submit(load)

    def _read_local(self, load: Load) -> None:
        """Loader thread: read the key from disk, else the store (no promotion)."""
        found = self.tiers.read_below(load.key)
        if found is not None:
            load.entry, load.found_in = found

    def _loaded(self, load: Load) -> None:
        """Loader thread: hand a finished load to the loop and wake it."""
        self._finished.put(load)
        # OSError: the pair is full (the loop is due to wake anyway) or closed (stopping).
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _park_get(self, envelope: list[Any], req_id: int, key: str) -> bool:
        """Keep a GET of a key being loaded unanswered until the load ends, so that the key
        is read from a lower tier once, not once by the load and once by the GET."""
        load = self._loading.get(key)
        if load is None or self.tiers.in_memory(key) is not None:
            return False
        if load.source == "migrate" and self.tiers.has(key) is not None:
            return False  # this agent holds a copy: no need to wait for a peer's
        load.waiters.append((envelope, req_id))
        self.prefetch.waits += 1
        self._loader(load).hurry(load)
        return True

    def _detach(self, load: Load) -> None:
        """An EVICT, CLEAR or PUT of the key: the load's copy must not be kept.

        A load that has not started is dropped and its waiters get a plain GET after this
        reply; a running one finishes, and its waiters get its copy if it is still current.
        """
        if self._loading.get(load.key) is load:
            del self._loading[load.key]
        load.attached = False
        self.prefetch.cancelled += 1
        if self._loader(load).cancel(load):
            self._open.discard(load)
            self._unanswered.append(load)

    def _finish_loads(self, sock: zmq.Socket[bytes] | None) -> None:
        """Keep what the loaders read (unless outdated) and answer the GETs that waited."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                load = self._finished.get_nowait()
            except queue.Empty:
                break
            self._open.discard(load)
            attached = self._loading.get(load.key) is load
            if attached:
                del self._loading[load.key]
            entry = load.entry
            if entry is None:
                if attached:
                    self.prefetch.failed += 1
                    log.info("load of %.80r failed: %s", load.key, load.error or "not found")
                self._answer_waiters(sock, load, None)
                continue
            if load.found_in is not None and load.seconds > 0:
                measured = self._bandwidth.setdefault(load.found_in, [0.0, 0.0])
                measured[0] += entry.nbytes
                measured[1] += load.seconds
            kept = attached and self._keep(load, entry)
            usable = kept or (load.source == "local" and self.tiers.is_current(load.key, entry))
            self._answer_waiters(sock, load, entry if usable else None)
            if attached and not kept and load.source == "migrate" and load.target == "ram":
                self._load_own_copy(load.key, entry.version)
        self._after_reply(sock)

    def _load_own_copy(self, key: str, version: int) -> None:
        """A peer's copy was refused as not newer than one this agent holds below RAM (a
        store shared with the peer, or its own disk): the MIGRATE asked for the key in RAM,
        so bring this agent's own copy up instead, as a PREFETCH would."""
        if key in self._loading or self.tiers.in_memory(key) is not None:
            return
        below = self.tiers.peek_below(key)
        if below is not None and below[1] >= version:
            self._start(Load(key, "local", "ram", nbytes=below[2]))

    def _keep(self, load: Load, entry: Entry) -> bool:
        """Install a load's copy in this agent's tiers (the tiers refuse outdated copies)."""
        if load.source == "migrate":
            disk = True  # write-through to disk; never to the store (the peer's value)
        elif load.target == "disk":
            disk = True
        else:  # promote like a GET does: a store hit is copied to disk too
            disk = load.found_in == "store" and self.tiers.write_disk
        kept = self.tiers.install(
            load.key,
            entry,
            ram=load.target == "ram",
            disk=disk,
            migrated=load.source == "migrate",
            defer=self._deferred,
        )
        if not kept:
            self.prefetch.discarded += 1
            return False
        self.prefetch.loads += 1
        self.prefetch.bytes += entry.nbytes
        self._prefetched[load.key] = (entry.version, entry.nbytes)
        if self.ring is not None:
            held = load.target == "ram" and self.tiers.in_memory(load.key) is not None
            self._announce(load.key, "ram" if held else "disk", entry.version)
        if load.key in self._parked:  # a migrated key may be one a LEASE waits for
            self._woken.add(load.key)
        return True

    def _answer_waiters(
        self, sock: zmq.Socket[bytes] | None, load: Load, entry: Entry | None
    ) -> None:
        """Answer the GETs parked on ``load``: with ``entry``, else as a plain GET now."""
        waiters, load.waiters = load.waiters, []
        if sock is None or not waiters:
            return
        if entry is not None:
            self._note_use(load.key, entry)
        for envelope, req_id in waiters:
            try:
                if entry is not None:
                    tier = "ram" if load.source == "migrate" else load.found_in
                    reply, payload = self._entry_reply(load.key, entry, tier)
                else:
                    reply, payload = self._get({"key": load.key}, [])
                out = [encode_reply(req_id, **reply), *payload]
            except Exception as exc:
                log.error("request %s failed: %s: %s", req_id, type(exc).__name__, exc)
                out = [encode_error(req_id, "internal", f"{type(exc).__name__}: {exc}")]
            self._send(sock, envelope, out, req_id)

    def _note_use(self, key: str, entry: Entry) -> None:
        """Count a loaded copy as used the first time a GET serves it."""
        loaded = self._prefetched.get(key)
        if loaded is not None and loaded[0] == entry.version:
            self.prefetch.used_bytes += loaded[1]
            del self._prefetched[key]

    def _stop_loads(self, sock: zmq.Socket[bytes] | None = None) -> None:
        """Stop and join the loaders; with ``sock``, answer every GET still waiting."""
        if self._loaders_stopped:
            return
        self._loaders_stopped = True
        self._stopping.set()
        self.tiers.stop_delays()
        never_started = self._local.stop() + self._migrations.stop()
        self._finish_loads(sock)
        for load in never_started:
            self._open.discard(load)
            self._loading.pop(load.key, None)
            self._answer_waiters(sock, load, None)
        self._after_reply(sock)

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
                    self.tiers.close_thread()
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
            "waiting": sum(len(parked) for parked in self._parked.values()),
            "mem_total": int(memory.total),
            "mem_available": int(memory.available),
            "cpu_load": cpu_load,
            "write_errors": self.write_errors,
            "last_write_error": self.last_write_error,
            "queued_loads": len(self._open),
            "queued_bytes": sum(load.nbytes for load in self._open),
            "read_bandwidth": {
                source: int(nbytes / seconds)
                for source, (nbytes, seconds) in sorted(self._bandwidth.items())
                if seconds > 0
            },
            "prefetch": asdict(self.prefetch),
            "placement": {
                "agents": 0 if self.ring is None else len(self.ring),
                "records": len(self.locations),
                "announced": 0 if self._announcer is None else self._announcer.sent,
                "dropped": 0 if self._announcer is None else self._announcer.dropped,
            },
        }, ()

    def _has(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        return {"tier": self.tiers.has(fields["key"])}, ()

    @staticmethod
    def _entry_reply(key: str, entry: Entry, tier: str | None) -> Reply:
        reply = {"found": True, "tier": tier, "version": entry.version, "meta": dict(entry.meta)}
        return reply, entry.frames

    def _get(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        key = fields["key"]
        corrupt: list[str] = []
        found = self.tiers.get(key, corrupt)
        if found is None:
            if corrupt:
                log.warning("get %.80r: %s", key, "; ".join(corrupt))
            reply = {"found": False, "tier": None, "version": None, "meta": None}
            return {**reply, "corrupt": "; ".join(corrupt) or None}, ()
        entry, tier = found
        if tier == "ram":
            self._note_use(key, entry)
        else:  # the loaded copy left RAM before anyone used it
            self._prefetched.pop(key, None)
            if self.ring is not None and self.tiers.in_memory(key) is not None:
                self._announce(key, "ram", entry.version)  # promoted
        return self._entry_reply(key, entry, tier)

    def _put(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        key = fields["key"]
        try:
            version = self.tiers.put(
                key, payload, fields["meta"], fields["expect_version"], defer=self._deferred
            )
        except TooLarge:
            # Its builder is done with it: the lease goes, and whoever waits builds too.
            self.leases.drop(key)
            if key in self._parked:
                self._woken.add(key)
            raise
        self.leases.drop(key)
        self._prefetched.pop(key, None)
        if self.ring is not None:
            self._announce(key, self.tiers.has(key) or "ram", version)
        load = self._loading.get(key)
        if load is not None and load.state == QUEUED:  # it would read an older version
            self._detach(load)
        if key in self._parked:
            self._woken.add(key)
        return {"version": version}, ()

    def _prefetch(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        """Queue background loads of the keys not yet in ``tier``; answer at once.

        Only headers are read here (to size the loads); payloads are read by the loader.
        """
        tier = fields["tier"] or "ram"
        queued = present = missing = 0
        for key in dict.fromkeys(fields["keys"]):
            load = self._loading.get(key)
            if load is not None:
                if tier == "ram":
                    load.target = "ram"
                present += 1
                continue
            if self.tiers.in_memory(key) is not None:
                present += 1
                continue
            below = self.tiers.peek_below(key)
            if below is None:
                missing += 1
                continue
            where, _version, size = below
            if tier == "disk" and (where == "disk" or not self.tiers.write_disk):
                present += 1  # on local disk already (a store on the disk's device counts)
                continue
            self._start(Load(key, "local", tier, nbytes=size))
            queued += 1
        return {"queued": queued, "present": present, "missing": missing}, ()

    def _migrate(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        """Queue copies of the keys from the peer agent ``source``; answer at once."""
        source = fields["source"]
        if source in (self.endpoint, self.requested_endpoint):
            raise ProtocolError("bad-field", "migrate: field 'source' is this agent")
        queued = present = 0
        for key in dict.fromkeys(fields["keys"]):
            if key in self._loading:
                present += 1
                continue
            self._start(Load(key, "migrate", "ram", peer=source))
            queued += 1
        return {"queued": queued, "present": present}, ()

    def _evict(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        """Remove keys from every tier, or (``tier`` "ram") demote them out of RAM."""
        keys = [fields["key"]] if fields["key"] is not None else list(dict.fromkeys(fields["keys"]))
        demote = fields["tier"] == "ram"
        for key in keys:
            load = self._loading.get(key)
            if load is not None and (not demote or load.target == "ram"):
                self._detach(load)
            if not demote:
                self._prefetched.pop(key, None)
        self._drain()  # a pending write must not bring the entry back, nor be lost
        removed = 0
        full: list[str] = []
        for key in keys:
            if demote:
                try:
                    demoted = self.tiers.demote(key)
                except DiskFull as exc:
                    full.append(str(exc))
                    continue
                if demoted:
                    removed += 1
                    if self.ring is not None:
                        below = self.tiers.peek_below(key)
                        if below is not None:
                            self._announce(key, below[0], below[1])
            elif self.tiers.evict(key):
                removed += 1
                if self.ring is not None:
                    self._announce(key, None, 0)
        if full:
            raise DiskFull(
                f"evict: {len(full)} of {len(keys)} key(s) stay in RAM, the only copy could "
                f"not be written below ({full[0]}); {removed} demoted"
            )
        return {"removed": removed if fields["key"] is None else bool(removed)}, ()

    def _clear(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        for load in list(self._loading.values()):
            self._detach(load)
        self._prefetched.clear()
        self._drain()
        # Its own records go; other directories keep theirs until a reader misses here (hints).
        self.locations.forget(self._me())
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

    # -- placement over several agents (docs/placement.md)

    def _me(self) -> str:
        """This agent's name on the ring: as clients spell it (RING's ``me``), else its
        endpoint."""
        return self.name or self.endpoint or self.requested_endpoint

    def _announce(self, key: str, tier: str | None, version: int) -> None:
        """This agent now holds ``key`` in ``tier`` (None: dropped it): record it here when
        this agent is the key's directory, else queue it for the directory (never waits)."""
        ring = self.ring
        if ring is None:
            return
        me = self._me()
        directory = ring.home(key)
        if directory == me:
            self.locations.record(key, me, tier, version)
        elif self._announcer is not None:
            self._announcer.send(directory, me, key, tier, version)

    def _ring(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        """Learn the ring. When it changed, records of keys whose directory is now another
        agent are handed over to it, and records of agents that left are dropped."""
        agents: list[str] = fields["agents"]
        me: str = fields["me"]
        if me not in agents:
            raise ProtocolError("bad-field", "ring: field 'me' must be one of 'agents'")
        ring = HashRing(agents)
        changed = ring != self.ring or me != self.name
        moved = 0
        if changed:
            self.locations.rename(self._me(), me)
            self.ring, self.name = ring, me
            for gone in self.locations.holders() - set(agents):
                self.locations.forget(gone)
            if len(ring) > 1 and self._announcer is None:
                self._announcer = Announcer(curve=self.peer_keys)
            self._warn_unreachable(agents, me)
            handed = self.locations.take(lambda key: ring.home(key) == me)
            for key, held in handed.items():
                for loc in held:
                    if self._announcer is not None:
                        self._announcer.send(ring.home(key), loc.agent, key, loc.tier, loc.version)
                        moved += 1
            log.info("ring of %d agents; %d location records handed over", len(ring), moved)
        return {"changed": changed, "moved": moved, "write_errors": self.write_errors}, ()

    def _warn_unreachable(self, agents: list[str], me: str) -> None:
        """One line when the ring names peers on other hosts this agent cannot reach."""
        if self.peer_keys is not None:
            return
        remote = []
        for agent in agents:
            try:
                check_endpoint(agent)
            except BindRefused:
                remote.append(agent)
        if remote and remote != [me]:
            log.warning(
                "ring: no client keys to announce to %s: put client.key_secret and server.key "
                "(written by `statemigrate keys`) in --curve-dir; announcements to them are "
                "dropped",
                ", ".join(a for a in remote if a != me),
            )

    def _locate(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        found = {
            key: [list(loc) for loc in self.locations.locate(key)]
            for key in dict.fromkeys(fields["keys"])
            if key in self.locations
        }
        return {"locations": found}, ()

    def _announce_op(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        holder: str = fields["holder"]
        applied = 0
        for key, tier, version in fields["entries"]:
            applied += self.locations.record(key, holder, tier, version)
        return {"applied": applied}, ()

    def _shutdown(self, fields: dict[str, Any], payload: list[memoryview]) -> Reply:
        self._running = False
        return {}, ()
