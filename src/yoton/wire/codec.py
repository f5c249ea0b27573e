"""The OBJECT codec: yoton 2.2's tagged binary format for plain Python values.

Every value is one tag byte and a payload:

====  =====  ==========================================================
tag   value  payload
====  =====  ==========================================================
``n`` None   nothing
``b`` bool   one byte, 0 or 1
``i`` int    8 bytes, signed little-endian (``<q``)
``f`` float  8 bytes, IEEE double little-endian (``<d``)
``s`` str    count, then that many UTF-8 bytes
``l`` list   count, then the items
``t`` tuple  count, then the items
``d`` dict   count, then key, value, key, value, ...
====  =====  ==========================================================

A count is one byte when below 255, else the byte 255 followed by an
unsigned 64-bit little-endian count. bool is checked before int. Subclasses
of the supported types are encoded as their base type. An empty body decodes
to None.

Limits
------
Decoding treats its input as untrusted. Anything malformed (unknown tag,
truncation, counts beyond the data, trailing bytes, bad UTF-8, unhashable
keys) raises :class:`ValueError` and nothing else, and so does data that is
well formed but built to cost far more to decode than data of its size
normally does:

* **Nesting** deeper than ``max_depth`` (default :data:`MAX_DEPTH`, 1000).
  yoton 2.2 recurses, so Python's default recursion limit stops it at about
  996 levels when encoding and about 498 (lists, tuples) or 995 (dicts) when
  decoding; both directions here are iterative and reach the limit itself.
* **Memory**: the decoder keeps an estimate of the memory of the objects it
  has made (CPython's 64-bit sizes: a string of 2 or more UTF-8 bytes 56
  plus its length; a list 56 when empty, 88 up to 4 items, 120 up to 8, 184
  up to 16, 104 plus 9 per item above that, as appending leaves room for an
  eighth more; a tuple 40 plus 8 per item; a dict 64 when empty, 232 up to 5
  items, 360 up to 8, 64 plus 60 per item above that; None, bools, ``()``,
  ``""`` and one-character ASCII strings are shared objects and cost
  nothing). A string counts when decoded, a container of up to 16 items (8
  pairs) when it opens, a larger one when it is complete (so that its items'
  bytes are read first). Whenever a container counts, and at the end, the
  estimate must be within ``memory_ratio - 4`` bytes per input byte read so
  far plus ``memory_allowance`` (defaults :data:`MEMORY_RATIO` = 30 and
  :data:`MEMORY_ALLOWANCE` = 1 MiB), else the data is refused there. (A
  string takes at most 14.5 bytes per byte, so between those checks it
  cannot break the default bound.) The 4 are for numbers, which are not
  counted one by one (an int or float takes 32 bytes, 40 beyond 2**60, for
  its 9 input bytes). On top of the estimate, decoding holds the item lists
  of large containers not yet complete (up to 9 bytes per item) and about
  150 bytes per level of nesting.

  Realistic data stays inside the bound by itself (but for a few KB while
  the small containers at its start open): lists of floats take 4-6 bytes
  of memory per input byte, lists of names or docstrings 1-7, records (small
  dicts with short keys) 9-13, dicts keyed by ints, floats or tuples 5-11,
  and the costliest realistic shapes found 15-22: lists of one- or
  two-character strings, of one-item dicts, and of one-item lists of short
  strings (what ``tolist()`` makes of a column of codes). Floods of empty or
  one-item containers, and chains of containers each holding the next, cost
  28-60 bytes per byte (yoton 2.2 decodes them into 32-58 times their size):
  they are refused as soon as their excess over the ratio has used up the
  allowance: within their first 520 KB, holding at most 17 MB (empty lists,
  the cheapest; the others sooner). Up to about 17 KB, any shape decodes
  (the allowance covers it).
* **Hash flooding**: the hashes of ints, floats, None, bools and tuples of
  them are not randomized, so a peer can pick dict keys that make Python's
  hash table degrade to a search through all earlier keys per key (5,000
  tuple keys with one hash held the GIL for 0.1 s, a 1.2 MB dict for 13 s).
  CPython puts a key in slot ``hash & mask``; if that is taken it tries
  further slots mixing in 5 more bits of the hash each time, and once the
  bits are used up (after at most 12 tries) it walks one fixed cycle
  through the table. For a dict of :data:`HASH_CHECK_MIN` (128) or more
  items whose keys are not all strings (string hashes are secret, unless
  ``PYTHONHASHSEED`` fixed the seed: then strings count too), the decoder
  refuses more than 8 keys with one hash value (each new one is compared
  with all the others); from 1024 keys it also replays how CPython will
  place them and refuses keys that walk the cycle more than ``n + 256``
  steps in all. Ordinary keys (ints in steps of 1 to 2**40, timestamps,
  floats, tuples) walk under 0.2 steps per key; keys chosen to follow each
  other along the cycle walk ``n**2 / 4``. Smaller dicts cost at most
  ``n**2 / 2`` cheap steps (under 1 ms).
* **Garbage collection**: making hundreds of thousands of containers sets
  off Python's cyclic garbage collector over and over, which made decoding
  container-heavy data up to 6 times slower; while a body of 64 KiB or more
  is decoded, automatic collection is paused (turned back on after, unless
  it was off to begin with).

So the memory and time decoding takes are linear in the size of the data,
within a small factor of what realistic data of that size takes.

Encoding refuses unsupported types, integers outside signed 64 bits,
strings that cannot be UTF-8 encoded, and nesting deeper than ``max_depth``
(cycles included) with :class:`ValueError`.
"""

