"""Endpoint specs (``unix:PATH`` / ``tcp:HOST:PORT`` plus options) and the
rule that no two roles share one socket."""
from __future__ import annotations

import os

import pytest

from colo_xdp.engine import EngineConfig
from colo_xdp.service.config import CompareConfig
from colo_xdp.transport.chardev.endpoint import Spec, SpecError, check_distinct, parse_spec


def one_sentence(message: str) -> bool:
    """One line, not empty, no traceback-ish noise."""
    return bool(message) and "\n" not in message and "Traceback" not in message


# -- accepted specs -----------------------------------------------------------------

def test_unix_server():
    spec = parse_spec("unix:/run/colo/pin.sock,server=on")
    assert (spec.kind, spec.path, spec.server, spec.reconnect) == (
        "unix", "/run/colo/pin.sock", True, 0.0)
    assert spec.address == "/run/colo/pin.sock"
    assert str(spec) == "unix:/run/colo/pin.sock,server=on"


def test_unix_client_by_default():
    spec = parse_spec("unix:relative.sock")
    assert (spec.kind, spec.path, spec.server) == ("unix", "relative.sock", False)


def test_tcp_client():
    spec = parse_spec("tcp:127.0.0.1:9001")
    assert (spec.kind, spec.host, spec.port, spec.server) == ("tcp", "127.0.0.1", 9001, False)
    assert spec.address == "127.0.0.1:9001"


def test_tcp_server_on_any_address():
    spec = parse_spec("tcp::9004,server=on")
    assert (spec.host, spec.port, spec.server) == ("0.0.0.0", 9004, True)


def test_tcp_ipv6_brackets_stripped():
    spec = parse_spec("tcp:[::1]:9000")
    assert (spec.host, spec.port) == ("::1", 9000)


@pytest.mark.parametrize("option, expected", [
    ("server=on", True), ("server=yes", True), ("server", True), ("server=ON", True),
    ("server=off", False), ("server=no", False), ("server=0", False),
])
def test_server_flag_values(option, expected):
    assert parse_spec(f"unix:/tmp/x.sock,{option}").server is expected


@pytest.mark.parametrize("value, seconds", [("1", 1.0), ("0.25", 0.25), ("0", 0.0)])
def test_reconnect_seconds(value, seconds):
    spec = parse_spec(f"tcp:127.0.0.1:9005,reconnect={value}")
    assert spec.reconnect == seconds
    assert spec.server is False


def test_reconnect_with_explicit_server_off():
    spec = parse_spec("tcp:127.0.0.1:9005,server=off,reconnect=2")
    assert (spec.server, spec.reconnect) == (False, 2.0)


@pytest.mark.parametrize("text", [
    "unix:/tmp/x.sock,server=on,wait=off",
    "unix:/tmp/x.sock,server=on,nowait",
    "tcp:127.0.0.1:9001,server=on,wait=off",
])
def test_wait_off_is_accepted_and_ignored(text):
    spec = parse_spec(text)
    plain = parse_spec(text.replace(",wait=off", "").replace(",nowait", ""))
    assert spec.server is True
    assert (spec.kind, spec.address, spec.server, spec.reconnect) == (
        plain.kind, plain.address, plain.server, plain.reconnect)


# -- refused specs ------------------------------------------------------------------

BAD_SPECS = [
    ("", "not an endpoint"),
    ("unix", "not an endpoint"),
    ("udp:127.0.0.1:9000", "not an endpoint"),
    ("/run/colo/pin.sock", "not an endpoint"),
    ("unix:", "names no socket path"),
    ("unix:,server=on", "names no socket path"),
    ("tcp:127.0.0.1", "port from 1 to 65535"),
    ("tcp:127.0.0.1:0", "port from 1 to 65535"),
    ("tcp:127.0.0.1:65536", "port from 1 to 65535"),
    ("tcp:127.0.0.1:http", "port from 1 to 65535"),
    ("tcp:127.0.0.1:-1", "port from 1 to 65535"),
    ("tcp:127.0.0.1: 80", "port from 1 to 65535"),
    ("tcp:127.0.0.1:\u0663", "port from 1 to 65535"),     # an Arabic-Indic "3"
    ("unix:/tmp/x.sock,server=maybe", "server takes on or off"),
    ("unix:/tmp/x.sock,reconnect=soon", "reconnect takes a number"),
    ("unix:/tmp/x.sock,reconnect=-1", "finite number of seconds"),
    ("unix:/tmp/x.sock,reconnect=nan", "finite number of seconds"),
    ("unix:/tmp/x.sock,reconnect=inf", "finite number of seconds"),
    ("unix:/tmp/x.sock,telnet=on", "unknown option 'telnet'"),
    ("unix:/tmp/x.sock,server=on,reconnect=1", "not servers"),
    ("tcp::9000,server,reconnect=1", "not servers"),
]


