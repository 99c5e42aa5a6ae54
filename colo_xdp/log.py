"""Structured log events with stable names, rate-limited per name.

Every line is ``colo-xdp: EVENT key=value ...``: the event name is stable
and the fields are machine-readable.  An event that fires in a storm (a
checkpoint request per arriving frame, say) is logged at most ``burst``
times a second; the next line of that name says how many were suppressed.
Counters, not logs, are the exact record.
"""
from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("colo_xdp")


def setup(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("colo-xdp: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _format(name: str, fields: dict) -> str:
    parts = [name]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() for c in text):
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class EventLog:
    """``log.event("checkpoint_requested", reason="mismatch", conn=...)``."""

    def __init__(self, burst: int = 20, clock=time.monotonic):
        self.burst = burst
        self.clock = clock
        self._window: dict[str, tuple[float, int, int]] = {}

    def event(self, name: str, level: int = logging.INFO, **fields) -> None:
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
        logger.log(level, _format(name, fields))

    def warning(self, name: str, **fields) -> None:
        self.event(name, logging.WARNING, **fields)
