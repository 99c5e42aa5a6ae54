"""Drive any comparator that exposes QEMU colo-compare's four unix server sockets.

A comparator here is a process listening on ``pin.sock``, ``sin.sock``,
``out.sock`` and ``notify.sock`` in one directory: Debian's QEMU (see
``tools.qemu_ref``) or colo-xdp itself (``colo_xdp_ref`` below). The same
script runs against either, so their answers can be compared byte for byte::

    with colo_xdp_ref() as cmp, Driver(cmp) as drv:
        run = drv.run([primary(f1), secondary(f1), wait_output(1)])
    assert run.released == [f1]

The driver connects the outdev and notify_dev first (frames released while
nothing reads the outdev are lost), then both inputs, and proves the links
with the ``COLO_USERSPACE_PROXY_INIT`` handshake. QEMU reads its two inputs
independently, so the order in which it sees frames sent on different sockets
is only defined if the sends are apart in time: the driver waits
``SETTLE_MS`` between any two writes, which makes every script deterministic.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from colo_xdp.lab.pktgen import Decoder, Record, describe, encode
from colo_xdp.lab.process import READY_LINE, ProcessError, SupervisedProcess

# Gap between two writes of a script, so that QEMU sees them in script order.
# Measured with interleaved primary/secondary UDP pairs: 1 ms let about one
# pair in 300 cross over; 2 ms and more kept 2000 pairs in order with three
# busy loops on a 2-core VM. 20 ms is a tenfold margin (docs/qemu-behaviour.md).
SETTLE_MS = 20
# How long a run keeps listening after its last step for late output.
QUIET_MS = 60
# Default limit for every wait of a script.
WAIT_TIMEOUT_S = 2.0
# How long a comparator may take to bind its sockets.
STARTUP_TIMEOUT_S = 10.0
# Grace between SIGTERM and SIGKILL when stopping a comparator.
STOP_GRACE_S = 2.0

SOCKETS = ("pin", "sin", "out", "notify")

# notify_dev messages (QEMU net/colo-compare.c).
DO_CHECKPOINT = b"DO_CHECKPOINT"
COLO_CHECKPOINT = b"COLO_CHECKPOINT"
COLO_USERSPACE_PROXY_INIT = b"COLO_USERSPACE_PROXY_INIT"
COLO_COMPARE_GET_XEN_INIT = b"COLO_COMPARE_GET_XEN_INIT"

# Event channels: what we wrote, and what the comparator wrote.
PRIMARY = "primary"
SECONDARY = "secondary"
TO_NOTIFY = "to-notify"
OUT = "out"
NOTIFY = "notify"
_SENT = (PRIMARY, SECONDARY, TO_NOTIFY)
# Socket of each channel, in the order the driver connects them.
_SOCKET_OF = {OUT: "out", NOTIFY: "notify", PRIMARY: "pin", SECONDARY: "sin"}


class HarnessError(RuntimeError):
    """A comparator that did not start, or a script that did not complete."""


# --- comparators -------------------------------------------------------------

@dataclass(frozen=True)
class CompareOptions:
    """colo-compare properties shared by QEMU and colo-xdp; None keeps the default."""

    vnet_hdr_support: bool = False
    compare_timeout: int | None = None      # ms
    expired_scan_cycle: int | None = None   # ms
    max_queue_size: int | None = None

    def _numbers(self) -> list[tuple[str, int]]:
        """The numeric options that are set, by QEMU property name."""
        pairs = [("compare_timeout", self.compare_timeout),
                 ("expired_scan_cycle", self.expired_scan_cycle),
                 ("max_queue_size", self.max_queue_size)]
        return [(name, value) for name, value in pairs if value is not None]

    def qemu_properties(self) -> str:
        """The options as ``,name=value`` suffixes of ``-object colo-compare``."""
        props = [f",{name}={value}" for name, value in self._numbers()]
        if self.vnet_hdr_support:
            props.append(",vnet_hdr_support=on")
        return "".join(props)

    def cli_args(self) -> list[str]:
        """The options as ``colo-xdp compare`` arguments."""
        args = ["--vnet-hdr-support"] if self.vnet_hdr_support else []
        for name, value in self._numbers():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args


@dataclass
class Comparator:
    """A running comparator: its process, socket directory and options."""

    name: str
    directory: Path
    options: CompareOptions
    process: SupervisedProcess

    def socket_path(self, which: str) -> Path:
        """Path of one of the four sockets: ``pin``, ``sin``, ``out``, ``notify``."""
        return self.directory / f"{which}.sock"

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.process.log


ArgvFor = Callable[[Path], list[str]]
ReadyCheck = Callable[[Comparator], bool]


def sockets_exist(comparator: Comparator) -> bool:
    """Ready check: all four socket files are there."""
    return all(comparator.socket_path(name).exists() for name in SOCKETS)


def logged_ready(comparator: Comparator) -> bool:
    """Ready check for colo-xdp: a log line says ``ready`` (``colo-xdp: ready``)."""
    return any(re.search(READY_LINE, line) for line in comparator.log().splitlines())


@contextlib.contextmanager
def supervised(name: str, argv_for: ArgvFor, options: CompareOptions,
               ready: ReadyCheck, cpus: str | None = None,
               timeout: float = STARTUP_TIMEOUT_S) -> Iterator[Comparator]:
    """Run ``argv_for(tmpdir)`` until the block ends; always stop it and remove tmpdir.

    ``cpus`` pins the process with ``taskset -c``. The block starts once
    ``ready`` holds; a process that exits or never gets ready raises
    HarnessError with the tail of its log.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        process = SupervisedProcess(
            command=argv_for(directory), name=name, cwd=directory,
            prefix=["taskset", "-c", cpus] if cpus is not None else [],
            stdout=subprocess.STDOUT)           # stdout and stderr, one log
        try:
            try:
                process.start()
                comparator = Comparator(name, directory, options, process)
                process.wait_for(lambda: ready(comparator), timeout)
            except ProcessError as exc:
                raise HarnessError(str(exc)) from None
            yield comparator
        finally:
            process.stop(STOP_GRACE_S)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _tail(text: str, lines: int = 5) -> str:
    """The last few lines of a log, joined for a one-line message."""
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def default_colo_xdp_exe() -> Path | None:
    """``.venv/bin/colo-xdp`` in the repository root, else ``colo-xdp`` on PATH."""
    local = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "colo-xdp"
    if local.exists():
        return local
    found = shutil.which("colo-xdp")
    return Path(found) if found else None


