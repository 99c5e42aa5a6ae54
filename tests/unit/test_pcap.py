"""``--miscompare-pcap``: the evidence of mismatches and timeouts as pcapng,
read back with real readers: Debian's tcpdump and the python-pcapng library."""
from __future__ import annotations

import errno
import glob
import io
import os
import re
import stat
import struct
import subprocess
import time

import pytest

from colo_xdp.observe import pcap
from colo_xdp.lab.pktgen import vnet_header
from control_kit import need_module, need_tool
from test_service import ServiceSandbox, connect_all, udp

TIMEOUT = 5.0


def tcpdump(path: str) -> list[str]:
    """tcpdump's one-line view of every packet in ``path`` (-e: with MACs)."""
    exe = need_tool("tcpdump")
    result = subprocess.run([exe, "-r", path, "-nn", "-e", "-tttt"], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def blocks(path: str) -> tuple[list[dict], list[dict]]:
    """(interfaces, packets) as python-pcapng reads them."""
    pcapng = need_module("pcapng")
    from pcapng import blocks as b
    interfaces, packets = [], []
    with open(path, "rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, b.InterfaceDescription):
                interfaces.append({"name": block.options.get("if_name"),
                                   "link_type": block.link_type})
            elif isinstance(block, b.EnhancedPacket):
                packets.append({"interface": block.interface_id,
                                "if_name": block.interface.options.get("if_name"),
                                "data": bytes(block.packet_data),
                                "comment": block.options.get("opt_comment"),
                                "timestamp": block.timestamp})
    return interfaces, packets


def wait_packets(path: str, n: int) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        packets = packets_now(path)
        if len(packets) >= n:
            return packets
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never held {n} packets")
        time.sleep(0.02)


def packets_now(path: str) -> list[dict]:
    """The packets of a file the service may be rotating or writing right now."""
    errors = need_module("pcapng.exceptions")
    try:
        return blocks(path)[1]
    except FileNotFoundError:                # between the rename and the new file
        return []
    except errors.PcapngLoadError:           # a block half written: look again later
        return []


def start(lab: ServiceSandbox, *args: str):
    path = lab.path("evidence.pcapng")
    return lab.start(args=("--miscompare-pcap", path, *args)), path


# -- through the service ---------------------------------------------------------------------

def test_mismatch_pair_read_back_by_tcpdump_and_pcapng(lab):
    cmp, path = start(lab)
    out, note, pin, sin = connect_all(lab)
    primary, secondary = udp(b"primary says A"), udp(b"second says B!")
    t0 = time.time()
    pin.send(primary)
    sin.send(secondary)
    packets = wait_packets(path, 2)

    interfaces, _ = blocks(path)
    assert interfaces == [{"name": "primary", "link_type": 1},
                          {"name": "secondary", "link_type": 1}]
    assert [(p["if_name"], p["data"]) for p in packets] == [("primary", primary),
                                                           ("secondary", secondary)]
    conn = "udp 10.0.0.1:1000 > 10.0.0.2:2000"
    for p in packets:
        assert re.fullmatch(rf'checkpoint_requested #1 reason=mismatch side={p["if_name"]} '
                            rf'conn="{conn}" held_ms=\d+', p["comment"]), p["comment"]
        assert t0 - 1 < p["timestamp"] < time.time() + 1

    lines = tcpdump(path)
    assert len(lines) == 2, lines
    for line, frame in zip(lines, (primary, secondary)):
        assert "52:54:00:00:00:01 > 52:54:00:00:00:02, ethertype IPv4 (0x0800)" in line
        assert f"length {len(frame)}: 10.0.0.1.1000 > 10.0.0.2.2000: UDP, length 14" in line
    cmp.stop_summary()


def test_timeout_evidence(lab):
    cmp, path = start(lab, "--compare-timeout", "100", "--expired-scan-cycle", "50")
    out, note, pin, sin = connect_all(lab)
    alone = udp(b"nobody answers", sport=4321)
    pin.send(alone)
    packets = wait_packets(path, 1)
    assert packets[0]["data"] == alone and packets[0]["if_name"] == "primary"
    assert "reason=timeout side=primary" in packets[0]["comment"]
    assert 'conn="udp 10.0.0.1:4321 > 10.0.0.2:2000"' in packets[0]["comment"]
    held_ms = int(packets[0]["comment"].rsplit("held_ms=", 1)[1])
    assert held_ms >= 100
    assert len(tcpdump(path)) == 1


def test_vnet_header_is_stripped(lab):
    cmp, path = start(lab, "--vnet-hdr-support")
    out, note, pin, sin = connect_all(lab, vnet=True)
    primary, secondary = udp(b"vnet one"), udp(b"vnet two")
    pin.send(vnet_header(12, b"\x01") + primary, vnet_hdr_len=12)
    sin.send(vnet_header(10, b"\x02") + secondary, vnet_hdr_len=10)
    packets = wait_packets(path, 2)
    assert [p["data"] for p in packets] == [primary, secondary]
    assert all("ethertype IPv4" in line for line in tcpdump(path))


def test_rotation_keeps_n_bounded_files(lab):
    cmp, path = start(lab, "--miscompare-pcap-size", "0.004", "--miscompare-pcap-keep", "3")
    out, note, pin, sin = connect_all(lab)
    n = 60                                    # about 300 bytes of evidence each: ~18 kB
    for i in range(n):
        pin.send(udp(b"primary %03d" % i, sport=3000 + i))
        sin.send(udp(b"secondry %03d" % i, sport=3000 + i))
    cmp.wait_line(r"miscompare_pcap_rotated .* rotations=[3-9]", timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT               # until the last request is written
    while not any(f"#{n} " in (p["comment"] or "") for p in packets_now(path)):
        assert time.monotonic() < deadline, "request #60 never written"
        time.sleep(0.02)
    cmp.stop_summary()
    files = sorted(glob.glob(path + "*"))
    assert files == [path, path + ".1", path + ".2"]
    seen = []
    for name in (path + ".2", path + ".1", path):        # oldest first
        size = os.path.getsize(name)
        assert size <= 4000 + 400                        # the limit, give or take one record
        interfaces, packets = blocks(name)
        assert [i["name"] for i in interfaces] == ["primary", "secondary"]
        assert len(tcpdump(name)) == len(packets)
        # A request's two frames are never split across files.
        assert len(packets) % 2 == 0
        for a, b in zip(packets[::2], packets[1::2]):
            assert (a["if_name"], b["if_name"]) == ("primary", "secondary")
            assert a["comment"].split()[1] == b["comment"].split()[1]
        seen += [int(p["comment"].split()[1][1:]) for p in packets[::2]]
    assert seen == sorted(seen) and seen[-1] == n     # newest last, the latest kept


def test_no_evidence_kept_without_the_option():
    from colo_xdp.service.config import EVIDENCE_MAX_BYTES, CompareConfig
    from colo_xdp.transport.chardev.endpoint import parse_spec
    specs = [parse_spec(f"unix:/tmp/x{i},server=on") for i in range(3)]
    plain = CompareConfig(*specs)
    plain.validate()
    assert plain.engine_config().evidence_max_bytes == 0
    with_pcap = CompareConfig(*specs, miscompare_pcap="/tmp/x.pcapng")
    with_pcap.validate()
    assert with_pcap.engine_config().evidence_max_bytes == EVIDENCE_MAX_BYTES
    assert with_pcap.engine.evidence_max_bytes == 0      # validating changes nothing


def test_unwritable_pcap_is_one_sentence(lab):
    cmp = lab.start(args=("--miscompare-pcap", lab.path("no/such/dir/e.pcapng")), ready=False)
    assert cmp.wait(TIMEOUT) == 1             # exited, its stderr read to the end
    assert cmp.lines == [f"colo-xdp: error: cannot write --miscompare-pcap "
                         f"{lab.path('no/such/dir/e.pcapng')}: No such file or directory"]


# -- the writer alone ----------------------------------------------------------------------

def test_block_layout_is_pcapng():
    header = pcap.file_header()
    block_type, length, magic, major, minor = struct.unpack_from("<IIIHH", header)
    assert (block_type, magic, major, minor) == (0x0A0D0D0A, 0x1A2B3C4D, 1, 0)
    assert struct.unpack_from("<I", header, length - 4)[0] == length
    epb = pcap.enhanced_packet(1, 1_700_000_000_123_456, b"\x01\x02\x03", "a comment")
    assert len(epb) % 4 == 0
    assert struct.unpack_from("<I", epb, len(epb) - 4)[0] == len(epb)
    pcapng = need_module("pcapng")
    scanned = list(pcapng.FileScanner(io.BytesIO(header + epb)))
    assert scanned[-1].packet_data == b"\x01\x02\x03"
    assert scanned[-1].options["opt_comment"] == "a comment"
    assert scanned[-1].interface.options["if_name"] == "secondary"
    assert scanned[-1].timestamp == pytest.approx(1_700_000_000.123456)


def test_earlier_run_is_rotated_away_not_overwritten(tmp_path):
    path = str(tmp_path / "e.pcapng")
    with open(path, "wb") as f:
        f.write(b"from the last run")
    rf = pcap.RotatingFile(path, 1000, 3, b"HDR")
    rf.open()
    rf.write(b"x" * 10)
    rf.close()
    with open(path + ".1", "rb") as f:
        assert f.read() == b"from the last run"
    with open(path, "rb") as f:
        assert f.read() == b"HDR" + b"x" * 10


def test_rotation_unit(tmp_path):
    path = str(tmp_path / "e.pcapng")
    rf = pcap.RotatingFile(path, 100, 2, b"H" * 10)
    rf.open()
    for i in range(10):
        rf.write(bytes([65 + i]) * 40)               # two records a file
    rf.close()
    assert sorted(os.listdir(tmp_path)) == ["e.pcapng", "e.pcapng.1"]
    with open(path, "rb") as f:
        assert f.read() == b"H" * 10 + b"I" * 40 + b"J" * 40
    with open(path + ".1", "rb") as f:
        assert f.read() == b"H" * 10 + b"G" * 40 + b"H" * 40
    with pytest.raises(ValueError):
        pcap.RotatingFile(path, 5, 2, b"H" * 10)


def test_a_run_without_evidence_leaves_no_file(lab):
    cmp, path = start(lab)
    assert os.path.getsize(path) > 0                     # a valid, empty capture meanwhile
    assert tcpdump(path) == []
    cmp.stop_summary()
    assert not os.path.exists(path)
    # Nor does a start that fails on another socket.
    failed = lab.start(pin="unix:/nonexistent/dir/pin.sock,server=on",
                       args=("--miscompare-pcap", path), ready=False)
    assert failed.proc.wait(TIMEOUT) == 1
    assert not os.path.exists(path)


def test_a_write_error_leaves_whole_records_and_nothing_to_fail_on_again(tmp_path, monkeypatch):
    """A full disk mid-record: the file is cut back to its last whole record,
    and close (or a later rotation) has nothing buffered to write again."""
    path = str(tmp_path / "e.pcapng")
    rf = pcap.RotatingFile(path, 10_000, 2, b"H" * 10)
    rf.open()
    rf.write(b"A" * 40)
    real_write = os.write

    def full_disk(fd, data):
        if len(data) > 20:
            real_write(fd, bytes(data[:20]))          # part of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(pcap.os, "write", full_disk)
    with pytest.raises(OSError):
        rf.write(b"B" * 40)
    rf.close()                                       # nothing left to flush: no error
    rf.close()
    monkeypatch.setattr(pcap.os, "write", real_write)
    with open(path, "rb") as f:
        assert f.read() == b"H" * 10 + b"A" * 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_evidence_is_not_written_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "e.pcapng")
    rf = pcap.RotatingFile(str(tmp_path / "e.pcapng"), 1000, 2, b"H")
    with pytest.raises(OSError, match="symbolic link"):
        rf.open()
    assert victim.read_text() == "keep"
