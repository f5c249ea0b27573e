"""Realistic OBJECT values, and hostile bodies that cost far more than their size.

:func:`realistic` returns named values of the kinds yoton carries: what
pyzo's kernel and IDE send each other (introspection replies: lists of
names, ``(name, type, kind, repr)`` tuples, signatures, docstrings; debug
state; startup info; breakpoints), and plain application data (numbers,
short and long strings, records, nested lists and dicts, dicts keyed by
ints, floats and tuples). The "worst" ones are the shapes that cost the
most memory per input byte (lists of one- or two-character strings, lists
of one-item dicts). Deterministic (fixed seeds), a few hundred KB in all.

The hostile builders make the bodies of issue 19 rows 8 and 9: floods of
empty or one-item containers, chains of nested containers, and dict keys
whose hashes are chosen to make Python's hash table degrade.
"""

from __future__ import annotations

import builtins
import keyword
import random
import string
import struct
import sys

# -- realistic -----------------------------------------------------------------

_WORDS = sorted(set(dir(builtins) + dir(str) + dir(dict) + dir(list) + keyword.kwlist))


def realistic() -> dict:
    """Name -> value, each a realistic OBJECT message (see the module docstring)."""
    rng = random.Random(19)

    def name():
        return rng.choice(_WORDS)

    def short(alphabet=string.ascii_letters):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))

    def text(words):
        return " ".join(name() for _ in range(words))

    c = {}
    # What pyzo sends (pyzokernel/introspection.py, debug.py, interpreter.py; pyzo/core/shell.py).
    c["pyzo request"] = ("dir2", ("os.path",), {})
    c["pyzo signature"] = ("open(file, mode='r', buffering=-1, encoding=None)", "function")
    c["pyzo dir"] = list(_WORDS)
    c["pyzo dir2"] = [
        (
            name(),
            rng.choice(["int", "str", "list", "function"]),
            rng.choice(["int", "list", "function"]),
            "<%d-element list: %s>" % (rng.randrange(9), text(3)),
        )
        for _ in range(1500)
    ]
    c["pyzo doc"] = text(400)
    c["pyzo debug"] = {
        "index": 3,
        "debugmode": 1,
        "frames": [("/home/u/p/m%d.py" % i, rng.randrange(900), name()) for i in range(30)],
    }
    c["pyzo startup"] = {
        "builtins": list(_WORDS),
        "version": (3, 11, 7, "final", 0),
        "keywords": keyword.kwlist,
        "softkeywords": [],
        "ipython": "no",
        "projectPath": "/home/u/proj",
        "scriptFile": "",
        "cwd": "/home/u",
        "gui": "auto",
        "env": {"PATH": "/usr/bin", "HOME": "/home/u"},
    }
    c["pyzo breakpoints"] = {"/home/u/p/f%d.py" % i: [rng.randrange(1000) for _ in range(5)] for i in range(20)}
    c["pyzo evalMultiple"] = [("x%d" % i, True, repr(rng.random())) for i in range(200)]
    c["pyzo reply error"] = ("error", "ValueError: I do not like 2.\n  File ..., line 3\n")
    # Plain application data.
    c["floats"] = [rng.random() for _ in range(5000)]
    c["ints"] = [rng.randrange(-(2**62), 2**62) for _ in range(5000)]
    c["small ints"] = [rng.randrange(256) for _ in range(5000)]
    c["bools and None"] = [rng.choice([True, False, None]) for _ in range(5000)]
    c["mixed numbers"] = [rng.choice([rng.random(), rng.randrange(1000), None]) for _ in range(3000)]
    c["names"] = [name() for _ in range(5000)]
    c["short strings"] = [short() for _ in range(5000)]
    c["unicode short strings"] = [short("aé€中ü😀Д") for _ in range(3000)]
    c["docstrings"] = [text(rng.randrange(5, 80)) for _ in range(200)]
    c["large string"] = text(20000)
    c["dict str->float"] = {"var%d" % i: rng.random() for i in range(3000)}
    c["dict str->int"] = {"k%d" % i: rng.randrange(1000) for i in range(3000)}
    c["records"] = [
        {"name": name(), "kind": rng.choice(["function", "class", "module"]), "line": rng.randrange(5000)}
        for _ in range(2000)
    ]
    c["records xy"] = [{"x": rng.random(), "y": rng.random()} for _ in range(2000)]
    c["records mixed"] = [{"id": i, "ok": True, "v": short()} for i in range(2000)]
    c["points"] = [[rng.random(), rng.random()] for _ in range(3000)]
    c["int pairs"] = [(rng.randrange(1000), rng.randrange(1000)) for _ in range(3000)]
    c["bool triples"] = [[rng.random() < 0.5 for _ in range(3)] for _ in range(3000)]
    c["matrix"] = [[rng.random() for _ in range(60)] for _ in range(60)]
    c["nested lists"] = [[[[i, j] for j in range(5)] for i in range(10)] for _ in range(40)]

    def config(depth):
        return {"a%d" % i: (config(depth - 1) if depth else rng.random()) for i in range(4)}

    c["nested config"] = config(5)
    c["int-keyed dict"] = {i: name() for i in range(3000)}
    c["spread int keys"] = {rng.randrange(2**62): i for i in range(1500)}
    c["tuple-keyed dict"] = {(i, j): rng.random() for i in range(40) for j in range(40)}
    c["float-keyed dict"] = {rng.random(): i for i in range(1500)}
    c["stride int keys"] = {i << 20: i for i in range(1500)}
    # The most expensive realistic shapes per input byte (15-19 bytes of memory per byte).
    c["worst: 2-char strings"] = ["".join(rng.choice(string.ascii_letters) for _ in range(2)) for _ in range(5000)]
    c["worst: 1-char non-latin strings"] = [rng.choice("ĀДλ€中") for _ in range(5000)]
    c["worst: 1-item dicts"] = [{rng.choice("xyz"): i} for i in range(3000)]
    c["worst: 1-string lists"] = [[short()] for _ in range(3000)]
    return c