def colo_xdp_argv(exe: Path, options: CompareOptions, extra: tuple[str, ...] = ()) -> ArgvFor:
    """The ``colo-xdp compare`` command line for a socket directory (``extra``:
    colo-xdp's own options, after the shared ones)."""
    def argv_for(directory: Path) -> list[str]:
        def server(which: str) -> str:
            return f"unix:{directory / which}.sock,server=on"
        return [str(exe), "compare",
                "--primary-in", server("pin"), "--secondary-in", server("sin"),
                "--outdev", server("out"), "--notify-dev", server("notify"),
                *options.cli_args(), *extra]
    return argv_for


def colo_xdp_ref(exe: str | Path | None = None,
                 options: CompareOptions = CompareOptions(),
                 cpus: str | None = None,
                 extra: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Comparator]:
    """Run colo-xdp with the same four server sockets as ``qemu_ref``.

    ``exe`` defaults to ``default_colo_xdp_exe()``. Ready once it logs ``ready``.
    """
    exe = Path(exe) if exe is not None else default_colo_xdp_exe()
    if exe is None or not exe.exists():
        raise HarnessError(f"colo-xdp executable {exe or 'colo-xdp'} not found: "
                           "install the project into .venv first.")
    return supervised("colo-xdp", colo_xdp_argv(exe, options, extra), options,
                      lambda c: logged_ready(c) and sockets_exist(c), cpus)


