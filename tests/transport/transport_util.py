"""Helpers for the transport tests: waiting on conditions, raw sockets, process stats.

Kept in this directory (not in tests/conftest.py) so other test packages can
change theirs freely.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import time

from helpers import wait_until

import yoton
from yoton.wire.naming import slot_hash

HOST = "127.0.0.1"
CONTROL = 2314885729178898265  # b"YOTON   " as a little-endian uint64
HEADER = struct.Struct("<7Q")
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
NOT_YOTON = b"ERROR: this is Yoton.\r\n"


def wait_for(cond, timeout: float = 5.0) -> bool:
    """helpers.wait_until, processing yoton events, returning cond() at the deadline."""
    return wait_until(cond, timeout, pump=True, fail=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def address(conn) -> str:
    """The address peers use to reach a bound connection."""
    return f"{HOST}:{conn.port1}"


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS from /proc/self/status)."""
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def package(slot, source_id, source_seq, body: bytes, dest_id=0, dest_seq=0) -> bytes:
    """A package made by hand: 56-byte header plus body."""
    return HEADER.pack(CONTROL, slot, source_id, source_seq, dest_id, dest_seq, len(body)) + body


def pubsub_slot(base: str, type_name: str = "txt") -> int:
    return slot_hash(f"{base}.{type_name}.pub-sub".lower())


class RawClient:
    """A plain TCP client that speaks (or abuses) the yoton protocol by hand."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_tolerant(self, data: bytes) -> None:
        """Send, ignoring a peer that already hung up (hostile clients do not care)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def read_line(self, timeout: float = 3.0) -> bytes:
        """Read one CRLF-terminated line (what is after it stays in ``buffer``)."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line within {timeout} s; got {self.buffer[:80]!r}")
            self.sock.settimeout(remaining)
            data = self.sock.recv(4096)
            if not data:
                raise EOFError(f"closed before a full line; got {self.buffer[:80]!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def handshake(self, context_id: int, pid: int = 4242) -> bytes:
        """Say hello as a yoton peer; return the bind's answer line."""
        self.send(b"YOTON!%016x.%d\r\n" % (context_id, pid))
        return self.read_line()

    def read_exact(self, n: int, timeout: float = 3.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(self.buffer)} of {n} bytes within {timeout} s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed after {len(self.buffer)} of {n} bytes")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_package(self, timeout: float = 3.0):
        """Read packages until one with a body arrives; return (header fields, body)."""
        deadline = time.monotonic() + timeout
        while True:
            fields = HEADER.unpack(self.read_exact(HEADER.size, max(0.01, deadline - time.monotonic())))
            body = self.read_exact(fields[6], max(0.01, deadline - time.monotonic())) if fields[6] else b""
            if fields[6]:
                return fields, body

    def read_until_closed(self, timeout: float = 3.0) -> tuple[bytes, str]:
        """Read until the other end closes: return (all bytes, 'eof' | 'reset' | 'timeout')."""
        deadline = time.monotonic() + timeout
        data = self.buffer
        self.buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return data, "timeout"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return data, "timeout"
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk


def check_pubsub(ctx_a, ctx_b, base: str, timeout: float = 3.0) -> None:
    """Assert that TEXT pub/sub works both ways between two connected contexts."""
    for src, dst, tag in ((ctx_a, ctx_b, "a2b"), (ctx_b, ctx_a, "b2a")):
        slot = f"{base}-{tag}"
        sub = yoton.SubChannel(dst, slot)
        pub = yoton.PubChannel(src, slot)
        try:
            message = f"{slot} {os.urandom(4).hex()}"
            pub.send(message)
            got = sub.recv(timeout)
            assert got == message, f"{tag}: expected {message!r}, got {got!r}"
        finally:
            pub.close()
            sub.close()
