"""Structured log events with stable names, rate-limited per name.

Every event has a stable name and machine-readable fields.  In the text
format (the default) a line is ``colo-xdp: EVENT key=value ...``; in the JSON
format (``--log-format json``) it is one object per line::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "info", "event": "checkpoint_requested",
     "reason": "mismatch", "conn": "udp 10.0.0.1:1000 > 10.0.0.2:2000"}

An event that fires in a storm (a checkpoint request per arriving frame, say)
is logged at most ``burst`` times a second; the next line of that name says
how many were suppressed, or, if none comes, an ``events_suppressed`` line
from ``tick`` (the service calls it every loop turn and at exit).  Counters,
not logs, are the exact record.

A ``tap`` sees every event before rate limiting and level filtering: the
control socket's ``subscribe`` stream is fed from it, so log lines and
subscribed events share one vocabulary (docs/observability.md lists it).
"""
from __future__ import annotations

import enum
import errno
import json
import logging
import os
import sys
import time
from typing import Callable

from colo_xdp.errors import ConfigError

logger = logging.getLogger("colo_xdp")

LOG_FORMATS = ("text", "json")

# Every event name the service logs or streams to subscribers.  Names are
# stable: tools and alerts key on them.  tests/unit/test_log.py checks that
# the source uses no other.
EVENT_NAMES = (
    "started", "ready", "stopped",
    "connected", "disconnected", "connect_failed", "accept_failed", "stream_broken",
    "checkpoint_requested", "checkpoint_done", "failover",
    "connection_opened", "connection_evicted", "frame_dropped",
    "backpressure", "flow_forced", "outdev_cut", "undelivered_at_exit",
    "notify_init", "notify_unknown_message",
    "qmp_connected", "qmp_colo_active", "qmp_waiting_for_colo", "qmp_no_colo",
    "qmp_protocol_error", "qmp_checkpoint_retry", "qmp_checkpoint_failed", "qmp_vm_stopped",
    "checkpoint_stop_late",
    "passthrough_changed", "control_refused", "control_error", "miscompare_pcap_failed",
    "miscompare_pcap_rotated",
    "xdp_attached", "xdp_detached", "xdp_rx_failed", "xdp_tx_unsent", "xdp_queues_changed", "xdp_iface_gone", "xdp_attach_failed",
    "xdp_kernel_dropped", "events_suppressed",
    "status", "log_reopened", "reopen_failed",
)

Tap = Callable[[str, dict], None]


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("colo-xdp: %(message)s")


class PerSide(tuple):
    """(primary, secondary): ``3/2`` in text, ``{"primary": 3, "secondary": 2}``
    in JSON (numbers stay numbers)."""

    def __new__(cls, primary, secondary):
        return super().__new__(cls, (primary, secondary))

    def __str__(self) -> str:
        return f"{self[0]}/{self[1]}"


def json_value(value):
    """A field value as JSON has it: numbers, booleans and None stay, enums
    by lower-case name, a PerSide as an object of two numbers, everything
    else (ConnKey, Spec, ...) as its text."""
    if isinstance(value, PerSide):
        return {"primary": value[0], "secondary": value[1]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return str(value)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC), level, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": _stamp(record), "level": record.levelname.lower()}
        name = getattr(record, "cx_event", None)
        if name is None:
            obj["event"] = "message"
            obj["message"] = record.getMessage()
        else:
            obj["event"] = name
            for key, value in record.cx_fields.items():
                obj[key] = json_value(value)
        return json.dumps(obj, separators=(",", ":"))


_format_in_use = "text"
_handlers: list[logging.Handler] = []

# syslog priorities (sd-daemon(3)): journald reads a "<N>" line prefix as the level.
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                   logging.CRITICAL: 2}
LOG_FILE_MODE = 0o640


def _stamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


class StampedTextFormatter(TextFormatter):
    """``2026-01-02T03:04:05.678Z warning colo-xdp: EVENT key=value``: log
    files, and stderr with --log-timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{_stamp(record)} {record.levelname.lower()} {super().format(record)}"


class JournalFormatter(logging.Formatter):
    """Under journald (stderr is $JOURNAL_STREAM): ``<4>colo-xdp: ...``, so a
    warning is a warning in ``journalctl -p``; journald adds the time."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{self.inner.format(record)}"