# --- what a run records ------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One record on one channel; ``t`` in seconds since the driver was ready."""

    t: float
    channel: str
    record: Record


@dataclass
class Run:
    """Everything a script sent and received, in the order the driver saw it."""

    events: list[Event] = field(default_factory=list)

    def on(self, channel: str) -> list[Event]:
        """The events of one channel."""
        return [e for e in self.events if e.channel == channel]

    @property
    def released(self) -> list[bytes]:
        """Frames that came out of the outdev, in order (vnet header included)."""
        return [e.record.frame for e in self.on(OUT)]

    @property
    def notifications(self) -> list[bytes]:
        """Messages the comparator wrote on notify_dev, in order."""
        return [e.record.frame for e in self.on(NOTIFY)]

    @property
    def do_checkpoints(self) -> int:
        """How many ``DO_CHECKPOINT`` requests arrived."""
        return self.notifications.count(DO_CHECKPOINT)

    def checkpoint_times(self) -> list[float]:
        """Arrival time of each ``DO_CHECKPOINT``."""
        return [e.t for e in self.on(NOTIFY) if e.record.frame == DO_CHECKPOINT]

    def after_each_write(self) -> list[tuple[str, int, int]]:
        """Per write: (channel, frames released, DO_CHECKPOINTs) until the next write."""
        rows: list[list] = []
        for e in self.events:
            if e.channel in _SENT:
                rows.append([e.channel, 0, 0])
            elif rows and e.channel == OUT:
                rows[-1][1] += 1
            elif rows and e.record.frame == DO_CHECKPOINT:
                rows[-1][2] += 1
        return [tuple(row) for row in rows]

    def summary(self) -> str:
        """The timeline as text, one event per line, for assertion messages."""
        lines = []
        for e in self.events:
            what = (e.record.frame.decode(errors="replace")
                    if e.channel in (NOTIFY, TO_NOTIFY)
                    else describe(e.record.frame, e.record.vnet_hdr_len))
            lines.append(f"{e.t * 1000:8.1f} ms {e.channel:>9}  {what}")
        return "\n".join(lines)


# --- script steps ------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """Step: write a frame (vnet header included) to the primary or secondary input."""

    channel: str
    frame: bytes
    vnet_hdr_len: int = 0

    def apply(self, driver: Driver) -> None:
        driver.send(self.channel, self.frame, self.vnet_hdr_len)


@dataclass(frozen=True)
class Sleep:
    """Step: wait ``ms`` milliseconds."""

    ms: float

    def apply(self, driver: Driver) -> None:
        time.sleep(self.ms / 1000)


@dataclass(frozen=True)
class Notify:
    """Step: write a message to notify_dev, e.g. ``COLO_CHECKPOINT``."""

    message: bytes

    def apply(self, driver: Driver) -> None:
        driver.notify(self.message)


@dataclass(frozen=True)
class WaitFor:
    """Step: wait until ``count`` records (equal to ``match``) arrived on ``channel``."""

    channel: str
    count: int
    match: bytes | None = None
    timeout: float = WAIT_TIMEOUT_S

    def apply(self, driver: Driver) -> None:
        if not driver.wait_for(self.channel, self.count, self.match, self.timeout):
            what = (self.match or b"records").decode()
            raise HarnessError(f"waited {self.timeout} s for {self.count} {what} on "
                               f"{self.channel} of {driver.comparator.name}, got "
                               f"{driver.count(self.channel, self.match)}:\n"
                               f"{driver.snapshot().summary()}")


def primary(frame: bytes, vnet_hdr_len: int = 0) -> Send:
    """Step: send ``frame`` on the primary input."""
    return Send(PRIMARY, frame, vnet_hdr_len)


