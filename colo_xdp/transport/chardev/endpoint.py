"""QEMU socket chardevs: endpoint specs and the connections behind them.

A spec names one end of a stream the way QEMU's ``-chardev socket`` does::

    unix:/run/colo/pin.sock,server=on        listen on a unix socket
    tcp:127.0.0.1:9001                        connect to a TCP listener
    tcp:0.0.0.0:9004,server=on                listen on TCP
    tcp:127.0.0.1:9005,reconnect=1            connect, retry every second

A listening endpoint serves one peer at a time, as QEMU's does: while a peer
is connected it accepts nobody else.  A connecting endpoint without
``reconnect`` must reach its peer at start, and the service exits (status 1)
when it loses it later; with it, it keeps retrying.
"""
from __future__ import annotations

import errno
import math
import os
import socket
import stat
from dataclasses import dataclass

from colo_xdp.errors import ConfigError, EndpointError

ON_VALUES = {"on", "yes", "true", "1", ""}
OFF_VALUES = {"off", "no", "false", "0"}


class SpecError(ConfigError):
    """A spec that cannot name an endpoint; the message is one sentence."""


@dataclass(frozen=True)
class Spec:
    kind: str                 # "unix" or "tcp"
    path: str = ""            # unix
    host: str = ""            # tcp
    port: int = 0             # tcp
    server: bool = False
    reconnect: float = 0.0    # seconds; 0: do not retry
    text: str = ""

    @property
    def address(self) -> str:
        return self.path if self.kind == "unix" else f"{self.host}:{self.port}"

    def same_place(self, other: "Spec") -> bool:
        """Do both specs name the same socket?"""
        if self.kind != other.kind:
            return False
        if self.kind == "unix":
            return os.path.abspath(self.path) == os.path.abspath(other.path)
        return self.port == other.port and _host_key(self.host) == _host_key(other.host)

    def __str__(self) -> str:
        return self.text


def _host_key(host: str) -> str:
    return {"localhost": "127.0.0.1", "": "0.0.0.0"}.get(host, host)


def _parse_bool(spec: str, name: str, value: str) -> bool:
    value = value.lower()
    if value in ON_VALUES:
        return True
    if value in OFF_VALUES:
        return False
    raise SpecError(f"{spec!r}: {name} takes on or off, not {value!r}")


def parse_spec(text: str) -> Spec:
    """Parse ``unix:PATH`` or ``tcp:HOST:PORT`` with ``,server=on``,
    ``,reconnect=SECONDS`` (``,wait=off`` and ``,nowait`` are accepted and
    ignored: colo-xdp never blocks waiting for a peer)."""
    head, *opts = text.split(",")
    kind, sep, rest = head.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise SpecError(f"{text!r} is not an endpoint: use unix:PATH or tcp:HOST:PORT")
    fields: dict = {"kind": kind, "text": text}
    if kind == "unix":
        if not rest:
            raise SpecError(f"{text!r} names no socket path")
        fields["path"] = rest
    else:
        host, sep, port = rest.rpartition(":")
        # isascii: str.isdigit() also takes other scripts' digits ("٣").
        if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise SpecError(f"{text!r} needs tcp:HOST:PORT with a port from 1 to 65535")
        fields["host"] = host.strip("[]") or "0.0.0.0"
        fields["port"] = int(port)
    for opt in opts:
        name, _, value = opt.partition("=")
        if name == "server":
            fields["server"] = _parse_bool(text, name, value)
        elif name == "reconnect":
            try:
                fields["reconnect"] = float(value)
            except ValueError:
                raise SpecError(f"{text!r}: reconnect takes a number of seconds") from None
            # float() takes "nan" and "inf": nan would retry in a busy loop,
            # inf never, so both are refused with the negatives.
            if not math.isfinite(fields["reconnect"]) or fields["reconnect"] < 0:
                raise SpecError(f"{text!r}: reconnect takes a finite number of seconds, "
                                "0 or more")
        elif name == "wait":
            _parse_bool(text, name, value)   # accepted for QEMU's sake, not needed
        elif name == "nowait":
            continue
        else:
            raise SpecError(f"{text!r}: unknown option {name!r} "
                            "(known: server, reconnect, wait)")
    spec = Spec(**fields)
    if spec.server and spec.reconnect:
        raise SpecError(f"{text!r}: reconnect is for connecting endpoints, not servers")
    return spec


def check_distinct(named: dict[str, Spec]) -> None:
    """Refuse two roles on one socket, as QEMU refuses indev == outdev."""
    items = list(named.items())
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if a.same_place(b):
                raise SpecError(f"{name_a} and {name_b} name the same socket ({a.address}); "
                                "each needs its own")


def _family(spec: Spec) -> int:
    if spec.kind == "unix":
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in spec.host else socket.AF_INET


def _sockaddr(spec: Spec):
    return spec.path if spec.kind == "unix" else (spec.host, spec.port)


SOCKET_MODE = 0o660   # a listening unix socket: its owner and group (QEMU's user in it)
SO_ACCEPTCON = 0x10000    # /proc/net/unix Flags: the socket listens


