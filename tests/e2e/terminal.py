"""A client run in a pseudo-terminal, for the clients that sign in only where there is one.

Claude Code's `mcp login` insists on a terminal; Gemini CLI signs in to a server only from its
interactive screen (`/mcp auth NAME`). A `Terminal` starts the client with a pty as its stdin,
stdout and stderr, keeps what it printed (escape sequences and all; `screen` strips them), sends
keys to it, and waits, within a deadline, for a text to be shown.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from types import TracebackType

MAX_OUTPUT = 1 << 20  # bytes kept of a client's terminal output
_ESCAPES = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path, term: str = "xterm", size: tuple[int, int] | None = None
    ) -> None:
        primary, secondary = pty.openpty()
        if size is not None:  # rows, columns: room for a full-screen layout, and fewer wrapped links
            fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        self._proc = subprocess.Popen(argv, env={**env, "TERM": term}, cwd=cwd, stdin=secondary, stdout=secondary,
                                      stderr=secondary, close_fds=True)  # fmt: skip
        os.close(secondary)
        self._primary = primary
        self._output = b""
        self.closed = False  # the client's side of the terminal is gone

    @property
    def output(self) -> str:
        return self._output.decode(errors="replace")

    @property
    def screen(self) -> str:
        """What was printed, without escape sequences."""
        return _ESCAPES.sub("", self.output)

    def read(self, seconds: float) -> None:
        """Whatever arrives within `seconds` (less when the client closes its side)."""
        deadline = time.monotonic() + seconds
        while not self.closed and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._primary], [], [], min(left, 0.2))
            if not ready:
                if self._proc.poll() is not None:
                    self.closed = True
                continue
            try:
                chunk = os.read(self._primary, 65536)
            except OSError:  # EIO: the terminal's other side closed
                chunk = b""
            if not chunk:
                self.closed = True
            self._output = (self._output + chunk)[-MAX_OUTPUT:]

    def wait_for(self, text: str, seconds: float, since: int = 0) -> bool:
        """Whether `text` is on the screen (from character `since` on) within `seconds`."""
        return self.wait_for_match(re.escape(text), seconds, since) is not None

    def wait_for_match(self, pattern: str, seconds: float, since: int = 0) -> re.Match[str] | None:
        """The first match of `pattern` on the screen (from character `since` on) within `seconds`,
        or None. Positions count in all that was kept (the last MAX_OUTPUT bytes)."""
        deadline = time.monotonic() + seconds
        while (found := re.search(pattern, self.screen[since:])) is None:
            if self.closed or time.monotonic() >= deadline:
                return None
            self.read(0.2)
        return found

    def send(self, keys: str) -> None:
        os.write(self._primary, keys.encode())

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._primary)
