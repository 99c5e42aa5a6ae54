"""``colo-xdp doctor``: what this host has, and what to do about what it lacks.

Each check says ``ok``, ``missing`` or ``unknown`` with what it found, and
for anything not ok how to fix it.  Checks belong to a mode:

* ``chardev``: what ``colo-xdp compare`` in chardev mode needs (little: the
  engine's C core).  A missing one makes doctor exit 1.
* ``xdp``: what XDP mode will need (kernel BPF/XDP/AF_XDP and BTF, bcc and
  kernel headers, privileges, locked memory).  Informative: exit status 0.
* ``lab``: what the interop tests and the VM lab use (QEMU, /dev/kvm,
  /dev/net/tun, tcpdump).  Informative.

Paths are read under ``root`` (default ``/``) so tests can point doctor at a
made-up host; kernel probes (an AF_XDP socket) run only on the real one.
"""
from __future__ import annotations

import errno
import gzip
import importlib
import os
import platform
import resource
import shutil
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from typing import Callable

OK, MISSING, UNKNOWN = "ok", "missing", "unknown"
CHARDEV, XDP, LAB = "chardev", "xdp", "lab"
AF_XDP = 44
CAPS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38,
        "CAP_BPF": 39}
MEMLOCK_ENOUGH = 64 * 1024 * 1024     # for kernels that still charge BPF maps to it


@dataclass(frozen=True)
class Check:
    name: str
    mode: str           # chardev (required), xdp or lab (informative)
    status: str         # ok, missing, unknown
    detail: str
    fix: str = ""


