"""FileWrapper: a text file object over a channel, to stand in for sys.stdout / sys.stdin.

Over a PubChannel it is a writable file: each ``write`` is a message (with a
``chunksize``, long text is split into messages of at most that many
characters). Over a SubChannel it is a readable file, message by message as
in yoton 2.2: ``readline`` returns the next message (with a newline appended
if it has none), ``read`` the next message if there is one. So ``input()``
works, with one message per answer: a kernel's stdin. The optional ``echo``
PubChannel gets each message read, so the other end can show what the
program took as input (pyzo's shell does).
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Iterable, NoReturn

from ..channels import PubChannel, SubChannel

__all__ = ["FileWrapper"]


class FileWrapper:
    """A file-like object that writes to a PubChannel or reads from a SubChannel.

    ``chunksize`` (> 0) splits long writes into messages of at most that many
    characters. ``echo``, a PubChannel, is sent every message read (yoton
    2.2); anything else raises ValueError. ``isatty`` is what :meth:`isatty`
    reports. In a child made by ``os.fork()``, where the channel's context
    does not run, writing to the wrapper that is ``sys.stdout`` or
    ``sys.stderr`` goes to the real ``sys.__stdout__`` / ``sys.__stderr__``.
    """

    errors = "strict"  #: what a text file reports; text is always valid UTF-8 here

    def __init__(
        self, channel: PubChannel | SubChannel, chunksize: int = 0, echo: PubChannel | None = None, isatty: bool = False
    ) -> None:
        if not isinstance(channel, (PubChannel, SubChannel)):
            raise ValueError(f"FileWrapper needs a PubChannel or SubChannel, not {type(channel).__name__}")
        if echo is not None and not isinstance(echo, PubChannel):
            raise ValueError(f"FileWrapper echo must be a PubChannel (it gets what is read), not {type(echo).__name__}")
        self._channel = channel
        self._chunksize = int(chunksize)
        self._echo = echo
        self._isatty = bool(isatty)
        self._softspace = False
        self._closed = False
        self._pid = os.getpid()

    # -- file attributes ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the file (or its channel) is closed."""
        return self._closed or self._channel.closed

    @property
    def encoding(self) -> str:
        """Always 'UTF-8': text travels UTF-8 encoded."""
        return "UTF-8"

    @property
    def newlines(self) -> None:
        """None: newlines are passed through untranslated."""
        return None

    @property
    def softspace(self) -> bool:
        """A flag old print code sets and reads (False until set)."""
        return self._softspace

    @softspace.setter
    def softspace(self, value: object) -> None:
        self._softspace = bool(value)

    def isatty(self) -> bool:
        """Return the ``isatty`` value given at construction."""
        return self._isatty

    def fileno(self) -> NoReturn:
        """Raise ``io.UnsupportedOperation`` (an OSError): there is no OS-level file behind a channel."""
        raise io.UnsupportedOperation("a FileWrapper has no file descriptor")

    def _real_file(self) -> IO[str] | None:
        """In a forked child: the real stream this wrapper stands for (None if it is neither)."""
        if self is sys.stdout:
            return sys.__stdout__
        if self is sys.stderr:
            return sys.__stderr__
        return None

    def close(self) -> None:
        """Close the file and its channel (in a forked child: the real stream it stands for)."""
        if os.getpid() != self._pid:
            real = self._real_file() if self is not sys.stdin else sys.__stdin__
            if real is not None:
                real.close()
            return
        self._closed = True
        self._channel.close()

    # -- writing ----------------------------------------------------------------

    def write(self, message: str) -> int:
        """Send ``message`` (str) over the channel; return its length."""
        if not isinstance(self._channel, PubChannel):
            raise OSError("this FileWrapper is not writable (it wraps a SubChannel)")
        if not isinstance(message, str):
            raise TypeError(f"write() argument must be str, not {type(message).__name__}")
        if os.getpid() != self._pid:  # a forked child: the context's threads are not here
            real = self._real_file()
            if real is not None:
                real.write(message)
                real.flush()
            return len(message)
        if self.closed:
            raise ValueError("write to closed FileWrapper")
        size = self._chunksize
        if 0 < size < len(message):
            for i in range(0, len(message), size):
                self._channel.send(message[i : i + size])
        else:
            self._channel.send(message)
        return len(message)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each string of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was written has gone out to the network (``Context.flush``).

        Raises :class:`~yoton.errors.FlushTimeout` after ``timeout`` seconds.
        """
        if os.getpid() != self._pid:
            real = self._real_file()
            if real is not None:
                real.flush()
            return
        self._channel.context.flush(timeout)

    # -- reading ----------------------------------------------------------------

    def _next_message(self, block: bool | float | None) -> str:
        if not isinstance(self._channel, SubChannel):
            raise OSError("this FileWrapper is not readable (it wraps a PubChannel)")
        message = self._channel.recv(block)
        if message and self._echo is not None:
            self._echo.send(message)
        return message

    def read(self, block: bool | float | None = None) -> str:
        """Return the next message, or '' if none. ``block``: None or False returns at once,
        True waits for one, a number waits at most that many seconds."""
        return self._next_message(block)

    def readline(self, size: int | None = 0) -> str:
        """Wait for the next message and return it, with a newline appended if it has none.

        With ``size`` > 0 at most that many characters are returned (the rest
        of the message is dropped, as in yoton 2.2). Returns '' once the
        channel is closed and drained (end of file).
        """
        line = self._next_message(True)
        if not line:
            return ""
        if not line.endswith("\n"):
            line += "\n"
        return line[:size] if size and size > 0 else line
