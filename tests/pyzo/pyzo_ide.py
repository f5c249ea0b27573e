"""The IDE side of a pyzo session, for tests: pyzo's real KernelBroker plus a shell.

Run as a script (``python pyzo_ide.py CONFIG_JSON``) with the yoton under test
on ``PYTHONPATH``. It loads pyzo's own ``pyzo/core/kernelbroker.py`` from the
wheel (pyzo's package ``__init__`` and ``pyzo.util`` need Qt, so bare
stand-ins for those two packages are put in ``sys.modules``: the broker only
needs ``pyzo.pyzoDir`` and ``pyzo.util.zon``, which is loaded from the wheel
too). The broker starts real kernels the way pyzo does (``pyzokernel/start.py``
in a subprocess, ``PYTHONPATH`` = pyzoDir, whose ``yoton`` is the kernel's).

The shell cannot be loaded (it is a Qt widget), so :class:`Shell` does with
yoton what ``pyzo/core/shell.py`` does: the same channels on the same slots,
``yoton.app.embed_event_loop`` to hear about events, ``process_events`` when
told, polling the streams with ``select_sub_channel`` / ``recv_selected``,
introspection requests with done callbacks, and control messages to the
broker (INT, RESTART, TERM).

The session runs the steps named in the config, each waiting for its
condition with a deadline, and prints one JSON line per step
(``{"step", "ok", "detail", "seconds"}``), then ``{"transcript": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import types

CONFIG = json.loads(sys.argv[1])
PYZO_PACKAGE = CONFIG["pyzo_package"]  # the wheel's pyzo/ folder (broker and zon come from here)
PYZO_DIR = CONFIG["pyzo_dir"]  # pyzoDir as the broker sees it: pyzokernel/ and the kernel's yoton/

import yoton  # noqa: E402  (the IDE side's yoton: whatever PYTHONPATH gives)


def _install_pyzo_stand_ins():
    """Make ``pyzo.core.kernelbroker`` importable without Qt (see the module docstring)."""
    pyzo = types.ModuleType("pyzo")
    pyzo.__path__ = [PYZO_PACKAGE]
    pyzo.pyzoDir = PYZO_DIR
    for sub in ("util", "core"):
        module = types.ModuleType("pyzo." + sub)
        module.__path__ = [os.path.join(PYZO_PACKAGE, sub)]
        sys.modules["pyzo." + sub] = module
        setattr(pyzo, sub, module)
    sys.modules["pyzo"] = pyzo
    os.environ.setdefault("QT_MAC_WANTS_LAYER", "1")  # (pyzo sets it at start; the broker pops it)
    from pyzo.core import kernelbroker

    return kernelbroker


kernelbroker = _install_pyzo_stand_ins()
ssdf = kernelbroker.ssdf


class StepFailed(Exception):
    pass


class Shell:
    """What pyzo's shell does with yoton (core/shell.py: connectToKernel, poll, interrupt, ...)."""

    STREAMS = ("out", "err", "echo", "raw", "broker", "prompt")

    def __init__(self, manager, info):
        self.info = info
        self.transcript = []  # (stream, text) in the order the shell would show them
        self.closed_reason = None
        ct = self._context = yoton.Context()
        self._strm_out = yoton.SubChannel(ct, "strm-out")
        self._strm_err = yoton.SubChannel(ct, "strm-err")
        self._strm_raw = yoton.SubChannel(ct, "strm-raw")
        self._strm_echo = yoton.SubChannel(ct, "strm-echo")
        self._strm_prompt = yoton.SubChannel(ct, "strm-prompt")
        self._strm_broker = yoton.SubChannel(ct, "strm-broker")
        self._strm_action = yoton.SubChannel(ct, "strm-action", yoton.OBJECT)
        for channel in (self._strm_out, self._strm_err):
            channel.set_sync_mode(True)
        self._ctrl_command = yoton.PubChannel(ct, "ctrl-command")
        self._ctrl_code = yoton.PubChannel(ct, "ctrl-code", yoton.OBJECT)
        self._ctrl_broker = yoton.PubChannel(ct, "ctrl-broker")
        self._stat_interpreter = yoton.StateChannel(ct, "stat-interpreter")
        self._stat_cd = yoton.StateChannel(ct, "stat-cd")
        self._stat_debug = yoton.StateChannel(ct, "stat-debug", yoton.OBJECT)
        self._stat_startup = yoton.StateChannel(ct, "stat-startup", yoton.OBJECT)
        self._stat_breakpoints = yoton.StateChannel(ct, "stat-breakpoints", yoton.OBJECT)
        self._stat_startup.received.bind(self._on_startup)
        self._request = yoton.ReqChannel(ct, "reqp-introspect", 0.5)
        port = manager.createKernel(info)
        self._broker_connection = ct.connect(f"localhost:{port}")
        self._broker_connection.closed.bind(self._on_connection_close)
        self.version = None
        self.state = ""

    def _on_startup(self, channel):
        info = channel.recv()
        version = info.get("version") if info else None
        if isinstance(version, tuple):
            self.version = version

    def _on_connection_close(self, connection, why):
        self.closed_reason = why

    def poll(self):
        """One pass of the shell's poll timer: streams in send order, then the state."""
        channels = [
            self._strm_out,
            self._strm_err,
            self._strm_echo,
            self._strm_raw,
            self._strm_broker,
            self._strm_prompt,
        ]
        while True:
            sub = yoton.select_sub_channel(*channels)
            if not sub:
                break
            messages = sub.recv_selected()
            if sub is self._strm_prompt:
                messages = messages[-1:]  # only the newest prompt
            name = self.STREAMS[channels.index(sub)]
            self.transcript.append((name, "".join(messages)))
        self._strm_action.recv(False)
        if self.version:
            self.state = self._stat_interpreter.recv()

    def text(self, stream):
        return "".join(text for name, text in self.transcript if name == stream)

    def execute_command(self, text):
        self._ctrl_command.send(text)

    def execute_code(self, source, fname="<tmp 1>"):
        self._ctrl_code.send({"source": source, "fname": fname, "lineno": 0, "cellName": fname, "changeDir": 0})

    def close(self):
        """closeShell(): ask the broker to terminate the kernel, flush, close."""
        if self._context.connection_count:
            self._ctrl_broker.send("TERM")
            self._context.flush()
            self._context.close()