from __future__ import annotations

import gc
import os
import struct
import sys
import threading
from itertools import chain
from operator import eq as _eq
from typing import Any, Iterator

__all__ = ["MAX_DEPTH", "MEMORY_RATIO", "MEMORY_ALLOWANCE", "HASH_CHECK_MIN", "encode_object", "decode_object"]

MAX_DEPTH = 1000
"""Default limit on how many containers may be nested inside each other (yoton 2.2 reaches ~996)."""

MEMORY_RATIO = 30
"""Default for ``decode_object(memory_ratio=...)``: bytes of decoded objects allowed per input byte read."""

MEMORY_ALLOWANCE = 1 << 20
"""Default for ``decode_object(memory_allowance=...)``: bytes allowed on top of the ratio, whatever the size."""

HASH_CHECK_MIN = 128
"""Dicts with at least this many items and keys that are not all strings have their keys' hashes checked."""

_CYCLE_CHECK_DEPTH = 1024  # encoding deeper than this looks for cycles
_NUMBER_RESERVE = 4  # bytes per input byte kept back from the ratio for the uncounted numbers
_GC_PAUSE_MIN = 1 << 16  # bodies at least this large are decoded with automatic GC paused

_TAG_NONE, _TAG_BOOL, _TAG_INT, _TAG_FLOAT = 0x6E, 0x62, 0x69, 0x66
_TAG_STR, _TAG_LIST, _TAG_TUPLE, _TAG_DICT = 0x73, 0x6C, 0x74, 0x64
_LONG = 255  # count byte announcing an 8-byte count

_pack_int = struct.Struct("<Bq").pack
_pack_float = struct.Struct("<Bd").pack
_pack_long_head = struct.Struct("<BBQ").pack
_unpack_int = struct.Struct("<q").unpack_from
_unpack_float = struct.Struct("<d").unpack_from
_unpack_count = struct.Struct("<Q").unpack_from
_unpack = struct.unpack
_flatten = chain.from_iterable


def _short_heads(tag: int) -> tuple[bytes, ...]:
    """Precompute tag+count headers for every one-byte count."""
    return tuple(bytes((tag, n)) for n in range(_LONG))


_STR_HEADS = _short_heads(_TAG_STR)
_LIST_HEADS = _short_heads(_TAG_LIST)
_TUPLE_HEADS = _short_heads(_TAG_TUPLE)
_DICT_HEADS = _short_heads(_TAG_DICT)
_NONE = b"n"
_ASCII = tuple(chr(b) if b < 0x80 else None for b in range(256))  # one-byte strings
_TRUE = b"b\x01"
_FALSE = b"b\x00"


# -- encoding -----------------------------------------------------------------


