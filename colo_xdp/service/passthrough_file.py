"""``--passthrough-file FILE``: the passthrough list kept across restarts.

The file holds one flow a line in the canonical form (``udp 10.0.0.0/24 >
*:53``; ``#`` starts a comment).  At start its rules join those of the
config file and ``--passthrough``; from then on it is a sink of the
``PassthroughTable`` (colo_xdp/proto/flows.py): every change (``ctl
passthrough add`` / ``del``) rewrites the whole list into it, atomically
(a temporary file, fsync, rename), before the engine takes it.  A change
whose file cannot be written is refused, so what runs and what the next
start reads never differ.
"""
from __future__ import annotations

import os
import tempfile

from colo_xdp.engine import PassthroughRule
from colo_xdp.proto.flows import FlowError, PassthroughError, format_flow, parse_flow

FILE_MODE = 0o640
HEADER = ("# colo-xdp passthrough list: flows not compared, one a line.\n"
          "# Written by colo-xdp at every 'colo-xdp ctl passthrough add/del'.\n")


def read(path: str) -> list[PassthroughRule]:
    """The rules in ``path`` ([] if it does not exist); FlowError names the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FlowError(f"cannot read --passthrough-file {path}: {exc.strerror or exc}") from None
    rules = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            rules.append(parse_flow(text))
        except FlowError as exc:
            raise FlowError(f"--passthrough-file {path} line {number}: {exc}") from None
    return rules


class PassthroughFile:
    """The list written to ``path``: ``check`` and ``write`` make a
    PassthroughTable sink."""

    def __init__(self, path: str):
        self.path = path

    def check(self, rules: list[PassthroughRule]) -> None:
        """Refuse, changing nothing, when the file's directory cannot be written."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PassthroughError(f"cannot write --passthrough-file {self.path}: "
                                   f"its directory {directory} is not writable")

    def write(self, rules: list[PassthroughRule]) -> None:
        text = HEADER + "".join(f"{format_flow(rule)}\n" for rule in rules)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".passthrough.", dir=directory)
        except OSError as exc:
            raise PassthroughError(f"cannot write --passthrough-file {self.path}: "
                                   f"{exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise PassthroughError(f"cannot write --passthrough-file {self.path}: "
                                   f"{exc.strerror or exc}") from None
