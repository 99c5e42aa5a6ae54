"""colo-xdp as installed from a wheel, not from this tree: bpf/ travels as
package data (XDP mode compiles it from there, doctor finds it), the unit
files travel too, and --version / the started line say which version runs.

The wheel is built once per session from a copy of the tree (so nothing is
left in it) with pip's own build isolation, then unpacked with
``pip install --no-deps --target`` and run from a directory outside the tree
with the tree's venv for the dependencies.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_service import colo_xdp_argv

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VERSION = importlib.metadata.version("colo-xdp")


def _ignore(_dir, names):
    return {n for n in names if n in (".venv", "build", ".git", "__pycache__", ".pytest_cache",
                                      ".hypothesis", "vagrant")
            or n.endswith((".so", ".egg-info")) or n == "_native.c"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site dir holding the installed wheel, the wheel's path)."""
    base = tmp_path_factory.mktemp("cxp-wheel")
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=_ignore)
    dist = base / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--disable-pip-version-check", "-w", str(dist), str(tree)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("colo_xdp-*.whl")
    site = base / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--disable-pip-version-check", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return site, wheel


def run_installed(site: Path, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python with the installed copy first on the path, outside the tree."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_carries_bpf_the_units_and_the_c_core(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("colo_xdp/bpf/classify.c", "colo_xdp/bpf/classify.h"):
        assert name in names
        assert zipfile.ZipFile(wheel).read(name) == (ROOT / name.split("/", 1)[1]).read_bytes()
    assert any(n.startswith("colo_xdp/_native") and n.endswith(".so") for n in names)
    assert {n for n in names if n.startswith("colo_xdp/systemd/")} >= {
        "colo_xdp/systemd/colo-xdp-compare@.service", "colo_xdp/systemd/colo-xdp-forward@.service"}
    assert not any(n.startswith(("tests/", "tools/")) for n in names)


def test_the_installed_copy_finds_its_own_bpf_and_doctor_says_so(installed):
    site, _ = installed
    result = run_installed(site, (
        "import json, colo_xdp\n"
        "from colo_xdp.transport.xdp import classify_abi\n"
        "from colo_xdp.cli import doctor\n"
        "checks = {c.name: c for c in doctor.run()}\n"
        "print(json.dumps({'pkg': colo_xdp.__file__, 'c': str(classify_abi.CLASSIFY_C),\n"
        "                  'check': checks['classifier'].status,\n"
        "                  'detail': checks['classifier'].detail}))\n"))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["pkg"].startswith(str(site)), got           # not the tree's copy
    assert got["c"] == str(site / "colo_xdp" / "bpf" / "classify.c")
    assert got["check"] == "ok" and str(site) in got["detail"]


def test_doctor_says_when_the_classifier_source_is_missing(installed, tmp_path):
    site, _ = installed
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    shutil.rmtree(broken / "colo_xdp" / "bpf")
    # The tree's bpf/ is two levels up from colo_xdp/transport: not here.
    result = run_installed(broken, (
        "from colo_xdp.cli import doctor\n"
        "c = {c.name: c for c in doctor.run()}['classifier']\n"
        "print(c.status, c.detail, c.fix, sep='|')\n"))
    assert result.returncode == 0, result.stderr
    status, detail, fix = result.stdout.strip().split("|")
    assert status == "missing" and "classify.c" in detail and "reinstall" in fix


def test_xdp_mode_compiles_the_classifier_from_the_installed_copy(installed):
    """What `compare --primary-xdp` does first: bcc compiles bpf/classify.c
    from the package and the kernel runs it (BPF_PROG_TEST_RUN on a frame)."""
    site, _ = installed
    checks = run_installed(site, (
        "from colo_xdp.cli import doctor\n"
        "print(','.join(c.name for c in doctor.run() if c.mode == 'xdp' and c.status != 'ok'))"))
    missing = checks.stdout.strip()
    if missing or os.geteuid() != 0:
        why = f"XDP mode is not ready here ({missing or 'not root'})"
        if CI:
            pytest.fail(why)
        pytest.skip(why)
    result = run_installed(site, (
        "from colo_xdp.transport.xdp.classifier import XdpClassifier\n"
        "from colo_xdp.transport.xdp.classify_abi import CLASSIFY_C, Side\n"
        "from colo_xdp.lab.pktgen import udp_frame\n"
        "with XdpClassifier(Side.PRIMARY, handle_sigterm=False) as c:\n"
        "    run = c.test_run(udp_frame(b'from the wheel'))\n"
        "print(CLASSIFY_C, run.action)\n"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    path, action = result.stdout.split()
    assert path == str(site / "colo_xdp" / "bpf" / "classify.c")
    assert int(action) in (1, 2, 4)                         # XDP_DROP, XDP_PASS, XDP_REDIRECT


def test_version():
    result = subprocess.run(colo_xdp_argv() + ["--version"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert result.stdout == f"colo-xdp {VERSION}\n"


def test_the_started_line_says_the_version(lab):
    cmp = lab.start()
    line = cmp.wait_line(r"^colo-xdp: started ")
    assert f" version={VERSION} " in line
    cmp.stop_summary()
