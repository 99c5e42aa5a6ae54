"""Debian's QEMU colo-compare, run standalone as the reference comparator.

No guest and no migration: ``-M none``, one iothread and four unix server
chardevs (``pin``, ``sin``, ``out``, ``notify``) that do not wait for a
client, as /work/shared/QEMU-FACTS.md measured it::

    with qemu_ref(CompareOptions(compare_timeout=500)) as cmp, Driver(cmp) as drv:
        ...

The process is stopped and its socket directory removed on every path.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from tools.harness import (CompareOptions, Comparator, HarnessError,
                              sockets_exist, supervised)

QEMU_BINARY = "qemu-system-x86_64"
IOTHREAD_ID = "it0"
COMPARE_ID = "cmp0"
# (chardev id, socket file name), with the ids QEMU-FACTS.md uses.
CHARDEVS = (("pin", "pin"), ("sin", "sin"), ("cout", "out"), ("notify", "notify"))


def qemu_binary() -> str:
    """Path of qemu-system-x86_64; HarnessError with what to install if missing."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise HarnessError(f"{QEMU_BINARY} not found: install Debian's "
                           "qemu-system-x86 package (apt-get install qemu-system-x86).")
    return path


def qemu_argv(binary: str, directory: Path, options: CompareOptions) -> list[str]:
    """The QEMU command line for a comparator with its sockets in ``directory``."""
    argv = [binary, "-M", "none", "-nographic", "-nodefaults", "-display", "none",
            "-object", f"iothread,id={IOTHREAD_ID}"]
    for chardev_id, name in CHARDEVS:
        argv += ["-chardev", f"socket,id={chardev_id},path={directory / name}.sock,"
                             "server=on,wait=off"]
    argv += ["-object", f"colo-compare,id={COMPARE_ID},primary_in=pin,secondary_in=sin,"
                        f"outdev=cout,iothread={IOTHREAD_ID},notify_dev=notify"
                        + options.qemu_properties()]
    return argv


def qemu_ref(options: CompareOptions = CompareOptions(),
             cpus: str | None = None) -> contextlib.AbstractContextManager[Comparator]:
    """Run QEMU colo-compare with ``options``; ready once its four sockets exist.

    ``cpus`` is a ``taskset -c`` CPU list (e.g. ``"1"``) for the benchmark.
    """
    binary = qemu_binary()
    return supervised("qemu", lambda d: qemu_argv(binary, d, options), options,
                      sockets_exist, cpus)
