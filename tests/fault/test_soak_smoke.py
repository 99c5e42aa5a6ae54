"""`make soak` itself, for a few seconds: the tool runs and its verdict
holds (the real soak, minutes long, is not part of `make test`)."""
import subprocess
import sys


def test_a_short_soak_passes():
    proc = subprocess.run([sys.executable, "-m", "colo_xdp.soak", "--seconds", "4",
                           "--report-every", "1", "--rate", "2000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("soak: verdict PASS: alive=yes, accounted=yes"), proc.stdout
    assert "rss=bounded" in last
