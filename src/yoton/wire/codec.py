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

Decoding treats its input as untrusted: anything malformed (unknown tag,
truncation, counts beyond the data, trailing bytes, bad UTF-8, unhashable
keys, nesting deeper than ``max_depth``) raises :class:`ValueError` and
nothing else. Encoding refuses unsupported types, integers outside signed
64 bits and nesting deeper than ``max_depth`` (which catches cycles too)
with :class:`ValueError`.

Nesting: yoton 2.2 recurses, so Python's default recursion limit stops it
at about 996 levels when encoding and about 498 (lists, tuples) or 995
(dicts) when decoding; both directions here are iterative and reach
``max_depth`` (default :data:`MAX_DEPTH`, 1000) whatever the recursion limit.
"""

from __future__ import annotations

import struct
from itertools import chain

__all__ = ["MAX_DEPTH", "encode_object", "decode_object"]

MAX_DEPTH = 1000
"""Default limit on how many containers may be nested inside each other (yoton 2.2 reaches ~996)."""

_CYCLE_CHECK_DEPTH = 1024  # encoding deeper than this looks for cycles

_TAG_NONE, _TAG_BOOL, _TAG_INT, _TAG_FLOAT = 0x6E, 0x62, 0x69, 0x66
_TAG_STR, _TAG_LIST, _TAG_TUPLE, _TAG_DICT = 0x73, 0x6C, 0x74, 0x64
_LONG = 255  # count byte announcing an 8-byte count

_pack_int = struct.Struct("<Bq").pack
_pack_float = struct.Struct("<Bd").pack
_pack_long_head = struct.Struct("<BBQ").pack
_unpack_int = struct.Struct("<q").unpack_from
_unpack_float = struct.Struct("<d").unpack_from
_unpack_count = struct.Struct("<Q").unpack_from
_flatten = chain.from_iterable


def _short_heads(tag: int) -> tuple[bytes, ...]:
    """Precompute tag+count headers for every one-byte count."""
    return tuple(bytes((tag, n)) for n in range(_LONG))


_STR_HEADS = _short_heads(_TAG_STR)
_LIST_HEADS = _short_heads(_TAG_LIST)
_TUPLE_HEADS = _short_heads(_TAG_TUPLE)
_DICT_HEADS = _short_heads(_TAG_DICT)
_NONE = b"n"
_TRUE = b"b\x01"
_FALSE = b"b\x00"


# -- encoding -----------------------------------------------------------------


def encode_object(value, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode ``value`` (None, bool, int, float, str, list, tuple, dict) to bytes.

    Raises ValueError for unsupported types, ints outside signed 64 bits,
    strings that cannot be UTF-8 encoded, and containers nested deeper than
    ``max_depth`` (cyclic structures included). Iterative: any depth up to
    ``max_depth`` works whatever the recursion limit.
    """
    parts: list[bytes] = []
    out = parts.append
    stack = []  # iterators over the enclosing containers' remaining items
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


def _encode_leaf(v) -> bytes:
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


def _as_base_type(v):
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


def decode_object(data, *, max_depth: int = MAX_DEPTH):
    """Decode one value from ``data`` (bytes, bytearray or memoryview).

    Empty data decodes to None. Any malformed input raises ValueError.
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
        value, pos = _decode(data, 0, end, max_depth)
    except (IndexError, struct.error):
        raise ValueError("malformed OBJECT data: truncated") from None
    except _Malformed as e:
        raise ValueError(f"malformed OBJECT data: {e}") from None
    if pos != end:
        raise ValueError(f"malformed OBJECT data: {end - pos} trailing bytes after the value")
    return value


def _decode(buf, pos, end, max_depth):
    """Decode the value starting at ``buf[pos]``; return ``(value, next_pos)``.

    Iterative, so deep input cannot exhaust the Python stack. Running off
    the end shows up as IndexError or struct.error, which decode_object
    reports as truncation.
    """
    stack = []  # the enclosing containers' (items, remaining, tag)
    items = None  # items collected so far for the innermost open container
    remaining = 0  # items it still needs (dicts count keys and values)
    ctag = 0  # its tag
    while True:
        tag = buf[pos]
        pos += 1
        if tag == 0x69:  # int
            value = _unpack_int(buf, pos)[0]
            pos += 8
        elif tag == 0x73:  # str
            n = buf[pos]
            pos += 1
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
        elif tag == 0x6E:  # None
            value = None
        elif tag == 0x66:  # float
            value = _unpack_float(buf, pos)[0]
            pos += 8
        elif tag == 0x62:  # bool
            b = buf[pos]
            if b > 1:
                raise _Malformed(f"bool byte {b} at offset {pos} is not 0 or 1")
            value = b == 1
            pos += 1
        elif tag == 0x6C or tag == 0x74 or tag == 0x64:  # list, tuple, dict
            if len(stack) >= max_depth:
                raise _Malformed(f"containers nest deeper than {max_depth} at offset {pos - 1}")
            n = buf[pos]
            pos += 1
            if n == _LONG:
                n = _unpack_count(buf, pos)[0]
                pos += 8
            if tag == 0x64:
                n *= 2
            if n > end - pos:  # every item takes at least one byte
                raise _Malformed(f"container at offset {pos} claims more items than the data holds")
            if n:
                stack.append((items, remaining, ctag))
                items, remaining, ctag = [], n, tag
                continue
            value = [] if tag == 0x6C else () if tag == 0x74 else {}
        else:
            raise _Malformed(f"unknown tag byte 0x{tag:02x} at offset {pos - 1}")

        # Hand the value to the innermost container, closing those that fill up.
        while True:
            if not stack:
                return value, pos
            items.append(value)
            remaining -= 1
            if remaining:
                break
            if ctag == 0x6C:
                value = items
            elif ctag == 0x74:
                value = tuple(items)
            else:
                pairs = iter(items)
                try:
                    value = dict(zip(pairs, pairs))
                except TypeError:
                    raise _Malformed("dict key is unhashable") from None
            items, remaining, ctag = stack.pop()
