"""The few bpf(2) commands bcc has no wrapper for, over ctypes.

* ``link_create_xdp``: attach an XDP program through a BPF link.  The link is
  a file descriptor: when the last one closes (the owner exits, is killed,
  crashes) the kernel detaches the program.  Attaching through netlink, as
  bcc's ``attach_xdp`` does, leaves the program on the interface after the
  process is gone.
* ``prog_test_run``: run a program on one frame (BPF_PROG_TEST_RUN) and get
  the action, the frame as the program left it and the metadata it put in
  front.

Layouts follow ``union bpf_attr`` in <linux/bpf.h>; only the leading fields
of each command are passed (the kernel takes a shorter attr as zero-filled).
"""
from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

# <asm/unistd.h>: __NR_bpf.
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# enum bpf_cmd.
BPF_PROG_TEST_RUN = 10
BPF_LINK_CREATE = 28
# enum bpf_attach_type.
BPF_XDP = 37

# <linux/if_link.h> XDP_FLAGS_*.
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

# enum xdp_action.
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTION_NAMES = {XDP_ABORTED: "aborted", XDP_DROP: "drop", XDP_PASS: "pass",
                    XDP_TX: "tx", XDP_REDIRECT: "redirect"}

# XDP_PACKET_HEADROOM: the most metadata and headroom a test run can give back.
_XDP_HEADROOM = 256


class _TestAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_TEST_RUN member."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _LinkCreateAttr(ctypes.Structure):
    """union bpf_attr, the BPF_LINK_CREATE member (no target-specific part)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context of an XDP program (test run in and out)."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); raises OSError with the errno."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf(2) syscall number unknown on {platform.machine()}")
    rc = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach an XDP program to ifindex through a BPF link; returns the link fd.

    ``flags`` is XDP_FLAGS_DRV_MODE (native) or XDP_FLAGS_SKB_MODE (generic).
    Closing the fd detaches.  OSError: EOPNOTSUPP (no native XDP on that
    driver), EBUSY/EEXIST (another program is attached), EPERM (not root).
    """
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex,
                           attach_type=BPF_XDP, flags=flags)
    return _bpf(BPF_LINK_CREATE, attr)


@dataclass(frozen=True)
class TestRun:
    """One BPF_PROG_TEST_RUN of an XDP program."""

    action: int        # XDP_* the program returned
    frame: bytes       # the frame as the program left it
    meta: bytes        # the metadata area in front of it (b"" if none)

    @property
    def action_name(self) -> str:
        return XDP_ACTION_NAMES.get(self.action, str(self.action))


def prog_test_run(prog_fd: int, frame: bytes, rx_queue: int = 0, ifindex: int = 0,
                  repeat: int = 1) -> TestRun:
    """Run the XDP program prog_fd on ``frame`` (``repeat`` times in the
    kernel, each on the same input; the result is the last run's).

    Without ``ifindex`` the frame arrives on the loopback device, queue 0;
    an ifindex must name a device with XDP enabled on ``rx_queue``.  The
    kernel refuses frames shorter than an Ethernet header (EINVAL).
    """
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + _XDP_HEADROOM
    data_out = ctypes.create_string_buffer(out_size)
    ctx_in = XdpMd(data=0, data_end=len(frame), data_meta=0, ingress_ifindex=ifindex,
                   rx_queue_index=rx_queue)
    ctx_out = XdpMd()
    attr = _TestAttr(prog_fd=prog_fd,
                     data_size_in=len(frame), data_size_out=out_size,
                     data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out),
                     repeat=repeat,
                     ctx_size_in=ctypes.sizeof(ctx_in), ctx_size_out=ctypes.sizeof(ctx_out),
                     ctx_in=ctypes.addressof(ctx_in), ctx_out=ctypes.addressof(ctx_out))
    _bpf(BPF_PROG_TEST_RUN, attr)
    # data_out starts at the metadata; ctx_out.data is where the frame starts.
    raw = data_out.raw[:attr.data_size_out]
    return TestRun(attr.retval, raw[ctx_out.data:ctx_out.data_end], raw[:ctx_out.data])
