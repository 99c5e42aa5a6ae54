"""Non-blocking sockets served from the service's selector loop.

The control socket and the /metrics endpoint are served by the same thread
that runs the engine (the engine is not thread-safe, and cffi releases the
GIL inside C calls, so no other thread may touch it).  Nothing here blocks:
every socket is non-blocking, every buffer is bounded, and a peer that does
not read its replies stops being read itself (or, for event streams, loses
events, counted) instead of growing memory or stalling the loop.
"""
from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import stat

from colo_xdp.errors import ConfigError
from colo_xdp.transport.chardev.endpoint import refuse_live_socket

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
RECV_CHUNK = 64 * 1024
BACKLOG = 64
ACCEPTS_PER_TURN = 16      # a burst of clients cannot hold up the loop


class AddressError(ConfigError):
    """A HOST:PORT that cannot be used; the message is one sentence."""


def parse_hostport(text: str, option: str) -> tuple[str, int]:
    """'127.0.0.1:9520', '[::1]:9520' or 'localhost:9520' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) \
            or not 0 < int(port) < 65536:
        raise AddressError(f"{option} takes HOST:PORT with a port from 1 to 65535, "
                           f"not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"{option} needs an IP address, not {host!r}") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_tcp(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {what} {host}:{port}: "
                                 f"{exc.strerror or exc}") from None
    return sock


def listen_unix_private(path: str, what: str) -> tuple[socket.socket, int]:
    """Listen on a unix socket only its owner may connect to (mode 0600).

    The mode is set by the umask at bind time, so there is no moment when
    the socket exists with wider permissions, and set again with chmod
    before listen.  A stale socket file (nobody accepting) is replaced; a
    live one, or a file that is not a socket, is refused.  Returns the
    socket and the inode of its file (so close removes only our own)."""
    refuse_live_socket(path, f" ({what})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot create {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    try:
        os.chmod(path, 0o600)
        inode = os.stat(path).st_ino
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        _unlink_quietly(path)
        raise OSError(exc.errno, f"cannot listen on {what} {path}: {exc.strerror or exc}") \
            from None
    return sock, inode


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_own_socket(path: str, inode: int) -> None:
    """Remove the socket file if it is still the one we created."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        _unlink_quietly(path)


class Listener:
    """Accepts on a listening socket and hands new peers to ``on_accept``."""

    def __init__(self, svc, sock: socket.socket, on_accept, max_clients: int,
                 clients: list, what: str):
        self.svc = svc
        self.sock = sock
        self.on_accept = on_accept
        self.max_clients = max_clients
        self.clients = clients
        self.what = what
        svc.watch(sock, READ, self._accept)

    def _accept(self, mask: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:                # EMFILE, ...: the next turn tries again
                self.svc.log.warning("accept_failed", role=self.what,
                                     error=exc.strerror or str(exc))
                return
            if len(self.clients) >= self.max_clients:
                self.svc.log.warning("control_refused", role=self.what,
                                     why=f"{self.max_clients} clients already connected")
                sock.close()
                continue
            sock.setblocking(False)
            try:
                self.on_accept(sock)
            except Exception as exc:   # noqa: BLE001 - a bug here must not stop the service
                self.svc.log.warning("control_error", role=self.what,
                                     error=f"{type(exc).__name__}: {exc}")
                sock.close()

    def close(self) -> None:
        self.svc.unwatch(self.sock)
        self.sock.close()


class Client:
    """One accepted peer: bytes in through ``on_data``, bytes out buffered.

    Subclasses decide what to do with input (``on_data``), whether they want
    more of it (``wants_input``) and what happens at EOF (``on_eof``).  Input
    is not read while ``out`` holds ``out_high`` bytes or more.
    """

    def __init__(self, svc, sock: socket.socket, clients: list, out_high: int):
        self.svc = svc
        self.sock = sock
        self.clients = clients
        self.out = bytearray()
        self.out_high = out_high
        self.closed = False
        self.eof = False
        self.close_when_flushed = False
        self._events = 0
        clients.append(self)
        self.rewatch()

    # -- hooks -------------------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def on_eof(self) -> None:
        self.close_when_flushed = True

    def wants_input(self) -> bool:
        return True

    def on_drained(self) -> None:
        """out fell below out_high: a chance to take more requests."""

    # -- plumbing -----------------------------------------------------------------------

    def rewatch(self) -> None:
        if self.closed:
            return
        events = WRITE if self.out else 0
        if not self.eof and not self.close_when_flushed and len(self.out) < self.out_high \
                and self.wants_input():
            events |= READ
        if events != self._events:
            self._events = events
            if events:
                self.svc.watch(self.sock, events, self._ready)
            else:
                self.svc.unwatch(self.sock)

    def _ready(self, mask: int) -> None:
        """The selector's handler: what a client's handling raises (a bug, a
        library's surprise) closes that client and is logged; the service
        goes on."""
        try:
            self._serve(mask)
        except Exception as exc:   # noqa: BLE001 - nothing around the service may stop it
            self.svc.log.warning("control_error", role=type(self).__name__,
                                 error=f"{type(exc).__name__}: {exc}")
            self.close()

    def _serve(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if not mask & READ or self.closed:
            return
        try:
            data = self.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.eof = True
            self.on_eof()
        else:
            self.on_data(data)
        self.flush()

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.out += data

    def flush(self) -> None:
        if self.closed:
            return
        was_high = len(self.out) >= self.out_high
        if self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:                     # the peer is gone: nothing more to say
                self.close()
                return
            del self.out[:n]
        if not self.out and self.close_when_flushed:
            self.close()
            return
        if was_high and len(self.out) < self.out_high:
            self.on_drained()
        self.rewatch()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._events:
            self.svc.unwatch(self.sock)
        self.sock.close()
        self.out.clear()
        try:
            self.clients.remove(self)
        except ValueError:
            pass
