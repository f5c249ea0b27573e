"""Property-based fuzzing of the wire layer: frame decoder, handshake, OBJECT codec.

Every fuzz target is a check function taking one generated case plus the
strategy that generates the cases, registered in :data:`TARGETS`. The tests
at the bottom run each target with a CI-sized number of examples (the whole
file takes a few seconds); ``python -m bench.fuzz`` runs the very same
targets with many more (see bench/fuzz.py).

What the targets claim, for any input:

* frames: packages survive encode/decode in any split, fed through
  ``receive_data`` or ``get_buffer``/``buffer_updated``; arbitrary streams
  decode exactly as a whole-stream reference decoder says (packages, then
  nothing, close or an error), never raise, and never hold much more memory
  than was received, whatever a header claims.
* handshake: ``parse_hello`` returns or raises HandshakeError; a Protocol
  fed anything never raises, ends CLOSED with a reason after EOF, sends a
  bounded number of bytes, and emits a well-formed event sequence.
* codec: every supported value round-trips; arbitrary bytes decode to a
  value (that re-encodes) or raise ValueError; nesting beyond the limit and
  counts beyond the data raise ValueError, on encode and on decode.
* codec budget (issue 19): no body of N bytes, hostile ones included (floods
  of tiny containers, deep chains, dict keys chosen to collide), makes the
  decoder hold more memory than its budget allows for N bytes, build dicts
  that cost CPython more than linear work, or run more than a linear number
  of steps of its own.
"""

from __future__ import annotations

import inspect
import struct
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import random_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yoton.errors import HandshakeError
from yoton.wire import codec
from yoton.wire.codec import MAX_DEPTH, MEMORY_RATIO, decode_object, encode_object
from yoton.wire.frames import (
    CLOSE_BYTES,
    CONTROL,
    DEFAULT_MAX_PACKAGE_SIZE,
    HEADER_SIZE,
    HEARTBEAT_BYTES,
    SIGNAL_CLOSE,
    SLOT_DUMMY,
    FrameDecoder,
    Package,
    pack_header,
)
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

sys.path.insert(0, str(Path(__file__).parent))  # for bench/fuzz.py, which loads this file by path
import _codec_corpus as corpus  # noqa: E402

