"""Miscompare evidence as pcapng (``--miscompare-pcap FILE``).

Every checkpoint request for a mismatch or a timeout carries the frames
behind it (``CheckpointRequest.evidence``, kept by the engine when
``EngineConfig.evidence_max_bytes`` is set); they are written here, vnet
header stripped, as Ethernet frames in a pcapng file that tcpdump, tshark and
Wireshark read.  The file has two interfaces, ``primary`` (0) and
``secondary`` (1), so a frame's side is its interface; each frame's comment
says which request it belongs to::

    checkpoint_requested #3 reason=mismatch side=primary conn="udp 10.0.0.1:1000 > 10.0.0.2:2000" held_ms=2

The timestamp is when the frame arrived.  Files are bounded: past
``max_bytes`` the file is rotated (FILE -> FILE.1 -> ... -> FILE.<keep-1>,
the oldest removed), a request's frames never split across two files, and a
file left by an earlier run is rotated away rather than overwritten; a run
that had nothing to write leaves no file.

Block layouts follow the pcapng specification (draft-ietf-opsawg-pcapng):
SHB, one IDB per side, one EPB per frame; little-endian throughout.
"""
from __future__ import annotations

import errno
import os
import struct
import time

from colo_xdp.engine import CheckpointRequest
from colo_xdp.errors import ConfigError
from colo_xdp.observe.log import format_text

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144                    # above any chardev frame (NET_BUFSIZE 69632)
BYTE_ORDER_MAGIC = 0x1A2B3C4D
BT_SHB, BT_IDB, BT_EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION = 2, 3
INTERFACES = ("primary", "secondary")       # interface id = Side
DEFAULT_MAX_MB = 64
DEFAULT_KEEP = 4
RETRY_S = 5.0                        # after a write error, try a new file this much later


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _options(*opts: bytes) -> bytes:
    return b"".join(opts) + struct.pack("<HH", OPT_ENDOFOPT, 0) if opts else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(application: str) -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)   # v1.0, section length unknown
    return _block(BT_SHB, body + _options(_option(SHB_USERAPPL, application.encode())))


def interface_description(name: str, description: str) -> bytes:
    body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN)
    return _block(BT_IDB, body + _options(_option(IF_NAME, name.encode()),
                                          _option(IF_DESCRIPTION, description.encode())))


def enhanced_packet(interface: int, ts_us: int, frame: bytes, comment: str) -> bytes:
    body = struct.pack("<IIIII", interface, ts_us >> 32, ts_us & 0xFFFFFFFF,
                       len(frame), len(frame))
    return _block(BT_EPB, body + _pad(frame) + _options(_option(OPT_COMMENT, comment.encode())))


def file_header() -> bytes:
    from colo_xdp.version import VERSION
    return (section_header(f"colo-xdp {VERSION} miscompare evidence")
            + interface_description("primary", "primary guest output (primary_in)")
            + interface_description("secondary", "secondary guest output (secondary_in)"))


FILE_MODE = 0o600                   # guest payloads: the owner only, whatever the umask


