"""``--config FILE`` (TOML, the options by their long names; the command line
overrides it) and ``--passthrough-file`` (the passthrough list across
restarts), through the real CLI."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from control_kit import Ctl
from test_service import TIMEOUT, Compare, colo_xdp_argv, connect_all, udp


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def roles_toml(lab) -> str:
    return "".join(f'{key} = "unix:{lab.path(name)},server=on"\n' for key, name in (
        ("primary-in", "pin.sock"), ("secondary-in", "sin.sock"), ("outdev", "out.sock"),
        ("notify-dev", "notify.sock")))


def start(lab, *args: str) -> Compare:
    cmp = Compare(colo_xdp_argv() + ["compare", *args])
    lab.procs.append(cmp)
    cmp.wait_line(r"^colo-xdp: ready$")
    return cmp


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(colo_xdp_argv() + list(args), capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)


def test_the_file_says_what_the_options_say_and_options_win(lab):
    conf = write(lab.path("vm1.toml"), roles_toml(lab) + (
        "compare-timeout = 2500\n"
        "max-queue-size = 77\n"
        f'control = "{lab.path("ctl.sock")}"\n'
        'passthrough = ["udp * > *:53", "icmp"]\n'
        "vnet-hdr-support = false\n"))
    cmp = start(lab, "--config", conf, "--max-queue-size", "99")
    started = dict(re.findall(r"(\w+)=(\S+)", cmp.wait_line(r"^colo-xdp: started ")))
    assert started["compare_timeout_ms"] == "2500"           # from the file
    assert started["max_queue_size"] == "99"                 # the command line wins
    assert started["outdev"] == f"unix:{lab.path('out.sock')},server=on"
    ctl = Ctl.unix(lab.path("ctl.sock"))
    lab.track(ctl.sock)
    assert [r["flow"] for r in ctl.ask({"cmd": "passthrough", "op": "list"})["rules"]] == \
        ["udp * > *:53", "icmp * > *"]
    out, note, pin, sin = connect_all(lab)
    pair = udp(b"configured")
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    cmp.stop_summary()


@pytest.mark.parametrize("text, fragment", [
    ("bogus = 1\n", "unknown key 'bogus' for colo-xdp compare"),
    ("outdev = [1, 2]\n", "outdev takes one value, not a list"),
    ("vnet-hdr-support = 1\n", "vnet-hdr-support takes true or false"),
    ("[compare]\noutdev = 'x'\n", "unknown key 'compare'"),
    ("[outdev]\nhost = 'x'\n", "outdev is a table; give it a value"),
    ("outdev = \n", "is not valid TOML"),
    ("compare-timeout = 100000000000000000000\n", "compare-timeout"),
])
def test_a_bad_config_file_is_one_line(lab, text, fragment):
    roles = "".join(line + "\n" for line in roles_toml(lab).splitlines()
                    if not line.startswith("outdev"))
    conf = write(lab.path("bad.toml"), roles + text + (
        "" if text.startswith(("outdev", "[")) else f'outdev = "unix:{lab.path("o")},server=on"\n'))
    result = run_cli("compare", "--config", conf)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr


def test_a_missing_config_file_is_one_line(lab):
    result = run_cli("compare", "--config", lab.path("nope.toml"))
    assert result.returncode == 2
    assert result.stderr == (f"colo-xdp: error: cannot read --config {lab.path('nope.toml')}: "
                             "No such file or directory\n")


def test_the_passthrough_list_survives_a_restart(lab):
    keep = lab.path("vm1.passthrough")
    args = ("--config", write(lab.path("vm1.toml"), roles_toml(lab)),
            "--control", lab.path("ctl.sock"), "--passthrough-file", keep,
            "--passthrough", "icmp")
    cmp = start(lab, *args)
    ctl = Ctl.unix(lab.path("ctl.sock"))
    assert ctl.ask({"cmd": "passthrough", "op": "add", "flow": "udp 10.0.0.0/24 > *:53"})["ok"]
    assert ctl.ask({"cmd": "passthrough", "op": "add", "flow": "tcp * > *:22"})["ok"]
    assert ctl.ask({"cmd": "passthrough", "op": "del", "flow": "tcp * > *:22"})["ok"]
    ctl.sock.close()
    lines = [x for x in open(keep).read().splitlines() if not x.startswith("#")]
    assert lines == ["icmp * > *", "udp 10.0.0.0/24 > *:53"]
    cmp.stop_summary()

    cmp = start(lab, *args[:-2])                             # restarted, without --passthrough
    ctl = Ctl.unix(lab.path("ctl.sock"))
    lab.track(ctl.sock)
    assert [r["flow"] for r in ctl.ask({"cmd": "passthrough", "op": "list"})["rules"]] == \
        ["icmp * > *", "udp 10.0.0.0/24 > *:53"]
    # A change that cannot be written is refused: what runs is what the next start reads.
    os.rename(keep, keep + ".moved")
    os.mkdir(keep)                                           # the path is now a directory
    reply = ctl.ask({"cmd": "passthrough", "op": "add", "flow": "tcp * > *:80"})
    assert not reply["ok"] and "cannot write --passthrough-file" in reply["error"], reply
    assert [r["flow"] for r in ctl.ask({"cmd": "passthrough", "op": "list"})["rules"]] == \
        ["icmp * > *", "udp 10.0.0.0/24 > *:53"]
    os.rmdir(keep)
    cmp.stop_summary()


def test_a_bad_line_in_the_passthrough_file_is_one_line(lab):
    keep = write(lab.path("vm1.passthrough"), "# ok\nudp * > *:53\nudp 10.0.0.0/0 > *\n")
    result = run_cli("compare", "--config", write(lab.path("vm1.toml"), roles_toml(lab)),
                     "--passthrough-file", keep)
    assert result.returncode == 2
    assert result.stderr.startswith(f"colo-xdp: error: --passthrough-file {keep} line 3: ")
    assert len(result.stderr.splitlines()) == 1