U64 = st.integers(min_value=0, max_value=2**64 - 1)
MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``check(case)`` must hold for every case ``strategy`` makes."""

    name: str
    strategy: st.SearchStrategy
    check: object
    ci_examples: int


TARGETS: dict[str, Target] = {}


def target(name: str, strategy: st.SearchStrategy, ci_examples: int):
    """Register the decorated check function as fuzz target ``name``."""

    def register(check):
        TARGETS[name] = Target(name, strategy, check, ci_examples)
        return check

    return register


# =============================================================================
# Frames
# =============================================================================

FIELD = st.one_of(st.sampled_from([0, 1, 2, 2**63, 2**64 - 1]), U64)
# Bodies around the sizes where the decoder changes strategy: the 64 KiB inline
# limit and the 1 MiB first chunk of a large body's buffer (and its doublings).
BIG_SIZES = [2**16 - 1, 2**16, 2**16 + 1, 100_000, MiB - 1, MiB, MiB + 1, 2 * MiB + 3]
big_body = st.builds(random_bytes, st.integers(0, 2**32), st.sampled_from(BIG_SIZES))
body = st.one_of(st.binary(max_size=300), st.just(b""), big_body)
package = st.builds(Package, body, FIELD, FIELD, FIELD, FIELD, FIELD)
small_package = st.builds(Package, st.binary(max_size=300), FIELD, FIELD, FIELD, FIELD, FIELD)
stream_item = st.one_of(package, st.sampled_from(["heartbeat", "close"]))

# How to cut the stream: up to 20 (mode, size) steps, then the rest in
# ``tail``-sized steps. "data" feeds receive_data, "buffer" writes into
# get_buffer() and calls buffer_updated (taking at most what fits).
feed_plan = st.tuples(
    st.lists(
        st.tuples(st.sampled_from(["data", "buffer"]), st.one_of(st.integers(1, 70), st.integers(1, 300_000))),
        max_size=20,
    ),
    st.sampled_from(["data", "buffer"]),
    st.sampled_from([1, 7, 56, 4096, MiB]),
)


def item_bytes(item) -> bytes:
    """The wire bytes of a stream item (a Package or a signal name)."""
    if item == "heartbeat":
        return HEARTBEAT_BYTES
    if item == "close":
        return CLOSE_BYTES
    return item.header() + item.data


def feed(target, data: bytes, plan, after_step=None) -> None:
    """Feed ``data`` to a FrameDecoder or Protocol following ``plan`` (see feed_plan).

    "buffer" steps only go to a Protocol while it is OPEN (before that it
    takes bytes through receive_data only).
    """
    steps, tail_mode, tail = plan
    view = memoryview(data)
    pos = i = 0
    while pos < len(data):
        if i < len(steps):
            mode, size = steps[i]
        else:
            # Byte-at-a-time tails are kept to ~2000 steps for big streams.
            mode, size = tail_mode, max(tail, (len(data) - pos) // 2000)
        i += 1
        if mode == "buffer" and getattr(target, "state", OPEN) == OPEN:
            buf = target.get_buffer()
            assert len(buf) > 0
            n = min(len(buf), size, len(data) - pos)
            buf[:n] = view[pos : pos + n]
            del buf
            target.buffer_updated(n)
        else:
            n = min(size, len(data) - pos)
            target.receive_data(view[pos : pos + n])
        pos += n
        if after_step is not None:
            after_step(pos)


def fields(packages) -> list:
    """Comparable contents of packages."""
    return [(bytes(p.data), p.slot, p.source_id, p.source_seq, p.dest_id, p.dest_seq) for p in packages]


def expected_packages(items) -> tuple[list, bool]:
    """What a decoder delivers for these stream items, and whether it ends closed."""
    out = []
    for x in items:
        if x == "close" or (
            isinstance(x, Package) and not x.data and x.slot == SLOT_DUMMY and x.source_seq == SIGNAL_CLOSE
        ):
            return out, True
        if isinstance(x, Package) and x.data:
            out.append(x)
    return out, False


@target("frames_round_trip", st.tuples(st.lists(stream_item, max_size=8), feed_plan), ci_examples=120)
def check_frames_round_trip(case):
    """Packages come out as they went in, in any split; signals act; nothing else appears."""
    items, plan = case
    data = b"".join(item_bytes(x) for x in items)
    expected, closed = expected_packages(items)
    dec = FrameDecoder()
    feed(dec, data, plan)
    assert dec.error is None
    assert dec.peer_closed == closed
    assert fields(dec.packages) == fields(expected)
    for p in dec.packages:
        assert type(p.data) in (bytes, bytearray)


def reference_decode(data: bytes, limit: int):
    """Decode a whole stream the obvious way: (packages, error kind or None, closed)."""
    out, pos = [], 0
    while len(data) - pos >= HEADER_SIZE:
        control, slot, sid, sseq, did, dseq, length = struct.unpack_from("<7Q", data, pos)
        if control != CONTROL:
            return out, "Lost track of the stream", False
        if length > limit:
            return out, "too large", False
        if len(data) - pos - HEADER_SIZE < length:
            break  # incomplete: waits for more
        payload = data[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
        pos += HEADER_SIZE + length
        if length:
            out.append(Package(payload, slot, sid, sseq, did, dseq))
        elif slot == SLOT_DUMMY and sseq == SIGNAL_CLOSE:
            return out, None, True
    return out, None, False


LIMITS = st.one_of(
    st.sampled_from([1, 56, 2**16, 2**16 + 1, MiB, DEFAULT_MAX_PACKAGE_SIZE, 2**64 - 1]), st.integers(1, 2**64)
)
# Lengths a hostile header may claim: small, near the limits, absurd.
CLAIMED = st.one_of(
    st.integers(0, 400),
    st.sampled_from([2**16, 2**16 + 1, MiB, MiB + 1, 2**30, DEFAULT_MAX_PACKAGE_SIZE + 1, 2**63, 2**64 - 1]),
    U64,
)
hostile_chunk = st.one_of(
    st.binary(max_size=120),  # noise (mostly a lost stream)
    st.builds(pack_header, FIELD, FIELD, FIELD, FIELD, FIELD, CLAIMED),  # a header, body or not
    st.builds(item_bytes, small_package),
    st.sampled_from([HEARTBEAT_BYTES, CLOSE_BYTES, HEARTBEAT_BYTES[:30], b"YOTON   "]),
    st.builds(
        lambda h, n: h[:n],
        st.builds(pack_header, FIELD, FIELD, FIELD, FIELD, FIELD, CLAIMED),
        st.integers(0, HEADER_SIZE),
    ),  # a cut header
)


@target(
    "frames_hostile",
    st.tuples(st.lists(hostile_chunk, max_size=12), LIMITS, feed_plan, st.binary(max_size=200)),
    ci_examples=250,
)
def check_frames_hostile(case):
    """Any stream: exactly what a whole-stream reference decodes, no exception, bounded memory."""
    chunks, limit, plan, more = case
    data = b"".join(chunks)
    dec = FrameDecoder(max_package_size=limit)

    def memory_is_bounded(fed):
        # Whatever a header claims, the decoder's receive memory follows what came in.
        assert len(dec.get_buffer()) <= 2 * MiB + 2 * fed

    feed(dec, data, plan, memory_is_bounded)
    want, error, closed = reference_decode(data, limit)
    assert fields(dec.packages) == fields(want)
    assert dec.peer_closed == closed
    if error is None:
        assert dec.error is None
    else:
        assert isinstance(dec.error, str) and error in dec.error
    for p in dec.packages:
        assert 0 < len(p.data) <= limit
    if dec.error is not None or dec.peer_closed:
        # The end is final: more input changes nothing.
        before = fields(dec.packages)
        dec.receive_data(more + data)
        assert fields(dec.packages) == before


def test_huge_claimed_length_is_not_allocated():
    """A 56-byte header claiming hundreds of MiB (below the limit) costs about 1 MiB, not the claim."""
    claim = 256 * MiB
    dec = FrameDecoder(max_package_size=claim)
    tracemalloc.start()
    try:
        dec.receive_data(pack_header(20, 1, 1, 0, 0, claim) + bytes(100_000))
        buf = dec.get_buffer()
        buf[:10] = b"0123456789"
        del buf
        dec.buffer_updated(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.error is None and dec.packages == []
    assert peak < 4 * MiB
    assert len(dec.get_buffer()) < 2 * MiB


def test_large_body_buffer_grows_to_the_exact_size():
    """A body fed in uneven pieces through get_buffer arrives whole, in a buffer of exactly its size."""
    size = 3 * MiB + 12345
    payload = random_bytes(7, size)
    data = pack_header(20, 1, 1, 0, 0, size) + payload
    dec = FrameDecoder()
    pos, sizes = 0, [56, 1000, MiB, 3, MiB + 5]
    while pos < len(data):
        buf = dec.get_buffer()
        n = min(len(buf), sizes[pos % len(sizes)], len(data) - pos)
        buf[:n] = data[pos : pos + n]
        dec.buffer_updated(n)  # buf still held: the decoder must cope
        pos += n
    [pkg] = dec.packages
    assert len(pkg.data) == size and pkg.data == payload


# =============================================================================
# Handshake
# =============================================================================

HELLOISH = st.builds(
    lambda head, body, end: head + body + end,
    st.sampled_from([b"YOTON!", b"YOTON", b"yoton!", b"ERROR: ", b"AUTH?", b"AUTH!", b""]),
    st.text(alphabet="0123456789abcdefABCDEF.-+_ x\t\r\n\x00\u00e9", max_size=40).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
)


@target("parse_hello", st.one_of(st.binary(max_size=80), HELLOISH), ci_examples=300)
def check_parse_hello(line):
    """parse_hello returns (id, pid) with pid >= 0, or raises HandshakeError; nothing else."""
    try:
        context_id, pid = parse_hello(line)
    except HandshakeError:
        return
    assert type(context_id) is int and type(pid) is int and pid >= 0
    assert line.startswith(b"YOTON!")


@target("hello_round_trip", st.tuples(U64, st.one_of(st.integers(0, 2**22), st.integers(0, 10**30))), ci_examples=100)
def check_hello_round_trip(case):
    """Every id and pid survive format_hello/parse_hello."""
    context_id, pid = case
    line = format_hello(context_id, pid)
    assert line.endswith(b"\r\n") and len(line) < 256
    assert parse_hello(line) == (context_id, pid)


# Protocol(..., auth_key=...) is fuzzed too where this Protocol has that parameter.
_HAS_AUTH = "auth_key" in inspect.signature(Protocol).parameters
LOCAL, PEER = 0x0DFF0A2FAA7A6C71, 0x1122334455667788
AUTH_KEYS = st.sampled_from([None, b"k", b"secret key"] if _HAS_AUTH else [None])

# Hellos that int() would parse but parse_hello must refuse: spaces, signs, 0x,
# underscores in the 16 id characters (a negative id once crashed the auth phase:
# see test_negative_peer_id_with_auth_key_closes below).
SIGNS = ["", "+", "-"]


def _sloppy_id(lead: str, sign: str, prefix: str, underscore: bool, trail: str, digits: str) -> bytes:
    head = lead + sign + prefix
    n = 16 - len(head) - len(trail) - underscore
    body = digits[:n].rjust(n, "0")
    if underscore:
        body = body[:1] + "_" + body[1:]
    return (head + body + trail).encode()


sloppy_hello = st.builds(
    lambda ident, pid: b"YOTON!" + ident + b"." + pid.encode() + b"\r\n",
    st.builds(
        _sloppy_id,
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(SIGNS),
        st.sampled_from(["", "0x", "0X"]),
        st.booleans(),
        st.sampled_from(["", " "]),
        st.text(alphabet="0123456789abcdefABCDEF", max_size=16),
    ),
    st.sampled_from(["7", "+7", " 7 ", "1_000", "0", "99999999999999999999"]),
)

# A handshake as a peer might send it: a first line (hello or not), then
# auth-phase lines (or not), then whatever, all run together.
first_line = st.one_of(
    st.builds(format_hello, st.sampled_from([PEER, LOCAL, 0, 2**64 - 1]), st.integers(0, 2**22)),
    sloppy_hello,
    HELLOISH,
    st.binary(max_size=300),
    st.builds(lambda n: b"x" * n + b"\n", st.sampled_from([255, 256, 257, 1000])),
)
auth_line = st.one_of(
    st.builds(lambda n: b"AUTH?" + n.hex().encode() + b"\r\n", st.binary(min_size=16, max_size=16)),
    st.builds(lambda n: b"AUTH?" + n.hex().encode() + b"\r\n", st.binary(max_size=40)),
    st.builds(lambda p: b"AUTH!" + p.hex().encode() + b"\r\n", st.binary(min_size=31, max_size=33)),
    st.sampled_from(
        [
            b"ERROR: this is Yoton.\r\n",
            b"ERROR: authentication failed.\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\r\n",
            b"\n",
            b"AUTH?\r\n",
            b"AUTH!zz\r\n",
            b"AUTH?" + b"\xff" * 32 + b"\r\n",
        ]
    ),
    HELLOISH,
)
handshake_input = st.builds(
    lambda first, lines, rest: [first, *lines, *rest],
    first_line,
    st.lists(auth_line, max_size=3),
    st.lists(hostile_chunk, max_size=4),
)


def check_events(events: list, state: str) -> None:
    """The event sequence is well formed for the final state."""
    done = [i for i, e in enumerate(events) if e == HANDSHAKE_DONE]
    closed = [i for i, e in enumerate(events) if e == CONNECTION_CLOSED]
    assert len(done) <= 1 and len(closed) <= 1
    assert (len(closed) == 1) == (state == CLOSED)
    if closed:
        assert closed[0] == len(events) - 1
    packages = [i for i, e in enumerate(events) if isinstance(e, Package)]
    assert len(packages) + len(done) + len(closed) == len(events)
    if packages:
        assert done and done[0] < packages[0]


@target(
    "protocol_handshake",
    st.tuples(
        st.sampled_from(["connect", "bind"]),
        AUTH_KEYS,
        handshake_input,
        feed_plan,
        st.booleans(),
        st.binary(max_size=100),
    ),
    ci_examples=300,
)
def check_protocol_handshake(case):
    """Any bytes in HANDSHAKE: no exception, bounded output, OPEN or CLOSED with a reason."""
    side, key, lines, plan, eof, more = case
    kwargs = {"auth_key": key} if key is not None else {}
    proto = Protocol(side, LOCAL, 4321, max_package_size=MiB, **kwargs)
    sent = [proto.data_to_send()]
    events: list = []

    def after_step(_pos):
        assert proto.state in (HANDSHAKE, OPEN, CLOSED)
        events.extend(proto.events_received())
        sent.append(proto.data_to_send())

    data = b"".join(lines)
    feed(proto, data, plan, after_step)
    if eof:
        proto.receive_eof()
        assert proto.state == CLOSED
    after_step(len(data))
    check_events(events, proto.state)
    assert proto.handshake_done == (HANDSHAKE_DONE in events)
    if proto.handshake_done:
        assert proto.peer_id != LOCAL
    if key is not None:
        # Nobody here knows the key: whatever was sent, the connection never opens.
        assert not proto.handshake_done
    elif lines[0].endswith(b"\n") and b"\n" not in lines[0][:-1] and len(lines[0]) <= 200:
        # Without a key, a whole first line opens exactly when it is another context's hello.
        try:
            opens = parse_hello(lines[0])[0] != LOCAL
        except HandshakeError:
            opens = False
        assert proto.handshake_done == opens
    if proto.state == CLOSED:
        assert isinstance(proto.close_reason, str) and proto.close_reason
        # Closed is final.
        proto.receive_data(more + data)
        proto.receive_eof()
        assert proto.state == CLOSED and proto.events_received() == []
        sent.append(proto.data_to_send())
    out = b"".join(sent)
    # A few handshake lines at most, whatever came in.
    assert len(out) <= 512 and out.count(b"\n") <= 4
    if key is None and side == "connect":
        assert out == format_hello(LOCAL, 4321)


@pytest.mark.skipif(not _HAS_AUTH, reason="this Protocol has no auth_key")
def test_negative_peer_id_with_auth_key_closes():
    """A hello with a negative id ("-" parses in int(..., 16)) must close, not raise, with a key too."""
    proto = Protocol("bind", LOCAL, 1, auth_key=b"k")
    proto.receive_data(b"YOTON!-000000000000001.5\r\n")
    proto.receive_data(b"AUTH?" + bytes(16).hex().encode() + b"\r\n")
    assert proto.state == CLOSED and proto.close_reason


@target(
    "protocol_peers",
    st.tuples(
        AUTH_KEYS,
        U64.filter(lambda i: i != LOCAL),
        feed_plan,
        feed_plan,
        st.lists(st.one_of(small_package, st.sampled_from(["heartbeat", "close"])), max_size=4),
    ),
    ci_examples=100,
)
def check_protocol_peers(case):
    """Two Protocols with the same key (or none) open, in any split, and then pass packages."""
    key, bind_id, plan_c, plan_b, items = case
    kwargs = {"auth_key": key} if key is not None else {}
    c = Protocol("connect", LOCAL, 1, **kwargs)
    b = Protocol("bind", bind_id, 2, **kwargs)
    for _ in range(4):  # hello, nonce/answer, proofs: a few round trips at most
        to_b, to_c = c.data_to_send(), b.data_to_send()
        if not to_b and not to_c:
            break
        feed(b, to_b, plan_b)
        feed(c, to_c, plan_c)
    assert c.state == OPEN and b.state == OPEN, (c.close_reason, b.close_reason)
    assert (c.peer_id, c.peer_pid, b.peer_id, b.peer_pid) == (bind_id, 2, LOCAL, 1)
    feed(b, b"".join(item_bytes(x) for x in items), plan_b)
    want, closed = expected_packages(items)
    events = b.events_received()
    assert events[0] == HANDSHAKE_DONE
    assert (events[-1] == CONNECTION_CLOSED) == closed == (b.state == CLOSED)
    assert fields(events[1 : len(events) - closed]) == fields(want)


# =============================================================================
# OBJECT codec
# =============================================================================

hashable_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=20))
hashable = st.recursive(hashable_leaf, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
LONG = st.integers(250, 300)  # counts around the one-byte limit (255)
leaf = st.one_of(
    hashable_leaf,
    st.sampled_from([2**63 - 1, -(2**63), 255, 256, -1, 0.0, -0.0, float("inf"), float("nan"), ""]),
    st.builds(lambda s, n: (s * n)[:n], st.text(min_size=1, max_size=3), LONG),
    st.builds(lambda v, n, t: t([v] * n), hashable_leaf, LONG, st.sampled_from([list, tuple])),
    st.builds(lambda n: {i: None for i in range(n)}, LONG),
)
values = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(hashable, inner, max_size=5),
    ),
    max_leaves=25,
)


def same(a, b) -> bool:
    """Equality that also holds for NaN and tells True/1, list/tuple and 0.0/-0.0 apart."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (a != a and b != b)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