class RotatingFile:
    """FILE written in records, rotated to FILE.1 .. FILE.<keep-1> past max_bytes.

    Unbuffered: a record is written with os.write as a whole, so a write
    error (a full disk) leaves nothing behind in a buffer for a later close
    or flush to fail on again, and the file is cut back to its last whole
    record.  Created with mode 0600 and never through a symbolic link."""

    def __init__(self, path: str, max_bytes: int, keep: int, header: bytes):
        if max_bytes <= len(header):
            raise ConfigError(f"a pcap file limit of {max_bytes} bytes leaves no room for frames")
        if keep < 1:
            raise ConfigError("keep at least one pcap file")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.header = header
        self.fd: int | None = None
        self.size = 0
        self.rotations = 0

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    def open(self) -> None:
        """Start a fresh file; one left by an earlier run is rotated away first."""
        if os.path.islink(self.path):
            raise OSError(errno.ELOOP, f"{self.path} is a symbolic link; evidence is never "
                                       "written through one")
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            self._shift()
        self._start()

    def _shift(self) -> None:
        names = [self.path] + [f"{self.path}.{i}" for i in range(1, self.keep)]
        if self.keep == 1:
            return                               # the one file is started again
        if os.path.lexists(names[-1]):
            os.unlink(names[-1])
        for i in range(len(names) - 2, -1, -1):
            if os.path.lexists(names[i]):
                os.replace(names[i], names[i + 1])

    def _start(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            self.fd, self.size = fd, 0
            self._write_all(self.header)       # a reader sees a valid, empty capture at once
        except OSError:
            self.close()
            try:
                os.unlink(self.path)           # not even a header: leave no broken file
            except OSError:
                pass
            raise

    def _write_all(self, data: bytes) -> None:
        """Write data whole, or cut the file back to its last whole record and raise."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(data)

    def write(self, record: bytes) -> bool:
        """Write one record; True if the file was rotated first."""
        rotated = False
        if self.size > len(self.header) and self.size + len(record) > self.max_bytes:
            self.close()
            self._shift()
            self._start()
            self.rotations += 1
            rotated = True
        self._write_all(record)
        return rotated

    def flush(self) -> None:
        """Nothing is buffered; kept for callers that flush."""

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:                    # nothing buffered: nothing lost here
                pass

    def remove_if_empty(self) -> None:
        """Remove the current file if it holds nothing but its header."""
        if self.fd is None and self.size == len(self.header) and not self.rotations:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class MiscomparePcap:
    """Writes the evidence of every checkpoint request: an attachment of CompareService."""

    name = "miscompare_pcap"

    def __init__(self, svc, path: str, max_bytes: int, keep: int):
        self.svc = svc
        self.file = RotatingFile(path, max_bytes, keep, file_header())
        self.pending: list[bytes] = []
        self.requests = 0
        self.frames = 0
        self.errors = 0
        self.retry_at = 0.0
        self.wall_offset_ms = 0.0

    def open(self) -> None:
        """Create the file; raises OSError with one sentence."""
        self.wall_offset_ms = time.time() * 1000.0 - self.svc.now_ms()
        try:
            self.file.open()
        except OSError as exc:
            self.file.close()
            raise OSError(exc.errno, f"cannot write --miscompare-pcap {self.file.path}: "
                                     f"{exc.strerror or exc}") from None

    def record(self, request: CheckpointRequest) -> None:
        """Queue the request's frames (written at the end of the batch)."""
        self.requests += 1
        now = self.svc.now_ms()
        conn = request.conn or "-"
        blocks = []
        for ev in request.evidence:
            frame = ev.frame[ev.vnet_hdr_len:]
            side = INTERFACES[int(ev.side)]
            comment = format_text(f"checkpoint_requested #{self.requests}",
                                  {"reason": request.reason.name.lower(), "side": side,
                                   "conn": conn, "held_ms": max(now - ev.born_ms, 0)})
            ts_us = int((self.wall_offset_ms + ev.born_ms) * 1000)
            blocks.append(enhanced_packet(int(ev.side), ts_us, frame, comment))
        if blocks:
            self.pending.append(b"".join(blocks))
            self.frames += len(blocks)

    def end_batch(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if not self.file.is_open and not self._reopen():
            self.errors += sum(_count_epbs(r) for r in pending)
            return
        written = 0
        try:
            for record in pending:
                if self.file.write(record):
                    self.svc.log.event("miscompare_pcap_rotated", path=self.file.path,
                                       rotations=self.file.rotations)
                written += 1
            self.file.flush()
        except OSError as exc:
            self.errors += sum(_count_epbs(r) for r in pending[written:])
            self.svc.log.warning("miscompare_pcap_failed", path=self.file.path,
                                 error=exc.strerror or str(exc))
            self.file.close()
            self.retry_at = time.monotonic() + RETRY_S

    def _reopen(self) -> bool:
        if time.monotonic() < self.retry_at:
            return False
        try:
            self.file.open()
            return True
        except OSError as exc:
            self.file.close()
            self.svc.log.warning("miscompare_pcap_failed", path=self.file.path,
                                 error=exc.strerror or str(exc))
            self.retry_at = time.monotonic() + RETRY_S
            return False

    def tick(self, now: float) -> None:
        pass

    def reopen(self) -> None:
        """SIGHUP (logrotate): write what is pending, then start FILE anew (a
        FILE still there with frames in it is rotated to FILE.1 first)."""
        self.end_batch()
        self.file.close()
        self.retry_at = 0.0
        self._reopen()

    def close(self) -> None:
        """Write what is pending and close; a run without evidence leaves no file."""
        self.end_batch()
        try:
            self.file.close()
        except OSError as exc:             # the last buffered bytes could not be written
            self.svc.log.warning("miscompare_pcap_failed", path=self.file.path,
                                 error=exc.strerror or str(exc))
        self.file.remove_if_empty()

    def stats(self) -> tuple[str, dict]:
        return self.name, {"path": self.file.path, "requests": self.requests,
                           "frames": self.frames - self.errors, "errors": self.errors,
                           "rotations": self.file.rotations}


def _count_epbs(record: bytes) -> int:
    n, pos = 0, 0
    while pos + 8 <= len(record):
        n += 1
        pos += struct.unpack_from("<I", record, pos + 4)[0]
    return n