def encode_object(value: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode ``value`` (None, bool, int, float, str, list, tuple, dict) to bytes.

    Raises ValueError for unsupported types, ints outside signed 64 bits,
    strings that cannot be UTF-8 encoded, and containers nested deeper than
    ``max_depth`` (cyclic structures included). Iterative: any depth up to
    ``max_depth`` works whatever the recursion limit.
    """
    parts: list[bytes] = []
    out = parts.append
    stack: list[Iterator[Any]] = []  # iterators over the enclosing containers' remaining items
    deep = []  # the enclosing containers nested deeper than _CYCLE_CHECK_DEPTH
    check_cycles_at = _CYCLE_CHECK_DEPTH  # look for a cycle among them at this many (then doubled)
    it = iter((value,))
    while True:
        for v in it:
            t = type(v)
            if t is str:
                try:
                    b = v.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"string cannot be encoded as UTF-8: {e}") from None
                n = len(b)
                out(_STR_HEADS[n] if n < _LONG else _pack_long_head(_TAG_STR, _LONG, n))
                out(b)
            elif t is int:
                try:
                    out(_pack_int(_TAG_INT, v))
                except struct.error:
                    raise ValueError(_int_range_message(v)) from None
            elif v is None:
                out(_NONE)
            elif t is float:
                out(_pack_float(_TAG_FLOAT, v))
            elif t is bool:
                out(_TRUE if v else _FALSE)
            else:
                if t is not list and t is not tuple and t is not dict:
                    v = _as_base_type(v)
                    t = type(v)
                    if t is not list and t is not tuple and t is not dict:
                        out(_encode_leaf(v))
                        continue
                depth = len(stack)
                if depth >= max_depth:
                    raise ValueError("object nests deeper than the depth limit (or is cyclic)")
                n = len(v)
                if t is dict:
                    out(_DICT_HEADS[n] if n < _LONG else _pack_long_head(_TAG_DICT, _LONG, n))
                    if not n:
                        continue
                    stack.append(it)
                    it = _flatten(v.items())  # key, value, key, value, ...
                else:
                    if n < _LONG:
                        out((_LIST_HEADS if t is list else _TUPLE_HEADS)[n])
                    else:
                        out(_pack_long_head(_TAG_LIST if t is list else _TAG_TUPLE, _LONG, n))
                    if not n:
                        continue
                    stack.append(it)
                    it = iter(v)
                if depth >= _CYCLE_CHECK_DEPTH:
                    # Only a cycle can nest this deep with a huge max_depth: look for one
                    # now and then (each time the deep part doubles; linear overall).
                    deep.append(v)
                    if len(deep) >= check_cycles_at:
                        if len(set(map(id, deep))) < len(deep):
                            raise ValueError("object is cyclic (a container contains itself)")
                        check_cycles_at *= 2
                break  # go down into v
        else:  # `it` is used up: back up to the enclosing container
            if not stack:
                return b"".join(parts)
            if deep:
                deep.pop()
            it = stack.pop()


def _encode_leaf(v: Any) -> bytes:
    """Encode a str, int or float that was converted from a subclass instance."""
    if type(v) is str:
        try:
            b = v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"string cannot be encoded as UTF-8: {e}") from None
        n = len(b)
        return (_STR_HEADS[n] if n < _LONG else _pack_long_head(_TAG_STR, _LONG, n)) + b
    if type(v) is int:
        try:
            return _pack_int(_TAG_INT, v)
        except struct.error:
            raise ValueError(_int_range_message(v)) from None
    return _pack_float(_TAG_FLOAT, v)


def _int_range_message(v: int) -> str:
    shown = v if v.bit_length() < 128 else f"of {v.bit_length()} bits"
    return f"int {shown} does not fit in signed 64 bits"


def _as_base_type(v: Any) -> Any:
    """Convert an instance of a subclass of a supported type to that type."""
    if isinstance(v, int):  # bool cannot be subclassed, so this is a true int
        return int.__int__(v)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, list):
        return list(v)
    if isinstance(v, tuple):
        return tuple(v)
    if isinstance(v, dict):
        return dict(v.items())
    raise ValueError(f"cannot encode objects of type {type(v).__qualname__}")


# -- decoding -----------------------------------------------------------------


class _Malformed(Exception):
    """Internal: carries a decode error message up to decode_object."""


class _Refused(Exception):
    """Internal: well-formed data refused because of what decoding it would cost."""


def decode_object(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = MAX_DEPTH,
    memory_ratio: int = MEMORY_RATIO,
    memory_allowance: int = MEMORY_ALLOWANCE,
) -> Any:
    """Decode one value from ``data`` (bytes, bytearray or memoryview).

    Empty data decodes to None. Raises ValueError for malformed data, for
    nesting deeper than ``max_depth``, for data whose objects would take
    more memory than ``memory_ratio`` bytes per input byte plus
    ``memory_allowance`` (by the estimate and rules in the module docstring),
    and for dicts whose keys would flood Python's hash table.
    """
    if type(data) is not bytes:
        try:
            view = memoryview(data)
        except TypeError:
            raise ValueError(f"cannot decode {type(data).__name__}; expected a bytes-like object") from None
        # One flat copy; decoding then walks it by offset without further copies.
        data = view.tobytes()
    end = len(data)
    if not end:
        return None
    try:
        if end < _GC_PAUSE_MIN:
            value, pos = _decode(data, end, max_depth, memory_ratio - _NUMBER_RESERVE, memory_allowance)
        else:
            value, pos = _decode_gc_paused(data, end, max_depth, memory_ratio - _NUMBER_RESERVE, memory_allowance)
    except (IndexError, struct.error):
        raise ValueError("malformed OBJECT data: truncated") from None
    except _Malformed as e:
        raise ValueError(f"malformed OBJECT data: {e}") from None
    except _Refused as e:
        raise ValueError(f"OBJECT data refused: {e}") from None
    if pos != end:
        raise ValueError(f"malformed OBJECT data: {end - pos} trailing bytes after the value")
    return value


def _decode_gc_paused(*args: Any) -> tuple[Any, int]:
    """_decode with automatic garbage collection paused (see the module docstring)."""
    if not _pause_gc():
        return _decode(*args)
    try:
        return _decode(*args)
    finally:
        _resume_gc()


# Internal tags of containers with more than 16 items (8 pairs), counted when complete.
_BIG_LIST, _BIG_TUPLE, _BIG_DICT, _HUGE_DICT = 0x4C, 0x54, 0x45, 0x44  # (huge: keys checked first)


def _decode(buf: bytes, end: int, max_depth: int, ratio: int, allowance: int) -> tuple[Any, int]:
    """Decode the value at the start of ``buf``; return ``(value, next_pos)``.

    Iterative, so deep input cannot exhaust the Python stack. Running off
    the end shows up as IndexError or struct.error, which decode_object
    reports as truncation.

    ``spent`` is the estimated memory of the objects made so far (see the
    module docstring). A string counts when decoded; a container of up to
    16 items (8 pairs) when it opens, a larger one when it is complete, so a
    large container is backed by its items' bytes before it counts. Whenever
    a container counts, and at the end, ``spent`` must be within ``ratio``
    bytes per byte read so far plus ``allowance``. (``limit`` caches that
    bound as of an earlier offset: it only grows, so the exact bound is
    worked out only when ``spent`` passes the cached one. Strings need no
    check of their own while ``ratio`` is above their 14.5 bytes per byte.)
    """
    pos = 0
    spent = 0
    limit = allowance
    stack: list[tuple[list[Any], int, int]] = []  # the enclosing containers' (items, remaining, tag)
    # The innermost open container: the items collected so far, how many it
    # still needs (dicts count keys and values) and its tag. The outermost is a
    # stand-in (tag 0) that takes the one top-level value.
    items: list[Any] = []
    value: Any = None
    remaining = 1
    ctag = 0
    while True:
        tag = buf[pos]
        pos += 1
        if tag == 0x73:  # str
            n = buf[pos]
            pos += 1
            if n > 1:
                if n == _LONG:
                    n = _unpack_count(buf, pos)[0]
                    pos += 8
                stop = pos + n
                if stop > end:
                    raise _Malformed(f"string of {n} bytes at offset {pos} runs past the end")
                try:
                    value = buf[pos:stop].decode()
                except UnicodeDecodeError as e:
                    raise _Malformed(f"invalid UTF-8 in string at offset {pos}: {e.reason}") from None
                pos = stop
                spent += 56 + n
            elif n:  # one ASCII character: a shared object
                value = _ASCII[buf[pos]]
                if value is None:
                    raise _Malformed(f"invalid UTF-8 in string at offset {pos}: invalid start byte")
                pos += 1
            else:
                value = ""
        elif tag == 0x69:  # int
            value = _unpack_int(buf, pos)[0]
            pos += 8
        elif tag == 0x66:  # float
            value = _unpack_float(buf, pos)[0]
            pos += 8
        elif tag == 0x6E:  # None
            value = None
        elif tag == 0x62:  # bool
            b = buf[pos]
            if b > 1:
                raise _Malformed(f"bool byte {b} at offset {pos} is not 0 or 1")
            value = b == 1
            pos += 1
        elif tag == 0x6C or tag == 0x74:  # list, tuple
            if len(stack) >= max_depth:
                raise _Malformed(f"containers nest deeper than {max_depth} at offset {pos - 1}")
            n = buf[pos]
            pos += 1
            if n == _LONG:
                n = _unpack_count(buf, pos)[0]
                pos += 8
            if n > end - pos:  # every item takes at least one byte
                raise _Malformed(f"container at offset {pos} claims more items than the data holds")
            if n <= 16:
                # A list is built by appending: room for 4, 8 or 16 items.
                spent += (
                    (56 if not n else 88 if n <= 4 else 120 if n <= 8 else 184)
                    if tag == 0x6C
                    else 40 + 8 * n
                    if n
                    else 0
                )
                if spent > limit:
                    limit = ratio * pos + allowance
                    if spent > limit:
                        raise _Refused(_over_budget(ratio, allowance, pos))
            if not n:
                value = [] if tag == 0x6C else ()
            else:
                first = buf[pos]
                if first == 0x73:  # strings first: take them in one go
                    run = []
                    k = 0
                    while True:
                        pos += 1
                        m = buf[pos]
                        pos += 1
                        if m > 1:
                            if m == _LONG:
                                m = _unpack_count(buf, pos)[0]
                                pos += 8
                            stop = pos + m
                            if stop > end:
                                raise _Malformed(f"string of {m} bytes at offset {pos} runs past the end")
                            try:
                                run.append(buf[pos:stop].decode())
                            except UnicodeDecodeError as e:
                                raise _Malformed(f"invalid UTF-8 in string at offset {pos}: {e.reason}") from None
                            pos = stop
                            spent += 56 + m
                        elif m:
                            value = _ASCII[buf[pos]]
                            if value is None:
                                raise _Malformed(f"invalid UTF-8 in string at offset {pos}: invalid start byte")
                            run.append(value)
                            pos += 1
                        else:
                            run.append("")
                        k += 1
                        if k == n or buf[pos] != 0x73:
                            break
                    if k < n:  # something else follows: go on item by item
                        stack.append((items, remaining, ctag))
                        items, remaining = run, n - k
                        ctag = tag if n <= 16 else _BIG_LIST if tag == 0x6C else _BIG_TUPLE
                        continue
                    value = run if tag == 0x6C else tuple(run)
                elif n >= 8 and (first == 0x66 or first == 0x69) and buf[pos : pos + 9 * n : 9].count(first) == n:
                    # All numbers of one kind: unpack them in one go.
                    stop = pos + 9 * n
                    if stop > end:
                        raise _Malformed(f"container at offset {pos} runs past the end")
                    raw = bytearray(buf[pos:stop])
                    del raw[::9]  # drop the tag bytes
                    value = _unpack(("<%dd" if first == 0x66 else "<%dq") % n, raw)
                    if tag == 0x6C:
                        value = list(value)
                    pos = stop
                else:
                    stack.append((items, remaining, ctag))
                    items, remaining = [], n
                    ctag = tag if n <= 16 else _BIG_LIST if tag == 0x6C else _BIG_TUPLE
                    continue
                if n > 16:  # a large container completed in one go: count it now
                    spent += 104 + 9 * n if tag == 0x6C else 40 + 8 * n
                    if spent > limit:
                        limit = ratio * pos + allowance
                        if spent > limit:
                            raise _Refused(_over_budget(ratio, allowance, pos))
        elif tag == 0x64:  # dict
            if len(stack) >= max_depth:
                raise _Malformed(f"containers nest deeper than {max_depth} at offset {pos - 1}")
            n = buf[pos]
            pos += 1
            if n == _LONG:
                n = _unpack_count(buf, pos)[0]
                pos += 8
            if n + n > end - pos:  # every key and value takes at least one byte
                raise _Malformed(f"container at offset {pos} claims more items than the data holds")
            if n <= 8:
                spent += 64 if not n else 232 if n <= 5 else 360
                if spent > limit:
                    limit = ratio * pos + allowance
                    if spent > limit:
                        raise _Refused(_over_budget(ratio, allowance, pos))
                if not n:
                    value = {}
                else:
                    stack.append((items, remaining, ctag))
                    items, remaining, ctag = [], n + n, 0x64
                    continue
            else:
                stack.append((items, remaining, ctag))
                items, remaining, ctag = [], n + n, _HUGE_DICT if n >= HASH_CHECK_MIN else _BIG_DICT
                continue
        else:
            raise _Malformed(f"unknown tag byte 0x{tag:02x} at offset {pos - 1}")

        # Hand the value to the innermost container, closing those that fill up.
        items.append(value)
        remaining -= 1
        if remaining:
            continue
        while True:
            if ctag == 0x6C:
                value = items
            elif ctag == 0x74:
                value = tuple(items)
            elif ctag == 0x64:
                n = len(items)  # twice the pairs, at most 16
                try:  # (a display builds a small dict several times faster than dict(zip(...)))
                    if n == 2:
                        value = {items[0]: items[1]}
                    elif n == 4:
                        value = {items[0]: items[1], items[2]: items[3]}
                    elif n == 6:
                        value = {items[0]: items[1], items[2]: items[3], items[4]: items[5]}
                    elif n == 8:
                        value = {items[0]: items[1], items[2]: items[3], items[4]: items[5], items[6]: items[7]}
                    else:
                        pairs = iter(items)
                        value = dict(zip(pairs, pairs))
                except TypeError:
                    raise _Malformed("dict key is unhashable") from None
            elif ctag == 0:
                if spent > limit and spent > ratio * pos + allowance:
                    raise _Refused(_over_budget(ratio, allowance, pos))
                return items[0], pos
            else:  # a large container: count it now that its items' bytes are read
                n = len(items)
                if ctag == _BIG_LIST:
                    value = items
                    spent += 104 + 9 * n  # room for up to n + n/8 + 6 items
                elif ctag == _BIG_TUPLE:
                    value = tuple(items)
                    spent += 40 + 8 * n
                else:
                    if ctag == _HUGE_DICT:
                        _check_keys(items)
                    pairs = iter(items)
                    try:
                        value = dict(zip(pairs, pairs))
                    except TypeError:
                        raise _Malformed("dict key is unhashable") from None
                    spent += 64 + 30 * n
                if spent > limit:
                    limit = ratio * pos + allowance
                    if spent > limit:
                        raise _Refused(_over_budget(ratio, allowance, pos))
            items, remaining, ctag = stack.pop()
            items.append(value)
            remaining -= 1
            if remaining:
                break


def _over_budget(ratio: int, allowance: int, pos: int) -> str:
    return (
        f"the objects decoded from the first {pos} bytes would take more than "
        f"{(ratio + _NUMBER_RESERVE) * pos + allowance} bytes of memory (memory_ratio = "
        f"{ratio + _NUMBER_RESERVE} bytes per byte read plus memory_allowance = {allowance}); "
        f"floods of empty or one-item containers cost that much"
    )


# -- hash flooding ------------------------------------------------------------

# String hashes are secret unless PYTHONHASHSEED fixed the seed (0: no randomization; a number: known).
_STR_HASH_RANDOM = bool(sys.flags.hash_randomization) and os.environ.get("PYTHONHASHSEED", "random") == "random"
_HASH_MASK = (1 << sys.hash_info.width) - 1  # a hash as the unsigned number dict probing uses
_SAME_HASH_MAX = 8  # keys sharing one hash value: each is compared with the others on insertion
_REPLAY_MIN = 1024  # from this many keys, CPython's placement of them is replayed
_WALK_PER_KEY, _WALK_BASE = 1, 256  # cycle-walk probes allowed (ordinary keys make almost none)


def _check_keys(items: list[Any]) -> None:
    """Refuse the dict made of these alternating keys and values if its keys would flood a hash table.

    Two ways make building a dict quadratic (see the module docstring):
    many keys with one hash value, each compared with all the others on
    insertion, and keys whose tries all land on taken slots so that each
    walks the table's fallback cycle through a long run of earlier keys. The
    first is counted directly; for the second, dicts of :data:`_REPLAY_MIN`
    keys or more are placed the way CPython will place them. Smaller dicts
    cost at most ``n**2 / 2`` cheap steps whatever their keys.
    """
    keys = items[0::2]
    if _STR_HASH_RANDOM:
        try:
            "".join(keys)
        except TypeError:
            pass
        else:
            return  # all strings: their hashes are secret
    try:
        hashes = list(map(hash, keys))
    except TypeError:
        raise _Malformed("dict key is unhashable") from None
    ordered = sorted(hashes)
    if any(map(_eq, ordered, ordered[_SAME_HASH_MAX:])):
        raise _Refused(
            f"a dict has more than {_SAME_HASH_MAX} keys with one hash value "
            f"(building it would compare each with all the others)"
        )
    n = len(keys)
    if n >= _REPLAY_MIN:
        limit = _WALK_PER_KEY * n + _WALK_BASE
        distinct = not any(map(_eq, ordered, ordered[1:]))
        if _walk_steps(keys, hashes, distinct, limit) > limit:
            raise _Refused(
                f"a dict of {n} keys whose hashes are chosen to collide (placing them "
                f"in a hash table would take more than {limit} extra steps)"
            )


def _walk_steps(keys: list[Any], hashes: list[int], distinct: bool, limit: int) -> int:
    """Replay how CPython builds ``dict(zip(keys, ...))``; return its cycle-walk steps.

    The table starts with 8 slots and doubles when a new key finds it
    two-thirds full; each time, the keys so far are placed again, in order.
    A key equal to one already placed takes no slot. Stops once past
    ``limit``. ``distinct``: all hashes differ; then a table with more slots
    than the spread of its keys' hashes holds them without a collision (as
    consecutive ints do) and needs no replay.
    """
    n = len(keys)
    steps = 0
    size = 8
    while True:
        mask = size - 1
        usable = (size << 1) // 3
        head = n if n < usable else usable
        if distinct and max(hashes[:head]) - min(hashes[:head]) < size:
            if head == n:
                return steps
            size <<= 1
            continue
        slots = [-1] * size
        placed = 0
        for j, i in enumerate(map(mask.__and__, hashes)):
            ix = slots[i]
            if ix >= 0:
                h = hashes[j]
                perturb = h & _HASH_MASK
                while True:
                    if hashes[ix] == h and (keys[ix] is keys[j] or keys[ix] == keys[j]):
                        break  # the same key again: it takes no new slot
                    perturb >>= 5
                    if not perturb:
                        steps += 1
                    i = (i * 5 + perturb + 1) & mask
                    ix = slots[i]
                    if ix < 0:
                        break
                if steps > limit:
                    return steps
                if ix >= 0:
                    continue
            if placed == usable:
                break  # full: CPython grows the table and places everything again
            slots[i] = j
            placed += 1
        else:
            return steps
        size <<= 1


# -- garbage collection -------------------------------------------------------

_gc_lock = threading.Lock()
_gc_pausers = 0  # decodes running with automatic collection paused


def _pause_gc() -> bool:
    """Pause automatic garbage collection for a large decode; return True if this call counts."""
    global _gc_pausers
    with _gc_lock:
        if _gc_pausers:
            _gc_pausers += 1
            return True
        if not gc.isenabled():
            return False  # off already (by the application): leave it alone
        gc.disable()
        _gc_pausers = 1
        return True


def _resume_gc() -> None:
    """End one pause; the last one to end turns automatic collection back on."""
    global _gc_pausers
    with _gc_lock:
        _gc_pausers -= 1
        if not _gc_pausers:
            gc.enable()