@target("codec_round_trip", values, ci_examples=200)
def check_codec_round_trip(value):
    """Every supported value decodes to an equal value of the same types; encoding is canonical."""
    data = encode_object(value)
    back = decode_object(data)
    assert same(back, value)
    assert encode_object(back) == data


TAGS = b"nbifsltd"


def _count(n: int, long: bool) -> bytes:
    return struct.pack("<BQ", 255, n) if long or n >= 255 else bytes([n])


# Token soup: tags with plausible or absurd counts, valid encodings, noise.
codec_token = st.one_of(
    st.builds(
        lambda t, n, long: bytes([t]) + _count(n, long),
        st.sampled_from(list(b"sltd")),
        st.one_of(st.integers(0, 300), U64),
        st.booleans(),
    ),
    st.sampled_from([bytes([t]) for t in TAGS] + [b"b\x00", b"b\x01", b"b\x02", b"s\x01\xff", b"\xff"]),
    st.builds(lambda v: encode_object(v), values),
    st.binary(max_size=12),
)
codec_input = st.one_of(st.binary(max_size=200), st.lists(codec_token, max_size=20).map(b"".join))


@target("codec_hostile", st.tuples(codec_input, st.one_of(st.just(MAX_DEPTH), st.integers(0, 70))), ci_examples=300)
def check_codec_hostile(case):
    """Any bytes decode to a value, or raise ValueError and nothing else; values re-encode."""
    data, max_depth = case
    try:
        value = decode_object(data, max_depth=max_depth)
    except ValueError:
        return
    again = encode_object(value, max_depth=max_depth)
    assert same(decode_object(again, max_depth=max_depth), value)


