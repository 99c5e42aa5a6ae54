"""``colo-xdp compare`` refuses what it cannot run with one line, never a traceback.

Each case runs the real command line (``.venv/bin/colo-xdp``) and expects a
non-zero exit before it would ever print ``ready``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 10.0


def colo_xdp_argv() -> list[str]:
    for exe in (ROOT / ".venv" / "bin" / "colo-xdp", Path(sys.executable).parent / "colo-xdp"):
        if exe.exists():
            return [str(exe)]
    return [sys.executable, "-m", "colo_xdp.cli"]


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="cx-cli-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI; a run that does not end by itself is killed and fails the test."""
    try:
        return subprocess.run(colo_xdp_argv() + list(args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:   # subprocess.run has killed it
        pytest.fail(f"colo-xdp {' '.join(args)} still running after {RUN_TIMEOUT} s: "
                    f"{exc.stderr!r}")


def compare(workdir: Path, **roles: str) -> list[str]:
    """compare arguments: unix server sockets in ``workdir`` unless overridden."""
    specs = {"primary_in": f"unix:{workdir}/pin.sock,server=on",
             "secondary_in": f"unix:{workdir}/sin.sock,server=on",
             "outdev": f"unix:{workdir}/out.sock,server=on"}
    specs.update(roles)
    args = ["compare"]
    for role, spec in specs.items():
        args += [f"--{role.replace('_', '-')}", spec]
    return args


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("colo-xdp: error: "), line
    assert "colo-xdp: ready" not in result.stderr
    for fragment in fragments:
        assert fragment in line, line
    assert result.stdout == ""
    return line


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("role, spec, fragment", [
    ("primary_in", "udp:127.0.0.1:9000", "is not an endpoint"),
    ("secondary_in", "unix:", "names no socket path"),
    ("outdev", "tcp:127.0.0.1:99999", "port from 1 to 65535"),
    ("notify_dev", "unix:/tmp/n.sock,server=perhaps", "server takes on or off"),
    ("primary_in", "unix:/tmp/p.sock,server=on,reconnect=1", "not servers"),
    ("outdev", "tcp:127.0.0.1:9000,reconnect=nan", "finite number of seconds"),
    ("secondary_in", "unix:/tmp/s.sock,mux=on", "unknown option 'mux'"),
])
def test_bad_spec(workdir, role, spec, fragment):
    result = run(*compare(workdir, **{role: spec}))
    line = assert_one_error_line(result, fragment, f"--{role.replace('_', '-')}")
    assert result.returncode == 2, line
    assert os.listdir(workdir) == []              # nothing was opened


def test_identical_unix_endpoints(workdir):
    result = run(*compare(workdir, secondary_in=f"unix:{workdir}/pin.sock,server=on"))
    assert_one_error_line(result, "primary-in and secondary-in", "same socket")
    assert os.listdir(workdir) == []


def test_notify_dev_same_as_outdev(workdir):
    result = run(*compare(workdir, notify_dev=f"unix:{workdir}/out.sock,server=on"))
    assert_one_error_line(result, "outdev and notify-dev", "same socket")


def test_identical_tcp_endpoints_localhost_and_loopback(workdir):
    port = free_tcp_port()
    result = run(*compare(workdir, primary_in=f"tcp:localhost:{port},server=on",
                          outdev=f"tcp:127.0.0.1:{port},server=on"))
    assert_one_error_line(result, "primary-in and outdev", "same socket")


def test_unreachable_tcp_peer_without_reconnect(workdir):
    port = free_tcp_port()                        # nobody listens there
    result = run(*compare(workdir, secondary_in=f"tcp:127.0.0.1:{port}"))
    line = assert_one_error_line(result, "secondary-in", f"127.0.0.1:{port}",
                                 "Connection refused", "reconnect=")
    assert result.returncode == 1, line
    # outdev and primary-in were already listening: their files are gone again.
    assert os.listdir(workdir) == []


def test_listen_in_a_missing_directory(workdir):
    result = run(*compare(workdir, outdev=f"unix:{workdir}/no/such/dir/out.sock,server=on"))
    assert_one_error_line(result, "cannot listen", "No such file or directory")
    assert os.listdir(workdir) == []


def test_unix_path_too_long(workdir):
    path = workdir / ("x" * 120)
    result = run(*compare(workdir, primary_in=f"unix:{path},server=on"))
    line = assert_one_error_line(result, "cannot listen", "too long")
    assert not line.endswith(": None")


def test_tcp_port_already_in_use(workdir):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run(*compare(workdir, outdev=f"tcp:127.0.0.1:{port},server=on"))
    assert_one_error_line(result, "cannot listen", f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("args", [
    ["compare"],                                                      # required options
    ["compare", "--primary-in", "unix:/tmp/p", "--secondary-in", "unix:/tmp/s",
     "--outdev", "unix:/tmp/o", "--max-queue-size", "0"],
    ["compare", "--primary-in", "unix:/tmp/p", "--secondary-in", "unix:/tmp/s",
     "--outdev", "unix:/tmp/o", "--compare-timeout", "soon"],
    ["frobnicate"],
])
def test_usage_errors_exit_2_without_traceback(args):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Error:" in result.stderr


def test_help():
    result = run("compare", "--help")
    assert result.returncode == 0
    for option in ("--primary-in", "--secondary-in", "--outdev", "--notify-dev",
                   "--vnet-hdr-support", "--compare-timeout", "--max-queue-size"):
        assert option in result.stdout


def test_more_passthrough_rules_than_kept_is_one_sentence_before_anything_opens(workdir):
    """The limit is the engine's and the XDP classifier's (CX_MAX_RULES); --check
    sees it too."""
    from colo_xdp.engine import MAX_PASSTHROUGH_RULES
    flows = [arg for i in range(MAX_PASSTHROUGH_RULES + 1)
             for arg in ("--passthrough", f"udp * > *:{1000 + i}")]
    for extra in (["--check"], []):
        result = run(*compare(workdir), *flows, *extra)
        assert result.returncode == 2
        assert_one_error_line(result, f"at most {MAX_PASSTHROUGH_RULES} passthrough rules are "
                                      f"kept, not {MAX_PASSTHROUGH_RULES + 1}")
    assert run(*compare(workdir), *flows[2:], "--check").returncode == 0
