"""Every error a user can cause is one sentence that says what to do, and
leaves nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from colo_xdp.transport.xdp import classifier as xdp
from colo_xdp.transport.xdp.classify_abi import Side
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier, XdpError

from xdp_kit import in_netns, sh, xdp_shown


def one_sentence(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_interface_missing(bpf_ready):
    with pytest.raises(XdpError) as err:
        with XdpClassifier(Side.PRIMARY, "no-such-if0"):
            pass
    assert "there is no interface 'no-such-if0'" in one_sentence(err.value)


def test_native_xdp_unsupported(veth):
    """Loopback has no native XDP; generic mode works on it."""
    with in_netns(veth.host_ns):
        with pytest.raises(XdpError) as err:
            with XdpClassifier(Side.PRIMARY, "lo", mode=Mode.NATIVE):
                pass
        assert "lo has no native XDP support: use generic mode" in one_sentence(err.value)
        with XdpClassifier(Side.PRIMARY, "lo", mode=Mode.GENERIC):
            assert xdp_shown(veth.host_ns, "lo")
    assert not xdp_shown(veth.host_ns, "lo")


def test_another_program_attached(veth, tmp_path):
    """A program someone else attached (through netlink) is named, not replaced."""
    with in_netns(veth.host_ns):
        foreign = XdpClassifier(Side.PRIMARY)
        with foreign:
            from bcc import BPF
            BPF.attach_xdp(veth.host.encode(), foreign._fn, BPF.XDP_FLAGS_DRV_MODE)
        try:
            with pytest.raises(XdpError) as err:
                with XdpClassifier(Side.PRIMARY, veth.host, mode=Mode.NATIVE):
                    pass
            text = one_sentence(err.value)
            assert f"{veth.host} already has an XDP program (program id" in text
            assert f"ip link set dev {veth.host} xdp off" in text
            assert xdp_shown(veth.host_ns, veth.host)     # the other one stays
        finally:
            sh("ip", "-n", veth.host_ns, "link", "set", "dev", veth.host, "xdp", "off")
    assert not xdp_shown(veth.host_ns, veth.host)


def test_not_root(bpf_ready):
    script = ("from colo_xdp.transport.xdp.classifier import XdpClassifier, XdpError\n"
              "try:\n"
              "    XdpClassifier(0, 'lo').__enter__()\n"
              "except XdpError as err:\n"
              "    print(err)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "loading an XDP program needs root: run colo-xdp as root", \
        out.stderr


def test_bcc_missing(bpf_ready, monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(XdpError) as err:
        with XdpClassifier(Side.PRIMARY):
            pass
    text = one_sentence(err.value)
    assert "bcc is missing: run 'make setup'" in text and "python3-bpfcc" in text


def test_headers_missing(bpf_ready, monkeypatch, tmp_path):
    monkeypatch.setattr(xdp, "KERNEL_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(xdp, "KHEADERS", str(tmp_path / "kheaders.tar.xz"))
    with pytest.raises(XdpError) as err:
        with XdpClassifier(Side.PRIMARY):
            pass
    assert "finds no kernel headers" in one_sentence(err.value)
    assert "scripts/setup-bpf.sh" in str(err.value)


def test_compile_error_is_one_line(bpf_ready, monkeypatch, tmp_path):
    bad = tmp_path / "classify.c"
    bad.write_text("int xdp_classify(struct xdp_md *ctx) { return nonsense; }\n")
    monkeypatch.setattr(xdp, "CLASSIFY_C", bad)
    with pytest.raises(XdpError) as err:
        with XdpClassifier(Side.PRIMARY):
            pass
    text = one_sentence(err.value)
    assert text.startswith(f"bcc could not compile {bad}: ")
    assert "nonsense" in text


def test_verifier_refusal_is_one_line(bpf_ready, monkeypatch, tmp_path):
    bad = tmp_path / "classify.c"
    bad.write_text("int xdp_classify(struct xdp_md *ctx)\n"
                   "{\n"
                   "    unsigned char *p = (void *)(long)ctx->data;\n"
                   "    return p[100];    /* no bounds check */\n"
                   "}\n")
    monkeypatch.setattr(xdp, "CLASSIFY_C", bad)
    with pytest.raises(XdpError) as err:
        with XdpClassifier(Side.PRIMARY):
            pass
    assert one_sentence(err.value).startswith(f"the kernel refused {bad}: ")


def test_sigterm_handler_is_restored(bpf_ready):
    import signal
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with XdpClassifier(Side.PRIMARY):
            assert signal.getsignal(signal.SIGTERM) is xdp._raise_terminated
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_handler_of_the_program_is_kept(bpf_ready):
    import signal

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with XdpClassifier(Side.PRIMARY):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_stderr_is_restored(bpf_ready):
    before = os.fstat(2)
    with XdpClassifier(Side.PRIMARY):
        pass
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)


@pytest.mark.parametrize("rule,message", [
    (dict(src="10.0.0.300"), "source '10.0.0.300' is not an IPv4 or IPv6 address or "
                             "address/prefix"),
    (dict(dst="fd00::1/129"), "destination 'fd00::1/129' is not an IPv4 or IPv6 address"),
    (dict(dport=70000), "destination port 70000 is outside 0..65535"),
    (dict(proto=256), "protocol 256 is outside 0..255"),
])
def test_bad_passthrough_rule(programs, rule, message):
    from types import SimpleNamespace
    fields = {**dict(proto=None, src=None, dst=None, sport=None, dport=None), **rule}
    clf = programs[Side.PRIMARY]
    with pytest.raises(XdpError) as err:
        clf.set_rules([SimpleNamespace(**fields)])
    assert one_sentence(err.value).startswith("passthrough rule refused: " + message)
    clf.set_rules([])


def test_too_many_rules_and_bad_macs(programs):
    from types import SimpleNamespace
    clf = programs[Side.PRIMARY]
    rule = SimpleNamespace(proto=None, src=None, dst=None, sport=None, dport=1)
    with pytest.raises(XdpError, match="at most 64 passthrough rules"):
        clf.set_rules([rule] * 65)
    with pytest.raises(XdpError, match="guest MAC refused: 'nope' is not a MAC address"):
        clf.set_guest_macs(["nope"])
