"""Wire protocol of the node agent: message layout, validation, encode/decode.

Pure: no sockets, no zmq. The transport (``server.py``, ``client.py``) moves frames; this module
turns header frames into validated Python values and back.

Frame layout
============

Every message is a zmq multipart message::

    frame 0      header: a msgpack map (see below)
    frame 1..n   payload: raw bytes, opaque to the agent, sent and received zero-copy

(On the agent's ROUTER socket the routing identity, and an empty delimiter frame when the peer
is a REQ socket, come before frame 0; they are transport, not protocol.)

Request header::

    {"v": PROTOCOL_VERSION, "op": "<op name>", "id": <int request id>, ...op fields}

Reply header::

    {"v": PROTOCOL_VERSION, "id": <request id, or None if it could not be read>,
     "ok": True, ...reply fields}
    {"v": PROTOCOL_VERSION, "id": ..., "ok": False, "error": "<short name>",
     "message": "<one human line>"}

Error names (:data:`ERRORS`): ``bad-header`` (frame 0 is not a msgpack map with
``v``/``op``/``id``), ``bad-version``, ``unknown-op``, ``bad-field`` (the message names the
field), ``not-found``, ``version-conflict``, ``too-large`` (a PUT no tier can hold: refused,
not stored), ``too-many-leases`` (the holder holds :data:`MAX_LEASES_PER_HOLDER` leases),
``disk-full`` (the disk tier cannot take a write the op needs), ``internal`` (a bug in the
agent; the agent keeps serving).

Ops (request fields → reply fields; payload frames):

=========  ==========================================  ==========================================
op         request fields                              reply fields (payload frames)
=========  ==========================================  ==========================================
ping       -                                           pid, version, protocol, write_errors
stats      -                                           pid, host, tiers, leases, mem_total,
                                                       mem_available, cpu_load, write_errors,
                                                       last_write_error, queued_loads,
                                                       queued_bytes, read_bandwidth, prefetch
has        key                                         tier (str or None)
get        key                                         found, tier, version, meta, corrupt
                                                       (entry frames)
put        key, meta, expect_version? (entry frames)   version
prefetch   keys, tier? ("ram" | "disk")                queued, present, missing
migrate    keys, source (a peer agent's endpoint)      queued, present
evict      key | keys, tier? ("ram")                   removed (bool for key, int for keys)
clear      -                                           removed (int)
lease      key, holder, ttl, pid?, host?, wait?        granted, present, holder, expires_in
release    key, holder                                 released
ring       agents, me                                  changed, moved, write_errors
locate     keys                                        locations ({key: [[agent, tier, version]]})
announce   holder, entries ([[key, tier|nil, version]])  applied
shutdown   -                                           - (the agent then exits)
=========  ==========================================  ==========================================

PREFETCH and MIGRATE are answered at once; the agent loads in background threads. ``evict``
takes exactly one of ``key`` and ``keys``. A GET miss carries ``corrupt``, a one-line reason,
when this GET found the key's stored value corrupt and deleted it (nil otherwise).

RING, LOCATE and ANNOUNCE place keys over several agents (docs/placement.md): RING tells an
agent the ring's agents and its own name among them (``me``, as clients spell it); LOCATE asks
a key's directory (its home on the ring) which agents hold it; ANNOUNCE is how a holder tells
the directory what it now holds (a tier) or dropped (nil). Location records are hints.

Unknown request fields are ignored (forward compatibility within one protocol version);
``decode_request`` returns only the fields it knows. The protocol version is independent of the
package version and changes whenever a field changes meaning.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

import msgpack

PROTOCOL_VERSION: Final = 1

MAX_KEY_CHARS: Final = 512
MAX_HOLDER_CHARS: Final = 256
MAX_HOST_CHARS: Final = 256
MAX_LEASE_WAIT: Final = 10.0  # s: longest a LEASE may wait for the holder to finish
MAX_KEYS: Final = 10_000  # keys in one PREFETCH, MIGRATE or EVICT (clients send batches)
MAX_ENDPOINT_CHARS: Final = 1024
MAX_AGENTS: Final = 256  # agents in one RING
MAX_REQUEST_ID: Final = 2**63 - 1
MAX_LEASES_PER_HOLDER: Final = 1024  # live leases one holder may hold at once

#: Every error name an error reply may carry (docs/protocol.md, "Errors").
ERRORS: Final = frozenset(
    {
        "bad-header",
        "bad-version",
        "unknown-op",
        "bad-field",
        "not-found",
        "version-conflict",
        "too-large",
        "too-many-leases",
        "disk-full",
        "auth",  # the connection's CURVE key is no longer authorized (a reload removed it)
        "internal",
    }
)
#: The names :class:`nodeagent.client.AgentError` gives failures of its own, beside
#: :data:`ERRORS`: no reply came (``timeout``, ``zmq``, ``refused`` to connect, ``closed``,
#: ``interrupted``, ``gone``: the connection closed, ``dead``: it did not answer earlier in a
#: batch), the reply was not the protocol (``protocol``), the handshake failed (``auth``), or
#: a GET found the stored value corrupt and the agent deleted it (``corrupt``: a miss).
LOCAL_ERRORS: Final = frozenset(
    {
        "timeout",
        "zmq",
        "refused",
        "closed",
        "interrupted",
        "gone",
        "dead",
        "protocol",
        "auth",
        "corrupt",
    }
)
#: Errors that say the agent cannot be talked to (or should not be: a foreign protocol, a key
#: it no longer authorizes): whoever holds the connection treats the agent as down.
LINK_ERRORS: Final = frozenset((LOCAL_ERRORS - {"corrupt"}) | {"bad-version"})
#: Error replies of an agent that is alive and refused one operation: only it fails.
OPERATION_ERRORS: Final = frozenset(ERRORS - LINK_ERRORS)

Tier = Literal["ram", "disk", "store"]
#: Tier names in order of preference for a reader (RAM first), and each one's rank.
TIERS: Final[tuple[Tier, ...]] = ("ram", "disk", "store")
TIER_RANK: Final[Mapping[str, int]] = {tier: rank for rank, tier in enumerate(TIERS)}

__all__ = [
    "ERRORS",
    "LINK_ERRORS",
    "LOCAL_ERRORS",
    "MAX_AGENTS",
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "MAX_LEASES_PER_HOLDER",
    "OPERATION_ERRORS",
    "PROTOCOL_VERSION",
    "TIERS",
    "TIER_RANK",
    "BindRefused",
    "Fetched",
    "LeaseReply",
    "Op",
    "ProtocolError",
    "Tier",
    "check_endpoint",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_reply",
    "encode_request",
]


class Op(str, Enum):
    """Request operations; the value is the wire name."""

    PING = "ping"
    STATS = "stats"
    HAS = "has"
    GET = "get"
    PUT = "put"
    PREFETCH = "prefetch"
    MIGRATE = "migrate"
    EVICT = "evict"
    CLEAR = "clear"
    LEASE = "lease"
    RELEASE = "release"
    RING = "ring"
    LOCATE = "locate"
    ANNOUNCE = "announce"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Fetched:
    """A GET hit: payload frames (buffer-protocol objects), meta, version and tier. (Here,
    not in client.py, so that readers of a disk tier need not import zmq.)"""

    frames: list[memoryview]
    meta: dict[str, Any]
    version: int
    tier: str


@dataclass(frozen=True)
class LeaseReply:
    granted: bool
    present: bool
    holder: str | None
    expires_in: float


class ProtocolError(Exception):
    """A message that does not follow the protocol.

    :param error: short error name sent on the wire (``bad-header``, ``bad-field`` ...).
    :param message: one human line.
    :param req_id: the request id, when it could be read (so the reply can carry it).
    """

    def __init__(self, error: str, message: str, req_id: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.req_id = req_id


class BindRefused(ValueError):
    """An endpoint the agent must not bind (or a client must not use).

    :param needs_keys: the endpoint is a well-formed tcp endpoint that is not loopback: it is
        allowed with CURVE keys, and the caller's message should name how to give them.
    """

    def __init__(self, message: str, needs_keys: bool = False) -> None:
        super().__init__(message)
        self.needs_keys = needs_keys


Buffer = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- field validation

Validator = Callable[[Any], str | None]  # returns a reason when the value is bad


def _str_field(max_chars: int) -> Validator:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if not value:
            return "must not be empty"
        if len(value) > max_chars:
            return f"must be at most {max_chars} characters"
        return None

    return check


def _map_field(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a map"
    if not all(isinstance(k, str) for k in value):
        return "must have string keys"
    return None


def _positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value) or value <= 0:
        return "must be a positive finite number"
    return None


def _wait_seconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not (math.isfinite(value) and 0 <= value <= MAX_LEASE_WAIT):
        return f"must be between 0 and {MAX_LEASE_WAIT:g} seconds"
    return None


def _optional(check: Validator) -> Validator:
    def optional(value: Any) -> str | None:
        return None if value is None else check(value)

    return optional


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if not 0 <= value <= MAX_REQUEST_ID:
        return "must be a non-negative 64-bit integer"
    return None


def _positive_int(value: Any) -> str | None:
    reason = _non_negative_int(value)
    if reason is None and value == 0:
        return "must be positive"
    return reason


def _choice(*allowed: str) -> Validator:
    def check(value: Any) -> str | None:
        if value not in allowed or not isinstance(value, str):
            return "must be one of " + ", ".join(repr(a) for a in allowed)
        return None

    return check


_KEY = _str_field(MAX_KEY_CHARS)
_HOLDER = _str_field(MAX_HOLDER_CHARS)


def _each(items: list[Any], check: Validator) -> str | None:
    """The first item ``check`` refuses, named by its index."""
    for i, item in enumerate(items):
        reason = check(item)
        if reason is not None:
            return f"item {i} {reason}"
    return None


def _keys_field(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be a list of keys"
    if len(value) > MAX_KEYS:
        return f"must hold at most {MAX_KEYS} keys"
    return _each(value, _KEY)


_WILDCARD_HOSTS: Final = ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:")


def _peer_endpoint(value: Any) -> str | None:
    """An endpoint another agent can connect to: ``ipc://PATH`` or ``tcp://HOST:PORT``.

    Any host is accepted (agents on other machines): whether this agent may reach it is
    decided when it connects, where a non-loopback peer needs CURVE keys (invariant 4).
    """
    reason = _str_field(MAX_ENDPOINT_CHARS)(value)
    if reason is not None:
        return reason
    try:
        check_endpoint(value, curve=True)
    except BindRefused:
        return "must be an ipc:// or tcp://HOST:PORT endpoint"
    if value.endswith(":*"):
        return "must name a port, not *"
    if value.startswith(_WILDCARD_HOSTS):
        return "must name a host, not a wildcard address"
    return None


def _agents_field(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of endpoints"
    if len(value) > MAX_AGENTS:
        return f"must hold at most {MAX_AGENTS} agents"
    reason = _each(value, _peer_endpoint)
    if reason is None and len(set(value)) != len(value):
        return "must not repeat an agent"
    return reason


_TIER = _choice(*TIERS)


def _entries_field(value: Any) -> str | None:
    """ANNOUNCE ``entries``: ``[[key, tier or nil, version], ...]``."""
    if not isinstance(value, list):
        return "must be a list of [key, tier, version]"
    if len(value) > MAX_KEYS:
        return f"must hold at most {MAX_KEYS} entries"
    return _each(value, _entry)


def _entry(item: Any) -> str | None:
    if not isinstance(item, list) or len(item) != 3:
        return "must be [key, tier, version]"
    key, tier, version = item
    return _KEY(key) or _optional(_TIER)(tier) or _non_negative_int(version)


#: op -> field name -> (validator, required). Optional fields default to None.
FIELDS: Final[Mapping[Op, Mapping[str, tuple[Validator, bool]]]] = {
    Op.PING: {},
    Op.STATS: {},
    Op.HAS: {"key": (_KEY, True)},
    Op.GET: {"key": (_KEY, True)},
    Op.PUT: {
        "key": (_KEY, True),
        "meta": (_map_field, True),
        "expect_version": (_optional(_non_negative_int), False),
    },
    Op.PREFETCH: {
        "keys": (_keys_field, True),
        "tier": (_optional(_choice("ram", "disk")), False),
    },
    Op.MIGRATE: {"keys": (_keys_field, True), "source": (_peer_endpoint, True)},
    Op.EVICT: {
        "key": (_optional(_KEY), False),
        "keys": (_optional(_keys_field), False),
        "tier": (_optional(_choice("ram")), False),
    },
    Op.CLEAR: {},
    Op.LEASE: {
        "key": (_KEY, True),
        "holder": (_HOLDER, True),
        "ttl": (_positive_number, True),
        "pid": (_optional(_positive_int), False),
        "host": (_optional(_str_field(MAX_HOST_CHARS)), False),
        "wait": (_optional(_wait_seconds), False),
    },
    Op.RELEASE: {"key": (_KEY, True), "holder": (_HOLDER, True)},
    Op.RING: {"agents": (_agents_field, True), "me": (_peer_endpoint, True)},
    Op.LOCATE: {"keys": (_keys_field, True)},
    Op.ANNOUNCE: {"holder": (_peer_endpoint, True), "entries": (_entries_field, True)},
    Op.SHUTDOWN: {},
}

#: op -> fields of which exactly one must be given (not nil).
EXACTLY_ONE: Final[Mapping[Op, tuple[str, ...]]] = {Op.EVICT: ("key", "keys")}

_RESERVED: Final = frozenset({"v", "op", "id", "ok"})


def validate_fields(op: Op, fields: Mapping[str, Any], req_id: int | None = None) -> dict[str, Any]:
    """Check ``fields`` against the table for ``op``; return only the known fields.

    :raises ProtocolError: ``bad-field`` naming the first bad or missing field.
    """
    out: dict[str, Any] = {}
    for name, (check, required) in FIELDS[op].items():
        if name not in fields:
            if required:
                raise ProtocolError("bad-field", f"{op.value}: field {name!r} is missing", req_id)
            out[name] = None
            continue
        reason = check(fields[name])
        if reason is not None:
            raise ProtocolError("bad-field", f"{op.value}: field {name!r} {reason}", req_id)
        out[name] = fields[name]
    group = EXACTLY_ONE.get(op)
    if group and sum(out[name] is not None for name in group) != 1:
        names = " and ".join(repr(name) for name in group)
        raise ProtocolError(
            "bad-field", f"{op.value}: exactly one of fields {names} is needed", req_id
        )
    return out


# --------------------------------------------------------------------------- encode / decode


def _unpack_map(frame: Buffer, what: str) -> dict[Any, Any]:
    try:
        value = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for malformed input
        raise ProtocolError("bad-header", f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad-header", f"{what} is not a msgpack map")
    return value


def _pack(header: Mapping[str, Any]) -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def encode_request(op: Op | str, req_id: int, fields: Mapping[str, Any] | None = None) -> bytes:
    """Encode a request header frame.

    :raises ProtocolError: if ``op`` is unknown, ``req_id`` is not a valid id, or a field
        uses a reserved name.
    """
    try:
        op = Op(op)
    except ValueError:
        raise ProtocolError("unknown-op", f"unknown op {op!r}") from None
    if _non_negative_int(req_id) is not None:
        raise ProtocolError("bad-header", f"request id {req_id!r} is not a 64-bit integer")
    fields = dict(fields or {})
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ProtocolError("bad-field", f"field name {sorted(clash)[0]!r} is reserved")
    validate_fields(op, fields, req_id)
    return _pack({"v": PROTOCOL_VERSION, "op": op.value, "id": req_id, **fields})


def decode_request(frame: Buffer) -> tuple[Op, int, dict[str, Any]]:
    """Decode and validate a request header frame.

    :returns: ``(op, request id, fields)``; fields holds every field of the op's table
        (optional ones absent on the wire are None) and nothing else.
    :raises ProtocolError: for any malformed input, and only that.
    """
    header = _unpack_map(frame, "request header")
    req_id = header.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, int) or not 0 <= req_id <= MAX_REQUEST_ID:
        raise ProtocolError("bad-header", "request header has no valid 'id'")
    version = header.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            "bad-version",
            f"protocol version {version!r} is not supported (agent speaks {PROTOCOL_VERSION})",
            req_id,
        )
    op_name = header.get("op")
    if not isinstance(op_name, str):
        raise ProtocolError("bad-header", "request header has no valid 'op'", req_id)
    try:
        op = Op(op_name)
    except ValueError:
        raise ProtocolError("unknown-op", f"unknown op {op_name[:64]!r}", req_id) from None
    return op, req_id, validate_fields(op, header, req_id)


def encode_reply(req_id: int | None, ok: bool = True, **fields: Any) -> bytes:
    """Encode a reply header frame carrying ``fields``."""
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"reply field name {sorted(clash)[0]!r} is reserved")
    return _pack({"v": PROTOCOL_VERSION, "id": req_id, "ok": ok, **fields})


def encode_error(req_id: int | None, error: str, message: str) -> bytes:
    """Encode an error reply: ``ok`` False, a short ``error`` name and a one-line ``message``.

    :raises ValueError: when ``error`` is not one of :data:`ERRORS` (names are vocabulary).
    """
    if error not in ERRORS:
        raise ValueError(f"error name {error!r} is not in the protocol's vocabulary")
    line = " ".join(message.split())  # one line, whatever the exception text was
    return encode_reply(req_id, ok=False, error=error, message=line)


def decode_reply(frame: Buffer) -> dict[str, Any]:
    """Decode a reply header frame.

    :returns: the header map (``v``, ``id``, ``ok`` and the reply fields).
    :raises ProtocolError: for any malformed input, and only that.
    """
    header = _unpack_map(frame, "reply header")
    if header.get("v") != PROTOCOL_VERSION or isinstance(header.get("v"), bool):
        raise ProtocolError("bad-version", f"reply protocol version {header.get('v')!r}")
    req_id = header.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int)):
        raise ProtocolError("bad-header", "reply header has no valid 'id'")
    if not isinstance(header.get("ok"), bool):
        raise ProtocolError("bad-header", "reply header has no boolean 'ok'", req_id)
    if not header["ok"] and not (
        isinstance(header.get("error"), str) and isinstance(header.get("message"), str)
    ):
        raise ProtocolError("bad-header", "error reply lacks 'error' or 'message'", req_id)
    if not all(isinstance(k, str) for k in header):
        raise ProtocolError("bad-header", "reply header has non-string keys", req_id)
    return header


# --------------------------------------------------------------------------- endpoints

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:\[\];/]+):(?P<port>\*|[0-9]{1,5})$")


_IPV4 = re.compile(r"^[0-9.]+$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def check_endpoint(endpoint: str, *, curve: bool = False) -> None:
    """Refuse endpoints reachable from other machines unless CURVE protects them (invariant 4).

    Accepted: ``ipc://<path>`` (not an abstract ``ipc://@name``, which any local user can
    reach: only with ``curve``), ``tcp://127.x.x.x:PORT``, ``tcp://localhost:PORT``,
    ``tcp://[::1]:PORT``, where PORT is a number or ``*`` (a random free port). With
    ``curve`` (the agent has keys, or the client has them), also ``tcp://HOST:PORT`` for any
    address, host or interface name, ``*`` and ``0.0.0.0`` included.

    :raises BindRefused: with a one-line message, for anything else; ``needs_keys`` is set
        when keys would make the endpoint acceptable.
    """
    shown = endpoint if isinstance(endpoint, str) and endpoint.isprintable() else repr(endpoint)
    local_only = f"refusing {shown}: only ipc:// and loopback tcp:// are allowed without CURVE keys"
    refused = BindRefused(
        local_only if not curve else f"refusing {shown}: use ipc://PATH or tcp://HOST:PORT"
    )
    if not isinstance(endpoint, str) or any(c in endpoint for c in "\r\n\0"):
        raise refused
    if endpoint.startswith("ipc://"):
        if len(endpoint) == len("ipc://"):
            raise refused
        if endpoint.startswith("ipc://@") and not curve:
            raise BindRefused(
                f"refusing {shown}: an abstract ipc socket has no file permissions, any local "
                "user can connect to it; use ipc://PATH, or CURVE keys",
                needs_keys=True,
            )
        return
    match = _TCP.match(endpoint)
    if match is None:
        raise refused
    host, port = match["host"], match["port"]
    if port != "*" and not 0 < int(port) < 65536:
        raise refused
    loopback = host == "localhost"
    if host.startswith("["):
        try:
            loopback = ipaddress.IPv6Address(host[1:-1]).is_loopback
        except ValueError:
            raise refused from None
    elif _IPV4.match(host):
        try:
            loopback = ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            raise refused from None
    elif host != "*" and _HOSTNAME.match(host) is None:
        raise refused  # an interface or host name: letters, digits, '.', '-', '_'
    if loopback:
        return
    if not curve:
        raise BindRefused(local_only, needs_keys=True)