@pytest.mark.parametrize("text, fragment", BAD_SPECS)
def test_bad_spec_is_one_sentence(text, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert one_sentence(message)
    assert fragment in message
    assert repr(text) in message            # says which spec


# -- distinct endpoints ------------------------------------------------------------------

def specs(**texts: str) -> dict[str, Spec]:
    return {role.replace("_", "-"): parse_spec(text) for role, text in texts.items()}


def test_distinct_endpoints_pass():
    check_distinct(specs(primary_in="unix:/tmp/a.sock,server=on",
                         secondary_in="unix:/tmp/b.sock,server=on",
                         outdev="tcp:127.0.0.1:9003,server=on",
                         notify_dev="tcp:127.0.0.1:9004"))


def test_same_unix_path_refused():
    with pytest.raises(SpecError) as info:
        check_distinct(specs(primary_in="unix:/tmp/a.sock,server=on",
                             secondary_in="unix:/tmp/a.sock,server=on"))
    message = str(info.value)
    assert one_sentence(message)
    assert "primary-in and secondary-in" in message
    assert "/tmp/a.sock" in message


def test_same_unix_path_refused_whatever_the_options():
    """Server or not, the file is the same socket."""
    with pytest.raises(SpecError):
        check_distinct(specs(primary_in="unix:/tmp/a.sock,server=on",
                             outdev="unix:/tmp/a.sock,reconnect=1"))


def test_relative_and_absolute_unix_path_refused():
    absolute = os.path.join(os.getcwd(), "same.sock")
    with pytest.raises(SpecError, match="name the same socket"):
        check_distinct(specs(primary_in="unix:same.sock,server=on",
                             outdev=f"unix:{absolute},server=on"))


def test_tcp_localhost_and_loopback_refused():
    with pytest.raises(SpecError) as info:
        check_distinct(specs(primary_in="tcp:localhost:9001,server=on",
                             secondary_in="tcp:127.0.0.1:9001,server=on"))
    assert one_sentence(str(info.value))
    assert "primary-in and secondary-in" in str(info.value)


def test_tcp_any_address_spellings_refused():
    with pytest.raises(SpecError):
        check_distinct(specs(primary_in="tcp::9001,server=on",
                             outdev="tcp:0.0.0.0:9001,server=on"))


def test_tcp_same_host_other_port_passes():
    check_distinct(specs(primary_in="tcp:localhost:9001,server=on",
                         secondary_in="tcp:127.0.0.1:9002,server=on"))


def test_unix_and_tcp_never_clash():
    check_distinct(specs(primary_in="unix:9001,server=on",
                         secondary_in="tcp:127.0.0.1:9001,server=on"))


def service_config(**texts: str) -> CompareConfig:
    roles = {role: parse_spec(text) for role, text in texts.items()}
    return CompareConfig(engine=EngineConfig(), **roles)


def test_service_config_checks_notify_dev_too():
    config = service_config(primary_in="unix:/tmp/p.sock,server=on",
                            secondary_in="unix:/tmp/s.sock,server=on",
                            outdev="unix:/tmp/o.sock,server=on",
                            notify_dev="unix:/tmp/o.sock,server=on")
    with pytest.raises(SpecError, match="outdev and notify-dev"):
        config.validate()


def test_service_config_without_notify_dev_passes():
    service_config(primary_in="unix:/tmp/p.sock,server=on",
                   secondary_in="unix:/tmp/s.sock,server=on",
                   outdev="unix:/tmp/o.sock,server=on").validate()


def test_wait_takes_on_or_off_only():
    assert parse_spec("unix:/tmp/x.sock,server=on,wait=on").server
    with pytest.raises(SpecError, match="wait takes on or off"):
        parse_spec("unix:/tmp/x.sock,server=on,wait=sometimes")
