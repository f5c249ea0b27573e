"""Handshake and connection state machine, fed whole and byte-at-a-time."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yoton.errors import HandshakeError
from yoton.wire.frames import CLOSE_BYTES, HEARTBEAT_BYTES, Package, pack_header
from yoton.wire.protocol import (
    CLOSED,
    CONNECTION_CLOSED,
    HANDSHAKE,
    HANDSHAKE_DONE,
    OPEN,
    Protocol,
    format_hello,
    parse_hello,
)

A, B = 0x0DFF0A2FAA7A6C71, 0x1122334455667788


def feed(protocol, data, step):
    if step is None:
        protocol.receive_data(data)
    else:
        for i in range(0, len(data), step):
            protocol.receive_data(data[i : i + step])


def test_hello_format_and_parse():
    assert format_hello(A, 1234) == b"YOTON!0dff0a2faa7a6c71.1234\r\n"
    assert parse_hello(b"YOTON!0dff0a2faa7a6c71.1234\r\n") == (A, 1234)
    assert parse_hello(b"YOTON!0dff0a2faa7a6c71.1234") == (A, 1234)
    for bad in [
        b"GET / HTTP/1.1\r\n",
        b"YOTON!xyz.1\r\n",
        b"YOTON!0dff0a2faa7a6c71\r\n",
        b"YOTON!0dff0a2faa7a6c71.-5\r\n",
        b"YOTON!0dff0a2faa7a6c7.1\r\n",
        b"",
    ]:
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
@pytest.mark.parametrize(
    "line, answer",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"ERROR: this is Yoton.\r\n"),
        (b"YOTON!nothex.12\r\n", b"ERROR: could not parse id.\r\n"),
    ],
)
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
    buf[: len(data)] = data
    c.buffer_updated(len(data))
    events = c.events_received()
    assert isinstance(events[-1], Package) and bytes(events[-1].data) == b"wxyz"


def _feed_zero_copy(protocol, data, step):
    for i in range(0, len(data), step or len(data) or 1):
        chunk = data[i : i + (step or len(data))]
        buf = protocol.get_buffer()
        buf[: len(chunk)] = chunk
        protocol.buffer_updated(len(chunk))


@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize(
    "ending, reason",
    [
        (CLOSE_BYTES, "Closed from other end."),
        (pack_header(5, B, 3, 0, 0, 2**31), "too large"),
        (b"not a header at all, but 56 bytes of something else ....", "Lost track"),
    ],
)
def test_zero_copy_reads_close_on_what_ends_the_stream_and_take_nothing_after(step, ending, reason):
    # (once open, reads go to the decoder directly: its stop must still close us)
    c = Protocol("connect", A, 1, max_package_size=100)
    c.receive_data(format_hello(B, 2))
    assert c.events_received() == [HANDSHAKE_DONE]
    one, two = (pack_header(5, B, seq, 0, 0, 3) + b"abc" for seq in (1, 2))
    _feed_zero_copy(c, one + two + ending + one, step)
    events = c.events_received()
    assert [type(e) for e in events] == [Package, Package, str] and events[-1] == CONNECTION_CLOSED
    assert c.state == CLOSED and reason in c.close_reason
    _feed_zero_copy(c, two, step)  # (after the end: ignored)
    c.receive_eof()
    assert c.events_received() == [] and reason in c.close_reason


@pytest.mark.parametrize("step", [None, 1, 7])
def test_zero_copy_reads_then_eof(step):
    c = Protocol("connect", A, 1)
    c.receive_data(format_hello(B, 2))
    _feed_zero_copy(c, pack_header(5, B, 1, 0, 0, 3) + b"abc", step)
    c.receive_eof()
    events = c.events_received()
    assert [type(e) for e in events] == [str, Package, str] and events[-1] == CONNECTION_CLOSED
    assert c.close_reason == "Other end dropped the connection."
    _feed_zero_copy(c, pack_header(5, B, 2, 0, 0, 3) + b"abc", step)
    assert c.events_received() == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["bind", "connect"]))
def test_arbitrary_bytes_give_events_or_a_reason(data, side):
    p = Protocol(side, A, 1, max_line=128)
    p.receive_data(data)
    p.events_received()
    assert p.state in (HANDSHAKE, OPEN, CLOSED)
    if p.state == CLOSED:
        assert isinstance(p.close_reason, str) and p.close_reason


# -- authentication (auth_key) ------------------------------------------------------

from yoton.wire.protocol import AUTH_FAILED, auth_proof  # noqa: E402

KEY = b"sesame"
NC, NB = bytes(range(16)), bytes(range(100, 116))


def pump(c, b, step, rounds=6):
    """Move bytes between two protocols until neither has anything to say."""
    for _ in range(rounds):
        out_c, out_b = c.data_to_send(), b.data_to_send()
        if not out_c and not out_b:
            return
        feed(b, out_c, step)
        feed(c, out_b, step)


@pytest.mark.parametrize("step", [None, 1, 7])
def test_auth_with_the_same_key_opens_both_ends(step):
    c = Protocol("connect", A, 11, auth_key=KEY, nonce=NC)
    b = Protocol("bind", B, 22, auth_key=KEY, nonce=NB)
    first = c.data_to_send()
    assert first == format_hello(A, 11) + b"AUTH?" + NC.hex().encode() + b"\r\n"
    feed(b, first, step)
    assert b.state == HANDSHAKE and not b.handshake_done
    answer = b.data_to_send()
    proof_b = auth_proof(KEY, "bind", NC, NB, B, A)
    assert answer == (
        format_hello(B, 22) + b"AUTH?" + NB.hex().encode() + b"\r\n" + b"AUTH!" + proof_b.hex().encode() + b"\r\n"
    )
    feed(c, answer + pack_header(31, B, 1, 0, 0, 2) + b"hi", step)
    # the connecting side has verified the bind and sends its proof: open
    assert c.state == OPEN and c.handshake_done
    events = c.events_received()
    assert events[0] == HANDSHAKE_DONE and bytes(events[1].data) == b"hi"
    proof_c = c.data_to_send()
    assert proof_c == b"AUTH!" + auth_proof(KEY, "connect", NB, NC, A, B).hex().encode() + b"\r\n"
    feed(b, proof_c + pack_header(30, A, 1, 0, 0, 3) + b"abc", step)
    assert b.state == OPEN and (b.peer_id, b.peer_pid) == (A, 11)
    events = b.events_received()
    assert events[0] == HANDSHAKE_DONE and bytes(events[1].data) == b"abc"


def test_auth_key_as_str_and_nonces_are_fresh():
    a1 = Protocol("connect", A, 1, auth_key=KEY)
    a2 = Protocol("connect", A, 1, auth_key=KEY)
    assert a1.data_to_send() != a2.data_to_send()


def assert_auth_failed(protocol, delivered_nothing=True):
    assert protocol.state == CLOSED and not protocol.handshake_done
    assert protocol.close_reason.startswith(AUTH_FAILED), protocol.close_reason
    events = protocol.events_received()
    if delivered_nothing:
        assert HANDSHAKE_DONE not in events
        assert all(not isinstance(e, Package) for e in events)


@pytest.mark.parametrize("step", [None, 1])
def test_auth_with_different_keys_fails_on_both_ends(step):
    c = Protocol("connect", A, 11, auth_key=b"right")
    b = Protocol("bind", B, 22, auth_key=b"wrong")
    feed(b, c.data_to_send() + pack_header(30, A, 1, 0, 0, 3) + b"abc", step)
    feed(c, b.data_to_send(), step)
    assert_auth_failed(c)
    assert "wrong key" in c.close_reason
    out = c.data_to_send()
    assert out.endswith(b"\r\nERROR: authentication failed.\r\n")
    feed(b, out, step)
    assert_auth_failed(b)


@pytest.mark.parametrize("step", [None, 1])
def test_keyed_bind_refuses_a_peer_without_key(step):
    # e.g. yoton 2.2: it says hello and then sends packages
    c = Protocol("connect", A, 11)
    b = Protocol("bind", B, 22, auth_key=KEY)
    feed(b, c.data_to_send() + HEARTBEAT_BYTES + pack_header(30, A, 1, 0, 0, 3) + b"abc\n", step)
    assert_auth_failed(b)
    assert b.data_to_send().endswith(b"ERROR: authentication failed.\r\n")


@pytest.mark.parametrize("step", [None, 1])
def test_peer_without_key_sees_why(step):
    # the keyed end speaks first: the unkeyed end closes instead of parsing "AUTH?" as a header
    for keyed_side in ("connect", "bind"):
        if keyed_side == "connect":
            keyed, plain = Protocol("connect", A, 11, auth_key=KEY), Protocol("bind", B, 22)
        else:
            plain, keyed = Protocol("connect", A, 11), Protocol("bind", B, 22, auth_key=KEY)
        pump(plain, keyed, step) if keyed_side == "bind" else pump(keyed, plain, step)
        assert plain.state == CLOSED
        assert plain.close_reason == f"{AUTH_FAILED} (the other end requires an auth key)"
        assert keyed.state != OPEN


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(
    "lines",
    [
        [b"AUTH!" + b"00" * 32],  # proof before nonce
        [b"AUTH?" + NB.hex().encode(), b"AUTH?" + NB.hex().encode()],  # second nonce
        [b"AUTH?" + b"zz" * 16],  # not hex
        [b"AUTH?" + NB.hex().encode()[:-2]],  # short nonce
        [b"AUTH?" + NB.hex().encode(), b"AUTH!" + b"00" * 31],  # short proof
        [b"ERROR: authentication failed."],
        [b"hello there"],
    ],
)
def test_bad_auth_lines_fail(step, lines):
    b = Protocol("bind", B, 22, auth_key=KEY, nonce=NB)
    feed(b, format_hello(A, 11) + b"".join(line + b"\r\n" for line in lines), step)
    assert_auth_failed(b)


def test_reflected_proof_is_refused():
    # An attacker without the key connects and sends back the bind's own proof.
    b = Protocol("bind", B, 22, auth_key=KEY, nonce=NB)
    feed(b, format_hello(A, 11) + b"AUTH?" + NB.hex().encode() + b"\r\n", None)
    reflected = b.data_to_send().splitlines()[-1]
    assert reflected.startswith(b"AUTH!")
    feed(b, reflected + b"\r\n", None)
    assert_auth_failed(b)
    assert "wrong key" in b.close_reason


def test_auth_eof_and_long_line():
    b = Protocol("bind", B, 22, auth_key=KEY)
    b.receive_data(format_hello(A, 11))
    b.receive_eof()
    assert_auth_failed(b)
    b = Protocol("bind", B, 22, auth_key=KEY)
    b.receive_data(format_hello(A, 11) + b"x" * 1000)
    assert_auth_failed(b)


def test_connect_side_reports_an_error_line():
    c = Protocol("connect", A, 11)
    c.receive_data(b"ERROR: this is Yoton.\r\n")
    assert c.state == CLOSED and "ERROR: this is Yoton." in c.close_reason
