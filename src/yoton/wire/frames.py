"""Package framing: the 56-byte header and an incremental frame decoder.

Rules of the stream (yoton 2.2's; docs/protocol.md section 4):

* A package is a header of seven little-endian uint64 (``<7Q``) followed by
  ``length`` body bytes. Field 0 is always :data:`CONTROL` (``b"YOTON   "``).
* A header whose control field differs means the stream is out of sync; the
  connection cannot continue ("Lost track of the stream.").
* Zero-length packages on :data:`SLOT_DUMMY` are connection-level signals; the
  signal is in ``source_seq``: :data:`SIGNAL_HEARTBEAT` or :data:`SIGNAL_CLOSE`.
  Zero-length packages on any other slot carry nothing and are dropped.
* A header announcing more than ``max_package_size`` body bytes is refused
  before anything is allocated for it. Below the limit, memory for a body
  grows with the bytes that actually arrive (at most about twice those, plus
  1 MiB), so a 56-byte header claiming a gigabyte costs nothing until the
  gigabyte comes.

Nothing here touches sockets, threads or clocks. The decoder never raises on
bad input: it records the problem in :attr:`FrameDecoder.error` and stops
producing packages; the caller closes the connection with that reason.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Union

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "CONTROL",
    "SLOT_DUMMY",
    "SLOT_CONTEXT",
    "SLOT_INTROSPECT_QUERY",
    "SLOT_INTROSPECT_SNAPSHOT",
    "SIGNAL_HEARTBEAT",
    "SIGNAL_CLOSE",
    "HEARTBEAT_BYTES",
    "CLOSE_BYTES",
    "DEFAULT_MAX_PACKAGE_SIZE",
    "Package",
    "pack_header",
    "split_frames",
    "FrameDecoder",
]

HEADER = struct.Struct("<7Q")
HEADER_SIZE = HEADER.size  # 56
CONTROL = int.from_bytes(b"YOTON   ", "little")  # 2314885729178898265

SLOT_DUMMY = 1  #: connection-level signals (heartbeat, close)
SLOT_CONTEXT = 2  #: context messages such as NEW_CONNECTION
SLOT_INTROSPECT_QUERY = 3  #: a monitor asks every introspecting context for a snapshot
SLOT_INTROSPECT_SNAPSHOT = 4  #: an introspecting context answers the monitor

SIGNAL_HEARTBEAT = 0
SIGNAL_CLOSE = 1

DEFAULT_MAX_PACKAGE_SIZE = 1 << 30  # 1 GiB

_pack = HEADER.pack
_unpack_from = HEADER.unpack_from
_new = object.__new__

HEARTBEAT_BYTES = _pack(CONTROL, SLOT_DUMMY, 0, SIGNAL_HEARTBEAT, 0, 0, 0)
CLOSE_BYTES = _pack(CONTROL, SLOT_DUMMY, 0, SIGNAL_CLOSE, 0, 0, 0)

# Bodies up to this size are cut out of the shared read buffer; larger ones
# get a buffer of their own that the transport reads into directly.
_INLINE_BODY = 64 * 1024
_READ_BUFFER = 256 * 1024
# A large body's buffer starts at this size (or the body's size if smaller)
# and doubles when full, so what a header claims is not allocated up front.
_FIRST_BODY_CHUNK = 1 << 20


def _alias(name: str) -> property:
    """A property standing for the attribute ``name`` (yoton 2.2 called it ``_name``)."""
    return property(
        lambda self: getattr(self, name),
        lambda self, value: setattr(self, name, value),
        doc=f"Same as ``{name}`` (yoton 2.2's name).",
    )


#: A package body: bytes, or a bytearray for a large body read in place.
Body = Union[bytes, bytearray]


class Package:
    """One package: routing fields plus the (encoded) body.

    ``recv_seq`` is the local delivery number a context assigns when it hands
    the package to a channel (0 until then); it orders packages across
    channels for :func:`yoton.select_sub_channel`.
    """

    __slots__ = {
        "data": "The body: encoded message bytes (bytes, or bytearray for large bodies).",
        "slot": "Destination slot: hash of the slot name, or a reserved slot (< 8).",
        "source_id": "Id of the context that created the package.",
        "source_seq": "Sequence number of the package at its source (from 1).",
        "dest_id": "Id of the one context the package is for; 0 for everyone.",
        "dest_seq": "For replies: which request this answers.",
        "recv_seq": "Local delivery number, set by the receiving context.",
        "queue_mark": "Bytes a channel queued before this package (set by the channel; keeps its byte count).",
    }

    def __init__(
        self,
        data: Body,
        slot: int,
        source_id: int,
        source_seq: int,
        dest_id: int = 0,
        dest_seq: int = 0,
        recv_seq: int = 0,
    ) -> None:
        self.data = data
        self.slot = slot
        self.source_id = source_id
        self.source_seq = source_seq
        self.dest_id = dest_id
        self.dest_seq = dest_seq
        self.recv_seq = recv_seq

    def header(self) -> bytes:
        """Return the 56 header bytes for this package."""
        return _pack(
            CONTROL,
            self.slot,
            self.source_id,
            self.source_seq,
            self.dest_id,
            self.dest_seq,
            len(self.data),
        )

    def __repr__(self) -> str:
        return (
            f"<Package slot={self.slot} src={self.source_id:016x}:{self.source_seq} "
            f"dest={self.dest_id:016x}:{self.dest_seq} len={len(self.data)}>"
        )

    # -- yoton 2.2's names (code written for it may touch packages) ----------

    _data = _alias("data")
    _slot = _alias("slot")
    _source_id = _alias("source_id")
    _source_seq = _alias("source_seq")
    _dest_id = _alias("dest_id")
    _dest_seq = _alias("dest_seq")
    _recv_seq = _alias("recv_seq")

    def parts(self) -> tuple[bytes, Body]:
        """Return ``(header, body)``: the 56 header bytes and the body, as sent on the wire."""
        return self.header(), self.data

    @classmethod
    def from_header(cls, header: bytes) -> tuple[Package | None, int | None]:
        """Return ``(package without body, body length)`` for 56 header bytes, or
        ``(None, None)`` if their control field is not yoton's."""
        control, slot, source_id, source_seq, dest_id, dest_seq, length = _unpack_from(header)
        if control != CONTROL:
            return None, None
        # (yoton 2.2's: a package with no data yet; the caller reads the body)
        return cls(None, slot, source_id, source_seq, dest_id, dest_seq, 0), length  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"At slot {self.slot}: {self.data!r}"


