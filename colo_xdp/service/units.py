"""The systemd unit files colo-xdp ships (``systemd/`` in the tree, package
data ``colo_xdp/systemd/`` in a wheel) and ``colo-xdp install-units``.

The files name ``/usr/local/bin/colo-xdp`` (where ``pip install`` puts it);
installing them writes the path of the colo-xdp that runs the command
instead, so a venv or /usr/bin install starts the right program.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from colo_xdp.errors import ColoXdpError

PLACEHOLDER_EXEC = "/usr/local/bin/colo-xdp"
UNIT_NAMES = ("colo-xdp-compare@.service", "colo-xdp-forward@.service")
DEFAULT_UNIT_DIR = "/etc/systemd/system"


class UnitsError(ColoXdpError):
    """The units could not be found or written; the message is one sentence."""


def units_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "systemd", here.parents[2] / "systemd"):
        if all((candidate / name).is_file() for name in UNIT_NAMES):
            return candidate
    raise UnitsError("the unit files are not installed with this colo-xdp; reinstall it "
                     "from a wheel or sdist built by its setup.py")


def running_executable() -> str:
    """The colo-xdp command that runs now, as an absolute path."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "colo-xdp" and argv0.is_file():
        return str(argv0.absolute())
    found = shutil.which("colo-xdp")
    if found:
        return os.path.abspath(found)
    raise UnitsError("cannot tell where the colo-xdp command is; give --exec PATH")


def render(text: str, executable: str) -> str:
    return text.replace(PLACEHOLDER_EXEC, executable)


def rendered_units(executable: str) -> dict[str, str]:
    src = units_dir()
    return {name: render((src / name).read_text(), executable) for name in UNIT_NAMES}


def install(target: str, executable: str) -> list[str]:
    """Write the units into ``target`` (atomically, mode 0644); their paths."""
    if not os.path.isdir(target):
        raise UnitsError(f"{target} is not a directory; create it or give another --dir")
    written = []
    for name, text in rendered_units(executable).items():
        path = os.path.join(target, name)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise UnitsError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