def nest(kinds: str, depth: int):
    """``depth`` containers inside each other, cycling through ``kinds`` (l, t, d)."""
    value = None
    for i in range(depth):
        kind = kinds[i % len(kinds)]
        value = [value] if kind == "l" else (value,) if kind == "t" else {"k": value}
    return value


@target(
    "codec_depth",
    st.tuples(
        st.text(alphabet="ltd", min_size=1, max_size=4),
        st.one_of(st.integers(0, 80), st.integers(0, 400)),
        st.one_of(st.just(MAX_DEPTH), st.integers(0, 400)),
    ),
    ci_examples=100,
)
def check_codec_depth(case):
    """Nesting up to max_depth works both ways; one deeper is a ValueError both ways."""
    kinds, depth, max_depth = case
    value = nest(kinds, depth)
    if depth <= max_depth:
        data = encode_object(value, max_depth=max_depth)
        assert same(decode_object(data, max_depth=max_depth), value)
    else:
        with pytest.raises(ValueError, match="deep"):
            encode_object(value, max_depth=max_depth)
        data = encode_object(value, max_depth=depth)
        with pytest.raises(ValueError, match="deep"):
            decode_object(data, max_depth=max_depth)


@target(
    "codec_deep_bytes",
    st.tuples(
        st.sampled_from([b"l\x01", b"t\x01", b"d\x01s\x00", b"l\xff\x01\x00\x00\x00\x00\x00\x00\x00"]),
        st.one_of(st.integers(MAX_DEPTH + 1, MAX_DEPTH + 200), st.sampled_from([10_000, 200_000])),
    ),
    ci_examples=30,
)
def check_codec_deep_bytes(case):
    """Far deeper input than any stack allows is a clear ValueError, not a RecursionError."""
    opener, depth = case
    with pytest.raises(ValueError, match="deeper"):
        decode_object(opener * depth + b"n")