def pack_header(slot: int, source_id: int, source_seq: int, dest_id: int, dest_seq: int, length: int) -> bytes:
    """Return the 56-byte header of a package with the given fields."""
    return _pack(CONTROL, slot, source_id, source_seq, dest_id, dest_seq, length)


def split_frames(data: bytes, max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE) -> tuple[list[Any], str | None]:
    """Cut the packages out of ``data``, a run of whole frames (as a message
    broker carries them: several packages in one message).

    Returns ``(packages, error)``: the packages in order (zero-length ones,
    connection signals included, are dropped as on a stream) and None, or
    the packages before the first bad frame and why it is bad (the rest is
    not looked at): a control field that is not yoton's, a length over
    ``max_package_size``, or a frame cut short by the end of ``data``.
    """
    packages: list[Any] = []
    append = packages.append
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < HEADER_SIZE:
            return packages, f"{end - pos} bytes after the last package: not a whole header"
        control, slot, sid, sseq, did, dseq, length = _unpack_from(data, pos)
        if control != CONTROL:
            return packages, "not a yoton package (bad control field)"
        if length > max_package_size:
            return packages, f"package too large ({length} bytes; the limit is {max_package_size})"
        start = pos + HEADER_SIZE
        pos = start + length
        if pos > end:
            return packages, f"a package of {length} bytes cut short after {end - start}"
        if length:
            pkg = _new(Package)
            pkg.data = data[start:pos]
            pkg.slot, pkg.source_id, pkg.source_seq, pkg.dest_id, pkg.dest_seq = slot, sid, sseq, did, dseq
            pkg.recv_seq = 0
            append(pkg)
    return packages, None


