"""Handshake and connection state machine, fed whole and byte-at-a-time."""

import pytest
from hypothesis import given, settings, strategies as st

from yoton.errors import HandshakeError
from yoton.wire.frames import CLOSE_BYTES, HEARTBEAT_BYTES, Package, pack_header
from yoton.wire.protocol import (
    CLOSED, CONNECTION_CLOSED, HANDSHAKE, HANDSHAKE_DONE, OPEN, Protocol, format_hello, parse_hello,
)

A, B = 0x0DFF0A2FAA7A6C71, 0x1122334455667788


def feed(protocol, data, step):
    if step is None:
        protocol.receive_data(data)
    else:
        for i in range(0, len(data), step):
            protocol.receive_data(data[i:i + step])


def test_hello_format_and_parse():
    assert format_hello(A, 1234) == b"YOTON!0dff0a2faa7a6c71.1234\r\n"
    assert parse_hello(b"YOTON!0dff0a2faa7a6c71.1234\r\n") == (A, 1234)
    assert parse_hello(b"YOTON!0dff0a2faa7a6c71.1234") == (A, 1234)
    for bad in [b"GET / HTTP/1.1\r\n", b"YOTON!xyz.1\r\n", b"YOTON!0dff0a2faa7a6c71\r\n",
                b"YOTON!0dff0a2faa7a6c71.-5\r\n", b"YOTON!0dff0a2faa7a6c7.1\r\n", b""]:
        with pytest.raises(HandshakeError):
            parse_hello(bad)


@pytest.mark.parametrize("step", [None, 1, 5])
def test_connect_and_bind_talk(step):
    c = Protocol("connect", A, 11)
    b = Protocol("bind", B, 22)
    hello = c.data_to_send()
    assert hello == format_hello(A, 11)
    assert b.data_to_send() == b""
    payload = pack_header(30, A, 1, 0, 0, 3) + b"abc"
    feed(b, hello + payload, step)
    assert b.state == OPEN and (b.peer_id, b.peer_pid) == (A, 11)
    answer = b.data_to_send()
    assert answer == format_hello(B, 22)
    events = b.events_received()
    assert events[0] == HANDSHAKE_DONE
    assert [bytes(p.data) for p in events[1:]] == [b"abc"]
    feed(c, answer + HEARTBEAT_BYTES + pack_header(31, B, 1, 0, 0, 2) + b"hi", step)
    assert c.state == OPEN and c.peer_id == B
    events = c.events_received()
    assert events[0] == HANDSHAKE_DONE and bytes(events[1].data) == b"hi"
    assert c.events_received() == []


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize("line, answer", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"ERROR: this is Yoton.\r\n"),
    (b"YOTON!nothex.12\r\n", b"ERROR: could not parse id.\r\n"),
])
def test_bind_refuses_non_yoton(step, line, answer):
    b = Protocol("bind", B, 22)
    feed(b, line, step)
    assert b.state == CLOSED and "Handshake failed" in b.close_reason
    assert b.data_to_send() == answer
    assert b.events_received() == [CONNECTION_CLOSED]
    b.receive_data(b"more")  # ignored once closed
    assert b.events_received() == []


def test_line_limit_without_newline():
    b = Protocol("bind", B, 22, max_line=64)
    for _ in range(10):
        b.receive_data(b"A" * 10)
    assert b.state == CLOSED and "too long" in b.close_reason


def test_connect_side_rejects_error_line():
    c = Protocol("connect", A, 1)
    c.data_to_send()
    c.receive_data(b"ERROR: this is Yoton.\r\n")
    assert c.state == CLOSED and "Handshake failed" in c.close_reason


def test_self_connect_refused_on_both_sides():
    c = Protocol("connect", A, 1)
    b = Protocol("bind", A, 1)
    b.receive_data(c.data_to_send())
    assert b.state == CLOSED and "self" in b.close_reason
    c.receive_data(b.data_to_send())
    assert c.state == CLOSED and "self" in c.close_reason


def test_eof_and_close_signal():
    c = Protocol("connect", A, 1)
    c.receive_data(format_hello(B, 2) + CLOSE_BYTES)
    assert c.state == CLOSED and c.peer_closed and c.close_reason == "Closed from other end."
    c = Protocol("connect", A, 1)
    c.receive_data(format_hello(B, 2))
    c.receive_eof()
    assert c.state == CLOSED and c.close_reason == "Other end dropped the connection."
    b = Protocol("bind", B, 1)
    b.receive_eof()
    assert b.state == CLOSED and "Handshake failed" in b.close_reason


def test_stream_error_closes_with_reason():
    c = Protocol("connect", A, 1, max_package_size=100)
    c.receive_data(format_hello(B, 2) + pack_header(5, B, 1, 0, 0, 2**31))
    assert c.state == CLOSED and "too large" in c.close_reason
    assert c.events_received() == [HANDSHAKE_DONE, CONNECTION_CLOSED]


def test_zero_copy_buffer_api():
    c = Protocol("connect", A, 1)
    c.receive_data(format_hello(B, 2))
    data = pack_header(5, B, 1, 0, 0, 4) + b"wxyz"
    buf = c.get_buffer()
    buf[:len(data)] = data
    c.buffer_updated(len(data))
    events = c.events_received()
    assert isinstance(events[-1], Package) and bytes(events[-1].data) == b"wxyz"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["bind", "connect"]))
def test_arbitrary_bytes_give_events_or_a_reason(data, side):
    p = Protocol(side, A, 1, max_line=128)
    p.receive_data(data)
    p.events_received()
    assert p.state in (HANDSHAKE, OPEN, CLOSED)
    if p.state == CLOSED:
        assert isinstance(p.close_reason, str) and p.close_reason