@target(
    "codec_overlong",
    st.tuples(
        values.filter(lambda v: type(v) in (str, list, tuple, dict)),
        st.one_of(st.integers(1, 300), st.sampled_from([2**32, 2**63, 2**64 - 1])),
        st.booleans(),
        st.integers(0, 10**6),
    ),
    ci_examples=200,
)
def check_codec_overlong(case):
    """A count beyond the data, or any cut of a valid encoding, is a ValueError."""
    value, extra, long, cut_seed = case
    data = encode_object(value)
    # The top-level count sits after the tag: one byte, or 255 and eight.
    n, start = (data[1], 2) if data[1] < 255 else (struct.unpack_from("<Q", data, 2)[0], 10)
    bigger = data[:1] + _count(min(n + extra, 2**64 - 1), long) + data[start:]
    with pytest.raises(ValueError):
        decode_object(bigger)
    cut = 1 + cut_seed % (len(data) - 1)  # 1 .. len - 1 (an empty body is None)
    with pytest.raises(ValueError):
        decode_object(data[:cut])


@target(
    "codec_encode_refuses",
    st.one_of(
        st.integers(min_value=2**63),
        st.integers(max_value=-(2**63) - 1),
        st.sampled_from([b"bytes", bytearray(b"x"), 1j, {1, 2}, object(), "\ud800", [b"x"], {"k": [1, 2, {3j}]}]),
    ),
    ci_examples=100,
)
def check_codec_encode_refuses(value):
    """Unsupported values are a ValueError on encode, also inside containers."""
    with pytest.raises(ValueError):
        encode_object(value)
    with pytest.raises(ValueError):
        encode_object([1, {"x": (value,)}])