def stderr_is_journal(environ=None, stream=None) -> bool:
    """systemd sets JOURNAL_STREAM=DEV:INODE when stderr goes to journald."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class _QuietHandler:
    """A log line that cannot be written (full disk, closed stderr) is counted,
    never a traceback on stderr, never an exception into the service."""

    errors = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.errors += 1


class StderrHandler(_QuietHandler, logging.StreamHandler):
    pass


class LogFile(_QuietHandler, logging.FileHandler):
    """``--log-file FILE``: appended to, created 0640, never through a symbolic
    link, reopened by ``reopen()`` (SIGHUP, after logrotate moved it)."""

    def __init__(self, path: str):
        super().__init__(path, mode="a", encoding="utf-8", delay=False)

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        return os.fdopen(fd, "a", encoding="utf-8")

    def reopen(self) -> None:
        """Open the path anew; if that fails (raises OSError), logging goes
        on into the file already open."""
        self.acquire()
        try:
            new = self._open()
            old, self.stream = self.stream, new
            if old is not None:
                try:
                    old.close()
                except OSError:
                    pass
        finally:
            self.release()


def setup(verbose: bool = False, fmt: str = "text", log_file: str | None = None,
          timestamps: bool = False) -> None:
    """Log to stderr (or ``log_file``) in ``fmt`` ("text" or "json").

    Text lines on stderr are ``colo-xdp: EVENT ...`` (with ``timestamps``
    prefixed by the time and level; under journald by a syslog priority);
    a log file always has time and level.  Raises OSError if the file
    cannot be opened."""
    global _format_in_use
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    _format_in_use = fmt
    if log_file:
        if os.path.islink(log_file):
            raise OSError(errno.ELOOP, f"{log_file} is a symbolic link; the log is never "
                                       "written through one")
        handler: logging.Handler = LogFile(log_file)
        handler.setFormatter(JSONFormatter() if fmt == "json" else StampedTextFormatter())
    else:
        handler = StderrHandler(sys.stderr)
        if fmt == "json":
            formatter: logging.Formatter = JSONFormatter()
        elif timestamps:
            formatter = StampedTextFormatter()
        else:
            formatter = TextFormatter()
        if stderr_is_journal():
            formatter = JournalFormatter(TextFormatter() if fmt == "text" else formatter)
        handler.setFormatter(formatter)
    for old in _handlers:
        old.close()
    _handlers[:] = [handler]
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def reopen() -> None:
    """SIGHUP: reopen the log file, if there is one (raises OSError)."""
    for handler in _handlers:
        if isinstance(handler, LogFile):
            handler.reopen()


def log_file_in_use() -> str | None:
    for handler in _handlers:
        if isinstance(handler, LogFile):
            return handler.baseFilename
    return None


def is_json() -> bool:
    return _format_in_use == "json"


def format_text(name: str, fields: dict) -> str:
    """``name key=value ...``; values with spaces (or empty) are quoted."""
    parts = [name]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() for c in text):
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


_format = format_text      # the name earlier callers used


class EventLog:
    """``log.event("checkpoint_requested", reason="mismatch", conn=...)``."""

    def __init__(self, burst: int = 20, clock=time.monotonic):
        self.burst = burst
        self.clock = clock
        self.tap: Tap | None = None
        self._window: dict[str, tuple[float, int, int]] = {}
        self._next_tick = 0.0

    def event(self, name: str, level: int = logging.INFO, **fields) -> None:
        if self.tap is not None:
            self.tap(name, fields)
        now = self.clock()
        start, seen, suppressed = self._window.get(name, (now, 0, 0))
        if now - start >= 1.0:
            if suppressed:
                fields = {**fields, "suppressed": suppressed}
            start, seen, suppressed = now, 0, 0
        if seen >= self.burst:
            self._window[name] = (start, seen, suppressed + 1)
            return
        self._window[name] = (start, seen + 1, suppressed)
        logger.log(level, format_text(name, fields),
                   extra={"cx_event": name, "cx_fields": fields})

    def warning(self, name: str, **fields) -> None:
        self.event(name, logging.WARNING, **fields)

    def tick(self, final: bool = False) -> None:
        """Say how many lines were suppressed in windows that are over (all
        of them when ``final``), so that no count waits for a next line that
        never comes."""
        now = self.clock()
        if not final and now < self._next_tick:
            return
        self._next_tick = now + 1.0
        for name, (start, _seen, suppressed) in list(self._window.items()):
            if suppressed and (final or now - start >= 1.0):
                del self._window[name]
                logger.warning(format_text("events_suppressed",
                                           {"event": name, "suppressed": suppressed}),
                               extra={"cx_event": "events_suppressed",
                                      "cx_fields": {"event": name, "suppressed": suppressed}})

    def once(self, name: str, level: int = logging.INFO, **fields) -> None:
        """Log without rate limiting (ready, stopped: lines scripts wait for)."""
        if self.tap is not None:
            self.tap(name, fields)
        logger.log(level, format_text(name, fields),
                   extra={"cx_event": name, "cx_fields": fields})
