"""bpf/classify.c on an interface: compile, load, attach, detach, one lifecycle.

``XdpClassifier`` is a context manager.  Entering compiles the program with
bcc for one side, loads it, fills its maps and (given an interface) attaches
it; leaving detaches it and frees it, on every path: a normal exit, an
exception, Ctrl-C, or SIGTERM (turned into ``Terminated`` while the
classifier is open, unless the program installed its own handler)::

    with XdpClassifier(Side.PRIMARY, "tap0", mode=Mode.NATIVE) as clf:
        clf.set_socket(queue=0, fd=xsk_fd)      # AF_XDP socket of rx queue 0
        ...
        clf.counters()                          # {Verdict.COMPARE: (frames, bytes), ...}

Without an interface the program is loaded only, for ``test_run`` (one frame
through BPF_PROG_TEST_RUN)::

    with XdpClassifier(Side.SECONDARY) as clf:
        clf.test_run(frame).action              # XDP_DROP, XDP_PASS, ...

With ``reuse=True`` (as ``XdpPort`` does) closing leaves the program loaded
and detached, and the next classifier of the same side takes it instead of
compiling again (most of a second of CPU): its maps are reset and it is
attached anew.  ``drop_idle`` (run at exit) unloads the ones kept.

The program is attached through a BPF link (``bpfsys.link_create_xdp``), not
netlink: the kernel detaches it when the link's file descriptor closes, so
even a process killed with SIGKILL leaves nothing attached.  bcc creates no
pinned objects; the maps go with the program.

Errors a user can cause raise ``XdpError`` with one sentence saying what to
do: interface missing, not root, bcc missing, kernel headers missing, XDP
unsupported in that mode, another program already attached.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import errno
import os
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

from colo_xdp.errors import XdpError
from colo_xdp.transport.xdp import bpfsys
from colo_xdp.transport.xdp.classify_abi import (CFG_GUEST_MACS, CFG_VLAN_UNCOMPARED, CLASSIFY_C,
                                         CONFIG, MAX_GUEST_MACS, MAX_QUEUES, MAX_RULES,
                                         BPF_DIR, ClassifyError, Side, Verdict, pack_mac,
                                         pack_rule, pack_rule_list)

ENTRY_POINT = b"xdp_classify"
# Where bcc looks for the running kernel's headers.
KERNEL_BUILD_DIR = f"/lib/modules/{os.uname().release}/build"
KHEADERS = "/sys/kernel/kheaders.tar.xz"


class Terminated(SystemExit):
    """SIGTERM arrived while a classifier was open (exit status 143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class Mode(str, enum.Enum):
    """How the program runs on the interface."""

    NATIVE = "native"     # in the driver (veth, tap, most NICs)
    GENERIC = "generic"   # on the skb, any interface, slower

    @property
    def flags(self) -> int:
        return bpfsys.XDP_FLAGS_DRV_MODE if self is Mode.NATIVE else bpfsys.XDP_FLAGS_SKB_MODE


@dataclass(frozen=True)
class VerdictCount:
    frames: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Attached:
    """The XDP program an interface has, as the kernel reports it."""

    mode: str        # "native", "generic", "offload" or "multi"
    prog_id: int


# IFLA_XDP_ATTACHED, as a number or as pyroute2 names it.
_ATTACH_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi",
                 "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                 "xdpmulti": "multi"}


def attached_xdp(ifname: str) -> Attached | None:
    """The XDP program attached to ``ifname`` (any owner), or None.

    >>> attached_xdp("lo") is None
    True
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link("get", index=_ifindex(ifname))
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if xdp is None:
        return None
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
    if not mode:
        return None
    return Attached(_ATTACH_MODES.get(mode, str(mode)), xdp.get_attr("IFLA_XDP_PROG_ID") or 0)


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise XdpError(f"there is no interface {ifname!r}: check the name with 'ip link'") \
            from None


# --- signals ------------------------------------------------------------------

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (they arrive after) around a step that
    must not be cut in two, such as attaching and taking note of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _raise_terminated(signum, frame):
    raise Terminated()


class _SigtermRaises:
    """While open, SIGTERM raises Terminated, if nobody else handles it."""

    def __init__(self) -> None:
        self._installed = False

    def open(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_terminated)
            self._installed = True

    def close(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed = False


# --- bcc ----------------------------------------------------------------------

def _import_bcc():
    try:
        import bcc
    except ImportError:
        raise XdpError("bcc is missing: run 'make setup' (it installs Debian's python3-bpfcc; "
                       "the PyPI package named bcc is another project)") from None
    return bcc


def _check_headers() -> None:
    if os.path.isdir(KERNEL_BUILD_DIR) or os.path.exists(KHEADERS):
        return
    raise XdpError(f"bcc finds no kernel headers in {KERNEL_BUILD_DIR}: run "
                   "'scripts/setup-bpf.sh' as root (it links Debian's linux-headers-amd64 there)")


def unavailable() -> str | None:
    """Why an XDP program cannot be loaded here, in one sentence (what to
    do included); None when it can: root, bcc and kernel headers."""
    if os.geteuid() != 0:
        return "XDP needs root: run as root"
    try:
        _import_bcc()
        _check_headers()
    except XdpError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what libbcc and clang print on fd 2; the list is filled on exit."""
    lines: list[str] = []
    sys.stderr.flush()          # what Python had buffered goes where it was meant to
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _first_error(lines: list[str]) -> str:
    """The line of a clang diagnostic that says what is wrong."""
    for line in lines:
        if "error:" in line:
            return line.strip()
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else "no message"


def _verifier_error(lines: list[str]) -> str:
    """The verifier's complaint (what follows the last instruction it walked,
    up to 'processed N insns') and the source line it was at."""
    lines = [line.strip() for line in lines if line.strip()]
    end = next((i for i, line in enumerate(lines) if line.startswith("processed ")), len(lines))
    last_insn = max((i for i in range(end) if lines[i][:1].isdigit()), default=-1)
    complaint = [line for line in lines[last_insn + 1:end] if not line.startswith(";")]
    where = [line for line in lines[:end] if line.startswith(";")]
    text = "; ".join(complaint) if complaint else _first_error(lines[:end])
    if where:
        source, _, place = where[-1].lstrip("; ").rpartition(" @ ")
        text += f" (at {place}: {source})" if place else f" (at {source})"
    return text


# --- compiled programs kept for reuse ------------------------------------------------

# Programs loaded with ``reuse=True`` and not in use, by (side, cflags): the
# next classifier of that kind takes one instead of compiling (bcc/LLVM spends
# most of a second of CPU on it).  Each is (bcc.BPF, its XDP function); its
# maps are its own, so a program serves one classifier at a time.
_idle: dict[tuple, list[tuple]] = {}
compile_count = 0          # programs compiled by this process (tests, metrics)


def _take_idle(key: tuple):
    progs = _idle.get(key)
    return progs.pop() if progs else None


def _put_idle(key: tuple, prog: tuple) -> None:
    _idle.setdefault(key, []).append(prog)


def drop_idle() -> None:
    """Unload the programs kept for reuse (at exit; tests)."""
    while _idle:
        _key, progs = _idle.popitem()
        for bpf, _fn in progs:
            with contextlib.suppress(Exception):
                bpf.cleanup()


atexit.register(drop_idle)


# --- the classifier --------------------------------------------------------------

class XdpClassifier:
    """bpf/classify.c for one side, loaded and (given ``ifname``) attached."""

    def __init__(self, side: Side, ifname: str | None = None, *, mode: Mode = Mode.NATIVE,
                 rules: Iterable = (), guest_macs: Iterable[str] = (),
                 vlan_compare: bool = True, handle_sigterm: bool = True,
                 reuse: bool = False):
        self.side = Side(side)
        self.ifname = ifname
        self.mode = Mode(mode)
        self._rules = list(rules)
        self._guest_macs = list(guest_macs)
        self._vlan_compare = vlan_compare
        self._sigterm = _SigtermRaises() if handle_sigterm else None
        # With reuse, load takes a program of this kind that a closed
        # classifier left behind, and close leaves this one for the next.
        self._reuse = reuse
        self._key: tuple | None = None
        self._bpf = None
        self._fn = None
        self._link_fd: int | None = None
        self._spare_list = b"rules_a"    # the list map rule_list does not point to

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "XdpClassifier":
        if self._sigterm:
            self._sigterm.open()
        try:
            self.load()
            if self.ifname is not None:
                self.attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def load(self) -> None:
        """Compile and load the program and fill its maps (not attached)."""
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise XdpError("loading an XDP program needs root: run colo-xdp as root")
        if self.ifname is not None:
            _ifindex(self.ifname)
        bcc = _import_bcc()
        _check_headers()
        if not CLASSIFY_C.is_file():
            raise XdpError(f"the XDP classifier's source {CLASSIFY_C} is missing: reinstall "
                           "colo-xdp ('colo-xdp doctor' checks it)")
        cflags = [f"-I{BPF_DIR}", f"-DCX_XDP_SIDE={int(self.side)}"]
        self._key = (self.side, tuple(cflags))
        kept = _take_idle(self._key) if self._reuse else None
        if kept is not None:
            self._bpf, self._fn = kept
            try:
                self._reset_maps()
            except BaseException:
                self.close()
                raise
            return
        global compile_count
        compile_count += 1
        with _stderr_captured() as out:
            try:
                self._bpf = bcc.BPF(src_file=str(CLASSIFY_C).encode(), cflags=cflags)
            except Exception:                      # bcc raises bare Exception
                pass
        if self._bpf is None:
            raise XdpError(f"bcc could not compile {CLASSIFY_C}: {_first_error(out)}")
        with _stderr_captured() as out:
            try:
                self._fn = self._bpf.load_func(ENTRY_POINT, bcc.BPF.XDP)
            except Exception:
                pass
        if self._fn is None:
            self.close()
            raise XdpError(f"the kernel refused {CLASSIFY_C}: {_verifier_error(out)}")
        self._reset_maps()

    def _reset_maps(self) -> None:
        """Every map as a program just loaded has it, then this classifier's
        configuration: no socket, counters at zero, rules, guest MACs."""
        xsks = self._table(b"xsks")
        for queue in range(MAX_QUEUES):
            with contextlib.suppress(KeyError):
                del xsks[ctypes.c_int(queue)]
        self._table(b"counters").clear()          # per-CPU array: zeroes each
        # Detached, nothing reads the list maps: either may be written first.
        self._spare_list = b"rules_a"
        self.set_rules(self._rules)
        self.set_guest_macs(self._guest_macs)

    def attach(self) -> None:
        """Attach to the interface given at construction."""
        if self._link_fd is not None:
            return
        ifindex = _ifindex(self.ifname)
        with _signals_held():
            try:
                self._link_fd = bpfsys.link_create_xdp(self._fn.fd, ifindex, self.mode.flags)
            except OSError as err:
                raise XdpError(self._attach_error(err)) from None

    def _attach_error(self, err: OSError) -> str:
        name = self.ifname
        if err.errno == errno.EOPNOTSUPP and self.mode is Mode.NATIVE:
            return (f"{name} has no native XDP support: use generic mode "
                    "(slower, works on any interface)")
        if err.errno == errno.EOPNOTSUPP:
            return f"{name} supports no XDP at all: use an interface that does (tap, veth, a NIC)"
        if err.errno in (errno.EBUSY, errno.EEXIST):
            other = attached_xdp(name)
            what = f" (program id {other.prog_id}, {other.mode})" if other else ""
            return (f"{name} already has an XDP program{what}: stop its owner or remove it "
                    f"with 'ip link set dev {name} xdp off'")
        if err.errno == errno.EPERM:
            return "attaching an XDP program needs root: run colo-xdp as root"
        return f"attaching XDP to {name} failed: {err.strerror}"

    def detach(self) -> None:
        """Detach from the interface (closing the link detaches)."""
        with _signals_held():
            fd, self._link_fd = self._link_fd, None
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        """Detach and unload; safe to call more than once, on any path."""
        try:
            self.detach()
        finally:
            with _signals_held():
                bpf, fn, self._bpf, self._fn = self._bpf, self._fn, None, None
                if bpf is not None and fn is not None and self._reuse:
                    _put_idle(self._key, (bpf, fn))    # detached: left for the next
                elif bpf is not None:
                    bpf.cleanup()
            if self._sigterm:
                self._sigterm.close()

    @property
    def attached(self) -> bool:
        return self._link_fd is not None

    @property
    def prog_fd(self) -> int:
        self._need_loaded()
        return self._fn.fd

    def _need_loaded(self) -> None:
        if self._fn is None:
            raise XdpError("the classifier is not loaded: use it inside 'with'")

    # -- maps ---------------------------------------------------------------

    def _table(self, name: bytes):
        self._need_loaded()
        return self._bpf.get_table(name)

    def set_config(self, *, vlan_compare: bool | None = None) -> None:
        """Write struct cx_xdp_config from the rules, guest MACs and flags."""
        if vlan_compare is not None:
            self._vlan_compare = vlan_compare
        flags = (CFG_GUEST_MACS if self._guest_macs else 0) | \
            (0 if self._vlan_compare else CFG_VLAN_UNCOMPARED)
        table = self._table(b"config")
        table[ctypes.c_int(0)] = table.Leaf.from_buffer_copy(CONFIG.pack(flags))

    @staticmethod
    def check_rules(rules: Iterable) -> bytes:
        """The passthrough list as the program's list map holds it (struct
        cx_xdp_rules); XdpError, one sentence, if it does not fit.  Changes
        nothing, needs nothing loaded."""
        rules = list(rules)
        if len(rules) > MAX_RULES:
            raise XdpError(f"at most {MAX_RULES} passthrough rules fit the XDP program, "
                           f"not {len(rules)}")
        try:
            return pack_rule_list([pack_rule(r) for r in rules])
        except ClassifyError as err:
            raise XdpError(f"passthrough rule refused: {err}") from None

    def set_rules(self, rules: Iterable) -> None:
        """Replace the passthrough list (the engine's PassthroughRule, or
        anything with proto, src, dst, sport and dport), atomically for the
        frames: the new list goes whole into the list map not in use, then
        rule_list points to it with one update, which returns once no
        program reads the old one any more (classify.h)."""
        rules = list(rules)
        raw = self.check_rules(rules)
        spare = self._table(self._spare_list)
        spare[ctypes.c_int(0)] = spare.Leaf.from_buffer_copy(raw)
        self._table(b"rule_list")[ctypes.c_int(0)] = ctypes.c_int(spare.get_fd())
        self._spare_list = b"rules_b" if self._spare_list == b"rules_a" else b"rules_a"
        self._rules = rules

    def set_guest_macs(self, macs: Iterable[str]) -> None:
        """Only frames from these source MACs are the guest's; empty: all are."""
        macs = list(macs)
        if len(macs) > MAX_GUEST_MACS:
            raise XdpError(f"at most {MAX_GUEST_MACS} guest MACs fit the XDP program")
        try:
            packed = {pack_mac(m) for m in macs}
        except ClassifyError as err:
            raise XdpError(f"guest MAC refused: {err}") from None
        table = self._table(b"guest_macs")
        for key in list(table.keys()):
            if bytes(key) not in packed:
                del table[key]
        for raw in packed:
            table[table.Key.from_buffer_copy(raw)] = table.Leaf(1)
        self._guest_macs = macs
        self.set_config()

    def set_socket(self, queue: int, fd: int) -> None:
        """Frames to compare that arrive on rx queue ``queue`` go to AF_XDP socket fd."""
        if not 0 <= queue < MAX_QUEUES:
            raise XdpError(f"rx queue {queue} is outside 0..{MAX_QUEUES - 1}")
        try:
            self._table(b"xsks")[ctypes.c_int(queue)] = ctypes.c_int(fd)
        except Exception as err:                   # bcc raises bare Exception
            raise XdpError(f"the AF_XDP socket could not be put on queue {queue}: {err}") \
                from None

    def clear_socket(self, queue: int) -> None:
        table = self._table(b"xsks")
        with contextlib.suppress(KeyError):
            del table[ctypes.c_int(queue)]

    def counters(self) -> dict[Verdict, VerdictCount]:
        """Frames and bytes per verdict, added up over the CPUs."""
        table = self._table(b"counters")
        out = {}
        for verdict in Verdict:
            per_cpu = table[ctypes.c_int(verdict)]
            out[verdict] = VerdictCount(sum(c.frames for c in per_cpu),
                                        sum(c.bytes for c in per_cpu))
        return out

    def test_run(self, frame: bytes, rx_queue: int = 0, repeat: int = 1) -> bpfsys.TestRun:
        """Run the loaded program on one frame, ``repeat`` times (BPF_PROG_TEST_RUN)."""
        return bpfsys.prog_test_run(self.prog_fd, frame, rx_queue, repeat=repeat)
