"""The OBJECT decoder's budget: hostile bodies (issue 19 rows 8 and 9) are refused cheaply,
realistic data still decodes, and large bodies decode without the cyclic GC running."""

from __future__ import annotations

import gc
import os
import random
import re
import subprocess
import sys
import threading
import timeit
import tracemalloc
from pathlib import Path

import _codec_corpus as corpus
import pytest

from yoton.wire.codec import (
    HASH_CHECK_MIN,
    MEMORY_ALLOWANCE,
    MEMORY_RATIO,
    decode_object,
    encode_object,
)

MiB = 1 << 20
SRC = Path(__file__).resolve().parents[2] / "src"
REALISTIC = corpus.realistic()


def peak_memory(fn):
    """Run ``fn``; return (its result or the exception it raised, the peak of traced memory)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - handed to the caller
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


# -- realistic data --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REALISTIC))
def test_realistic_values_round_trip(name):
    value = REALISTIC[name]
    data = encode_object(value)
    back = decode_object(data)
    assert back == value
    assert encode_object(back) == data  # same types, same order


@pytest.mark.parametrize("name", [n for n in REALISTIC if len(encode_object(REALISTIC[n])) >= 10_000])
def test_realistic_values_fit_the_ratio_alone(name):
    """Without the allowance's help: each takes less than MEMORY_RATIO bytes of memory per input byte.

    (8 KB of allowance stay: small containers count when they open, before
    their items' bytes are read, so a few nested ones at the start need it.)
    """
    data = encode_object(REALISTIC[name])
    back, peak = peak_memory(lambda: decode_object(data, memory_allowance=8192))
    assert back == REALISTIC[name]
    assert peak < MEMORY_RATIO * len(data)


def test_small_bodies_decode_whatever_their_shape():
    """Up to ~17 KB the allowance covers even the costliest shapes (60 bytes per byte)."""
    for item in corpus.FLOODS.values():
        data = corpus.flood(item, MEMORY_ALLOWANCE // 60)
        assert isinstance(decode_object(data, max_depth=65), list)


# -- issue 19 row 8: floods of tiny containers ----------------------------------------------


def refused_at(exc: ValueError) -> int:
    """The offset a budget refusal names ("the objects decoded from the first N bytes ...")."""
    match = re.search(r"refused: the objects decoded from the first (\d+) bytes", str(exc))
    assert match, exc
    return int(match.group(1))


def check_refusal(data: bytes, allowance: int, **kwargs) -> int:
    """Decode ``data`` (which must be refused) with this allowance; check the memory it took."""
    result, peak = peak_memory(lambda: decode_object(data, memory_allowance=allowance, **kwargs))
    assert isinstance(result, ValueError), result
    read = refused_at(result)
    # The objects made from the bytes read, plus the lists of items still being filled (8-9 bytes
    # a pointer), plus the decoder's own few hundred KB at most.
    assert peak <= (MEMORY_RATIO + 10) * read + allowance + 256 * 1024, (peak, read)
    return read


@pytest.mark.parametrize("kind", list(corpus.FLOODS))
def test_container_floods_are_refused_early(kind):
    """A 4 MB body that yoton 2.2 (and we, before) decoded into 30-60 times its size.

    It is refused as soon as what it built outgrows MEMORY_RATIO bytes per
    byte read plus the allowance: well before its end.
    """
    data = corpus.flood(corpus.FLOODS[kind], 4 * MiB)
    with pytest.raises(ValueError, match="refused") as info:
        decode_object(data, max_depth=65)
    assert refused_at(info.value) < len(data) // 2
    # The memory it took on the way, measured with a smaller allowance (tracing every allocation is slow).
    assert check_refusal(data, 64 * 1024, max_depth=65) < 64 * 1024


def test_flood_of_20_mb_of_empty_dicts_is_refused_in_its_first_megabyte():
    """The row as reported: 20 MB of empty dicts took +696 MB and 31 s."""
    data = b"l\xff" + (10 * MiB).to_bytes(8, "little") + b"d\x00" * (10 * MiB)
    with pytest.raises(ValueError, match="refused") as info:
        decode_object(data)
    assert refused_at(info.value) < MiB


def test_flood_after_realistic_data_is_refused_too():
    """Good data first buys a flood no more than the memory its own bytes allowed."""
    good = encode_object(REALISTIC["records"][:200])  # ~10 KB, about 10 bytes of memory per byte
    data = b"t\x02" + good + corpus.flood(b"d\x00", 4 * MiB)
    with pytest.raises(ValueError, match="refused") as info:
        decode_object(data)
    assert len(good) < refused_at(info.value) < len(data) // 2
    assert check_refusal(data, 64 * 1024) > len(good)


def test_memory_bound_is_a_keyword():
    data = encode_object([[] for _ in range(1000)])  # 2 KB: 56 bytes of memory per 2 bytes
    assert decode_object(data) == [[] for _ in range(1000)]
    with pytest.raises(ValueError, match="refused.*memory_ratio = 30"):
        decode_object(data, memory_allowance=0)
    assert len(decode_object(data, memory_ratio=40, memory_allowance=0)) == 1000
    with pytest.raises(ValueError, match="refused"):
        decode_object(encode_object("x" * 1000), memory_allowance=0, memory_ratio=4)


def test_large_bodies_decode_without_collections():
    """Container-heavy data no longer sets off the cyclic GC over and over (it made decoding 5x slower)."""
    data = encode_object(REALISTIC["nested lists"] * 4)  # 160 KB, 16,000 lists
    runs = []

    def count(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        value = decode_object(data)
    finally:
        gc.callbacks.remove(count)
    assert value == REALISTIC["nested lists"] * 4
    assert runs == []
    assert gc.isenabled()


def test_gc_left_off_when_the_application_turned_it_off():
    data = encode_object(REALISTIC["nested lists"] * 4)
    gc.disable()
    try:
        decode_object(data)
        assert not gc.isenabled()
        with pytest.raises(ValueError):
            decode_object(data[:-1])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_back_on_after_concurrent_decodes_and_errors():
    good = encode_object(REALISTIC["nested lists"] * 4)
    bad = corpus.flood(b"d\x00", 4 * MiB)
    errors = []

    def work(data):
        for _ in range(5):
            try:
                decode_object(data)
            except ValueError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in (good, bad, good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 10
    assert gc.isenabled()


# -- issue 19 row 9: dict keys that flood the hash table -------------------------------------


def test_keys_sharing_one_hash_are_refused():
    """5,000 tuple keys with one hash: 0.1 s of GIL-holding dict() here (13 s for 1.2 MB in the report)."""
    pairs = corpus.colliding_pairs(5000)
    assert len({hash(p) for p in pairs}) == 1 and len(set(pairs)) == 5000  # the attack works on this Python
    data = encode_object(dict.fromkeys(pairs))
    with pytest.raises(ValueError, match="refused: a dict has more than 8 keys with one hash value"):
        decode_object(data)
    # Just above the size where keys are looked at, and as the keys of a dict inside a list.
    data = encode_object([{}, dict.fromkeys(pairs[:HASH_CHECK_MIN])])
    with pytest.raises(ValueError, match="one hash value"):
        decode_object(data)
    assert len(decode_object(encode_object(dict.fromkeys(pairs[: HASH_CHECK_MIN - 1])))) == HASH_CHECK_MIN - 1


def test_keys_that_walk_one_long_run_are_refused():
    """Distinct hashes, chosen so that every key probes through all the keys before it."""
    keys = corpus.walking_keys()
    assert len({hash(k) for k in keys}) == len(keys) > 2000
    # The attack is real: CPython's own dict takes many times as long as for as many ordinary keys.
    rng = random.Random(1)
    plain = [rng.randrange(2**60) for _ in keys]
    slow = min(timeit.repeat(lambda: dict.fromkeys(keys), number=1, repeat=5))
    fast = min(timeit.repeat(lambda: dict.fromkeys(plain), number=1, repeat=5))
    assert slow > 5 * fast, (slow, fast)
    with pytest.raises(ValueError, match="refused: a dict of 2730 keys whose hashes are chosen to collide"):
        decode_object(encode_object(dict.fromkeys(keys)))


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(list(range(5000)), id="consecutive ints"),
        pytest.param([-i for i in range(5000)], id="negative ints"),
        pytest.param([i << 20 for i in range(3000)], id="ints 2**20 apart"),
        pytest.param([i << 40 for i in range(3000)], id="ints 2**40 apart"),
        pytest.param([1_700_000_000_000_000_000 + i * 10**9 for i in range(3000)], id="timestamps in ns"),
        pytest.param(
            sorted({random.Random(i).randrange(-(2**63), 2**63) for i in range(3000)}), id="random 64-bit ints"
        ),
        pytest.param([random.Random(3).random() for _ in range(3000)], id="floats in [0, 1)"),
        pytest.param([i / 4 for i in range(3000)], id="quarters"),
        pytest.param([(i, j) for i in range(60) for j in range(60)], id="int pairs"),
        pytest.param([(random.Random(i).random(), "x") for i in range(3000)], id="float-str pairs"),
        pytest.param([i if i % 2 else str(i) for i in range(3000)], id="ints and strings"),
        pytest.param([None, True, 0.5] + list(range(2, 2000)), id="None, bools and ints"),
    ],
)
def test_ordinary_keys_pass_the_check(keys):
    value = dict.fromkeys(keys, 1)
    assert decode_object(encode_object(value)) == value


@pytest.mark.parametrize("seed, secret", [(None, True), ("random", True), ("0", False), ("123", False)])
def test_string_keys_are_checked_when_their_hashes_are_not_secret(seed, secret):
    """With PYTHONHASHSEED fixed (randomization off, or a known seed), string keys are checked too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env["PYTHONPATH"] = str(SRC)  # this checkout's yoton
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    code = (
        "from yoton.wire import codec; d = {str(i): i for i in range(2000)}; "
        "assert codec.decode_object(codec.encode_object(d)) == d; print(codec._STR_HASH_RANDOM)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(secret)
