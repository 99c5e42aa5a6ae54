"""``colo-xdp doctor``: one line per check, a fix for what is missing, and an
exit status that fails only for what chardev mode needs."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from click.testing import CliRunner

from colo_xdp.cli import doctor
from colo_xdp.cli import main
from test_service import colo_xdp_argv

CHECK_NAMES = ["python", "engine", "prometheus", "kernel", "bpf", "af_xdp", "btf", "bcc", "classifier",
               "headers", "privileges", "memlock", "tun", "kvm", "qemu", "tcpdump"]
LINE = re.compile(r"^(ok|missing|unknown) +(chardev|xdp|lab) +(\w+) +(.+)$")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(colo_xdp_argv() + ["doctor", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def parse(stdout: str) -> dict[str, tuple[str, str, str]]:
    checks, rest = {}, []
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            checks[m.group(3)] = (m.group(1), m.group(2), m.group(4))
        else:
            rest.append(line)
    return checks


def test_this_host():
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    checks = parse(result.stdout)
    assert list(checks) == CHECK_NAMES
    for name in ("python", "engine", "prometheus"):
        assert checks[name][:2] == ("ok", "chardev")
    assert "chardev mode: ready" in result.stdout
    assert re.search(r"^xdp mode: ", result.stdout, re.M)


def test_json():
    result = run("--json")
    checks = json.loads(result.stdout)
    assert [c["name"] for c in checks] == CHECK_NAMES
    assert all(set(c) == {"name", "mode", "status", "detail", "fix"} for c in checks)
    assert all(c["status"] in ("ok", "missing", "unknown") for c in checks)


def fake_host(tmp_path, release="6.1.0-test", config="CONFIG_BPF_SYSCALL=y\n",
              cap_eff="0000000000000000") -> str:
    root = tmp_path / "host"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/status").write_text(f"Name:\tx\nCapEff:\t{cap_eff}\n")
    (root / "boot").mkdir()
    (root / "boot" / f"config-{release}").write_text(config)
    return str(root)


def test_a_bare_host_says_what_to_fix_and_still_passes(tmp_path):
    """XDP and lab checks are informative: all missing, exit status still 0."""
    root = fake_host(tmp_path)
    result = run("--root", root, env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    checks = parse(result.stdout)
    assert list(checks) == CHECK_NAMES
    expected = {
        "af_xdp": "fix: use a kernel built with CONFIG_XDP_SOCKETS=y",
        "btf": "fix: use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        "headers": "fix: apt-get install linux-headers-6.1.0-test",
        "privileges": "fix: run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF",
        "tun": "fix: modprobe tun",
        "kvm": "fix: enable virtualisation",
        "qemu": "fix: apt-get install qemu-system-x86",
        "tcpdump": "fix: apt-get install tcpdump",
    }
    for name, fix in expected.items():
        status, mode, text = checks[name]
        assert status == "missing", (name, text)
        assert fix in text, (name, text)
    assert checks["bpf"][0] == "ok" and "CONFIG_BPF_SYSCALL=y" in checks["bpf"][2]
    assert checks["kernel"][0] == "ok"
    assert "chardev mode: ready" in result.stdout
    assert "informative" in result.stdout


def test_old_kernel_and_capabilities(tmp_path):
    caps = (1 << 12) | (1 << 13) | (1 << 39)             # NET_ADMIN, NET_RAW, BPF
    root = fake_host(tmp_path, release="4.19.0-old",
                     config="CONFIG_BPF_SYSCALL=y\nCONFIG_XDP_SOCKETS=y\n",
                     cap_eff=f"{caps:016x}")
    checks = {c.name: c for c in doctor.run(doctor.Host(root=root))}
    assert checks["kernel"].status == "missing" and "older than 5.18" in checks["kernel"].detail
    assert checks["af_xdp"].status == "ok"
    assert checks["privileges"].status == "ok"
    assert checks["privileges"].detail == "capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW"


@pytest.mark.parametrize("release, status", [
    ("5.10.0-28-amd64", "missing"),      # the floor once documented: the program does not load
    ("5.17.15", "missing"),
    ("5.18.0-1-amd64", "ok"),            # bpf_xdp_get_buff_len
    ("6.1.0-13-amd64", "ok"),
])
def test_kernel_floor_is_the_one_the_classifier_needs(tmp_path, release, status):
    root = fake_host(tmp_path, release=release, config="CONFIG_BPF_SYSCALL=y\n")
    check = {c.name: c for c in doctor.run(doctor.Host(root=root))}["kernel"]
    assert check.status == status, check
    if status == "missing":
        assert "older than 5.18" in check.detail and "bpf_xdp_get_buff_len" in check.detail
        assert "5.18 or later" in check.fix


def test_missing_engine_fails_the_run(monkeypatch):
    real = doctor._try_import

    def no_native(module):
        return "ImportError: not built" if module == "colo_xdp._native" else real(module)

    monkeypatch.setattr(doctor, "_try_import", no_native)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    checks = parse(result.output)
    assert checks["engine"] == ("missing", "chardev",
                                "the C core does not load (ImportError: not built); fix: build "
                                "it: make setup, or .venv/bin/pip install -e .")
    assert "chardev mode: NOT ready (engine)" in result.output
