"""Each end of the 100-byte stream alone: which side limits one-way throughput?

    python -m bench.isolate [--count N] [--reps R]

``receiver``: our SubChannel against a raw-socket peer (a subprocess) that
does the yoton handshake and then replays a prebuilt stream of N packages
with ``sendall`` -- the sending side costs next to nothing. ``sender``: our
PubChannel against a raw-socket peer that does the handshake and then only
drains bytes; the rate counts until ``Context.flush()`` returns (all N
written). Prints msgs/s per repetition and the median. Only our yoton is
measured; ``python -m bench`` compares stacks.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = 100
SOURCE_ID = 0x0123456789ABCDEF


def _yoton():
    sys.path.insert(0, str(ROOT / "src"))
    import yoton

    return yoton


def _peer_command(*args) -> list:
    return [sys.executable, "-m", "bench.isolate", *map(str, args)]


def peer_replay(port: int, slot: int, count: int) -> None:
    """Raw peer: connect, handshake, replay ``count`` packages on ``slot``."""
    from yoton.wire.frames import pack_header
    from yoton.wire.protocol import format_hello

    body = b"x" * SIZE
    stream = b"".join(pack_header(slot, SOURCE_ID, i + 1, 0, 0, SIZE) + body for i in range(count))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(format_hello(SOURCE_ID, os.getpid()))
    sock.recv(256)  # the bind's hello
    sock.sendall(stream)
    sys.stdin.read()  # until the measuring side is done


def peer_drain(port: int) -> None:
    """Raw peer: accept one client, handshake, read and drop everything."""
    from yoton.wire.protocol import format_hello

    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    sock, _ = listener.accept()
    sock.recv(256)  # the client's hello
    sock.sendall(format_hello(SOURCE_ID, os.getpid()))
    while sock.recv(1 << 20):
        pass


def measure_receiver(count: int) -> float:
    yoton = _yoton()
    ctx = yoton.Context()
    try:
        conn = ctx.bind("127.0.0.1:0")
        sub = yoton.SubChannel(ctx, "bench", yoton.BINARY)
        peer = subprocess.Popen(
            _peer_command("--replay", conn.port1, sub._slot_in, count),
            stdin=subprocess.PIPE,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        )
        try:
            got, t0 = 0, None
            while got < count:
                first = sub.recv(10.0)
                if not first:
                    raise RuntimeError(f"receiver: got {got} of {count} packages, then nothing for 10 s")
                if t0 is None:
                    t0 = time.perf_counter()
                got += 1 + len(sub.recv_all())
            return (got - 1) / (time.perf_counter() - t0)
        finally:
            peer.stdin.close()
            peer.wait(10)
    finally:
        ctx.close()


def measure_sender(count: int) -> float:
    yoton = _yoton()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peer = subprocess.Popen(
        _peer_command("--drain", port),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    ctx = yoton.Context()
    try:
        peer.stdout.readline()  # ready
        ctx.connect(f"127.0.0.1:{port}", timeout=10)
        pub = yoton.PubChannel(ctx, "bench", yoton.BINARY)
        payload = b"x" * SIZE
        ctx.flush(10)
        t0 = time.perf_counter()
        for _ in range(count):
            pub.send(payload)
        ctx.flush(60)
        return count / (time.perf_counter() - t0)
    finally:
        ctx.close()
        peer.kill()
        peer.wait(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="packages per repetition (default 300000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--replay", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--drain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        peer_replay(*args.replay)
        return 0
    if args.drain:
        peer_drain(args.drain)
        return 0
    for name, measure in (("receiver", measure_receiver), ("sender", measure_sender)):
        rates = [measure(args.count) for _ in range(args.reps)]
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{name:8s} alone, 100 B: median {statistics.median(rates):,.0f} msgs/s  ({shown})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
