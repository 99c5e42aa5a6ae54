"""The interop harness without a comparator: options, command lines, cleanup, runs."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools import harness as h
from colo_xdp.lab.pktgen import Record
from tools.qemu_ref import qemu_argv

OPTIONS = h.CompareOptions(vnet_hdr_support=True, compare_timeout=500,
                           expired_scan_cycle=100, max_queue_size=4)


def test_options_as_qemu_properties_and_cli_args():
    assert OPTIONS.qemu_properties() == (",compare_timeout=500,expired_scan_cycle=100"
                                         ",max_queue_size=4,vnet_hdr_support=on")
    assert OPTIONS.cli_args() == ["--vnet-hdr-support", "--compare-timeout", "500",
                                  "--expired-scan-cycle", "100", "--max-queue-size", "4"]
    defaults = h.CompareOptions()
    assert defaults.qemu_properties() == "" and defaults.cli_args() == []


def test_qemu_command_line():
    argv = qemu_argv("qemu", Path("/d"), OPTIONS)
    assert argv[:8] == ["qemu", "-M", "none", "-nographic", "-nodefaults", "-display",
                        "none", "-object"]
    assert "socket,id=cout,path=/d/out.sock,server=on,wait=off" in argv
    assert argv[-1] == ("colo-compare,id=cmp0,primary_in=pin,secondary_in=sin,outdev=cout,"
                        "iothread=it0,notify_dev=notify" + OPTIONS.qemu_properties())


def test_colo_xdp_command_line():
    argv = h.colo_xdp_argv(Path("/bin/colo-xdp"), OPTIONS)(Path("/d"))
    assert argv[:4] == ["/bin/colo-xdp", "compare",
                        "--primary-in", "unix:/d/pin.sock,server=on"]
    assert argv[-len(OPTIONS.cli_args()):] == OPTIONS.cli_args()


def test_process_that_exits_early_is_reported_and_cleaned_up():
    seen = []

    def argv_for(directory):
        seen.append(directory)
        return [sys.executable, "-c", "print('no sockets here'); raise SystemExit(3)"]

    with pytest.raises(h.HarnessError, match="exited with status 3.*no sockets here"):
        with h.supervised("dummy", argv_for, h.CompareOptions(), h.sockets_exist):
            pass
    assert not seen[0].exists()


def test_process_is_stopped_and_cleaned_up_when_the_block_raises():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(KeyError):
        with h.supervised("dummy", lambda d: sleeper, h.CompareOptions(),
                          lambda c: True) as comparator:
            assert comparator.alive()
            raise KeyError("boom")
    assert not comparator.alive() and not comparator.directory.exists()


@pytest.mark.parametrize("text, ready", [("colo-xdp: ready\n", True), ("ready\n", True),
                                         ("colo-xdp: ready to go\n", False), ("", False)])
def test_logged_ready_is_a_line_ending_in_ready(tmp_path, text, ready):
    process = SimpleNamespace(log=text)          # what a SupervisedProcess collected
    comparator = h.Comparator("x", tmp_path, h.CompareOptions(), process)
    assert h.logged_ready(comparator) is ready


def test_after_each_write_attributes_replies_to_the_last_write():
    def ev(channel, frame=b"f"):
        return h.Event(0.0, channel, Record(0, frame))

    run = h.Run([ev(h.PRIMARY), ev(h.SECONDARY), ev(h.OUT), ev(h.NOTIFY, h.DO_CHECKPOINT),
                 ev(h.NOTIFY, h.DO_CHECKPOINT), ev(h.TO_NOTIFY, h.COLO_CHECKPOINT),
                 ev(h.OUT)])
    assert run.after_each_write() == [(h.PRIMARY, 0, 0), (h.SECONDARY, 1, 2),
                                      (h.TO_NOTIFY, 1, 0)]
    assert run.released == [b"f", b"f"] and run.do_checkpoints == 2
