"""Frame decoder tests: the header vectors of docs/protocol.md, every split of the stream, limits."""

import struct

import pytest
from helpers import random_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from yoton.wire.frames import (
    CLOSE_BYTES,
    CONTROL,
    HEADER_SIZE,
    HEARTBEAT_BYTES,
    FrameDecoder,
    Package,
    pack_header,
    split_frames,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)


def test_control_and_header_layout():
    assert CONTROL == 2314885729178898265
    assert struct.pack("<Q", CONTROL) == b"YOTON   "
    h = pack_header(15285871923228, 0x0DFF0A2FAA7A6C71, 1, 0, 0, 5)
    assert len(h) == HEADER_SIZE == 56
    assert h[:8] == b"YOTON   "
    assert struct.unpack("<7Q", h) == (CONTROL, 15285871923228, 0x0DFF0A2FAA7A6C71, 1, 0, 0, 5)
    assert HEARTBEAT_BYTES == struct.pack("<7Q", CONTROL, 1, 0, 0, 0, 0, 0)
    assert CLOSE_BYTES == struct.pack("<7Q", CONTROL, 1, 0, 1, 0, 0, 0)


def _stream(packages):
    return b"".join(
        pack_header(p.slot, p.source_id, p.source_seq, p.dest_id, p.dest_seq, len(p.data)) + p.data for p in packages
    )


def _fields(pkgs):
    return [(bytes(p.data), p.slot, p.source_id, p.source_seq, p.dest_id, p.dest_seq) for p in pkgs]


SAMPLE = [
    Package(b"hello", 10, 7, 1),
    Package(b"x" * 70000, 11, 7, 2, 99, 3),  # larger than the inline limit
    Package(b"", 12, 7, 3),  # empty: dropped
    Package(b"\x00" * 56, 13, 8, 1, 7, 2**63 + 1),
]
EXPECTED = [s for s in SAMPLE if s.data]


def feed_in_chunks(data, sizes):
    dec = FrameDecoder()
    pos = 0
    for n in sizes:
        dec.receive_data(data[pos : pos + n])
        pos += n
    dec.receive_data(data[pos:])
    return dec


def test_whole_stream_at_once():
    data = _stream(SAMPLE) + HEARTBEAT_BYTES
    dec = FrameDecoder()
    dec.receive_data(data)
    assert dec.error is None and not dec.peer_closed
    assert _fields(dec.packages) == _fields(EXPECTED)


def test_byte_at_a_time():
    data = HEARTBEAT_BYTES + _stream(SAMPLE)
    dec = FrameDecoder()
    for i in range(len(data)):
        dec.receive_data(data[i : i + 1])
    assert dec.error is None
    assert _fields(dec.packages) == _fields(EXPECTED)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=40))
def test_random_splits(sizes):
    data = _stream(SAMPLE)
    dec = feed_in_chunks(data, sizes)
    assert _fields(dec.packages) == _fields(EXPECTED)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=300), U64, U64, U64, U64, U64), max_size=20),
    st.randoms(use_true_random=False),
)
def test_round_trip_any_fields(items, rnd):
    pkgs = [Package(d, *f) for d, *f in items]
    data = _stream(pkgs)
    cuts = sorted(rnd.randrange(len(data) + 1) for _ in range(5)) if data else []
    dec = FrameDecoder()
    prev = 0
    for c in cuts + [len(data)]:
        dec.receive_data(data[prev:c])
        prev = c
    assert _fields(dec.packages) == _fields(pkgs)


def test_get_buffer_reads_large_body_in_place():
    body = random_bytes(1, 3 * 2**20)
    data = pack_header(20, 1, 1, 0, 0, len(body)) + body
    dec = FrameDecoder()
    pos = 0
    views = set()
    while pos < len(data):
        buf = dec.get_buffer()
        n = min(len(buf), 100000, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        if len(buf) >= 10**6:
            views.add(id(buf.obj))
        dec.buffer_updated(n)
        pos += n
    [pkg] = dec.packages
    assert pkg.data == body
    assert isinstance(pkg.data, bytearray)  # delivered without another copy


def test_close_signal_stops_decoding():
    data = _stream(SAMPLE[:1]) + CLOSE_BYTES + _stream(SAMPLE[3:])
    for step in (1, 7, len(data)):
        dec = FrameDecoder()
        for i in range(0, len(data), step):
            dec.receive_data(data[i : i + step])
        assert dec.peer_closed
        assert _fields(dec.packages) == _fields(SAMPLE[:1])


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_bad_control_is_an_error_not_an_exception(step):
    bad = b"NOTYOTON" + bytes(48)
    data = _stream(SAMPLE[:1]) + bad + _stream(SAMPLE[:1])
    dec = FrameDecoder()
    for i in range(0, len(data), step):
        dec.receive_data(data[i : i + step])
    assert dec.error == "Lost track of the stream."
    assert len(dec.packages) == 1


@pytest.mark.parametrize("step", [1, 56, 1000])
def test_over_limit_length_refused_without_allocating(step):
    dec = FrameDecoder(max_package_size=1000)
    data = pack_header(20, 1, 1, 0, 0, 2 * 2**30) + b"abc"
    for i in range(0, len(data), step):
        dec.receive_data(data[i : i + step])
    assert dec.error is not None and "too large" in dec.error
    assert len(dec.get_buffer()) < 2**20  # nothing of the claimed size was made
    assert dec.packages == []


def test_limit_is_inclusive():
    dec = FrameDecoder(max_package_size=10)
    dec.receive_data(pack_header(20, 1, 1, 0, 0, 10) + b"0123456789")
    assert dec.error is None and bytes(dec.packages[0].data) == b"0123456789"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data):
    dec = FrameDecoder(max_package_size=10**6)
    dec.receive_data(data)
    for p in dec.packages:
        assert isinstance(p, Package)
    if dec.error is not None:
        assert isinstance(dec.error, str)


# -- split_frames: several whole frames in one broker message --------------------------------------


def test_split_frames_takes_whole_frames_in_order():
    a = pack_header(10, 7, 1, 0, 0, 3) + b"abc"
    signal = HEARTBEAT_BYTES  # (zero-length packages are dropped, as on a stream)
    b = pack_header(11, 7, 2, 9, 5, 2) + b"de"
    packages, error = split_frames(a + signal + b)
    assert error is None
    assert [(p.slot, p.source_seq, p.dest_id, p.dest_seq, p.data) for p in packages] == [
        (10, 1, 0, 0, b"abc"),
        (11, 2, 9, 5, b"de"),
    ]
    assert split_frames(b"") == ([], None)


@pytest.mark.parametrize(
    "tail,why",
    [
        (b"YOTON  ", "not a whole header"),
        (b"x" * 56 + b"body", "bad control field"),
        (pack_header(10, 7, 3, 0, 0, 10) + b"short", "cut short"),
        (pack_header(10, 7, 3, 0, 0, 1000), "too large"),
    ],
)
def test_split_frames_reports_a_bad_frame_and_keeps_what_came_before(tail, why):
    good = pack_header(10, 7, 1, 0, 0, 3) + b"abc"
    packages, error = split_frames(good + tail, max_package_size=100)
    assert [p.data for p in packages] == [b"abc"]
    assert why in error
