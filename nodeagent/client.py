"""AgentClient: one DEALER socket to one agent, one request at a time.

The client owns its zmq context; :meth:`AgentClient.close` closes the socket, terminates the
context and stops pyzmq's zero-copy garbage-collector thread when it is idle, so no zmq thread
is left in the process afterwards (invariant 6: tests may fork).

Authentication: with ``curve`` keys the socket talks CURVE (``nodeagent.curve``). A zmq peer
that fails the handshake (no keys for a CURVE agent, a key the agent does not authorize, the
wrong server key) is dropped without a word, so the client watches its socket's handshake
events (a monitor: an inproc PAIR socket in the client's own context, no thread) until the
first handshake succeeds, and fails the waiting request at once with ``auth`` instead of
letting it run into its timeout. The same events tell a host that cannot be reached (no
handshake at all: the agent is not running, or the network is partitioned) from an agent that
is slow to answer: with ``connect_timeout`` the former fails after that many seconds, not the
whole request timeout.

The monitor stays on after the handshake: a connection that closes while a request waits (the
agent exited or was killed, or it dropped this client for a frame larger than its limit) fails
the request at once with ``gone``, instead of after its timeout; so does a refused connection
to an agent that answered before (``was_up``: it is gone, not starting).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from nodeagent import private
from nodeagent.protocol import (
    MAX_KEYS,
    BindRefused,
    Fetched,
    LeaseReply,
    Op,
    ProtocolError,
    check_endpoint,
    decode_reply,
    encode_request,
)

if TYPE_CHECKING:
    from nodeagent.curve import ClientKeys  # loaded by the caller: only its attributes are read

__all__ = ["AgentClient", "AgentError", "Fetched", "LeaseReply"]

GC_IDLE_WAIT = 1.0  # s: longest wait for pyzmq's gc thread to release our sent buffers
INTERRUPT_POLL_MS = 100  # ms between checks of ``interrupt`` while waiting for a reply
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_WATCHED_EVENTS = _HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
_GONE_BEFORE_HANDSHAKE = (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: The first frame of a socket-monitor event (zmq_socket_monitor(3)): the event id (uint16)
#: and its value (int32), in native byte order; the second frame is the endpoint.
_MONITOR_EVENT = struct.Struct("=Hi")


class AgentError(Exception):
    """Anything that went wrong talking to an agent; the message names the endpoint.

    :param error: the agent's error name for an error reply (``bad-field`` ...), else a local
        name: ``timeout``, ``refused``, ``protocol``, ``closed``, ``zmq``, ``auth`` (the
        handshake failed: keys missing, not authorized or wrong), ``gone`` (the connection
        closed while a request waited: the agent exited, or dropped an oversized frame),
        ``corrupt`` (a GET found the stored value corrupt; the agent deleted it: a miss).
    """

    def __init__(self, endpoint: str, error: str, message: str) -> None:
        super().__init__(f"agent {endpoint}: {error}: {message}")
        self.endpoint = endpoint
        self.error = error


def _monitor_event(parts: Sequence[bytes]) -> tuple[int, int]:
    """(event id, value) of one socket-monitor message.

    Decoded here, not with ``zmq.utils.monitor``: importing that imports ``zmq.asyncio``, hence
    asyncio and ssl, ~30 ms of CPU in every process that talks to an agent.
    """
    if len(parts) != 2 or len(parts[0]) != _MONITOR_EVENT.size:
        raise RuntimeError(f"invalid zmq monitor message: {list(parts)!r}")
    event, value = _MONITOR_EVENT.unpack(parts[0])
    return event, value


def _stop_idle_zmq_gc() -> None:
    """Stop pyzmq's garbage-collector thread once it holds no buffer.

    Zero-copy sends (``copy=False`` of frames >= ``zmq.COPY_THRESHOLD``) start a process-wide
    thread that outlives every context. It is stopped only when idle: stopping it while a
    buffer is still referenced by another context's message would free memory zmq uses.
    """
    from zmq.utils.garbage import gc

    if not gc.is_alive():
        return
    deadline = time.monotonic() + GC_IDLE_WAIT
    while gc.refs and time.monotonic() < deadline:
        time.sleep(0.001)
    if not gc.refs:
        gc.stop()


class AgentClient:
    """Talk to the agent at ``endpoint``.

    :param timeout: seconds to wait for each reply.
    :param interrupt: when given, checked every 100 ms while waiting for a reply; once it
        returns True the request fails (``interrupted``). The agent's migration thread uses
        it so that stopping the agent does not wait for a slow peer.
    :param curve: this client's key pair and the agent's public key; required for an endpoint
        that is not ipc:// or loopback, and then the agent must run with ``--curve-dir``.
    :param connect_timeout: seconds a request waits for the connection (its handshake) before
        it fails with ``timeout``; None: the request's whole timeout. Once connected, a reply
        is awaited for the request's timeout.
    :param was_up: the agent answered this process before: a refused connection means it is
        gone (the request fails at once with ``gone``), not that it is still starting.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 5.0,
        interrupt: Callable[[], bool] | None = None,
        curve: ClientKeys | None = None,
        connect_timeout: float | None = None,
        was_up: bool = False,
    ) -> None:
        try:
            check_endpoint(endpoint, curve=curve is not None)
        except BindRefused as exc:
            hint = " (pass the client keys: curve=ClientKeys.load(DIR))" if exc.needs_keys else ""
            raise AgentError(endpoint, "refused", f"{exc}{hint}") from None
        if "*" in endpoint:
            raise AgentError(endpoint, "refused", "cannot connect to a wildcard port")
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._interrupt = interrupt
        self._curve = curve
        self._token: str | None = None  # the agent's token, sent in the handshake (tcp)
        self._next_id = 0
        self.was_up = was_up
        self._connected = False  # a handshake succeeded on the current socket
        self._poller: zmq.Poller | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # handshake events, until one succeeds
        try:
            self._open_socket()
        except AgentError:
            self.close(stop_zmq_gc=False)  # no context left for __del__ to warn about
            raise

    # -- lifecycle

    def _open_socket(self) -> None:
        assert self._context is not None
        token = self._local_credentials()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            sock.curve_secretkey = self._curve.secret
            sock.curve_publickey = self._curve.public
            sock.curve_serverkey = self._curve.server
        elif token is not None:
            sock.plain_username = private.PLAIN_USER.encode()
            sock.plain_password = token.encode()
        self._socket = sock
        self._connected = False
        try:
            self._monitor = sock.get_monitor_socket(_WATCHED_EVENTS)
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._close_socket()
            raise AgentError(self.endpoint, "zmq", str(exc)) from None

    def _local_credentials(self) -> str | None:
        """Without CURVE: the token of this user's agent at a tcp endpoint (read again at
        each connection: the agent may have restarted), or None for ipc. An ipc socket that
        exists and belongs to another user is refused before anything is sent to it.

        :raises AgentError: ``auth``, with the reason.
        """
        self._token = None
        if self._curve is not None:
            return None
        if self.endpoint.startswith("ipc://"):
            path = self.endpoint[len("ipc://") :]
            try:
                owner = os.stat(path).st_uid
            except OSError:  # not bound yet (the run's agent starts while clients connect)
                return None
            if hasattr(os, "getuid") and owner not in (os.getuid(), 0):
                raise AgentError(
                    self.endpoint,
                    "auth",
                    f"the socket {path} belongs to uid {owner}, not to this user: another "
                    "user's agent, or a socket put there to receive this user's values",
                )
            return None
        try:
            self._token = private.read_token(self.endpoint)
        except private.LocalAuthError as exc:
            raise AgentError(self.endpoint, "auth", str(exc)) from None
        return self._token

    def _close_socket(self) -> None:
        self._stop_monitor()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _stop_monitor(self) -> None:
        self._poller = None
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            if self._socket is not None:
                self._socket.disable_monitor()
            monitor.close(linger=0)

    def _check_events(self, op: Op) -> None:
        """Read the monitor's events. A failed handshake raises ``auth`` at once (zmq itself
        would only retry, silently); a closed connection, or a refused one to an agent that
        was up, raises ``gone``.

        The server ends a connection only by exiting or by dropping a peer that sent a frame
        over its MAXMSGSIZE: either way no reply will come on it.
        """
        monitor = self._monitor
        assert monitor is not None
        while monitor.poll(0):
            event, value = _monitor_event(monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
            elif event == zmq.EVENT_DISCONNECTED and self._connected:
                self._close_socket()
                raise AgentError(
                    self.endpoint,
                    "gone",
                    f"the agent closed the connection while {op.value} waited: it exited, or "
                    "dropped a frame larger than its tiers can hold",
                )
            elif not self._connected and self.was_up and event in _GONE_BEFORE_HANDSHAKE:
                # Refused, or cut during the handshake (zmq reports that as a handshake that
                # failed without detail): the agent that answered this process is gone.
                self._close_socket()
                raise AgentError(
                    self.endpoint,
                    "gone",
                    f"{op.value}: the agent answered before and now refuses connections: it exited",
                )
            elif event & (_HANDSHAKE_EVENTS & ~zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._close_socket()
                raise AgentError(self.endpoint, "auth", self._handshake_failure(event, value))

    def _handshake_failure(self, event: int, value: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self._token is not None:
            return (
                f"the agent refused this user's token from {private.token_path(self.endpoint)} "
                f"(status {value}): is the agent there another user's, or was it restarted?"
            )
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"the agent refused this client's key (status {value}): add the client's "
                "public key (client.key) to the agent's authorized directory"
            )
        mismatch = (
            event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        )
        if self._curve is None:
            return (
                "handshake failed: the agent requires CURVE authentication and this client "
                f"has no keys (create them with `statemigrate keys`){self._no_token_hint()}"
            )
        if mismatch:
            return (
                "handshake failed: this client uses CURVE keys but the agent does not (start "
                "it with --curve-dir)"
            )
        # zmq gives no detail for a wrong server key, nor always for a mismatch.
        return (
            "CURVE handshake failed: does the agent run with --curve-dir, and is the server.key "
            f"in {self._curve.directory} its public key?"
        )

    def _no_token_hint(self) -> str:
        if not self.endpoint.startswith("tcp://"):
            return ""
        try:
            path = private.token_path(self.endpoint)
        except private.LocalAuthError as exc:
            return f", or it is another user's agent ({exc})"
        return f", or it is another user's agent (this user has no token file {path})"

    def close(self, *, stop_zmq_gc: bool = True) -> None:
        """Close the socket and the context; no zmq thread remains afterwards.

        :param stop_zmq_gc: also stop pyzmq's process-wide garbage-collector thread when it is
            idle. False in a process where another thread may be sending zero-copy at the same
            moment (the agent's own loop): stopping it then could free a buffer in use.
        """
        self._close_socket()
        if self._context is not None:
            self._context.term()
            self._context = None
            if stop_zmq_gc:
                _stop_idle_zmq_gc()

    @property
    def closed(self) -> bool:
        return self._context is None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- one request

    def _request(
        self,
        op: Op,
        fields: Mapping[str, Any] | None = None,
        frames: Sequence[Any] = (),
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], list[memoryview]]:
        if self._context is None:
            raise AgentError(self.endpoint, "closed", "the client is closed")
        if self._socket is None:
            self._open_socket()
        sock = self._socket
        assert sock is not None
        self._next_id += 1
        req_id = self._next_id
        try:
            header = encode_request(op, req_id, fields)
        except ProtocolError as exc:
            raise AgentError(self.endpoint, exc.error, exc.message) from None
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        # Until a handshake succeeds (the monitor is on), wait no longer than connect_timeout.
        connect = timeout if self.connect_timeout is None else min(timeout, self.connect_timeout)
        try:
            sock.send_multipart([header, *frames], copy=False, flags=zmq.NOBLOCK)
            while True:
                now = time.monotonic()
                if not self._connected and now - started >= connect:
                    timeout = connect
                    break
                remaining_ms = int((deadline - now) * 1000)
                if not self._connected:
                    remaining_ms = min(remaining_ms, int((started + connect - now) * 1000) + 1)
                if remaining_ms <= 0:
                    break
                if self._interrupt is not None:
                    if self._interrupt():
                        self._close_socket()
                        raise AgentError(self.endpoint, "interrupted", f"{op.value} given up")
                    remaining_ms = min(remaining_ms, INTERRUPT_POLL_MS)
                if not self._poll_with_monitor(sock, remaining_ms, op):
                    continue
                parts = sock.recv_multipart(copy=False)
                self._connected = True  # (a reply proves it; its event is read later)
                try:
                    reply = decode_reply(parts[0].buffer)
                except ProtocolError as exc:
                    raise AgentError(self.endpoint, "protocol", exc.message) from None
                if reply["id"] is not None and reply["id"] != req_id:
                    continue  # a stale reply to an earlier request
                if not reply["ok"]:
                    raise AgentError(self.endpoint, reply["error"], reply["message"])
                return reply, [p.buffer for p in parts[1:]]
        except zmq.Again:
            self._close_socket()
            raise AgentError(self.endpoint, "timeout", f"cannot send {op.value}") from None
        except zmq.ZMQError as exc:
            self._close_socket()
            raise AgentError(self.endpoint, "zmq", f"{op.value}: {exc}") from None
        # Timed out: a fresh socket next time, so a late reply cannot be taken for another.
        connected = self._connected
        self._close_socket()
        hint = "" if connected else " (no connection made: is the agent running at this endpoint?)"
        raise AgentError(
            self.endpoint, "timeout", f"no reply to {op.value} within {timeout:g} s{hint}"
        )

    def _poll_with_monitor(self, sock: zmq.Socket[bytes], timeout_ms: int, op: Op) -> bool:
        """Wait for a reply on ``sock`` while watching the connection; True when one is there
        (a reply that arrived is taken even if the connection closed after it: SHUTDOWN).

        :raises AgentError: ``auth`` as soon as the handshake fails, ``gone`` as soon as the
            connection closes.
        """
        poller, monitor = self._poller, self._monitor
        assert poller is not None and monitor is not None
        events = dict(poller.poll(timeout_ms))
        if sock in events:
            return True
        if monitor in events:
            self._check_events(op)
        return False

    # -- ops

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        """:param timeout: seconds to wait, instead of the client's timeout."""
        return self._request(Op.PING, timeout=timeout)[0]

    def stats(self) -> dict[str, Any]:
        return self._request(Op.STATS)[0]

    def has(self, key: str) -> str | None:
        tier = self._request(Op.HAS, {"key": key})[0]["tier"]
        return None if tier is None else str(tier)

    def get(self, key: str) -> Fetched | None:
        """The entry of ``key``, or None when no tier holds it.

        :raises AgentError: ``corrupt`` when the agent found its stored value corrupt (and
            deleted it: the next GET is a plain miss), naming the tier and the damage.
        """
        reply, frames = self._request(Op.GET, {"key": key})
        if not reply["found"]:
            if reply.get("corrupt"):
                raise AgentError(self.endpoint, "corrupt", str(reply["corrupt"]))
            return None
        return Fetched(frames, dict(reply["meta"]), int(reply["version"]), str(reply["tier"]))

    def put(
        self,
        key: str,
        frames: Sequence[Any],
        meta: Mapping[str, Any],
        expect_version: int | None = None,
    ) -> int:
        """Store ``frames`` (buffer-protocol objects, sent zero-copy) under ``key``.

        :returns: the new version.
        """
        fields: dict[str, Any] = {"key": key, "meta": dict(meta)}
        if expect_version is not None:
            fields["expect_version"] = expect_version
        return int(self._request(Op.PUT, fields, frames)[0]["version"])

    def prefetch(self, keys: Sequence[str], tier: str = "ram") -> dict[str, int]:
        """Ask the agent to bring ``keys`` into ``tier`` (``"ram"`` or ``"disk"``) in the
        background; answered at once.

        :returns: ``queued`` (keys now queued for a background load), ``present`` (already
            in that tier, or already queued or loading) and ``missing`` (no tier holds them).
        """
        return self._batched(Op.PREFETCH, keys, {"tier": tier}, ("queued", "present", "missing"))

    def migrate(self, keys: Sequence[str], source: str) -> dict[str, int]:
        """Ask the agent to copy ``keys`` from the agent at ``source`` in the background; the
        source keeps them (evict them there once the copy is made). Answered at once.

        :returns: ``queued`` (copies queued) and ``present`` (keys already queued or loading).
        """
        return self._batched(Op.MIGRATE, keys, {"source": source}, ("queued", "present"))

    def evict(self, key: str, tier: str | None = None) -> bool:
        """Remove ``key`` from every tier (``tier`` None), or demote it out of RAM only
        (``tier="ram"``: a copy stays on disk; the only copy is written to disk first).

        :returns: whether an entry was removed (from RAM, for ``tier="ram"``).
        """
        fields: dict[str, Any] = {"key": key}
        if tier is not None:
            fields["tier"] = tier
        return bool(self._request(Op.EVICT, fields)[0]["removed"])

    def evict_many(self, keys: Sequence[str], tier: str | None = "ram") -> int:
        """:meth:`evict` for many keys; returns how many entries were removed."""
        fields = {} if tier is None else {"tier": tier}
        return self._batched(Op.EVICT, keys, fields, ("removed",))["removed"]

    def _batched(
        self, op: Op, keys: Sequence[str], fields: Mapping[str, Any], counts: tuple[str, ...]
    ) -> dict[str, int]:
        """Send ``keys`` in requests of at most ``MAX_KEYS``; sum the ``counts`` replies."""
        if isinstance(keys, str):
            raise TypeError(f"{op.value}: keys must be a sequence of keys, not a str")
        keys = list(keys)
        total = dict.fromkeys(counts, 0)
        for start in range(0, max(len(keys), 1), MAX_KEYS):
            reply = self._request(op, {**fields, "keys": keys[start : start + MAX_KEYS]})[0]
            for name in counts:
                total[name] += int(reply[name])
        return total

    def clear(self) -> int:
        return int(self._request(Op.CLEAR)[0]["removed"])

    def lease(
        self,
        key: str,
        holder: str,
        ttl: float,
        pid: int | None = None,
        host: str | None = None,
        wait: float = 0.0,
    ) -> LeaseReply:
        """Take the build lease on ``key``, or learn who holds it or that the key is stored.

        :param wait: while another holder builds the key, the agent answers when it PUTs or
            releases the key, or after ``wait`` seconds, whichever comes first.
        """
        fields: dict[str, Any] = {"key": key, "holder": holder, "ttl": ttl}
        if pid is not None:
            fields["pid"] = pid
        if host is not None:
            fields["host"] = host
        if wait:
            fields["wait"] = wait
        reply = self._request(Op.LEASE, fields, timeout=self.timeout + wait)[0]
        return LeaseReply(
            bool(reply["granted"]),
            bool(reply["present"]),
            reply["holder"],
            float(reply["expires_in"]),
        )

    def release(self, key: str, holder: str) -> bool:
        return bool(self._request(Op.RELEASE, {"key": key, "holder": holder})[0]["released"])

    def ring(self, agents: Sequence[str], me: str, timeout: float | None = None) -> dict[str, Any]:
        """Tell the agent the ring's agents and its own name among them (as this client
        spells it). Answers like PING (``write_errors``) plus ``changed`` (the agent's ring
        changed) and ``moved`` (location records it handed over to their new directory).

        :param timeout: seconds to wait, instead of the client's timeout (first contact).
        """
        return self._request(Op.RING, {"agents": list(agents), "me": me}, timeout=timeout)[0]

    def locate(self, keys: Sequence[str]) -> dict[str, list[list[Any]]]:
        """The agent's location records, as the directory of ``keys``:
        ``{key: [[agent, tier, version], ...]}`` for the keys it knows holders of."""
        if isinstance(keys, str):
            raise TypeError("locate: keys must be a sequence of keys, not a str")
        found: dict[str, list[list[Any]]] = {}
        keys = list(keys)
        for start in range(0, len(keys), MAX_KEYS):
            reply = self._request(Op.LOCATE, {"keys": keys[start : start + MAX_KEYS]})[0]
            found.update(reply["locations"])
        return found

    def announce(self, holder: str, entries: Sequence[Sequence[Any]]) -> int:
        """Tell a directory agent what ``holder`` now holds: ``[key, tier, version]`` items,
        tier None for a key it dropped. Returns how many records changed."""
        items = [list(e) for e in entries]
        applied = 0
        for start in range(0, len(items), MAX_KEYS):
            chunk = items[start : start + MAX_KEYS]
            applied += int(
                self._request(Op.ANNOUNCE, {"holder": holder, "entries": chunk})[0]["applied"]
            )
        return applied

    def shutdown(self) -> None:
        self._request(Op.SHUTDOWN)
