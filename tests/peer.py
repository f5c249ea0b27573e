"""A remote-controlled yoton peer for interop tests.

Run as a script; ``import yoton`` resolves to whatever PYTHONPATH puts first
(the original 2.2 or ours). Reads one JSON command per line on stdin, answers
one JSON reply per line on stdout. A command is ``{"op": NAME, ...args}``; the
reply is a JSON object, or ``{"error": "..."}`` when the command failed.

On start it prints ``{"ready": true, "yoton": <yoton.__file__>, ...}``.

Connections made by ``bind``/``connect`` are numbered 0, 1, ... in the order
they were made; their ``closed`` signals are recorded (see ``closed_events``).
Channels are created on first use and kept per (kind, slot, type).

Messages travel in JSON as: TEXT -> str, BINARY -> hex str, OBJECT -> JSON
value where a tuple is ``{"__tuple__": [...]}`` and a dict with non-str keys is
``{"__dict__": [[k, v], ...]}``.

To add commands (e.g. req/rep), write ``def op_NAME(self, **args) -> dict``
on :class:`Peer`; the dispatcher finds it by name.
"""

import json
import os
import queue
import sys
import threading
import time
import traceback

import yoton

# -- JSON <-> message values ---------------------------------------------------


def to_json(value):
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"__dict__": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    return value


def from_json(value):
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_json(v) for v in value["__tuple__"])
        if set(value) == {"__dict__"}:
            return {from_json(k): from_json(v) for k, v in value["__dict__"]}
        if set(value) == {"__bytes__"}:
            return bytes.fromhex(value["__bytes__"])
        return {k: from_json(v) for k, v in value.items()}
    return value


TYPES = {"txt": yoton.TEXT, "bin": yoton.BINARY, "obj": yoton.OBJECT}


def encode_msg(type_, msg):
    if type_ == "bin":
        return msg.hex()
    if type_ == "obj":
        return to_json(msg)
    return msg


def decode_msg(type_, msg):
    if type_ == "bin":
        return bytes.fromhex(msg)
    if type_ == "obj":
        return from_json(msg)
    return msg


# -- the peer --------------------------------------------------------------------


