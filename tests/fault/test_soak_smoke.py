"""`make soak` itself, for a few seconds per mode: the tool runs, every
fault event happens at least once, and the verdict holds (the real soak,
minutes long, is not part of `make test`)."""
import os
import subprocess
import sys

import pytest

from colo_xdp.transport.xdp import classifier as xdp

# Events each mode's soak must have gone through, as its summary line says.
EVENTS = {"chardev": ("1 primary records cut", "1 zero-length secondary records",
                      "passthrough changes"),
          "xdp": ("frames cut short", "1 interface removed and back", "passthrough changes")}


@pytest.mark.parametrize("mode", ["chardev", "xdp"])
def test_a_short_soak_passes(mode):
    if mode == "xdp":
        why = xdp.unavailable()
        if why:
            if os.environ.get("CI"):
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
    proc = subprocess.run([sys.executable, "-m", "tools.soak", "--mode", mode,
                           "--seconds", "5", "--report-every", "1", "--rate", "2000"],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.strip().splitlines()
    assert lines[-1] == f"soak: verdict PASS: {mode} PASS", out
    verdict = next(ln for ln in lines if ln.startswith(f"soak[{mode}] verdict "))
    assert verdict.startswith(f"soak[{mode}] verdict PASS: alive=yes, accounted=yes"), out
    assert "rss=bounded" in verdict
    summary = next(ln for ln in lines if ln.startswith(f"soak[{mode}] stopped "))
    for event in EVENTS[mode]:
        assert event in summary, out
