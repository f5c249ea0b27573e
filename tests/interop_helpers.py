"""Launch remote-controlled yoton peers (tests/peer.py) for interop tests.

``PeerProcess("orig")`` runs the original yoton 2.2 in a subprocess,
``PeerProcess("ours")`` runs ours (repo_root/src); ``.call(op, **args)`` sends a
command and returns the reply dict, raising :class:`PeerError` (with the
peer's stderr) on an error reply, a dead peer or a missed deadline.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _orig import orig_path
from helpers import record, wait_until

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
PEER_SCRIPT = TESTS / "peer.py"
IMPLS = ("ours", "orig")
# (binder/first, connector/second); orig-orig is the control, ours-ours the self-check
PAIRS = [("ours", "orig"), ("orig", "ours"), ("orig", "orig"), ("ours", "ours")]
PAIR_IDS = ["-".join(p) for p in PAIRS]
SLACK = 15.0  # deadline for a reply beyond the command's own timeout


class PeerError(AssertionError):
    pass


def impl_path(impl: str) -> str:
    if impl == "orig":
        return orig_path()
    if impl == "ours":
        return str(SRC)
    raise ValueError(f"unknown impl {impl!r}")


class PeerProcess:
    def __init__(self, impl: str, name: str = "", prefix=()):
        """``prefix``: argv run before the peer, e.g. ``["ip", "netns", "exec", NS]``
        (it must exec the peer in its own process, so ``pid`` is the peer's)."""
        self.impl, self.name = impl, name or impl
        path = impl_path(impl)
        env = dict(os.environ, PYTHONPATH=path, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tempfile.gettempdir(),
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True).start()
        self._err_reader = threading.Thread(
            target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True
        )
        self._err_reader.start()
        try:
            hello = self._reply(30.0, "startup")
            yoton_file = Path(hello["yoton"]).resolve()
            if Path(path).resolve() not in yoton_file.parents:
                raise PeerError(f"{self}: imported {yoton_file}, expected yoton under {path}")
        except BaseException:
            self.close()
            raise
        self.pid = hello["pid"]

    def __repr__(self):
        return f"<peer {self.name} ({self.impl})>"

    @staticmethod
    def _pump(stream, put):
        try:
            for line in stream:
                put(line)
        except (ValueError, OSError):
            pass  # the stream was closed by close() while we were reading
        put(None)

    @property
    def stderr(self) -> str:
        return "".join(line for line in list(self._stderr) if line)

    def _fail(self, what: str):
        if self.proc.poll() is not None:
            self._err_reader.join(2.0)  # let the dead peer's stderr drain
        raise PeerError(f"{self}: {what}\n--- peer stderr ---\n{self.stderr}")

    def _reply(self, timeout: float, what: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._fail(f"no reply to {what} within {timeout:.1f} s")
        if line is None:
            self._fail(f"peer exited (code {self.proc.wait(5)}) before replying to {what}")
        return json.loads(line)

    def call(self, op: str, **args) -> dict:
        """Run one command; args["timeout"] (if any) extends the reply deadline."""
        if self.proc.poll() is not None:
            self._fail(f"peer is dead (code {self.proc.returncode}); cannot run {op}")
        self.proc.stdin.write(json.dumps(dict(args, op=op)) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(float(args.get("timeout") or 0) + SLACK, f"{op} {args!r:.200}")
        if "error" in reply:
            self._fail(f"{op} failed: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self):
        """Ask the peer to exit; kill it if it does not within a deadline."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    # -- conveniences
    def bind(self, **args) -> int:
        return self.call("bind", **args)["port"]

    def id(self) -> str:
        return self.call("info")["id"]


def link(binder: PeerProcess, connector: PeerProcess, timeout: float = 5.0) -> int:
    """binder binds a fresh port, connector connects to it; returns the port."""
    port = binder.bind()
    reply = connector.call("connect", addr=f"localhost:{port}", timeout=timeout)
    assert reply["is_connected"], reply
    return port


def wait_connections(peers_counts, timeout: float = 10.0):
    for peer, count in peers_counts:
        reply = peer.call("wait_connections", count=count, timeout=timeout)
        assert reply["ok"], f"{peer} has {reply['connection_count']} connections, want {count}"


def wait_for(cond, timeout: float, what: str = "condition"):
    """helpers.wait_until, processing yoton events; fails at the deadline."""
    return wait_until(cond, timeout, what, pump=True)


_record = record  # (the name the interop tests use)


def killed_and_restarted(impl: str, addr: str, policy) -> None:
    """Our context connects with ``reconnect=policy`` to a peer process (``impl``)
    bound at ``addr``; the peer is killed, numbered messages are sent during the
    outage, a new peer binds the same address: they all arrive once, in order, and
    the state channels agree again (ours reached the new peer, its state came back)."""
    import yoton

    peers: list = []

    def start(state: str) -> PeerProcess:
        peer = PeerProcess(impl, f"bind-{len(peers)}")
        peers.append(peer)
        peer.call("sub", slot="numbers", type="txt")
        peer.call("state_recv", slot="my-state", type="txt")  # (the channel exists before our state comes)
        peer.call("state_send", slot="peer-state", type="txt", msg=state)
        peer.call("rep", slot="calc", mode="thread")
        peer.call("bind", addr=addr)
        return peer

    ctx = yoton.Context()
    try:
        peer = start("peer-1")
        # (the channels first: the peer's state answers our connect at once)
        pub, req = yoton.PubChannel(ctx, "numbers"), yoton.ReqChannel(ctx, "calc")
        mine, theirs = yoton.StateChannel(ctx, "my-state"), yoton.StateChannel(ctx, "peer-state")
        conn = ctx.connect(addr, timeout=5.0, reconnect=policy)
        reconnected, closed = _record(conn.reconnected), _record(conn.closed)
        mine.send("mine-1")
        assert wait_for(lambda: theirs.recv() == "peer-1", 5.0), theirs.recv()
        for i in range(10):
            pub.send(str(i))
        assert peer.call("recv_n", slot="numbers", type="txt", n=10)["msgs"] == [str(i) for i in range(10)]
        assert peer.call("state_wait", slot="my-state", type="txt", msg="mine-1")["ok"]
        assert req.who(1).result(5.0) == [1, "calc"]

        os.kill(peer.pid, signal.SIGKILL)
        peer.proc.wait(5.0)
        assert wait_for(lambda: conn.is_reconnecting, 5.0), "the loss was not noticed"
        assert conn.is_alive and not conn.is_connected and ctx.connection_count == 0
        for i in range(10, 200):  # during the outage: they wait in the connection's queue
            pub.send(str(i))
        peer = start("peer-2")
        assert wait_for(lambda: reconnected, 10.0), "no re-dial to the new peer"
        got = peer.call("recv_n", slot="numbers", type="txt", n=190, timeout=10.0)
        assert got["msgs"] == [str(i) for i in range(10, 200)], f"{len(got['msgs'])} of 190, or out of order"
        # the states: ours reached the new peer, and the new peer's came back
        assert peer.call("state_wait", slot="my-state", type="txt", msg="mine-1")["ok"]
        assert wait_for(lambda: theirs.recv() == "peer-2", 5.0), theirs.recv()
        pub.send("200")
        assert peer.call("recv_n", slot="numbers", type="txt", n=1)["msgs"] == ["200"]
        assert req.add(20, 22).result(5.0) == 42  # (the new peer's replier)
        assert peer.call("rep_calls", slot="calc")["calls"] == {"add": 1}
        yoton.process_events()
        assert closed == [] and reconnected[0][1:] == (conn,) and len(reconnected) == 1
        assert conn.is_connected and conn.statistics()["reconnects"] == 1 and conn.pid2 == peer.pid
    finally:
        ctx.close()
        for peer in peers:
            peer.close()
