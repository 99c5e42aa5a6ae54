"""Every python started with this directory on PYTHONPATH (tests/sanitize/
sanitize_kit.py arranges it) imports colo_xdp._native from the sanitized
build named by CX_SANITIZED_NATIVE instead of the installed one, and records
that it did in CX_SANITIZE_LOG/loaded.<pid>.json.  colo_xdp itself is not
changed: its ``from colo_xdp._native import ffi, lib`` finds this finder
first on sys.meta_path.  Then the sitecustomize this one shadows (Debian's)
runs as it would have.
"""
import importlib.machinery
import importlib.util
import json
import os
import sys

_NATIVE = os.environ.get("CX_SANITIZED_NATIVE")
_NAME = "colo_xdp._native"


def _mapped(needle: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(needle in line for line in maps)


class _SanitizedLoader(importlib.machinery.ExtensionFileLoader):
    def exec_module(self, module):
        super().exec_module(module)
        log = os.environ.get("CX_SANITIZE_LOG")
        if not log or not os.path.isdir(log):
            return
        record = {
            "pid": os.getpid(),
            "argv": [sys.executable, *sys.argv],
            "file": module.__file__,
            "module_mapped": _mapped(os.path.realpath(self.path)),
            "asan_mapped": _mapped("libclang_rt.asan"),
        }
        with open(os.path.join(log, f"loaded.{os.getpid()}.json"), "w") as f:
            json.dump(record, f)


class _SanitizedNative:
    """A meta path finder for colo_xdp._native only."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != _NAME:
            return None
        return importlib.util.spec_from_file_location(
            fullname, _NATIVE, loader=_SanitizedLoader(fullname, _NATIVE))


def _shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:               # as site.py treats a failing sitecustomize
        pass


if _NATIVE:
    sys.meta_path.insert(0, _SanitizedNative())
_shadowed_sitecustomize()
