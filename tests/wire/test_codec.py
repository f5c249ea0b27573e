"""OBJECT codec tests: the vectors of docs/protocol.md, limits, hostile input, and parity with the original."""

import collections
import enum
import json
import math
import random
import struct
import sys
import time

import pytest
from _orig import run_orig
from hypothesis import given, settings
from hypothesis import strategies as st

from yoton.wire.codec import MAX_DEPTH, decode_object, encode_object

VECTORS = [
    (None, "6e"),
    (True, "6201"),
    (False, "6200"),
    (42, "692a00000000000000"),
    (-1, "69ffffffffffffffff"),
    (3.5, "660000000000000c40"),
    ("hé", "730368c3a9"),
    ("", "7300"),
    ([1, "a"], "6c02690100000000000000730161"),
    ({"k": (1, 2.0)}, "640173016b7402690100000000000000660000000000000040"),
    ("x" * 300, "73ff2c01000000000000" + "78" * 300),
    ([], "6c00"),
    ((), "7400"),
    ({}, "6400"),
    (2**63 - 1, "69ffffffffffffff7f"),
    (-(2**63), "690000000000000080"),
    (float("inf"), "66000000000000f07f"),
    (-0.0, "660000000000000080"),
]


def same(a, b):
    """Equality that also holds for NaN and tells types (True vs 1, list vs tuple) apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


@pytest.mark.parametrize("value, hexed", VECTORS)
def test_vectors(value, hexed):
    assert encode_object(value).hex() == hexed
    assert same(decode_object(bytes.fromhex(hexed)), value)


def test_nan_and_count_boundaries():
    assert encode_object(float("nan")).hex() == "66000000000000f87f"
    assert math.isnan(decode_object(bytes.fromhex("66000000000000f87f")))
    assert encode_object("x" * 254)[:2] == b"s\xfe"
    assert encode_object("x" * 255)[:10] == b"s\xff" + struct.pack("<Q", 255)
    assert encode_object([None] * 255) == b"l\xff" + struct.pack("<Q", 255) + b"n" * 255
    assert encode_object({i: None for i in range(300)})[:10] == b"d\xff" + struct.pack("<Q", 300)
    # a long-form count for a small size is still understood
    assert decode_object(b"s\xff" + struct.pack("<Q", 2) + b"ab") == "ab"


def test_bool_before_int_and_decoded_types():
    assert decode_object(encode_object([True, 1, False, 0])) == [True, 1, False, 0]
    assert [type(x) for x in decode_object(encode_object([True, 1]))] == [bool, int]


def test_subclasses_encode_as_base_types():
    class Color(enum.IntEnum):
        RED = 3

    class Shouty(str):
        def __str__(self):
            return "NO"

    Point = collections.namedtuple("Point", "x y")
    assert encode_object(Color.RED) == encode_object(3)
    assert encode_object(Shouty("ab")) == encode_object("ab")
    assert encode_object(Point(1, 2)) == encode_object((1, 2))
    assert encode_object(collections.OrderedDict(a=1)) == encode_object({"a": 1})
    assert same(decode_object(encode_object(Point(1, 2))), (1, 2))


@pytest.mark.parametrize(
    "value, name",
    [
        (b"x", "bytes"),
        ({1, 2}, "set"),
        (1j, "complex"),
        (object(), "object"),
        (bytearray(b"a"), "bytearray"),
        ([1, {"k": [b""]}], "bytes"),
    ],
)
def test_unsupported_types(value, name):
    with pytest.raises(ValueError, match=name):
        encode_object(value)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**100, [10**10000], [1, 2**64]])
def test_int_out_of_range(value):
    with pytest.raises(ValueError, match="64 bits"):
        encode_object(value)


def test_lone_surrogate_is_refused():
    with pytest.raises(ValueError, match="UTF-8"):
        encode_object("\ud800")


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limits():
    ok = encode_object(nested(MAX_DEPTH))
    # (compared through their encodings: == on lists this deep would exhaust the stack)
    assert encode_object(decode_object(ok)) == ok
    with pytest.raises(ValueError, match="deep"):
        encode_object(nested(MAX_DEPTH + 1))
    too_deep = b"l\x01" * (MAX_DEPTH + 1) + b"n"
    with pytest.raises(ValueError, match="deeper"):
        decode_object(too_deep)
    assert encode_object(decode_object(too_deep, max_depth=MAX_DEPTH + 1), max_depth=MAX_DEPTH + 1) == too_deep
    assert encode_object(nested(3), max_depth=3)
    with pytest.raises(ValueError):
        encode_object(nested(3), max_depth=2)
    with pytest.raises(ValueError):
        decode_object(encode_object({"a": [()]}), max_depth=2)
    assert decode_object(encode_object({"a": [()]}), max_depth=3) == {"a": [()]}
    with pytest.raises(ValueError, match="deep"):
        encode_object([[]], max_depth=1)  # empty containers count too, both ways
    with pytest.raises(ValueError, match="deeper"):
        decode_object(b"l\x01l\x00", max_depth=1)


def test_depth_limit_is_reached_whatever_the_recursion_limit():
    """Encoding and decoding are iterative: MAX_DEPTH levels work even with a tiny recursion limit."""
    value = nested(MAX_DEPTH, "leaf")
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        data = encode_object(value)
        back = decode_object(data)
    finally:
        sys.setrecursionlimit(old)
    assert data == b"l\x01" * MAX_DEPTH + b"s\x04leaf"
    for _ in range(MAX_DEPTH):
        assert type(back) is list and len(back) == 1
        back = back[0]
    assert back == "leaf"


def test_cycles_and_huge_limits_give_value_error():
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError):
        encode_object(loop)
    with pytest.raises(ValueError, match="cyclic"):
        encode_object(loop, max_depth=10**9)  # no stack to run out of: the cycle itself is found
    d = {}
    d["me"] = [1, (d,)]
    with pytest.raises(ValueError):
        encode_object(d)
    with pytest.raises(ValueError, match="cyclic"):
        encode_object(d, max_depth=10**9)
    # Deep but not cyclic (a list shared by two branches is no cycle) encodes with a big enough limit.
    shared = [1]
    deep = nested(5000, [shared, shared])
    data = encode_object(deep, max_depth=5002)
    assert data == b"l\x01" * 5000 + b"l\x02" + (b"l\x01" + encode_object(1)) * 2
    chain = b"t\x01" * 200_000 + b"n"
    with pytest.raises(ValueError):
        decode_object(chain)  # deeper than MAX_DEPTH
    # The decoder has no stack to run out of either (given the depth and memory to allow it).
    assert decode_object(chain, max_depth=10**9, memory_ratio=40) is not None


def test_decode_input_kinds():
    data = encode_object({"k": [1, "two", 3.0]})
    assert decode_object(bytearray(data)) == {"k": [1, "two", 3.0]}
    assert decode_object(memoryview(b"junk" + data)[4:]) == {"k": [1, "two", 3.0]}
    assert decode_object(b"") is None
    assert decode_object(bytearray()) is None
    assert decode_object(memoryview(b"")) is None
    with pytest.raises(ValueError, match="bytes-like"):
        decode_object("n")
    with pytest.raises(ValueError, match="bytes-like"):
        decode_object(None)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"x", "unknown tag byte 0x78"),
        (b"\x00", "unknown tag"),
        (b"i\x01", "truncated"),
        (b"f", "truncated"),
        (b"b", "truncated"),
        (b"s", "truncated"),
        (b"s\x05abc", "past the end"),
        (b"s\xff\x01", "truncated"),
        (b"s\xff" + b"\xff" * 8, "past the end"),
        (b"l\x02n", "more items"),
        (b"l\xff" + struct.pack("<Q", 2**63), "more items"),
        (b"t\xff" + b"\xff" * 8, "more items"),
        (b"d\xff" + struct.pack("<Q", 2**62) + b"nn", "more items"),
        (b"d\x01n", "more items"),
        (b"d\x01nn", None),
        (b"nn", "trailing"),
        (b"l\x00n", "trailing"),
        (b"s\x01\xff", "UTF-8"),
        (b"s\x02\xc3", "past the end"),
        (b"s\x01\xc3", "UTF-8"),
        (b"d\x01l\x00n", "unhashable"),
        (b"d\x01d\x00n", "unhashable"),
        (b"b\x02", "bool"),
    ],
)
def test_malformed(data, match):
    start = time.perf_counter()
    if match is None:  # control: the fixed-up input decodes
        decode_object(data)
        return
    with pytest.raises(ValueError, match=match):
        decode_object(data)
    assert time.perf_counter() - start < 0.5


def test_every_truncation_of_a_rich_value_fails_cleanly():
    data = encode_object({"a": [1, 2.5, None, True, "é" * 300, (1, ("x",))], 7: {}})
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode_object(data[:cut] if cut else b"\x00")


texts = st.text(st.characters(blacklist_categories=("Cs",)))  # lone surrogates cannot be UTF-8
hashable = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=6,
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | texts,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=6).map(tuple)
        | st.dictionaries(hashable, inner, max_size=5)
    ),
    max_leaves=25,
)


@given(values)
@settings(max_examples=300, deadline=None)
def test_round_trip(value):
    data = encode_object(value)
    assert same(decode_object(data), value)
    assert same(decode_object(bytearray(data)), value)


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_bytes_decode_or_value_error(data):
    try:
        decode_object(data)
    except ValueError:
        pass


@given(values, st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_encodings_decode_or_value_error(value, data):
    try:
        raw = bytearray(encode_object(value))
    except ValueError:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or not raw:
            raw[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif action == "delete":
            del raw[min(pos, len(raw) - 1)]
        else:
            raw[min(pos, len(raw) - 1)] = data.draw(st.integers(0, 255))
    try:
        decode_object(raw)
    except ValueError:
        pass


# -- parity with the original yoton 2.2 -----------------------------------------------------


def random_value(rng, depth=0):
    kind = rng.randrange(11 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 254, 255, 2**31, -(2**63), 2**63 - 1, rng.randrange(-(2**63), 2**63)])
    if kind == 3:
        return rng.choice(
            [0.0, -0.0, 1.5, 1e308, 5e-324, float("inf"), float("-inf"), float("nan"), rng.uniform(-1e9, 1e9)]
        )
    if kind in (4, 5, 6):
        alphabet = "abc xyz\n\té€😀\x00"
        size = rng.choice([0, 1, 5, 254, 255, 256, 1000]) if depth == 0 else rng.randrange(8)
        return "".join(rng.choice(alphabet) for _ in range(size))
    size = rng.choice([0, 1, 2, 5, 254, 255, 300]) if depth == 0 else rng.randrange(4)
    items = [random_value(rng, depth + 1) for _ in range(size)]
    if kind == 7:
        return items
    if kind == 8:
        return tuple(items)
    keys = [
        rng.choice([None, True, rng.randrange(-99, 99), rng.random(), "k%d" % rng.randrange(1000), (1, "t")])
        for _ in range(size)
    ]
    return dict(zip(keys, items))


PARITY_SCRIPT = r"""
import json, sys
import yoton
names = {"nan": float("nan"), "inf": float("inf")}
out = []
for line in sys.stdin:
    literal, ours = json.loads(line)
    value = eval(literal, names)
    theirs = yoton.OBJECT.message_to_bytes(value)
    back = yoton.OBJECT.message_from_bytes(bytes.fromhex(ours))
    out.append([theirs.hex(), yoton.OBJECT.message_to_bytes(back).hex()])