class FrameDecoder:
    """Cut packages out of a byte stream, fed in pieces of any size.

    Two ways to feed it:

    * :meth:`receive_data` with a bytes-like object (simple; used in tests);
    * :meth:`get_buffer` / :meth:`buffer_updated`, so the transport can
      ``recv_into`` the decoder's own memory. While a large body is being
      received, ``get_buffer`` returns a view on that body's own buffer, so
      big packages are read from the kernel straight into place. (That
      buffer grows as the body arrives, so memory follows what was received,
      not what a header claims.)

    Decoded :class:`Package` objects are appended to :attr:`packages` (a list
    the caller may take and replace). Heartbeats and empty packages are
    consumed silently. A close signal sets :attr:`peer_closed` and ends
    decoding, as does an error (:attr:`error`); either calls :attr:`on_stop`.
    A package's ``data`` is ``bytes``, or a ``bytearray`` for bodies over
    64 KiB (read in place, not copied again).
    """

    __slots__ = (
        "max_package_size",
        "packages",
        "error",
        "peer_closed",
        "_buf",
        "_start",
        "_end",
        "_body",
        "_body_fill",
        "_body_size",
        "_pending",
        "on_stop",
    )

    def __init__(self, max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE):
        self.max_package_size = max_package_size
        self.packages: list[Any] = []
        self.error: str | None = None
        self.peer_closed = False
        #: Called (no arguments) when decoding stops: an error, or the close signal.
        self.on_stop: Callable[[], object] | None = None
        self._buf = bytearray(_READ_BUFFER)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of valid data in _buf
        self._body: bytearray | None = None  # large body being filled
        self._body_fill = 0
        self._body_size = 0  # its announced length (len(_body) may still be less)
        self._pending: tuple[int, int, int, int, int] | None = None  # header fields of that large body

    def partial(self) -> tuple[int, ...] | None:
        """The large package being received, if any: ``(slot, source_id,
        source_seq, dest_id, dest_seq, bytes received, length)``."""
        fields = self._pending
        if fields is None:
            return None
        return fields + (self._body_fill, self._body_size)

    # -- feeding ----------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Return writable memory for the next incoming bytes (never empty)."""
        body = self._body
        if body is not None:
            if self._body_fill == len(body):
                body = self._grow_body()
            return memoryview(body)[self._body_fill :]
        buf = self._buf
        if self._end == len(buf):
            # Move the partial package to the front to make room.
            keep = self._end - self._start
            buf[:keep] = buf[self._start : self._end]
            self._start, self._end = 0, keep
        return memoryview(buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` written into the memory from :meth:`get_buffer`."""
        if self.error is not None or self.peer_closed:
            return
        if self._body is not None:
            self._body_fill += nbytes
            if self._body_fill == self._body_size:
                body, fields = self._body, self._pending
                self._body = self._pending = None
                assert fields is not None  # (set with _body)
                self.packages.append(Package(body, *fields))
            return
        self._end += nbytes
        self._parse()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed a bytes-like object (any length, any split)."""
        view = memoryview(data).cast("B")
        while view.nbytes and self.error is None and not self.peer_closed:
            target = self.get_buffer()
            n = min(len(target), view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _grow_body(self) -> bytearray:
        """Make room for more of the large body: double its buffer, up to its size.

        A fresh buffer and one copy (no resize in place: a caller may still
        hold a view on the old one); the copies add up to less than the body.
        """
        body = self._body
        assert body is not None  # (called while a large body is being filled)
        grown = bytearray(min(2 * len(body), self._body_size))
        grown[: self._body_fill] = body
        self._body = grown
        return grown

    # -- parsing ----------------------------------------------------------

    def _parse(self) -> None:
        buf, pos, end = self._buf, self._start, self._end
        append = self.packages.append
        limit = self.max_package_size
        # Small bodies are sliced from one immutable copy of what arrived: one
        # allocation per package instead of two (bytearray slice, then bytes).
        # Made at the first small body, so a read holding only the start of a
        # large one is not copied an extra time.
        base, chunk = pos, None
        while end - pos >= HEADER_SIZE:
            control, slot, sid, sseq, did, dseq, length = _unpack_from(buf, pos)
            if control != CONTROL:
                self.error = "Lost track of the stream."
                break
            if length > limit:
                self.error = f"Package too large ({length} bytes; the limit is {limit})."
                break
            body_start = pos + HEADER_SIZE
            if length == 0:
                pos = body_start
                if slot == SLOT_DUMMY and sseq == SIGNAL_CLOSE:
                    self.peer_closed = True
                    break
                continue
            if end - body_start >= length:
                pos = body_start + length
                if chunk is None:
                    base = body_start - HEADER_SIZE
                    with memoryview(buf) as view:  # (one copy; a bytearray slice would be a second)
                        chunk = bytes(view[base:end])
                # (Package(...) with its __init__ frame costs twice as much)
                pkg = _new(Package)
                pkg.data = chunk[body_start - base : pos - base]
                pkg.slot, pkg.source_id, pkg.source_seq, pkg.dest_id, pkg.dest_seq = slot, sid, sseq, did, dseq
                pkg.recv_seq = 0
                append(pkg)
                continue
            if length > _INLINE_BODY:
                # Large body: give it a buffer of its own and read into it.
                have = end - body_start
                body = bytearray(min(length, max(_FIRST_BODY_CHUNK, have)))
                body[:have] = buf[body_start:end]
                self._body, self._body_fill, self._body_size = body, have, length
                self._pending = (slot, sid, sseq, did, dseq)
                pos = end
            break
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end
        if (self.error is not None or self.peer_closed) and self.on_stop is not None:
            self.on_stop()