@dataclass
class Host:
    """Where doctor looks; tests replace parts of it."""

    root: str = "/"
    importable: Callable[[str], str | None] = None     # module -> None if ok, else why
    which: Callable[[str], str | None] = shutil.which
    release: str = ""

    def __post_init__(self):
        if self.importable is None:
            self.importable = _try_import
        if not self.release:
            self.release = (self.read("proc/sys/kernel/osrelease") or platform.release()).strip()

    @property
    def real(self) -> bool:
        return os.path.realpath(self.root) == "/"

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def read(self, rel: str) -> str | None:
        try:
            with open(self.path(rel), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def kernel_config(self) -> dict[str, str] | None:
        text = self.read(f"boot/config-{self.release}")
        if text is None:
            try:
                with gzip.open(self.path("proc/config.gz"), "rt") as f:
                    text = f.read()
            except OSError:
                return None
        config = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and name.startswith("CONFIG_"):
                config[name] = value
        return config


def _try_import(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:         # an import can fail in many ways; report any
        return f"{type(exc).__name__}: {exc}"
    return None


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def _cap_eff(host: Host) -> int | None:
    status = host.read("proc/self/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return None


# -- the checks -------------------------------------------------------------------------

def check_python(host: Host) -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", CHARDEV, OK if ok else MISSING, f"Python {platform.python_version()}",
                 "" if ok else "use Python 3.11 or later (Debian 12's python3)")


def check_engine(host: Host) -> Check:
    why = host.importable("colo_xdp._native")
    if why is None:
        return Check("engine", CHARDEV, OK, "the C core (colo_xdp._native) loads")
    return Check("engine", CHARDEV, MISSING, f"the C core does not load ({why})",
                 "build it: make setup, or .venv/bin/pip install -e .")


def check_prometheus(host: Host) -> Check:
    why = host.importable("prometheus_client")
    if why is None:
        return Check("prometheus", CHARDEV, OK, "prometheus_client loads (--metrics works)")
    return Check("prometheus", CHARDEV, MISSING, "prometheus_client does not load: --metrics "
                 "cannot work", "pip install prometheus_client (make setup does)")


# The oldest kernel the classifier loads on: bpf/classify.c calls
# bpf_xdp_get_buff_len (multi-buffer XDP), which Linux 5.18 added.
KERNEL_FLOOR = (5, 18)
KERNEL_FLOOR_WHY = "the XDP classifier calls bpf_xdp_get_buff_len"


def check_kernel(host: Host) -> Check:
    version = _kernel_version(host.release)
    floor = "%d.%d" % KERNEL_FLOOR
    if version >= KERNEL_FLOOR:
        return Check("kernel", XDP, OK, f"Linux {host.release}")
    return Check("kernel", XDP, MISSING, f"Linux {host.release} is older than {floor} "
                 f"({KERNEL_FLOOR_WHY})",
                 f"XDP mode needs {floor} or later (Debian 12 ships 6.1)")


def _config_check(host: Host, name: str, option: str, what: str, fix: str) -> Check | None:
    config = host.kernel_config()
    if config is None:
        return None
    if config.get(option) in ("y", "m"):
        return Check(name, XDP, OK, f"{what} ({option}={config[option]})")
    return Check(name, XDP, MISSING, f"{what} is not in this kernel ({option} not set)", fix)


def check_bpf(host: Host) -> Check:
    found = _config_check(host, "bpf", "CONFIG_BPF_SYSCALL", "the bpf() system call and XDP",
                          "use a kernel built with CONFIG_BPF_SYSCALL=y (Debian's is)")
    if found:
        return found
    if os.path.exists(host.path("proc/sys/kernel/unprivileged_bpf_disabled")):
        return Check("bpf", XDP, OK, "the bpf() system call and XDP "
                     "(/proc/sys/kernel/unprivileged_bpf_disabled exists)")
    return Check("bpf", XDP, UNKNOWN, "no kernel config and no sign of the bpf() system call",
                 "use a kernel built with CONFIG_BPF_SYSCALL=y")


def check_af_xdp(host: Host) -> Check:
    fix = "use a kernel built with CONFIG_XDP_SOCKETS=y (Debian's is)"
    if host.real:
        try:
            socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
            return Check("af_xdp", XDP, OK, "AF_XDP sockets can be created")
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                return Check("af_xdp", XDP, MISSING, "the kernel has no AF_XDP sockets", fix)
            if exc.errno not in (errno.EPERM, errno.EACCES):
                return Check("af_xdp", XDP, UNKNOWN, f"an AF_XDP socket failed: {exc.strerror}",
                             fix)
    found = _config_check(host, "af_xdp", "CONFIG_XDP_SOCKETS", "AF_XDP sockets", fix)
    return found or Check("af_xdp", XDP, UNKNOWN, "cannot tell whether the kernel has AF_XDP "
                          "(no privilege to try, no kernel config)",
                          "run doctor as root to find out")


def check_btf(host: Host) -> Check:
    if os.path.exists(host.path("sys/kernel/btf/vmlinux")):
        return Check("btf", XDP, OK, "kernel BTF at /sys/kernel/btf/vmlinux")
    return Check("btf", XDP, MISSING, "no /sys/kernel/btf/vmlinux",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's is)")


def check_bcc(host: Host) -> Check:
    why = host.importable("bcc")
    if why is None:
        return Check("bcc", XDP, OK, "bcc (python3-bpfcc) loads")
    return Check("bcc", XDP, MISSING, f"bcc does not load ({why})",
                 "apt-get install python3-bpfcc; a venv needs --system-site-packages")


def check_classifier(host: Host) -> Check:
    """The classifier's C (bpf/classify.c and classify.h) where bcc will look:
    package data of an installed colo-xdp, or the source tree's bpf/."""
    from colo_xdp.transport.xdp import classify_abi
    found = classify_abi.find_bpf_dir()
    missing = [name for name in ("classify.c", "classify.h") if not (found / name).is_file()]
    if not missing:
        return Check("classifier", XDP, OK, f"the XDP classifier's source at {found}")
    return Check("classifier", XDP, MISSING,
                 f"no {' and no '.join(missing)} at {classify_abi.PACKAGE_BPF_DIR} (the "
                 f"package) or {classify_abi.SOURCE_BPF_DIR} (a source tree)",
                 "reinstall colo-xdp from a wheel or sdist built by its setup.py "
                 "(it carries bpf/ as package data)")


def check_headers(host: Host) -> Check:
    build = f"lib/modules/{host.release}/build"
    if os.path.isdir(host.path(build)):
        return Check("headers", XDP, OK, f"kernel headers at /{build}")
    return Check("headers", XDP, MISSING, f"no kernel headers at /{build} (bcc compiles "
                 "against them)", f"apt-get install linux-headers-{host.release}")


def check_privileges(host: Host) -> Check:
    eff = _cap_eff(host)
    if eff is None:
        return Check("privileges", XDP, UNKNOWN, "cannot read the process's capabilities",
                     "run as root")
    have = {name for name, bit in CAPS.items() if eff >> bit & 1}
    needed = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    bpf_ok = "CAP_BPF" in have or "CAP_SYS_ADMIN" in have
    if needed <= have and bpf_ok:
        who = "root" if host.real and os.geteuid() == 0 else "capabilities"
        return Check("privileges", XDP, OK, f"{who}: {', '.join(sorted(have))}")
    lacking = sorted(needed - have) + ([] if bpf_ok else ["CAP_BPF"])
    return Check("privileges", XDP, MISSING, f"lacking {', '.join(lacking)} (loading XDP "
                 "programs and opening AF_XDP sockets need them)",
                 "run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF")


def check_memlock(host: Host) -> Check:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    shown = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
    if soft == resource.RLIM_INFINITY or soft >= MEMLOCK_ENOUGH:
        return Check("memlock", XDP, OK, f"RLIMIT_MEMLOCK {shown}")
    if _kernel_version(host.release) >= (5, 11):
        return Check("memlock", XDP, OK, f"RLIMIT_MEMLOCK {shown}; Linux {host.release} "
                     "charges BPF memory to the cgroup, not to this limit")
    return Check("memlock", XDP, MISSING, f"RLIMIT_MEMLOCK {shown} is small for BPF maps and "
                 "AF_XDP umems on this kernel",
                 "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity)")


def _char_device(host: Host, rel: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(host.path(rel)).st_mode)
    except OSError:
        return False


def check_tun(host: Host) -> Check:
    if _char_device(host, "dev/net/tun"):
        return Check("tun", LAB, OK, "/dev/net/tun")
    return Check("tun", LAB, MISSING, "no /dev/net/tun (tap devices for guests and XDP tests)",
                 "modprobe tun")


def check_kvm(host: Host) -> Check:
    if _char_device(host, "dev/kvm"):
        return Check("kvm", LAB, OK, "/dev/kvm")
    return Check("kvm", LAB, MISSING, "no /dev/kvm: guests would run without acceleration",
                 "enable virtualisation (VT-x/AMD-V, nested for a VM) and modprobe kvm")


def check_qemu(host: Host) -> Check:
    exe = host.which("qemu-system-x86_64")
    if exe:
        return Check("qemu", LAB, OK, exe)
    return Check("qemu", LAB, MISSING, "no qemu-system-x86_64 (interop tests, COLO guests)",
                 "apt-get install qemu-system-x86")


def check_tcpdump(host: Host) -> Check:
    exe = host.which("tcpdump")
    if exe:
        return Check("tcpdump", LAB, OK, f"{exe} (reads --miscompare-pcap files)")
    return Check("tcpdump", LAB, MISSING, "no tcpdump to read --miscompare-pcap files",
                 "apt-get install tcpdump")


CHECKS = (check_python, check_engine, check_prometheus,
          check_kernel, check_bpf, check_af_xdp, check_btf, check_bcc, check_classifier,
          check_headers,
          check_privileges, check_memlock,
          check_tun, check_kvm, check_qemu, check_tcpdump)


def run(host: Host | None = None) -> list[Check]:
    host = host or Host()
    return [check(host) for check in CHECKS]


def required_missing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.mode == CHARDEV and c.status != OK]


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        line = f"{c.status:<8} {c.mode:<8} {c.name:<11} {c.detail}"
        if c.status != OK and c.fix:
            line += f"; fix: {c.fix}"
        lines.append(line)
    missing = required_missing(checks)
    xdp = [c for c in checks if c.mode == XDP and c.status != OK]
    lines.append("")
    lines.append("chardev mode: " + ("ready" if not missing else
                                     f"NOT ready ({', '.join(c.name for c in missing)})"))
    lines.append("xdp mode: " + ("ready" if not xdp else
                                 f"{len(xdp)} check(s) not ok ({', '.join(c.name for c in xdp)})"
                                 " - informative, XDP mode is not required yet"))
    return "\n".join(lines) + "\n"


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
