"""AgentClient pieces that need no agent (the client against a real agent: tests/integration)."""

from __future__ import annotations

import struct

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from nodeagent.client import _monitor_event

EVENTS = [
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_CONNECTED,
]
VALUES = [0, 400, 500, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, 2**31 - 1]


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("value", VALUES)
def test_monitor_events_decode_as_pyzmq_decodes_them(event: int, value: int) -> None:
    message = [struct.pack("=hi", event, value), b"ipc:///tmp/agent.sock"]
    parsed = parse_monitor_message(message)
    assert _monitor_event(message) == (event, value)
    assert (int(parsed["event"]), int(parsed["value"])) == (event, value)


@pytest.mark.parametrize(
    "message", [[b"\x00" * 6], [b"\x00" * 5, b"ipc://x"], [b"\x00" * 6, b"ipc://x", b""]]
)
def test_a_malformed_monitor_event_is_an_error(message: list[bytes]) -> None:
    with pytest.raises(RuntimeError, match="invalid zmq monitor message"):
        _monitor_event(message)


def test_a_real_handshake_event_decodes() -> None:
    """The decoder on an event zmq itself sent: a DEALER's handshake with a loopback ROUTER."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    client = ctx.socket(zmq.DEALER)
    monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        server.bind("tcp://127.0.0.1:*")
        client.connect(server.getsockopt_string(zmq.LAST_ENDPOINT))
        assert monitor.poll(10_000), "no handshake event within 10 s"
        event, _ = _monitor_event(monitor.recv_multipart())
        assert event == zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        client.disable_monitor()
        for sock in (monitor, client, server):
            sock.close(linger=0)
        ctx.term()