def listen(spec: Spec, role: str = "") -> socket.socket:
    """Bind and listen.  A unix socket is created with mode 0660 whatever the
    umask; a stale socket file (nobody listening) is replaced, a live one
    (another process listens there) is refused."""
    sock = socket.socket(_family(spec), socket.SOCK_STREAM)
    what = f" ({role})" if role else ""
    old_umask = None
    try:
        if spec.kind == "unix":
            refuse_live_socket(spec.path, what)
            old_umask = os.umask(0o777 & ~SOCKET_MODE)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_sockaddr(spec))
        if spec.kind == "unix":
            os.chmod(spec.path, SOCKET_MODE)
        sock.listen(1)
        sock.setblocking(False)
    except EndpointError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        # Some bind errors carry no strerror (e.g. "AF_UNIX path too long").
        reason = exc.strerror or str(exc)
        raise EndpointError(exc.errno, f"cannot listen on {spec}: {reason}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    return sock


def _listening_unix_paths() -> set[str]:
    """The paths of the unix sockets listening in this network namespace."""
    paths = set()
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            next(f, None)
            for line in f:
                parts = line.split(None, 7)
                if len(parts) == 8 and int(parts[3], 16) & SO_ACCEPTCON:
                    paths.add(parts[7].rstrip("\n"))
    except (OSError, ValueError):
        pass
    return paths


def refuse_live_socket(path: str, what: str = "") -> None:
    """Make way for a new listening socket at ``path``: a stale socket file
    (its process is gone) is removed; a live one, or a file that is not a
    socket, raises EndpointError with one sentence.

    Live is decided without connecting where possible (/proc/net/unix lists
    the listening sockets by path): a probe connection would be accepted by
    the other process as a peer, and an outdev would send it frames.  Only a
    socket file not listed (bound in another network namespace, or by a
    relative path) is probed by connecting."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EndpointError(errno.EEXIST, f"{path} exists and is not a socket; choose "
                                          f"another path{what}")
    busy = EndpointError(errno.EADDRINUSE, f"another process listens on {path}{what}; "
                                           "stop it or choose another path")
    listening = _listening_unix_paths()
    if path in listening or os.path.abspath(path) in listening:
        raise busy
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        _remove_stale_socket(path)             # stale: its process is gone
        return
    except OSError:
        pass                                    # EAGAIN (backlog full), ...: someone is there
    finally:
        probe.close()
    raise busy


def bound_inode(spec: Spec) -> int:
    """The inode of a listening unix endpoint's socket file (0 for TCP), so
    that cleanup removes only our own."""
    if spec.kind != "unix":
        return 0
    try:
        return os.stat(spec.path).st_ino
    except OSError:
        return 0


def _remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


CONNECT_TIMEOUT_S = 5.0   # a peer that neither accepts nor refuses by then is not there


def _connect_error(spec: Spec, exc: OSError) -> EndpointError:
    reason = exc.strerror or str(exc)
    return EndpointError(exc.errno or errno.EIO, f"cannot connect to {spec}: {reason}")


def connect(spec: Spec) -> socket.socket:
    """Connect (blocking, briefly) and return a non-blocking socket.

    For start-up only: a running service uses connect_start/connect_finish,
    so that a peer that drops SYNs cannot stall the event loop."""
    sock = socket.socket(_family(spec), socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(_sockaddr(spec))
    except OSError as exc:
        sock.close()
        raise _connect_error(spec, exc) from None
    sock.setblocking(False)
    tune(sock)
    return sock


def connect_start(spec: Spec) -> socket.socket:
    """Begin a non-blocking connect; finish it with connect_finish once the
    socket is writable.  Raises EndpointError if it fails at once.  (A host
    name is still resolved blocking; IP literals never block.)"""
    sock = socket.socket(_family(spec), socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        rc = sock.connect_ex(_sockaddr(spec))
    except OSError as exc:                       # e.g. name resolution
        sock.close()
        raise _connect_error(spec, exc) from None
    # A unix listener with a full backlog answers EAGAIN: a failure, retried later.
    if rc not in (0, errno.EINPROGRESS):
        sock.close()
        raise _connect_error(spec, OSError(rc, os.strerror(rc)))
    return sock


def connect_finish(spec: Spec, sock: socket.socket) -> socket.socket:
    """The socket from connect_start became writable: connected, or raise
    EndpointError (and close it)."""
    rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if rc:
        sock.close()
        raise _connect_error(spec, OSError(rc, os.strerror(rc)))
    tune(sock)
    return sock


def tune(sock: socket.socket) -> None:
    """Large buffers; no Nagle delay on TCP."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
        except OSError:
            pass
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def cleanup(spec: Spec, inode: int = 0) -> None:
    """Remove what a listening endpoint left on disk: its socket file, if
    it is still ours (``inode`` from bound_inode; 0: whatever socket is there)."""
    if not (spec.server and spec.kind == "unix"):
        return
    try:
        st = os.lstat(spec.path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and (not inode or st.st_ino == inode):
        _remove_stale_socket(spec.path)
