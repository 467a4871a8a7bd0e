"""nodeagent.protocol: round trips, arbitrary input, field validation, endpoints."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent import PROTOCOL_VERSION
from nodeagent.protocol import (
    ERRORS,
    FIELDS,
    MAX_KEYS,
    BindRefused,
    Op,
    ProtocolError,
    check_endpoint,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
)

keys = st.text(min_size=1, max_size=512)
holders = st.text(min_size=1, max_size=256)
metas = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.lists(st.integers(0, 9), max_size=3),
    ),
    max_size=4,
)
ttls = st.one_of(st.integers(1, 10**6), st.floats(min_value=1e-3, max_value=1e6))
req_ids = st.integers(0, 2**63 - 1)
key_lists = st.lists(keys, max_size=5)
peers = st.sampled_from(
    [
        "ipc:///tmp/sm-x/agent.sock",
        "tcp://127.0.0.1:5555",
        "tcp://[::1]:1",
        "tcp://10.0.0.1:7600",  # agents on other hosts (with CURVE keys)
        "tcp://agent-b.example:7600",
    ]
)

FIELD_STRATEGIES: dict[Op, st.SearchStrategy[dict[str, Any]]] = {
    Op.PING: st.just({}),
    Op.STATS: st.just({}),
    Op.CLEAR: st.just({}),
    Op.SHUTDOWN: st.just({}),
    Op.HAS: st.fixed_dictionaries({"key": keys}),
    Op.GET: st.fixed_dictionaries({"key": keys}),
    Op.EVICT: st.one_of(
        st.fixed_dictionaries({"key": keys}, optional={"tier": st.sampled_from([None, "ram"])}),
        st.fixed_dictionaries(
            {"keys": key_lists}, optional={"tier": st.sampled_from([None, "ram"])}
        ),
    ),
    Op.PREFETCH: st.fixed_dictionaries(
        {"keys": key_lists}, optional={"tier": st.sampled_from([None, "ram", "disk"])}
    ),
    Op.MIGRATE: st.fixed_dictionaries({"keys": key_lists, "source": peers}),
    Op.PUT: st.fixed_dictionaries(
        {"key": keys, "meta": metas},
        optional={"expect_version": st.one_of(st.none(), st.integers(0, 2**63 - 1))},
    ),
    Op.LEASE: st.fixed_dictionaries(
        {"key": keys, "holder": holders, "ttl": ttls},
        optional={
            "pid": st.one_of(st.none(), st.integers(1, 2**31)),
            "host": st.one_of(st.none(), st.text(min_size=1, max_size=64)),
            "wait": st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10)),
        },
    ),
    Op.RELEASE: st.fixed_dictionaries({"key": keys, "holder": holders}),
    Op.RING: st.lists(peers, min_size=1, max_size=3, unique=True).flatmap(
        lambda agents: st.fixed_dictionaries(
            {"agents": st.just(agents), "me": st.sampled_from(agents)}
        )
    ),
    Op.LOCATE: st.fixed_dictionaries({"keys": key_lists}),
    Op.ANNOUNCE: st.fixed_dictionaries(
        {
            "holder": peers,
            "entries": st.lists(
                st.tuples(
                    keys, st.sampled_from([None, "ram", "disk", "store"]), st.integers(0, 2**40)
                ).map(list),
                max_size=4,
            ),
        }
    ),
}


def test_every_op_has_a_field_table_and_a_strategy() -> None:
    assert set(FIELDS) == set(Op) == set(FIELD_STRATEGIES)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data(), op=st.sampled_from(list(Op)), req_id=req_ids)
def test_request_round_trip(data: st.DataObject, op: Op, req_id: int) -> None:
    fields = data.draw(FIELD_STRATEGIES[op])
    got_op, got_id, got_fields = decode_request(encode_request(op, req_id, fields))
    assert (got_op, got_id) == (op, req_id)
    expected = {name: fields.get(name) for name in FIELDS[op]}
    assert got_fields == expected


@settings(database=None)
@given(req_id=st.one_of(st.none(), req_ids), fields=metas)
def test_reply_round_trip(req_id: int | None, fields: dict[str, Any]) -> None:
    fields = {f"f_{k}": v for k, v in fields.items()}
    reply = decode_reply(encode_reply(req_id, **fields))
    assert reply == {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, **fields}


@settings(database=None)
@given(
    req_id=st.one_of(st.none(), req_ids),
    error=st.sampled_from(sorted(ERRORS)),
    message=st.text(),
)
def test_error_round_trip_is_one_line(req_id: int | None, error: str, message: str) -> None:
    reply = decode_reply(encode_error(req_id, error, message))
    assert reply["ok"] is False and reply["id"] == req_id and reply["error"] == error
    assert "\n" not in reply["message"] and "\r" not in reply["message"]


def test_error_names_outside_the_vocabulary_are_refused() -> None:
    """New error names belong in the protocol's table, not invented by a handler."""
    assert {"too-large", "too-many-leases", "disk-full"} <= ERRORS
    with pytest.raises(ValueError, match="vocabulary"):
        encode_error(1, "disk-is-full", "no")


