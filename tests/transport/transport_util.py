"""Helpers for the transport tests: waiting on conditions, raw sockets, process stats.

Kept in this directory (not in tests/conftest.py) so other test packages can
change theirs freely.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
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


# -- what a test leaves behind ----------------------------------------------------------


def _open_fds() -> dict:
    """fd -> what it points at (``socket:[inode]``, a path, ...) for this process."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory listing's own fd, closed by now
            pass
    return fds


class Resources:
    """Threads and open fds at one moment; :meth:`assert_back` checks that nothing new is left.

    An fd counts as new when its number was not open before or now points
    somewhere else (a socket reusing the number has another inode).
    """

    def __init__(self):
        self.threads = set(threading.enumerate())
        self.fds = _open_fds()

    def leaks(self) -> tuple[list, dict]:
        threads = sorted(t.name for t in threading.enumerate() if t not in self.threads and t.is_alive())
        fds = {fd: target for fd, target in _open_fds().items() if self.fds.get(fd) != target}
        return threads, fds

    def assert_back(self, timeout: float = 3.0) -> None:
        if not wait_for(lambda: self.leaks() == ([], {}), timeout):
            threads, fds = self.leaks()
            pytest.fail(f"left behind after close: threads {threads}, fds {fds}")


# -- two hosts in network namespaces ---------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


class Netns:
    """Two network namespaces joined by a veth pair: two hosts with their own addresses."""

    ADDR_A, ADDR_B, PREFIX = "10.199.77.1", "10.199.77.2", 30  # only inside our own namespaces

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.ns_a, self.ns_b = f"yoton-a-{tag}", f"yoton-b-{tag}"
        self.veth_a, self.veth_b = f"yta{tag}", f"ytb{tag}"
        self.made: list = []

    def setup(self) -> None:
        """Make the namespaces; raise pytest.skip only if namespaces cannot be made at all."""
        if shutil.which("ip") is None:
            pytest.skip("network partition test: iproute2 ('ip') is not installed")
        if os.geteuid() != 0:
            pytest.skip(f"network partition test: needs root to make network namespaces (euid {os.geteuid()})")
        for ns in (self.ns_a, self.ns_b):
            result = _run("ip", "netns", "add", ns)
            if result.returncode:
                pytest.skip(f"network partition test: 'ip netns add' failed: {result.stderr.strip()}")
            self.made.append(ns)
        result = _run("ip", "link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        if result.returncode:
            pytest.skip(f"network partition test: cannot make a veth pair: {result.stderr.strip()}")
        self.made.append("veth")
        for veth, ns, addr in ((self.veth_a, self.ns_a, self.ADDR_A), (self.veth_b, self.ns_b, self.ADDR_B)):
            self.check("ip", "link", "set", veth, "netns", ns)
            self.check("ip", "-n", ns, "addr", "add", f"{addr}/{self.PREFIX}", "dev", veth)
            self.check("ip", "-n", ns, "link", "set", "lo", "up")
            self.check("ip", "-n", ns, "link", "set", veth, "up")

    @staticmethod
    def check(*argv: str) -> None:
        result = _run(*argv)
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"

    def link(self, up: bool) -> None:
        self.check("ip", "-n", self.ns_a, "link", "set", self.veth_a, "up" if up else "down")

    def prefix(self, ns: str) -> list:
        return ["ip", "netns", "exec", ns]

    def cleanup(self) -> None:
        if "veth" in self.made:
            _run("ip", "link", "del", self.veth_a)  # if it was never moved (gone with its netns otherwise)
        for ns in (self.ns_a, self.ns_b):
            if ns in self.made:
                _run("ip", "netns", "del", ns)