def test_cyclic_structures_are_refused():
    """A list or dict that contains itself is a ValueError on encode, not a RecursionError."""
    a: list = [1]
    a.append(a)
    d: dict = {}
    d["me"] = [d]
    for v in (a, d):
        with pytest.raises(ValueError, match="deep"):
            encode_object(v)
        with pytest.raises(ValueError):
            encode_object(v, max_depth=10**6)


# =============================================================================
# OBJECT codec: the decoder's budget (issue 19 rows 8 and 9)
# =============================================================================

_PAIRS = corpus.colliding_pairs(5000)  # tuple keys that all share one hash
_walking_body: list = []


def walking_body() -> bytes:
    """A dict whose distinct keys make CPython walk one long run of slots (made once: ~0.3 s)."""
    if not _walking_body:
        _walking_body.append(encode_object(dict.fromkeys(corpus.walking_keys())))
    return _walking_body[0]


DEEP = 4000  # max_depth for the budget target
COSTLY_ITEMS = list(corpus.FLOODS.values()) + [b"t\x01n", b"s\x02ab", b"l\x01s\x02ab", b"d\x01s\x01xn", b"n"]
hostile_body = st.one_of(
    st.builds(corpus.flood, st.sampled_from(COSTLY_ITEMS), st.integers(16, 16 * 1024)),
    st.builds(
        lambda opener, depth: opener * depth + b"n",
        st.sampled_from([b"l\x01", b"t\x01", b"d\x01s\x00"]),
        st.integers(1, 3000),
    ),
    st.builds(lambda n: encode_object(dict.fromkeys(_PAIRS[:n])), st.integers(1, len(_PAIRS))),
    st.builds(lambda _: walking_body(), st.none()),
)
some_body = st.one_of(hostile_body, values.map(encode_object), codec_input)
budget_input = st.one_of(
    some_body,
    st.lists(some_body, min_size=1, max_size=4).map(lambda parts: bytes([0x6C, len(parts)]) + b"".join(parts)),
)


