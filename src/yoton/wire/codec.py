"""The OBJECT codec: yoton 2.2's tagged binary format for plain Python values.

Format (PROTOCOL.md section 7). Every value is one tag byte and a payload:

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
"""

from __future__ import annotations

import struct

__all__ = ["MAX_DEPTH", "encode_object", "decode_object"]

MAX_DEPTH = 64
"""Default limit on how many containers may be nested inside each other."""

_TAG_NONE, _TAG_BOOL, _TAG_INT, _TAG_FLOAT = 0x6E, 0x62, 0x69, 0x66
_TAG_STR, _TAG_LIST, _TAG_TUPLE, _TAG_DICT = 0x73, 0x6C, 0x74, 0x64
_LONG = 255  # count byte announcing an 8-byte count

_pack_int = struct.Struct("<Bq").pack
_pack_float = struct.Struct("<Bd").pack
_pack_long_head = struct.Struct("<BBQ").pack
_unpack_int = struct.Struct("<q").unpack_from
_unpack_float = struct.Struct("<d").unpack_from
_unpack_count = struct.Struct("<Q").unpack_from


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
    ``max_depth`` (cyclic structures included).
    """
    parts: list[bytes] = []
    try:
        _encode(value, parts.append, max_depth)
    except RecursionError:
        raise ValueError("object nests too deeply to encode") from None
    return b"".join(parts)


def _encode(v, out, depth):
    """Append the encoding of ``v`` to the parts via ``out``."""
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
            shown = v if v.bit_length() < 128 else f"of {v.bit_length()} bits"
            raise ValueError(f"int {shown} does not fit in signed 64 bits") from None
    elif v is None:
        out(_NONE)
    elif t is float:
        out(_pack_float(_TAG_FLOAT, v))
    elif t is bool:
        out(_TRUE if v else _FALSE)
    elif t is list or t is tuple:
        if depth <= 0:
            raise ValueError("object nests deeper than the depth limit (or is cyclic)")
        n = len(v)
        if n < _LONG:
            out((_LIST_HEADS if t is list else _TUPLE_HEADS)[n])
        else:
            out(_pack_long_head(_TAG_LIST if t is list else _TAG_TUPLE, _LONG, n))
        depth -= 1
        for item in v:
            _encode(item, out, depth)
    elif t is dict:
        if depth <= 0:
            raise ValueError("object nests deeper than the depth limit (or is cyclic)")
        n = len(v)
        out(_DICT_HEADS[n] if n < _LONG else _pack_long_head(_TAG_DICT, _LONG, n))
        depth -= 1
        for key, item in v.items():
            _encode(key, out, depth)
            _encode(item, out, depth)
    else:
        _encode(_as_base_type(v), out, depth)


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