@settings(max_examples=500, database=None)
@given(st.binary())
def test_decode_request_of_any_bytes_raises_only_protocol_error(blob: bytes) -> None:
    try:
        decode_request(blob)
    except ProtocolError as exc:
        assert exc.error in {"bad-header", "bad-version", "unknown-op", "bad-field"}


@settings(max_examples=500, database=None)
@given(st.binary())
def test_decode_reply_of_any_bytes_raises_only_protocol_error(blob: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_reply(blob)


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, database=None)
@given(
    header=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "op",
                "id",
                "key",
                "keys",
                "tier",
                "source",
                "meta",
                "ttl",
                "holder",
                "pid",
                "host",
                "expect_version",
            ]
        ),
        st.one_of(msgpack_values, st.sampled_from([op.value for op in Op]), st.just(1)),
    )
)
def test_decode_request_of_any_msgpack_map_raises_only_protocol_error(
    header: dict[str, Any],
) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(msgpack.packb(header))


def raw(**header: Any) -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "id": 7, **header})
    return packed


@pytest.mark.parametrize(
    ("frame", "error", "needle"),
    [
        (b"", "bad-header", "msgpack"),
        (b"\xc1", "bad-header", "msgpack"),
        (msgpack.packb([1, 2]), "bad-header", "map"),
        (msgpack.packb({"v": 1, "op": "ping"}), "bad-header", "'id'"),
        (msgpack.packb({"v": 1, "op": "ping", "id": True}), "bad-header", "'id'"),
        (msgpack.packb({"v": 1, "op": "ping", "id": -1}), "bad-header", "'id'"),
        (raw(op="ping", v=2), "bad-version", "version 2"),
        (raw(op="ping", v=True), "bad-version", "version"),
        (raw(op=3), "bad-header", "'op'"),
        (raw(op="frobnicate"), "unknown-op", "frobnicate"),
        (raw(op="get"), "bad-field", "'key' is missing"),
        (raw(op="get", key=""), "bad-field", "'key' must not be empty"),
        (raw(op="get", key=5), "bad-field", "'key' must be a string"),
        (raw(op="get", key="x" * 513), "bad-field", "'key' must be at most 512"),
        (raw(op="put", key="k", meta=[1]), "bad-field", "'meta' must be a map"),
        (raw(op="put", key="k", meta={}, expect_version=-1), "bad-field", "'expect_version'"),
        (raw(op="lease", key="k", holder="h", ttl=0), "bad-field", "'ttl'"),
        (raw(op="lease", key="k", holder="h", ttl=float("inf")), "bad-field", "'ttl'"),
        (raw(op="lease", key="k", holder="h", ttl=True), "bad-field", "'ttl'"),
        (raw(op="lease", key="k", holder="h", ttl=1, pid=0), "bad-field", "'pid'"),
        (raw(op="lease", key="k", holder="h", ttl=1, host=3), "bad-field", "'host'"),
        (raw(op="lease", key="k", holder="h", ttl=1, wait=-1), "bad-field", "'wait'"),
        (raw(op="lease", key="k", holder="h", ttl=1, wait=11), "bad-field", "'wait'"),
        (raw(op="lease", key="k", holder="h", ttl=1, wait="1"), "bad-field", "'wait'"),
        (raw(op="release", key="k"), "bad-field", "'holder' is missing"),
        (raw(op="prefetch"), "bad-field", "'keys' is missing"),
        (raw(op="prefetch", keys="k"), "bad-field", "'keys' must be a list"),
        (raw(op="prefetch", keys=["a", ""]), "bad-field", "'keys' item 1 must not be empty"),
        (raw(op="prefetch", keys=["a", 3]), "bad-field", "'keys' item 1 must be a string"),
        (raw(op="prefetch", keys=["a"] * (MAX_KEYS + 1)), "bad-field", "'keys' must hold at most"),
        (raw(op="prefetch", keys=["a"], tier="store"), "bad-field", "'tier' must be one of"),
        (raw(op="prefetch", keys=["a"], tier=1), "bad-field", "'tier'"),
        (raw(op="migrate", keys=["a"]), "bad-field", "'source' is missing"),
        (raw(op="migrate", keys=["a"], source="tcp://0.0.0.0:5"), "bad-field", "a wildcard"),
        (raw(op="migrate", keys=["a"], source="udp://10.0.0.1:5"), "bad-field", "'source'"),
        (raw(op="migrate", keys=["a"], source="tcp://127.0.0.1:*"), "bad-field", "not *"),
        (raw(op="migrate", keys=["a"], source=5), "bad-field", "'source'"),
        (raw(op="migrate", source="ipc:///x"), "bad-field", "'keys' is missing"),
        (raw(op="evict"), "bad-field", "exactly one of fields 'key' and 'keys'"),
        (raw(op="evict", key="a", keys=["a"]), "bad-field", "exactly one of"),
        (raw(op="evict", key="a", tier="disk"), "bad-field", "'tier' must be one of 'ram'"),
        (raw(op="evict", keys=[""]), "bad-field", "'keys' item 0"),
    ],
)
def test_bad_requests_are_named(frame: bytes, error: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(frame)
    assert info.value.error == error
    assert needle in info.value.message
    if error != "bad-header":
        assert info.value.req_id == 7


def test_batch_ops_take_lists_of_keys() -> None:
    assert decode_request(raw(op="prefetch", keys=["a", "b"])) == (
        Op.PREFETCH,
        7,
        {"keys": ["a", "b"], "tier": None},
    )
    assert decode_request(raw(op="evict", keys=[], tier="ram"))[2] == {
        "key": None,
        "keys": [],
        "tier": "ram",
    }
    assert decode_request(raw(op="evict", key="k", keys=None))[2]["key"] == "k"
    source = "ipc:///tmp/a.sock"
    assert decode_request(raw(op="migrate", keys=["k"], source=source))[2] == {
        "keys": ["k"],
        "source": source,
    }


@pytest.mark.parametrize(
    ("op", "fields", "needle"),
    [
        (Op.RING, {"agents": [], "me": "ipc:///a"}, "'agents' must be a non-empty list"),
        (Op.RING, {"agents": ["ipc:///a", "ipc:///a"], "me": "ipc:///a"}, "must not repeat"),
        (Op.RING, {"agents": ["tcp://*:5"], "me": "ipc:///a"}, "item 0 must name a host"),
        (Op.RING, {"agents": ["tcp://[::]:5"], "me": "ipc:///a"}, "item 0 must name a host"),
        (Op.RING, {"agents": ["inproc://a"], "me": "ipc:///a"}, "item 0 must be an ipc"),
        (Op.ANNOUNCE, {"holder": "ipc:///a", "entries": [["k", "tape", 1]]}, "item 0 must be"),
        (Op.ANNOUNCE, {"holder": "ipc:///a", "entries": [["k", "ram"]]}, "[key, tier, version]"),
        (Op.ANNOUNCE, {"holder": "ipc:///a", "entries": [["k", None, -1]]}, "non-negative"),
        (Op.ANNOUNCE, {"holder": "ipc:///a", "entries": [["", "ram", 1]]}, "must not be empty"),
        (Op.LOCATE, {"keys": "k"}, "must be a list of keys"),
    ],
)
def test_placement_ops_validate_their_fields(op: Op, fields: dict[str, Any], needle: str) -> None:
    frame = msgpack.packb({"v": PROTOCOL_VERSION, "op": op.value, "id": 1, **fields})
    with pytest.raises(ProtocolError) as info:
        decode_request(frame)
    assert info.value.error == "bad-field" and needle in info.value.message


def test_unknown_fields_are_ignored() -> None:
    assert decode_request(raw(op="has", key="k", future=1)) == (Op.HAS, 7, {"key": "k"})


def test_encode_request_validates() -> None:
    with pytest.raises(ProtocolError, match="'key'"):
        encode_request(Op.GET, 1, {"key": ""})
    with pytest.raises(ProtocolError) as info:
        encode_request("nope", 1, {})
    assert info.value.error == "unknown-op"
    with pytest.raises(ProtocolError, match="reserved"):
        encode_request(Op.PING, 1, {"op": "x"})


def test_decode_reply_requires_ok_and_error_fields() -> None:
    with pytest.raises(ProtocolError):
        decode_reply(msgpack.packb({"v": 1, "id": 1}))
    with pytest.raises(ProtocolError):
        decode_reply(msgpack.packb({"v": 1, "id": 1, "ok": False}))
    with pytest.raises(ProtocolError):
        decode_reply(msgpack.packb({"v": 2, "id": 1, "ok": True}))


def test_decode_accepts_memoryview() -> None:
    assert decode_request(memoryview(encode_request(Op.PING, 3)))[:2] == (Op.PING, 3)


@pytest.mark.parametrize(
    "endpoint",
    [
        "ipc:///tmp/sm-x/agent.sock",
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:5555",
        "tcp://127.1.2.3:1",
        "tcp://localhost:65535",
        "tcp://[::1]:*",
    ],
)
def test_check_endpoint_accepts_local(endpoint: str) -> None:
    check_endpoint(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:*",
        "tcp://*:5555",
        "tcp://192.168.1.2:5555",
        "tcp://[::]:5555",
        "tcp://::1:5555",
        "tcp://[127.0.0.1]:5",
        "tcp://example.com:80",
        "tcp://eth0:5555",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:5;192.168.0.1:6",
        "tcp://10.0.0.1;127.0.0.1:5",
        "ipc://",
        "inproc://x",
        "pgm://eth0;239.192.1.1:5555",
        "udp://127.0.0.1:5",
        "",
    ],
)
def test_check_endpoint_refuses_the_rest(endpoint: str) -> None:
    with pytest.raises(BindRefused) as info:
        check_endpoint(endpoint)
    message = str(info.value)
    assert message == (
        f"refusing {endpoint}: only ipc:// and loopback tcp:// are allowed without CURVE keys"
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:*",
        "tcp://*:5555",
        "tcp://192.168.1.2:5555",
        "tcp://[::]:5555",
        "tcp://example.com:80",
        "tcp://eth0:5555",
        "tcp://127.0.0.1:5555",
        "ipc:///tmp/sm-x/agent.sock",
        "ipc://@abstract",
    ],
)
def test_check_endpoint_accepts_any_tcp_host_with_curve(endpoint: str) -> None:
    check_endpoint(endpoint, curve=True)
    if not endpoint.startswith(("ipc:", "tcp://127.")):
        with pytest.raises(BindRefused) as info:
            check_endpoint(endpoint)
        assert info.value.needs_keys


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://::1:5555",
        "tcp://[127.0.0.1]:5",
        "tcp://127.0.0.1:0",
        "tcp://1.2.3:5",
        "tcp://999.1.1.1:5",
        "tcp://host name:5",
        "tcp://10.0.0.1;127.0.0.1:5",
        "ipc://",
        "inproc://x",
        "udp://127.0.0.1:5",
    ],
)
def test_check_endpoint_refuses_malformed_even_with_curve(endpoint: str) -> None:
    for curve in (False, True):
        with pytest.raises(BindRefused) as info:
            check_endpoint(endpoint, curve=curve)
        assert not info.value.needs_keys
    assert str(info.value) == f"refusing {endpoint}: use ipc://PATH or tcp://HOST:PORT"


def test_check_endpoint_refuses_abstract_ipc_without_curve() -> None:
    # Issue 18 (3): an abstract socket has no file permissions: any local user connects.
    with pytest.raises(BindRefused) as info:
        check_endpoint("ipc://@sm-agent")
    assert info.value.needs_keys
    assert str(info.value) == (
        "refusing ipc://@sm-agent: an abstract ipc socket has no file permissions, any local "
        "user can connect to it; use ipc://PATH, or CURVE keys"
    )


def test_check_endpoint_message_stays_one_line() -> None:
    with pytest.raises(BindRefused) as info:
        check_endpoint("ipc:///tmp/x\nmore")
    assert "\n" not in str(info.value) and "refusing 'ipc:///tmp/x\\nmore'" in str(info.value)
