"""FileWrapper: a text file object over a channel, to stand in for sys.stdout / sys.stdin.

Over a PubChannel it is a writable file (each ``write`` is a message; with a
``chunksize`` long text is split into messages of at most that many
characters). Over a SubChannel it is a readable file (``read`` returns what
has arrived, ``readline`` waits for a full line), so ``input()`` works.
"""

from __future__ import annotations

from ..channels import PubChannel, SubChannel

__all__ = ["FileWrapper"]


class FileWrapper:
    """A file-like object that writes to a PubChannel or reads from a SubChannel.

    ``echo`` is an optional file that also gets everything written (e.g. the
    original ``sys.stdout``); ``isatty`` is what :meth:`isatty` reports.
    """

    def __init__(self, channel, chunksize=0, echo=None, isatty=False):
        if not isinstance(channel, (PubChannel, SubChannel)):
            raise ValueError(f"FileWrapper needs a PubChannel or SubChannel, not {type(channel).__name__}")
        self._channel = channel
        self._chunksize = int(chunksize)
        self._echo = echo
        self._isatty = bool(isatty)
        self._buffer = ""
        self._closed = False

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
    def newlines(self):
        """None: newlines are passed through untranslated."""
        return None

    @property
    def softspace(self) -> int:
        """Always 0 (an attribute old print code may look for)."""
        return 0

    def isatty(self) -> bool:
        """Return the ``isatty`` value given at construction."""
        return self._isatty

    def fileno(self):
        """Raise OSError: there is no OS-level file behind a channel."""
        raise OSError("a FileWrapper has no file descriptor")

    def close(self) -> None:
        """Close the file and its channel."""
        self._closed = True
        self._channel.close()

    # -- writing ----------------------------------------------------------------

    def write(self, message) -> int:
        """Send ``message`` (str) over the channel; return its length."""
        if not isinstance(self._channel, PubChannel):
            raise OSError("this FileWrapper is not writable (it wraps a SubChannel)")
        if self.closed:
            raise ValueError("write to closed FileWrapper")
        if not isinstance(message, str):
            raise TypeError(f"write() argument must be str, not {type(message).__name__}")
        if self._echo is not None:
            self._echo.write(message)
        size = self._chunksize
        if size > 0:
            for i in range(0, len(message), size):
                self._channel.send(message[i:i + size])
        else:
            self._channel.send(message)
        return len(message)

    def writelines(self, lines) -> None:
        """Write each string of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush the echo file, if any (messages are queued for sending at once anyway)."""
        if self._echo is not None:
            self._echo.flush()

    # -- reading ----------------------------------------------------------------

    def _check_readable(self) -> None:
        if not isinstance(self._channel, SubChannel):
            raise OSError("this FileWrapper is not readable (it wraps a PubChannel)")

    def read(self, block=None) -> str:
        """Return what has arrived. ``block``: None or False returns at once, True waits
        for at least one message, a number waits at most that many seconds."""
        self._check_readable()
        text, self._buffer = self._buffer, ""
        if not text and block:
            text = self._channel.recv(block)
        return text + "".join(self._channel.recv_all())

    def readline(self, size=0) -> str:
        """Wait for and return one line (with its newline); with ``size`` > 0 at most
        that many characters. Returns '' once the channel is closed and drained."""
        self._check_readable()
        while True:
            end = self._buffer.find("\n")
            if end >= 0 and (size <= 0 or end < size):
                line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
                return line
            if size > 0 and len(self._buffer) >= size:
                line, self._buffer = self._buffer[:size], self._buffer[size:]
                return line
            more = self._channel.recv(True)
            if not more:  # channel closed
                line, self._buffer = self._buffer, ""
                return line
            self._buffer += more