print(json.dumps(out))
"""


def test_parity_with_original():
    rng = random.Random(2024)
    batch = [random_value(rng) for _ in range(400)] + [v for v, _ in VECTORS]
    lines = "".join(json.dumps([repr(v), encode_object(v).hex()]) + "\n" for v in batch)
    results = json.loads(run_orig(PARITY_SCRIPT, lines, timeout=120))
    assert len(results) == len(batch)
    for value, (theirs, their_reencoding) in zip(batch, results):
        ours = encode_object(value)
        assert ours.hex() == theirs, value  # same bytes as the original encoder
        assert their_reencoding == theirs  # the original reads our bytes back unchanged
        assert encode_object(decode_object(bytes.fromhex(theirs))) == ours  # we read theirs back


# -- nesting depth against the original yoton 2.2 ---------------------------------------------

DEPTH_SCRIPT = r"""
import json, sys
import yoton
M = yoton.OBJECT
OPEN = {"l": b"l\x01", "t": b"t\x01", "d": b"d\x01s\x01k"}


def nest(kind, depth):
    value = None
    for _ in range(depth):
        value = [value] if kind == "l" else (value,) if kind == "t" else {"k": value}
    return value


def deepest(works):
    lo, hi = 0, 20000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            works(mid)
            lo = mid
        except RecursionError:
            hi = mid - 1
    return lo


