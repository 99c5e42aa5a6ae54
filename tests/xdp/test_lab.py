"""`colo-xdp demo` on the real path (colo_xdp/lab/xdp_demo.py): the namespace lab with
colo-xdp in XDP mode, end to end through the CLI, and its teardown on every
path.  Root, bcc and headers as the other XDP tests (skip without, fail
under CI)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colo_xdp.lab import xdp_demo as lab
from xdp_kit import sh

DEMO_BUDGET_S = 20.0


def _argv() -> list[str]:
    script = Path(sys.executable).with_name("colo-xdp")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "colo_xdp.cli"]
    return [*head, "demo"]


def _tag(out: str) -> str:
    return out.split("namespaces cxlab-*-", 1)[1].split()[0]


def _leftovers(tag: str) -> list[str]:
    return [ns for ns in lab.lab_namespaces() if ns.endswith(f"-{tag}")]


def _xdp_in_root_ns() -> bool:
    return "prog/xdp" in sh("ip", "-d", "link", "show")


def test_demo_runs_the_lab_and_removes_it(bpf_ready, netns_available):
    began = time.monotonic()
    done = subprocess.run(_argv(), capture_output=True, text=True, timeout=DEMO_BUDGET_S * 3)
    took = time.monotonic() - began
    out = done.stdout

    assert done.returncode == 0, out + done.stderr
    assert took < DEMO_BUDGET_S
    assert "XDP mode on a lab of network namespaces" in out
    assert "compare --primary-xdp p-h --secondary-xdp s-h --outdev xdp:c-h" in out
    assert "checkpoint_requested reason=mismatch" in out
    assert "checkpoint: released 1 primary frame(s), dropped 1 secondary frame(s)" in out
    assert "secondary   72 bytes" in out and "DIVERGED'" in out
    assert "the client got exactly the primary's replies: yes" in out
    assert "mismatch checkpoint after divergence  1" in out
    assert "checkpoint requests while in step     0" in out
    assert "lab removed: yes" in out
    assert out.rstrip().splitlines()[-1].startswith("colo-xdp demo: as expected")
    assert _leftovers(_tag(out)) == []
    assert not _xdp_in_root_ns()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_removes_the_lab(bpf_ready, netns_available, sig):
    proc = subprocess.Popen(_argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Phase 1:"):
                break
        tag = _tag("".join(lines))
        assert _leftovers(tag), "the lab should exist while the demo runs"
        proc.send_signal(sig)
        rest = proc.communicate(timeout=15)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "demo interrupted; its namespaces and processes are removed" in rest
    assert _leftovers(tag) == []


def test_without_xdp_the_demo_says_why_and_runs_the_chardev_scenario(monkeypatch):
    from click.testing import CliRunner

    from colo_xdp import cli
    from colo_xdp.lab import chardev_demo as demo

    monkeypatch.setattr(lab, "xdp_problem", lambda: "the XDP lab needs root")
    monkeypatch.setattr(demo, "run", lambda quiet, echo: echo("chardev scenario") or True)
    result = CliRunner().invoke(cli.main, ["demo"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "colo-xdp demo: XDP mode is unavailable here (the XDP lab needs root); "
        "running the chardev demo instead.",
        "chardev scenario"]


def test_the_service_is_a_pure_function_of_the_request():
    assert lab.answer(b"request 001") == lab.answer(b"request 001")
    assert lab.answer(b"request 001") != lab.answer(b"request 002")
    assert lab.answer(b"request 001", diverged=True).endswith(b": DIVERGED")