class Session:
    def __init__(self):
        self.events = threading.Event()
        # As pyzo's YotonEmbedder: yoton tells us about events, we process them in "the GUI thread".
        yoton.app.embed_event_loop(self.events.set)
        self.manager = kernelbroker.Kernelmanager()
        info = kernelbroker.KernelInfo()
        info.name = "test kernel"
        info.exe = CONFIG["kernel_exe"]
        info.gui = "none"
        info.scriptFile = ""
        info.projectPath = ""
        self.info = info
        self.shell = Shell(self.manager, info)
        self.kernel_pids = []

    @property
    def broker(self):
        return self.manager._kernels[0] if self.manager._kernels else None

    def kernel_pid(self):
        broker = self.broker
        con = broker._kernelCon if broker else None
        return con.pid2 if con is not None and con.is_connected else 0

    def pump(self, until, timeout, what):
        """Run the IDE's loop (events when told, the shell's poll) until ``until()`` or the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self.shell.poll()
            if until():
                return
            if time.monotonic() > deadline:
                raise StepFailed("timed out after %s s waiting for %s" % (timeout, what))
            if self.events.wait(0.01):
                self.events.clear()
                yoton.process_events(False)

    # -- steps ------------------------------------------------------------------------

    def step_start(self):
        shell = self.shell
        self.pump(lambda: shell.version and shell.state == "Ready", 40, "the kernel's startup info and Ready")
        pid = self.kernel_pid()
        self.kernel_pids.append(pid)
        return {"version": list(shell.version[:2]), "pid": pid, "banner": "Python" in shell.text("out")}

    def step_stdout(self):
        shell = self.shell
        shell.execute_command("import yoton as _y; print('hello from yoton', _y.__version__); del _y\n")
        self.pump(lambda: "hello from yoton " in shell.text("out"), 15, "the printed text")
        self.pump(lambda: shell.text("out").split("hello from yoton ")[1].count("\n"), 15, "the whole line")
        return {"kernel_yoton": shell.text("out").split("hello from yoton ")[1].split("\n")[0]}

    def step_input(self):
        shell = self.shell
        shell.execute_command("name = input('name? ')\n")
        self.pump(lambda: shell.text("out").endswith("name? "), 15, "the input() prompt")
        shell.execute_command("bob\n")
        self.pump(lambda: "bob\n" in shell.text("echo"), 15, "the typed answer echoed")
        shell.execute_command("print(name.upper())\n")
        self.pump(lambda: "BOB\n" in shell.text("out"), 15, "the answer used")
        # in the order the shell shows them: the prompt, the echoed answer, the output
        shown = "".join("[%s]%s" % (name, text) for name, text in shell.transcript if name in ("out", "echo"))
        places = [shown.find(part) for part in ("[out]name? ", "[echo]bob\n", "[out]BOB")]
        if not 0 <= places[0] < places[1] < places[2]:
            raise StepFailed("the echoed answer is out of place: %r" % shown)

    def step_traceback(self):
        self.shell.execute_code("def f():\n    return 1 / 0\n\nf()\n")
        self.pump(lambda: "ZeroDivisionError" in self.shell.text("err"), 15, "the traceback on stderr")
        err = self.shell.text("err")
        if "Traceback (most recent call last)" not in err or "return 1 / 0" not in err:
            raise StepFailed("not a traceback: %r" % err)

    def step_introspect(self):
        self.shell.execute_command("probe = 'some text'; print('probe set')\n")
        self.pump(lambda: "probe set\n" in self.shell.text("out"), 15, "the probe to be set")
        answers = {}
        for method, arg in (("dir", "probe"), ("signature", "divmod")):
            future = getattr(self.shell._request, method)(arg)
            future.add_done_callback(lambda f, m=method: answers.setdefault(m, f))
        self.pump(lambda: len(answers) == 2, 15, "the introspection replies (done callbacks)")
        names, signature = answers["dir"].result(), answers["signature"].result()
        if "upper" not in names or "divmod" not in signature:
            raise StepFailed("unexpected replies: %r %r" % (names, signature))
        return {"signature": signature}

    def step_interrupt(self):
        shell = self.shell
        before = shell.text("err").count("KeyboardInterrupt")
        shell.execute_command("import time; time.sleep(30)\n")
        self.pump(lambda: shell.state == "Busy", 15, "the kernel to be busy")
        time.sleep(0.3)  # (let it get into the sleep)
        shell._ctrl_broker.send("INT")
        self.pump(
            lambda: shell.text("err").count("KeyboardInterrupt") > before and shell.state == "Ready",
            15,
            "KeyboardInterrupt and Ready again",
        )
        shell.execute_command("print('still alive')\n")
        self.pump(lambda: "still alive\n" in shell.text("out"), 15, "the kernel to go on")

    def step_restart(self):
        shell = self.shell
        old_pid = self.kernel_pid()
        shell.version = None  # (as the shell's resetVariables(): set again by the new kernel's startup info)
        shell._ctrl_broker.send("RESTART\n" + ssdf.saves(self.info))
        self.pump(
            lambda: shell.version and shell.state == "Ready" and self.kernel_pid() not in (0, old_pid),
            40,
            "a new kernel",
        )
        new_pid = self.kernel_pid()
        self.pump(lambda: not _alive(old_pid), 10, "the old kernel process to be gone")
        self.kernel_pids.append(new_pid)
        shell.execute_command("import os; print('pid', os.getpid())\n")
        self.pump(lambda: "pid %d\n" % new_pid in shell.text("out"), 15, "the new kernel to answer")
        return {"old": old_pid, "new": new_pid}

    def step_terminate(self):
        shell = self.shell
        pid = self.kernel_pid()
        shell._ctrl_broker.send("TERM")
        self.pump(
            lambda: shell._stat_interpreter.recv() == "Dead" and "terminated" in shell.text("broker"),
            20,
            "the broker to report the kernel terminated",
        )
        self.pump(lambda: not _alive(pid), 10, "the kernel process to be gone")
        shell.close()
        self.pump(lambda: not self.manager._kernels, 10, "the broker to clean itself up")
        return {"broker": shell.text("broker").strip()}


def _alive(pid):
    if not pid:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False  # a zombie has exited
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main():
    session = None
    ok = True
    try:
        session = Session()
        for step in CONFIG["steps"]:
            t0 = time.monotonic()
            if not ok:
                print(json.dumps({"step": step, "ok": False, "detail": "skipped after a failed step"}), flush=True)
                continue
            try:
                detail = getattr(session, "step_" + step)()
                result = {"step": step, "ok": True, "detail": detail}
            except Exception as exc:
                ok = False
                text = "%s: %s" % (type(exc).__name__, exc)
                if not isinstance(exc, StepFailed):
                    text += "\n" + traceback.format_exc()
                result = {"step": step, "ok": False, "detail": text}
            result["seconds"] = round(time.monotonic() - t0, 2)
            print(json.dumps(result), flush=True)
    finally:
        transcript = session.shell.transcript if session else []
        print(json.dumps({"transcript": transcript, "yoton": yoton.__file__}), flush=True)
        if session is not None:
            for pid in session.kernel_pids:  # never leave a kernel behind
                if _alive(pid):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
            for broker in list(session.manager._kernels):
                process = broker._process
                if hasattr(process, "kill") and process.poll() is None:
                    process.kill()


if __name__ == "__main__":
    main()