# -- hostile ---------------------------------------------------------------------


def flood(item: bytes, size: int) -> bytes:
    """A list body of about ``size`` bytes holding ``item`` (an encoded value) over and over."""
    n = max(1, (size - 10) // len(item))
    return b"l\xff" + struct.pack("<Q", n) + item * n


FLOODS = {
    "empty dicts": b"d\x00",
    "empty lists": b"l\x00",
    "one-item dicts": b"d\x01nn",
    "one-item lists": b"l\x01n",
    "64-deep list chains": b"l\x01" * 64 + b"n",
    "64-deep dict chains": b"d\x01s\x00" * 64 + b"n",
    "dicts of one-item lists": b"d\x01s\x00l\x01n",
}
"""Items whose floods cost 30-60 bytes of memory per input byte (issue 19 row 8)."""

_M64 = (1 << 64) - 1
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_P = (1 << 61) - 1  # the modulus of int and float hashes


def _rotl31(x: int) -> int:
    return ((x << 31) | (x >> 33)) & _M64


def colliding_pairs(count: int, target: int = 0x1234_5678_9ABC_DEF0) -> list:
    """``count`` distinct tuples ``(a, b)`` of ints that all have hash ``target`` (issue 19 row 9).

    CPython (3.8+) hashes a tuple with an xxHash-like mix of its items'
    hashes, and an int's hash is the int itself (below 2**61 - 1), so for
    any ``a`` the ``b`` giving a chosen hash can be solved for; about one
    ``a`` in four gives a ``b`` that fits in 64 bits.
    """
    inv_p1, inv_p2 = pow(_P1, -1, 1 << 64), pow(_P2, -1, 1 << 64)
    want = (target - (2 ^ (_P5 ^ 3527539))) & _M64  # before the length is mixed in
    undo = (want * inv_p1) & _M64
    undo = ((undo >> 31) | (undo << 33)) & _M64  # rotate right 31
    out = []
    a = 0
    while len(out) < count:
        a += 1
        acc = (_rotl31((_P5 + a * _P2) & _M64) * _P1) & _M64
        lane = ((undo - acc) * inv_p2) & _M64
        b = lane if lane < _P else lane - (1 << 64)
        if -_P < b < _P and b != -1:
            out.append((a, b))
    return out


def walking_keys(table_bits: int = 12, seed: int = 7) -> list:
    """Distinct ints (distinct hashes too) that make ``dict(zip(keys, ...))`` quadratic.

    In a table of ``2**table_bits`` slots, a key whose hash is below
    ``2**(table_bits + 3)`` tries at most three slots chosen by its hash bits
    before CPython's probing falls back to one fixed cycle through the table
    (``i = 5*i + 1``). The first keys fill a stretch of that cycle; each
    later key is picked so that its three tries land on taken slots and the
    last one inside the stretch, so it walks to the stretch's end and makes it
    one longer: the walks add up to n**2/4 steps. No two keys share a hash,
    so counting keys per hash value does not see this.
    """
    rng = random.Random(seed)
    size = 1 << table_bits
    mask = size - 1
    usable = (size << 1) // 3
    n = usable  # fill the table as far as CPython lets it before growing
    cycle = [0]
    for _ in range(size - 1):
        cycle.append((cycle[-1] * 5 + 1) & mask)
    where = {slot: t for t, slot in enumerate(cycle)}
    taken = bytearray(size)
    keys = []
    start = rng.randrange(size)
    end = start  # the stretch is cycle[start:end] (indices mod size)
    for _ in range(n // 5):  # the stretch to begin with: keys placed straight on the cycle
        slot = cycle[end % size]
        keys.append(slot)
        taken[slot] = 1
        end += 1
    # Hashes below 2**(table_bits + 3) (and 2**15) try three slots, then walk the cycle from the third.
    assert table_bits + 3 <= 15
    by_third = [[] for _ in range(size)]  # cycle position of the third try -> [(hash, 1st, 2nd)]
    for h in range(size, 1 << (table_bits + 3)):
        i0 = h & mask
        i1 = (5 * i0 + (h >> 5) + 1) & mask
        i2 = (5 * i1 + (h >> 10) + 1) & mask
        by_third[where[i2]].append((h, i0, i1))
    while len(keys) < n:
        pick = None
        for t in range(start, end):  # a third try early in the stretch: the longest walk
            for entry in by_third[t % size]:
                if taken[entry[1]] and taken[entry[2]]:
                    pick = entry
                    break
            if pick:
                by_third[t % size].remove(pick)
                break
        slot = cycle[end % size]  # where the key ends up: the first free slot after the stretch
        keys.append(pick[0] if pick else slot)  # (nothing walks yet: lengthen the stretch directly)
        taken[slot] = 1
        end += 1
        while taken[cycle[end % size]]:
            end += 1
    assert len(set(map(hash, keys))) == len(keys)
    return keys


if __name__ == "__main__":  # print the sizes and the memory each value takes per input byte
    import tracemalloc

    sys.path.insert(0, "src")
    from yoton.wire.codec import decode_object, encode_object

    for label, value in realistic().items():
        data = encode_object(value)
        tracemalloc.start()
        decode_object(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{label:34} {len(data):8} bytes  {peak / len(data):5.1f} bytes of memory per byte")
