# The cffi helper is built out-of-line (API mode) at install time; the build
# script lives outside the package, as pyca/cryptography does.
#
# bpf/ (the XDP classifier's C and the header it shares with user space) is
# package data: build_py copies it into colo_xdp/bpf/ of the build, so that a
# wheel carries it and XDP mode works from any install.  The tree keeps one
# copy, in bpf/; colo_xdp/transport/xdp/classify_abi.py looks in both places.
# systemd/ (the unit files) is copied to colo_xdp/systemd/ the same way, for
# `colo-xdp install-units`.
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE_DATA_DIRS = {"bpf": ("*.c", "*.h"), "systemd": ("*.service", "*.conf", "*.toml")}


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        for name, patterns in PACKAGE_DATA_DIRS.items():
            target = Path(self.build_lib) / "colo_xdp" / name
            target.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for src in sorted((ROOT / name).glob(pattern)):
                    shutil.copy2(src, target / src.name)


setup(cffi_modules=["csrc/build_cffi.py:ffibuilder"], cmdclass={"build_py": BuildPyWithData})