def secondary(frame: bytes, vnet_hdr_len: int = 0) -> Send:
    """Step: send ``frame`` on the secondary input."""
    return Send(SECONDARY, frame, vnet_hdr_len)


def checkpoint() -> Notify:
    """Step: tell the comparator a checkpoint happened (it flushes its queues)."""
    return Notify(COLO_CHECKPOINT)


def wait_output(count: int, timeout: float = WAIT_TIMEOUT_S) -> WaitFor:
    """Step: wait until ``count`` frames were released in total."""
    return WaitFor(OUT, count, None, timeout)


def wait_checkpoints(count: int, timeout: float = WAIT_TIMEOUT_S) -> WaitFor:
    """Step: wait until ``count`` DO_CHECKPOINT requests arrived in total."""
    return WaitFor(NOTIFY, count, DO_CHECKPOINT, timeout)


Step = Send | Sleep | Notify | WaitFor


# --- the driver --------------------------------------------------------------

def connect_unix(path: Path, timeout: float = STARTUP_TIMEOUT_S) -> socket.socket:
    """A connected unix stream socket; retries while the listener comes up."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise HarnessError(f"nothing listens on {path}") from None
            time.sleep(0.005)


class Driver:
    """Client of a comparator's four sockets: writes script steps, records replies.

    One thread reads the outdev and notify_dev and appends to the event list;
    the caller's thread writes. Use as a context manager.
    """

    def __init__(self, comparator: Comparator, settle_ms: float = SETTLE_MS,
                 handshake: bool = True):
        self.comparator = comparator
        self.vnet = comparator.options.vnet_hdr_support
        self.settle_ms = settle_ms
        self._handshake = handshake
        self._socks: dict[str, socket.socket] = {}
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._reader_error: BaseException | None = None
        self._t0 = time.monotonic()
        self._last_write = 0.0

    # lifecycle

    def __enter__(self) -> Driver:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Connect outdev and notify, then the inputs; prove the links with INIT."""
        for channel, name in _SOCKET_OF.items():
            self._socks[channel] = connect_unix(self.comparator.socket_path(name))
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"harness-{self.comparator.name}")
        self._reader.start()
        if self._handshake and not self.handshake():
            raise HarnessError(f"{self.comparator.name} did not answer "
                               f"{COLO_USERSPACE_PROXY_INIT.decode()} on notify_dev: "
                               f"{_tail(self.comparator.log())}")
        time.sleep(self.settle_ms / 1000)
        self.reset()

    def close(self) -> None:
        """Stop the reader and close all four connections."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def reconnect(self, channel: str) -> None:
        """Close the PRIMARY or SECONDARY connection and connect it again."""
        if channel not in (PRIMARY, SECONDARY):
            raise HarnessError(f"only the inputs can be reconnected, not {channel}")
        self._socks[channel].close()
        self._socks[channel] = connect_unix(
            self.comparator.socket_path(_SOCKET_OF[channel]))

    # writing

    def _settle(self) -> None:
        """Wait until ``settle_ms`` passed since the previous write."""
        gap = self._last_write + self.settle_ms / 1000 - time.monotonic()
        if gap > 0:
            time.sleep(gap)

    def _write(self, channel: str, sock_channel: str, payload: bytes,
               vnet_hdr_len: int | None) -> None:
        """Settle, log the write as an event, then send one framed record."""
        self._settle()
        self._append(channel, Record(vnet_hdr_len or 0, payload))
        try:
            self._socks[sock_channel].sendall(encode(payload, vnet_hdr_len))
        except OSError as err:
            raise HarnessError(f"{self.comparator.name} closed its {sock_channel} socket "
                               f"({err.strerror}): {_tail(self.comparator.log())}") from err
        self._last_write = time.monotonic()

    def send(self, channel: str, frame: bytes, vnet_hdr_len: int = 0) -> None:
        """Send ``frame`` on PRIMARY or SECONDARY; ``vnet_hdr_len`` needs vnet on."""
        if vnet_hdr_len and not self.vnet:
            raise HarnessError("a vnet header needs CompareOptions(vnet_hdr_support=True)")
        self._write(channel, channel, frame, vnet_hdr_len if self.vnet else None)

    def notify(self, message: bytes) -> None:
        """Send a notify_dev message (with the 0 vnet field when vnet is on)."""
        self._write(TO_NOTIFY, NOTIFY, message, 0 if self.vnet else None)

    def handshake(self, timeout: float = WAIT_TIMEOUT_S) -> bool:
        """Send COLO_USERSPACE_PROXY_INIT; True once COLO_COMPARE_GET_XEN_INIT came back."""
        seen = self.count(NOTIFY, COLO_COMPARE_GET_XEN_INIT)
        self.notify(COLO_USERSPACE_PROXY_INIT)
        return self.wait_for(NOTIFY, seen + 1, COLO_COMPARE_GET_XEN_INIT, timeout)

    # reading

    def _read_loop(self) -> None:
        """Reader thread: decode outdev and notify_dev records into events until stopped."""
        decoders = {OUT: Decoder(self.vnet), NOTIFY: Decoder(vnet=False)}
        with selectors.DefaultSelector() as sel:
            for channel in decoders:
                sel.register(self._socks[channel], selectors.EVENT_READ, channel)
            try:
                while not self._stop.is_set() and sel.get_map():
                    for key, _ in sel.select(timeout=0.02):
                        self._read_one(sel, key, decoders[key.data])
            except BaseException as err:  # surfaced to the caller by wait_for
                self._reader_error = err
                with self._cond:
                    self._cond.notify_all()

    def _read_one(self, sel: selectors.BaseSelector, key: selectors.SelectorKey,
                  decoder: Decoder) -> None:
        """Read what one socket has and record each whole record; stop at its end."""
        try:
            data = key.fileobj.recv(1 << 16)
        except ConnectionError:  # the comparator went away, as at EOF
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            return
        for record in decoder.feed(data):
            self._append(key.data, record)

    def _append(self, channel: str, record: Record) -> None:
        """Add one event and wake waiters."""
        with self._cond:
            self._events.append(Event(time.monotonic() - self._t0, channel, record))
            self._cond.notify_all()

    def count(self, channel: str, match: bytes | None = None) -> int:
        """How many records arrived on ``channel`` (equal to ``match`` if given)."""
        with self._cond:
            return sum(1 for e in self._events if e.channel == channel
                       and (match is None or e.record.frame == match))

    def wait_for(self, channel: str, count: int, match: bytes | None = None,
                 timeout: float = WAIT_TIMEOUT_S) -> bool:
        """Wait until ``count`` matching records arrived in total; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count(channel, match) < count:
                if self._reader_error is not None:
                    raise HarnessError(f"reading {self.comparator.name} failed: "
                                       f"{self._reader_error}") from self._reader_error
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def snapshot(self) -> Run:
        """What was recorded so far."""
        with self._cond:
            return Run(list(self._events))

    def reset(self) -> None:
        """Forget the events recorded so far; counts and times start again from 0."""
        with self._cond:
            self._events.clear()
            self._t0 = time.monotonic()

    # scripts

    def run(self, steps: Sequence[Step], quiet_ms: float = QUIET_MS) -> Run:
        """Apply ``steps`` in order, listen ``quiet_ms`` more, return the recording."""
        for step in steps:
            step.apply(self)
        time.sleep(quiet_ms / 1000)
        return self.snapshot()


def run_script(comparator: Comparator, steps: Sequence[Step],
               quiet_ms: float = QUIET_MS, settle_ms: float = SETTLE_MS) -> Run:
    """Open a driver on ``comparator``, run ``steps``, close it, return the recording."""
    with Driver(comparator, settle_ms) as driver:
        return driver.run(steps, quiet_ms)