out = {}
for kind in "ltd":
    enc = deepest(lambda d: M.message_to_bytes(nest(kind, d)))
    dec = deepest(lambda d: M.message_from_bytes(OPEN[kind] * d + b"n"))
    out[kind] = [enc, dec, M.message_to_bytes(nest(kind, enc)).hex()]
print(json.dumps(out))
"""

READ_SCRIPT = r"""
import json, sys
import yoton
M = yoton.OBJECT
print(json.dumps([M.message_to_bytes(M.message_from_bytes(bytes.fromhex(h))).hex()
                  for h in json.loads(sys.stdin.read())]))
"""


def nest(kind, depth):
    value = None
    for _ in range(depth):
        value = [value] if kind == "l" else (value,) if kind == "t" else {"k": value}
    return value


def test_nesting_as_deep_as_yoton_22_goes():
    """issue 12: what yoton 2.2 encodes at its deepest decodes here, and ours decodes there.

    yoton 2.2 recurses, so Python's recursion limit (1000) sets its depths:
    about 996 levels when encoding, 498 (lists, tuples) or 995 (dicts) when
    decoding. Ours is iterative and takes MAX_DEPTH (1000) both ways.
    """
    found = json.loads(run_orig(DEPTH_SCRIPT))
    ours = []
    for kind, (enc, dec, deepest_hex) in found.items():
        assert 400 <= dec <= enc <= MAX_DEPTH, (kind, enc, dec)  # "a few hundred levels", all within ours
        theirs = bytes.fromhex(deepest_hex)
        assert encode_object(decode_object(theirs)) == theirs  # their deepest message, read and re-encoded
        assert encode_object(nest(kind, enc)) == theirs  # the same bytes as our encoder makes
        ours.append(encode_object(nest(kind, dec)).hex())  # ours as deep as they can read
    assert json.loads(run_orig(READ_SCRIPT, json.dumps(ours))) == ours
