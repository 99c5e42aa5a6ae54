"""Start a colo-xdp process (or any process the lab supervises), wait until
it is ready, and stop it: one helper for the demos, the tools and the tests.

The command is the ``colo-xdp`` script installed next to this Python, else
the same CLI through ``python -m colo_xdp.cli``; a prefix runs it elsewhere
(``ip netns exec NS``, ``taskset -c N``).  Its stderr (and stdout, if asked
with ``stdout=subprocess.STDOUT``) is read on a thread into ``lines``, so
waits never block the process on a full pipe::

    with SupervisedProcess(["compare", "--primary-in", ...],
                           prefix=["ip", "netns", "exec", "cxh-host"]) as svc:
        svc.wait_ready()                      # the "colo-xdp: ready" line
        svc.wait_for(r"connected role=outdev ")
    # stopped: SIGTERM, then SIGKILL after STOP_GRACE_S

Stopping sends SIGTERM once (a second one might land while the service's
Python is exiting), SIGKILL after the grace, and SIGKILL at once on Ctrl-C.
A process that exits or does not get ready in time raises ``ProcessError``
with the tail of its log.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from colo_xdp.errors import LabError

READY_TIMEOUT_S = 10.0   # for colo-xdp to bind its sockets (or attach XDP) and log "ready"
STOP_GRACE_S = 5.0       # SIGTERM to SIGKILL (the service drains for up to 2 s)
READY_LINE = r"(^|\s)ready$"    # "colo-xdp: ready", also in JSON-free text logs


class ProcessError(LabError):
    """A supervised process did not start, exited, or was not ready in time."""


def colo_xdp_command() -> list[str]:
    """The ``colo-xdp`` script next to this Python, else ``python -m colo_xdp.cli``."""
    script = Path(sys.executable).with_name("colo-xdp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "colo_xdp.cli"]


class SupervisedProcess:
    """One child process in its own session; its output collected line by line.

    ``args`` follow ``command`` (default: ``colo_xdp_command()``); ``prefix``
    goes in front of both.  Started by ``start()`` or by entering ``with``.
    ``capture=False`` leaves reading ``stderr`` to the caller (the chardev
    demo reads it in the selector of its sockets, in arrival order); then
    ``lines`` stays empty and only the lifecycle is this class's.
    ``keep_lines`` bounds ``lines`` to the newest ones (a soak runs for
    hours; then ``start`` indices are not stable), and ``on_line`` sees
    every line, on the reader thread.
    """

    def __init__(self, args: Sequence[str] = (), *, command: Sequence[str] | None = None,
                 prefix: Sequence[str] = (), name: str = "colo-xdp",
                 stdout=subprocess.DEVNULL, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, capture: bool = True,
                 stdin=subprocess.DEVNULL, keep_lines: int | None = None,
                 on_line: Callable[[str], None] | None = None):
        self.argv = [*prefix, *(colo_xdp_command() if command is None else command), *args]
        self.name = name
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.terminated = False
        self.killed = False       # stop() had to SIGKILL it
        self.capture = capture
        self._keep, self._on_line = keep_lines, on_line
        self._stdin, self._stdout, self._cwd, self._env = stdin, stdout, cwd, env
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "SupervisedProcess":
        try:
            merged = self._stdout is subprocess.STDOUT      # one stream, captured
            self.proc = subprocess.Popen(self.argv, stdin=self._stdin,
                                         stdout=subprocess.PIPE if merged else self._stdout,
                                         stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                                         cwd=self._cwd, env=self._env,
                                         start_new_session=True)
        except OSError as exc:
            raise ProcessError(f"cannot start {self.argv[0]}: {exc.strerror}") from None
        if self.capture:
            self._reader = threading.Thread(target=self._read, daemon=True,
                                            name=f"{self.name}-stderr")
            self._reader.start()
        return self

    def __enter__(self) -> "SupervisedProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read(self) -> None:
        for raw in self._output():
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                if self._keep is not None and len(self.lines) > self._keep:
                    del self.lines[0]
                self._cond.notify_all()
            if self._on_line is not None:
                self._on_line(line)
        with self._cond:
            self._cond.notify_all()

    # -- the process ------------------------------------------------------------------

    @property
    def stdin(self):
        """The pipe to its stdin, when started with ``stdin=subprocess.PIPE``."""
        return self.proc.stdin

    @property
    def stdout(self):
        """The pipe of its stdout, when started with ``stdout=subprocess.PIPE``."""
        return self.proc.stdout

    @property
    def stderr(self):
        """The pipe of its stderr, for a caller that reads it (``capture=False``)."""
        return self.proc.stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once the process has exited and its output is read."""
        rc = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return rc

    def send_signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM, once."""
        if self.alive() and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def kill(self, drain: float = STOP_GRACE_S) -> int | None:
        """SIGKILL to its session; then the output is read to its end.  The exit status."""
        if self.proc is None:
            return None
        if self.alive():
            try:                      # its session: anything it forked goes too
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        self._drain(drain)
        return self.proc.returncode

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, SIGKILL after ``grace`` (``killed`` says so) or at once on
        Ctrl-C; then the output is read to its end.  The exit status."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.killed = True
            return self.kill(grace)
        except KeyboardInterrupt:
            self.kill(0)
            raise
        self._drain(grace)
        return self.proc.returncode

    def _output(self):
        """The captured stream: stderr, or stdout with stderr merged into it."""
        return self.proc.stdout if self._stdout is subprocess.STDOUT else self.proc.stderr

    def _drain(self, timeout: float) -> None:
        """Wait for the reader to see the end of the output, then close the pipe."""
        if self._reader is not None:
            self._reader.join(timeout)
            if self._reader.is_alive():
                return
        self._output().close()

    # -- its output ---------------------------------------------------------------------

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, lines: int = 3, empty: str = "(it logged nothing)") -> str:
        """The last non-blank lines, joined for a one-line message."""
        with self._cond:
            text = [line for line in self.lines if line.strip()][-lines:]
        return " | ".join(text) or empty

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def wait_for(self, until: str | Callable[[], bool] = READY_LINE,
                 timeout: float = READY_TIMEOUT_S, *, start: int = 0,
                 what: str = "ready") -> str | None:
        """Until a line (from index ``start``) matches regex ``until``, and
        return it, or until ``until()`` holds.  ProcessError with the log's
        tail if the process exits first or ``timeout`` passes."""
        regex = re.compile(until) if isinstance(until, str) else None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if regex is not None:
                    for line in self.lines[start:]:
                        if regex.search(line):
                            return line
                elif until():
                    return None
                if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise ProcessError(f"{self.name} exited with status {self.proc.returncode}"
                                       f" before it was {what}: {self.tail(5)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProcessError(f"{self.name} was not {what} after {timeout:g} s: "
                                       f"{self.tail(5)}")
                self._cond.wait(min(left, 0.05 if regex is not None else 0.005))

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until colo-xdp logs ``ready``."""
        self.wait_for(READY_LINE, timeout)