def cpython_dict_steps(value, limit: int) -> int:
    """How many slots CPython looks at to build the dicts in ``value`` (stops once past ``limit``).

    Replays CPython's dict(zip(...)) for every dict of 8 or more keys: tables
    of 8, 16, ... slots, each filled anew with the keys in order until two
    thirds full; a key tries ``hash & mask``, then ``i = 5*i + perturb + 1``
    with ``perturb >>= 5``. A slot whose key has the same hash is a key
    comparison, counted as a step too.
    """
    steps = 0
    todo = [value]
    while todo:
        v = todo.pop()
        if type(v) in (list, tuple):
            todo.extend(v)
        elif type(v) is dict:
            todo.extend(v.values())
            keys = list(v)
            size = 8
            while len(keys) >= 8:
                mask, room = size - 1, (size << 1) // 3
                slots = {}
                for key in keys[:room]:
                    h = hash(key)
                    i, perturb = h & mask, h & 0xFFFF_FFFF_FFFF_FFFF
                    while i in slots:
                        steps += 1
                        perturb >>= 5
                        i = (5 * i + perturb + 1) & mask
                    slots[i] = key
                if steps > limit or room >= len(keys):
                    break
                size <<= 1
    return steps


def traced_decode(data: bytes, **kwargs):
    """decode_object(data, **kwargs) under tracemalloc: (value or ValueError, peak bytes)."""
    tracemalloc.start()
    try:
        result = decode_object(data, **kwargs)
    except ValueError as exc:
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