class Peer:
    def __init__(self):
        self.ctx = yoton.Context()
        self.conns = []
        self.closed = []  # [conn index, reason] in the order the signals arrived
        self.timedout = []  # [conn index, value, time.monotonic() when handled]
        self.reconnected = []  # [conn index, time.monotonic() when handled] (ours only)
        self.accepted = []  # [bind's conn index, index given to the accepted connection] (ours only)
        self.stream = None  # (thread, stop event, [sent count]) of op_stream_start
        self.handlers = []  # keep signal handlers alive
        self.channels = {}
        self.repliers = {}  # slot -> (RepChannel, {method: calls})
        self.requesters = {}  # slot -> ReqChannel

    def pump(self):
        yoton.process_events(False)

    def wait_until(self, cond, timeout):
        """Process events until cond() is true or timeout passes; return cond()."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if cond():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def channel(self, kind, slot, type_):
        key = (kind, slot, type_)
        if key not in self.channels:
            cls = {"pub": yoton.PubChannel, "sub": yoton.SubChannel, "state": yoton.StateChannel}[kind]
            self.channels[key] = cls(self.ctx, slot, TYPES[type_])
        return self.channels[key]

    def _track(self, conn):
        index = len(self.conns)
        self.conns.append(conn)

        def on_closed(connection, reason=None):
            self.closed.append([index, reason])

        def on_timedout(connection, value=None):
            self.timedout.append([index, bool(value), time.monotonic()])

        self.handlers += [on_closed, on_timedout]
        conn.closed.bind(on_closed)
        conn.timedout.bind(on_timedout)
        if hasattr(conn, "reconnected"):  # (ours: reconnect and many peers per bind)

            def on_reconnected(connection):
                self.reconnected.append([index, time.monotonic()])

            def on_accepted(bind_connection, connection):
                other = index if connection is bind_connection else self._track(connection)
                self.accepted.append([index, other])

            self.handlers += [on_reconnected, on_accepted]
            conn.reconnected.bind(on_reconnected)
            conn.accepted.bind(on_accepted)
        return index

    def _conn_info(self, index):
        c = self.conns[index]
        return {
            "conn": index,
            "port": c.port1,
            "is_connected": c.is_connected,
            "is_alive": c.is_alive,
            "is_waiting": c.is_waiting,
            "is_reconnecting": getattr(c, "is_reconnecting", False),
            "id2": format(c.id2 or 0, "016x"),
            "pid2": c.pid2 or 0,
        }

    # -- contexts and connections
    def op_info(self):
        return {
            "id": format(self.ctx.id, "016x"),
            "pid": os.getpid(),
            "connection_count": self.ctx.connection_count,
            "yoton": yoton.__file__,
        }

    def op_bind(self, addr="localhost:0", max_tries=1, name="", **ours):
        """``ours``: keyword options only our yoton has (max_connections, mode)."""
        return self._conn_info(self._track(self.ctx.bind(addr, max_tries=max_tries, name=name, **ours)))

    def op_connect(self, addr, timeout=5.0, name="", reconnect=None):
        """``reconnect`` (ours only): True, or a dict of ReconnectPolicy fields."""
        ours = {}
        if reconnect is not None:
            ours["reconnect"] = yoton.ReconnectPolicy(**reconnect) if isinstance(reconnect, dict) else reconnect
        return self._conn_info(self._track(self.ctx.connect(addr, timeout=timeout, name=name, **ours)))

    def op_reconnected_events(self, count=0, timeout=0.0):
        """The reconnected signals seen so far as [conn, monotonic time handled], waiting up to timeout for count."""
        self.wait_until(lambda: len(self.reconnected) >= count, timeout)
        return {"events": self.reconnected}

    def op_accepted_events(self, count=0, timeout=0.0):
        """The accepted signals seen so far as [bind's conn, accepted conn], waiting up to timeout for count."""
        self.wait_until(lambda: len(self.accepted) >= count, timeout)
        return {"events": self.accepted}

    def op_wait_reconnecting(self, conn, timeout=5.0):
        """Wait until connection conn re-dials; the reply has the stream's sent count seen then."""
        c = self.conns[conn]
        ok = self.wait_until(lambda: c.is_reconnecting, timeout)
        return {"ok": ok, "sent": self.stream[2][0] if self.stream else None}

    def op_conn_info(self, conn):
        return self._conn_info(conn)

    def op_conn_close(self, conn, reason=None):
        self.conns[conn].close(reason)
        return {}

    def op_wait_connections(self, count, timeout=10.0):
        ok = self.wait_until(lambda: self.ctx.connection_count >= count, timeout)
        return {"ok": ok, "connection_count": self.ctx.connection_count}

    def op_closed_events(self, count=0, timeout=0.0):
        """The closed signals seen so far, waiting up to timeout until there are count."""
        self.wait_until(lambda: len(self.closed) >= count, timeout)
        return {"events": self.closed}

    def op_timedout_events(self, count=0, timeout=0.0):
        """The timedout signals seen so far as [conn, value, monotonic time handled],
        waiting up to timeout until there are count. (CLOCK_MONOTONIC is
        system-wide, so the times compare with the harness's time.monotonic().)"""
        self.wait_until(lambda: len(self.timedout) >= count, timeout)
        return {"events": self.timedout}

    def op_conn_timeout(self, conn, timeout):
        self.conns[conn].timeout = timeout
        return {"timeout": self.conns[conn].timeout}

    def op_flush(self, timeout=5.0):
        self.ctx.flush(timeout)
        return {}

    def op_close(self):
        self.ctx.close()
        return {}

    # -- pub/sub
    def op_pub(self, slot, type, msg=None):
        channel = self.channel("pub", slot, type)
        if msg is not None:
            channel.send(decode_msg(type, msg))
        return {}

    def op_pub_many(self, slot, type, msgs):
        channel = self.channel("pub", slot, type)
        for msg in msgs:
            channel.send(decode_msg(type, msg))
        return {}

    def op_pub_count(self, slot, n, start=0):
        """Send the TEXT messages str(start) .. str(start + n - 1) at once."""
        channel = self.channel("pub", slot, "txt")
        t0 = time.monotonic()
        for i in range(start, start + n):
            channel.send(str(i))
        return {"sent": n, "seconds": time.monotonic() - t0}

    def op_pub_big(self, slot, size):
        """Send one BINARY message of size bytes (bytes 0..255 repeated); returns once queued."""
        pattern = bytes(range(256))
        self.channel("pub", slot, "bin").send((pattern * (size // 256 + 1))[:size])
        return {}

    def op_stream_start(self, slot, interval=0.002):
        """Send TEXT messages "0", "1", ... every interval s from a thread until op_stream_stop."""
        if self.stream is not None:
            raise RuntimeError("a stream is already running")
        channel, stop, sent = self.channel("pub", slot, "txt"), threading.Event(), [0]

        def run():
            while not stop.is_set():
                channel.send(str(sent[0]))
                sent[0] += 1
                stop.wait(interval)

        thread = threading.Thread(target=run, daemon=True)
        self.stream = (thread, stop, sent)
        thread.start()
        return {}

    def op_stream_stop(self):
        """Stop the stream; returns how many messages it sent."""
        thread, stop, sent = self.stream
        stop.set()
        thread.join(5.0)
        self.stream = None
        return {"sent": sent[0]}

    def op_sub(self, slot, type):
        self.channel("sub", slot, type)
        return {}

    def op_recv(self, slot, type, timeout=5.0):
        sub = self.channel("sub", slot, type)
        if not self.wait_until(lambda: sub.pending > 0, timeout):
            return {"timeout": True}
        return {"msg": encode_msg(type, sub.recv(False))}

    def op_recv_n(self, slot, type, n, timeout=5.0):
        """Receive n messages within timeout; fewer means the reply has "timeout": true."""
        sub = self.channel("sub", slot, type)
        deadline = time.monotonic() + timeout
        msgs = []
        while len(msgs) < n:
            left = deadline - time.monotonic()
            if not self.wait_until(lambda: sub.pending > 0, max(left, 0.0)):
                return {"msgs": msgs, "timeout": True}
            msgs.append(encode_msg(type, sub.recv(False)))
        return {"msgs": msgs}

    def op_drain(self, slot, type, quiet=0.5, max_time=10.0):
        """Receive until nothing arrives for `quiet` seconds (or max_time passed)."""
        sub = self.channel("sub", slot, type)
        deadline = time.monotonic() + max_time
        msgs = []
        while time.monotonic() < deadline and self.wait_until(lambda: sub.pending > 0, quiet):
            msgs.append(encode_msg(type, sub.recv(False)))
        return {"msgs": msgs}

    # -- state
    def op_state_send(self, slot, type, msg):
        self.channel("state", slot, type).send(decode_msg(type, msg))
        return {}

    def op_state_recv(self, slot, type):
        return {"msg": encode_msg(type, self.channel("state", slot, type).recv())}

    def op_state_wait(self, slot, type, msg, timeout=5.0):
        """Wait until the state equals msg; the reply has the state seen last."""
        channel, want = self.channel("state", slot, type), decode_msg(type, msg)
        ok = self.wait_until(lambda: channel.recv() == want, timeout)
        return {"ok": ok, "msg": encode_msg(type, channel.recv())}

    # -- req/rep: add op_req_* / op_rep_* here
    #
    # A replier (op_rep) is a RepChannel subclass with add(x, y), fail(msg)
    # (raises ValueError(msg)), slow(t) (sleeps t s, returns t) and who(i, t=0)
    # (sleeps t s, returns [i, name]); every call is counted per method.
    # Requests (op_req, op_req_many) pump the event loop while they wait and
    # report a remote failure as {"exc_type": ..., "exc": str(exception)}.

    def _replier(self, slot):
        if slot not in self.repliers:
            raise KeyError(f"no replier on slot {slot!r}; use op rep first")
        return self.repliers[slot]

    def op_rep(self, slot, mode="thread", name=""):
        """Create (once per slot) a replier and set its mode; returns nothing."""
        if slot not in self.repliers:
            calls = {}
            label = name or slot

            def count(method):
                calls[method] = calls.get(method, 0) + 1

            class PeerReplier(yoton.RepChannel):
                def add(self, x, y):
                    count("add")
                    return x + y

                def fail(self, msg):
                    count("fail")
                    raise ValueError(msg)

                def slow(self, t):
                    count("slow")
                    time.sleep(t)
                    return t

                def who(self, i, t=0.0):
                    count("who")
                    if t:
                        time.sleep(t)
                    return [i, label]

            self.repliers[slot] = (PeerReplier(self.ctx, slot), calls)
        self._replier(slot)[0].set_mode(mode)
        return {}

    def op_rep_mode(self, slot, mode):
        self._replier(slot)[0].set_mode(mode)
        return {}

    def op_rep_calls(self, slot):
        """How often each method of the replier on slot was called."""
        return {"calls": dict(self._replier(slot)[1])}

    def _req_channel(self, slot):
        if slot not in self.requesters:
            self.requesters[slot] = yoton.ReqChannel(self.ctx, slot)
        return self.requesters[slot]

    @staticmethod
    def _outcome(future):
        try:
            return {"result": to_json(future.result())}
        except Exception as exc:  # remote failures, cancellation
            return {"exc_type": type(exc).__name__, "exc": str(exc)}

    def op_req(self, slot, method, args=(), timeout=5.0):
        """Post one request; wait (pumping events) up to timeout for its outcome."""
        future = getattr(self._req_channel(slot), method)(*from_json(list(args)))
        if not self.wait_until(future.done, timeout):
            future.cancel()
            return {"timeout": True}
        return self._outcome(future)

    def op_req_many(self, slot, method, args_list, timeout=10.0):
        """Post one request per args in args_list at once; wait for all (within timeout)."""
        channel = self._req_channel(slot)
        futures = [getattr(channel, method)(*from_json(list(args))) for args in args_list]
        ok = self.wait_until(lambda: all(f.done() for f in futures), timeout)
        outcomes = [self._outcome(f) if f.done() else {"timeout": True} for f in futures]
        return dict({"outcomes": outcomes}, **({} if ok else {"timeout": True}))

    def dispatch(self, cmd):
        handler = getattr(self, "op_" + cmd.pop("op", ""), None)
        if handler is None:
            return {"error": f"unknown op in {cmd!r}"}
        try:
            return handler(**cmd)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def main():
    lines = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)  # EOF: the harness went away

    threading.Thread(target=read_stdin, daemon=True).start()
    peer = Peer()

    # Replies own the real stdout; whatever yoton itself prints (the original
    # prints tracebacks of failed requests) goes to stderr instead.
    out, sys.stdout = sys.stdout, sys.stderr

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True, "yoton": yoton.__file__, "pid": os.getpid()})
    while True:
        try:
            line = lines.get(timeout=0.02)
        except queue.Empty:
            peer.pump()
            continue
        if line is None:
            break
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except ValueError as exc:
            reply({"error": f"bad JSON: {exc}"})
            continue
        if cmd.get("op") == "exit":
            reply({})
            break
        reply(peer.dispatch(cmd))
    try:
        peer.ctx.close()
    except Exception:
        pass
    os._exit(0)  # don't wait for non-daemon I/O threads of either implementation


if __name__ == "__main__":
    main()