@target(
    "codec_budget",
    st.tuples(budget_input, st.sampled_from([MEMORY_RATIO, 16, 8]), st.sampled_from([0, 4096, 65536])),
    ci_examples=100,
)
def check_codec_budget(case):
    """Any body: memory within the budget for its size; dicts CPython builds in linear steps."""
    data, ratio, allowance = case
    result, peak = traced_decode(data, max_depth=DEEP, memory_ratio=ratio, memory_allowance=allowance)
    n = len(data)
    # The objects decoded (at most ratio bytes per byte read plus the allowance), the lists of
    # items of containers being filled (9 bytes an item at most), the decoder's stack (~150 bytes
    # a level of nesting; a level takes 2 bytes) and its own few KB.
    assert peak <= (ratio + 10) * n + allowance + 160 * min(DEEP, n // 2) + 64 * 1024, (peak, n)
    if not isinstance(result, ValueError):
        limit = 64 * n + 8192
        assert cpython_dict_steps(result, limit) <= limit
        encode_object(result, max_depth=DEEP)  # what decodes, encodes


small_budget_input = st.one_of(
    codec_input,
    values.map(encode_object),
    st.builds(corpus.flood, st.sampled_from(COSTLY_ITEMS), st.integers(16, 4096)),
    st.builds(lambda n: encode_object(dict.fromkeys(_PAIRS[:n])), st.integers(1, 150)),
)


@target("codec_steps", small_budget_input, ci_examples=100)
def check_codec_steps(data):
    """Any body of N bytes: the decoder runs at most a few dozen of its own lines per byte."""
    code = {f.__code__ for f in vars(codec).values() if inspect.isfunction(f)}
    lines = 0

    def count(frame, event, arg):
        nonlocal lines
        if frame.f_code not in code:
            return None
        if event == "line":
            lines += 1
        return count

    sys.settrace(count)
    try:
        try:
            decode_object(data)
        except ValueError:
            pass
    finally:
        sys.settrace(None)
    assert lines <= 40 * len(data) + 400, (lines, len(data))


# =============================================================================
# The CI runs
# =============================================================================


def ci_test(name: str):
    """A pytest test running target ``name`` with its CI example count."""
    t = TARGETS[name]
    run = settings(
        max_examples=t.ci_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(t.strategy)(t.check))
    run.__name__ = f"test_{name}"
    run.__doc__ = t.check.__doc__
    return run


test_frames_round_trip = ci_test("frames_round_trip")
test_frames_hostile = ci_test("frames_hostile")
test_parse_hello = ci_test("parse_hello")
test_hello_round_trip = ci_test("hello_round_trip")
test_protocol_handshake = ci_test("protocol_handshake")
test_protocol_peers = ci_test("protocol_peers")
test_codec_round_trip = ci_test("codec_round_trip")
test_codec_hostile = ci_test("codec_hostile")
test_codec_depth = ci_test("codec_depth")
test_codec_deep_bytes = ci_test("codec_deep_bytes")
test_codec_overlong = ci_test("codec_overlong")
test_codec_encode_refuses = ci_test("codec_encode_refuses")
test_codec_budget = ci_test("codec_budget")
test_codec_steps = ci_test("codec_steps")


def test_every_target_runs_in_ci():
    """No target is registered without a CI test."""
    assert {n for n in TARGETS} == {n[5:] for n in globals() if n.startswith("test_") and n[5:] in TARGETS}
