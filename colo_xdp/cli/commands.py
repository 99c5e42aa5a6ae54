"""colo-xdp command line: click commands and nothing else."""
from __future__ import annotations

import json
import os
import sys
import time

import click

from colo_xdp.cli import configfile
from colo_xdp.observe import log as logmod
from colo_xdp.observe.log import EventLog
from colo_xdp.engine import (DEFAULT_COMPARE_TIMEOUT_MS, DEFAULT_EXPIRED_SCAN_CYCLE_MS,
                             DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUE_SIZE, EngineConfig)
from colo_xdp.errors import ColoXdpError, EndpointError
from colo_xdp.service.busypoll import DEFAULT_BUSY_POLL_US
from colo_xdp.transport.chardev.endpoint import SpecError, parse_spec
from colo_xdp.version import VERSION


def _fail(message: str, code: int = 2) -> None:
    if logmod.is_json():
        click.echo(json.dumps({"event": "error", "level": "error", "error": message}), err=True)
    else:
        click.echo(f"colo-xdp: error: {message}", err=True)
    sys.exit(code)


def _hostport(option: str, text: str | None):
    from colo_xdp.observe.listener import AddressError, parse_hostport
    if text is None:
        return None
    try:
        return parse_hostport(text, option)
    except AddressError as exc:
        _fail(str(exc))


def _control_path(text: str | None) -> str | None:
    """--control given without a path means the default one."""
    from colo_xdp.proto.control import default_control_path
    if text is None or text != _DEFAULT:
        return text
    path = default_control_path()
    if path is None:
        _fail("--control needs a PATH here: there is no default for a non-root user "
              "without XDG_RUNTIME_DIR")
    return path


_DEFAULT = "\0default"       # --control with no value
MAX_TIMER_MS = 86_400_000     # a day: --compare-timeout and --expired-scan-cycle
MAX_BUSY_POLL_US = 100_000    # --busy-poll: longer is a spinning core, not a shorter wait
MAX_PCAP_MB = 1_000_000       # a terabyte per evidence file (and no inf, no nan)


def _finite(ctx, param, value):
    """FloatRange lets nan through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number", ctx, param)
    return value


def _spec(option: str, text: str | None):
    if text is None:
        return None
    try:
        return parse_spec(text)
    except SpecError as exc:
        _fail(f"{option}: {exc}")


def _log_options(func):
    func = click.option("--log-timestamps", is_flag=True,
                        help="Text lines on stderr start with the time (UTC) and the level.")(func)
    func = click.option("--log-file", metavar="FILE", type=click.Path(dir_okay=False),
                        help="Log here instead of stderr (mode 0640, time and level on every "
                             "line); SIGHUP reopens it.")(func)
    return func


def _check_option(func):
    return click.option("--check", is_flag=True,
                        help="Check the options (and --config file), say so, and exit without "
                             "opening anything (e.g. ExecStartPre=).")(func)


def _serve_options(func):
    """What a service serves besides its --control socket: compare and forward."""
    func = click.option("--metrics", metavar="HOST:PORT",
                        help="Serve Prometheus metrics at http://HOST:PORT/metrics.")(func)
    func = click.option("--control-idle-timeout", metavar="SECONDS", default=300.0,
                        show_default=True, type=click.FloatRange(min=0.1, max=86400),
                        callback=_finite,
                        help="Close a control connection that neither asks nor subscribes "
                             "for this long.")(func)
    func = click.option("--control-tcp", metavar="HOST:PORT",
                        help="Also serve the control protocol on TCP; loopback addresses "
                             "only.")(func)
    return func


def _checked(command: str) -> None:
    click.echo(f"colo-xdp {command}: the configuration is valid")
    sys.exit(0)


def _setup_log(verbose: bool, fmt: str, log_file: str | None, timestamps: bool) -> None:
    try:
        logmod.setup(verbose, fmt, log_file=log_file, timestamps=timestamps)
    except OSError as exc:
        _fail(f"cannot write --log-file {log_file}: {exc.strerror or exc}", code=1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "-V", "--version", prog_name="colo-xdp",
                      message="%(prog)s %(version)s")
def main() -> None:
    """COLO network output comparison, a drop-in for QEMU's colo-compare."""


@main.command()
@configfile.option
@click.option("--primary-in", metavar="SPEC",
              help="Primary guest's frames (QEMU primary_in), e.g. tcp:127.0.0.1:9001.")
@click.option("--secondary-in", metavar="SPEC",
              help="Secondary guest's frames (QEMU secondary_in).")
@click.option("--primary-xdp", metavar="IFACE",
              help="XDP mode: take the primary guest's output on its tap with XDP.")
@click.option("--secondary-xdp", metavar="IFACE",
              help="XDP mode: take the secondary guest's output on its tap (same host).")
@click.option("--xdp-mode", type=click.Choice(["native", "generic"]), default="native",
              show_default=True, help="How the XDP program is attached.")
@click.option("--outdev", required=True, metavar="SPEC",
              help="Where released primary frames go (QEMU outdev).")
@click.option("--notify-dev", metavar="SPEC",
              help="QEMU notify_dev peer: DO_CHECKPOINT out, COLO_CHECKPOINT in (Xen COLO).")
@click.option("--qmp", metavar="SPEC",
              help="The primary QEMU's QMP monitor (QEMU's own COLO, KVM or TCG): "
                   "checkpoint requests kick its COLO thread, its checkpoints flush.")
@click.option("--vnet-hdr-support", is_flag=True,
              help="Frames carry a vnet header and the framing its length.")
@click.option("--compare-timeout", type=click.IntRange(min=1, max=MAX_TIMER_MS), metavar="MS",
              default=DEFAULT_COMPARE_TIMEOUT_MS, show_default=True,
              help="A frame held longer than this requests a checkpoint.")
@click.option("--expired-scan-cycle", type=click.IntRange(min=1, max=MAX_TIMER_MS),
              metavar="MS",
              default=DEFAULT_EXPIRED_SCAN_CYCLE_MS, show_default=True,
              help="How often to look for frames held too long.")
@click.option("--max-queue-size", type=click.IntRange(min=1, max=1 << 24), metavar="N",
              default=DEFAULT_MAX_QUEUE_SIZE, show_default=True,
              help="Frames held per side of a connection.")
@click.option("--max-connections", type=click.IntRange(min=1, max=1 << 24), metavar="N",
              default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Connection table size; idle connections are evicted to make room.")
@click.option("--flow-high-water", type=click.IntRange(min=0, max=1 << 24), metavar="N",
              default=0, show_default=True,
              help="Frames one side may hold on a connection the other holds nothing on "
                   "before that side is read no further (flow control); 0: half of "
                   "--max-queue-size.")
@click.option("--busy-poll", type=click.IntRange(min=0, max=MAX_BUSY_POLL_US), metavar="US",
              default=DEFAULT_BUSY_POLL_US, show_default=True,
              help="While frames wait for their partner, poll this long at most before "
                   "sleeping (adaptive, as QEMU's iothread poll-max-ns); 0: never poll.")
@click.option("--control", "control", is_flag=False, flag_value=_DEFAULT, default=None,
              metavar="[PATH]",
              help="Control socket (unix, mode 0600). Without PATH: "
                   "/run/colo-xdp/colo-xdp.sock as root, else $XDG_RUNTIME_DIR/colo-xdp.sock.")
@_serve_options
@click.option("--miscompare-pcap", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write both frames of every mismatch and timeout to this pcapng file.")
@click.option("--miscompare-pcap-size", metavar="MB",
              type=click.FloatRange(min=0.001, max=MAX_PCAP_MB), callback=_finite,
              default=64, show_default=True,
              help="Rotate the pcap file past this many megabytes (10^6 bytes).")
@click.option("--miscompare-pcap-keep", metavar="N", type=click.IntRange(min=1, max=1000),
              default=4, show_default=True,
              help="pcap files kept: FILE, FILE.1 .. FILE.<N-1>.")
@click.option("--passthrough", "passthrough", metavar="FLOW", multiple=True,
              help="A flow not to compare, e.g. 'udp * > *:53' (repeatable).")
@click.option("--passthrough-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Keep the passthrough list here across restarts: read at start, "
                   "rewritten at every 'ctl passthrough add/del'.")
@click.option("--log-format", type=click.Choice(logmod.LOG_FORMATS), default="text",
              show_default=True, help="text: colo-xdp: EVENT key=value; json: one object a line.")
@_log_options
@_check_option
@click.option("-v", "--verbose", is_flag=True, help="Log connection events too.")
def compare(primary_in, secondary_in, primary_xdp, secondary_xdp, xdp_mode, outdev,
            notify_dev, qmp, vnet_hdr_support, compare_timeout,
            expired_scan_cycle, max_queue_size, max_connections, flow_high_water,
            busy_poll, control, control_tcp,
            control_idle_timeout, metrics, miscompare_pcap, miscompare_pcap_size,
            miscompare_pcap_keep, passthrough, passthrough_file,
            log_format, log_file, log_timestamps, check, verbose) -> None:
    """Compare primary and secondary output; release matching primary frames.

    SPEC is unix:PATH or tcp:HOST:PORT, with ,server=on to listen and
    ,reconnect=SECONDS to keep trying to connect.  Each guest's output comes
    from a chardev (--primary-in, --secondary-in) or, in XDP mode, from its
    tap (--primary-xdp, --secondary-xdp); --outdev may be xdp:IFACE to send
    released frames with AF_XDP.
    """
    from colo_xdp.proto.flows import FlowError, parse_flow
    from colo_xdp.service.compare import serve
    from colo_xdp.service.config import CompareConfig

    _setup_log(verbose, log_format, log_file, log_timestamps)
    rules = []
    for flow in passthrough:
        try:
            rules.append(parse_flow(flow))
        except FlowError as exc:
            _fail(f"--passthrough: {exc}")
    if passthrough_file:
        from colo_xdp.service import passthrough_file as ptfile
        try:
            rules += ptfile.read(passthrough_file)
        except FlowError as exc:
            _fail(str(exc))
    config = CompareConfig(
        primary_in=_endpoint("primary", primary_in, primary_xdp, xdp_mode),
        secondary_in=_endpoint("secondary", secondary_in, secondary_xdp, xdp_mode),
        outdev=_outdev_endpoint(outdev, xdp_mode),
        notify_dev=_spec("--notify-dev", notify_dev),
        qmp=_spec("--qmp", qmp),
        engine=EngineConfig(compare_timeout_ms=compare_timeout,
                            expired_scan_cycle_ms=expired_scan_cycle,
                            max_queue_size=max_queue_size, max_connections=max_connections,
                            flow_high_water=flow_high_water, vnet_hdr=vnet_hdr_support),
        control_path=_control_path(control),
        control_tcp=_hostport("--control-tcp", control_tcp),
        control_idle_timeout=control_idle_timeout,
        metrics=_hostport("--metrics", metrics),
        miscompare_pcap=miscompare_pcap,
        miscompare_pcap_bytes=int(miscompare_pcap_size * 1_000_000),
        miscompare_pcap_keep=miscompare_pcap_keep,
        passthrough=rules,
        passthrough_file=passthrough_file,
        busy_poll_us=busy_poll,
    )
    log = EventLog()
    try:
        config.validate()
        if check:
            _checked("compare")
        svc = serve(config, log, on_ready=lambda svc: _started(svc, log))
    except EndpointError as exc:
        _fail(exc.strerror, code=1)
    except ColoXdpError as exc:         # a spec, setting, rule or pcap limit
        _fail(str(exc))
    _summary(svc, log)
    if svc.fatal:
        _fail(svc.fatal, code=1)


def _endpoint(side: str, spec: str | None, iface: str | None, xdp_mode: str):
    """--SIDE-in SPEC or --SIDE-xdp IFACE, exactly one of them."""
    from colo_xdp.transport.xdp.port import XdpIface
    if (spec is None) == (iface is None):
        _fail(f"give exactly one of --{side}-in SPEC and --{side}-xdp IFACE")
    return XdpIface(iface, xdp_mode) if iface else _spec(f"--{side}-in", spec)


def _outdev_endpoint(text: str, xdp_mode: str):
    from colo_xdp.transport.xdp.port import XdpIface
    if text.startswith("xdp:"):
        if not text[4:]:
            _fail("--outdev: xdp: needs an interface name, e.g. xdp:eth1")
        return XdpIface(text[4:], xdp_mode)
    return _spec("--outdev", text)


@main.command()
@configfile.option
@click.option("--xdp", "iface", required=True, metavar="IFACE",
              help="The secondary guest's tap: its output is taken here with XDP.")
@click.option("--to", "to", required=True, metavar="SPEC",
              help="The primary's --secondary-in, e.g. tcp:primary-host:9004,reconnect=1.")
@click.option("--vnet-hdr-support", is_flag=True,
              help="Send the framing's vnet_hdr_len word (as 0), like the primary expects.")
@click.option("--xdp-mode", type=click.Choice(["native", "generic"]), default="native",
              show_default=True, help="How the XDP program is attached.")
@click.option("--log-format", type=click.Choice(logmod.LOG_FORMATS), default="text",
              show_default=True)
@click.option("--control", "control", is_flag=False, flag_value=_DEFAULT, default=None,
              metavar="[PATH]", help="Control socket (unix, mode 0600): stats, subscribe.")
@_serve_options
@_log_options
@_check_option
def forward(iface, to, vnet_hdr_support, xdp_mode, control, control_tcp, control_idle_timeout,
            metrics, log_format, log_file, log_timestamps, check) -> None:
    """Secondary host: send the secondary guest's output to the primary.

    Replaces QEMU's filter-redirector on the secondary: frames the guest
    sends on IFACE are taken with XDP (they never reach the network) and
    sent, in QEMU's chardev framing, to the primary's colo-xdp.
    """
    from colo_xdp.service.forward import ForwardConfig, serve_forward
    from colo_xdp.transport.xdp.port import XdpIface

    _setup_log(False, log_format, log_file, log_timestamps)
    log = EventLog()
    from colo_xdp.observe.listener import is_loopback
    config = ForwardConfig(XdpIface(iface, xdp_mode), _spec("--to", to), vnet_hdr_support,
                           control_path=_control_path(control),
                           control_tcp=_hostport("--control-tcp", control_tcp),
                           control_idle_timeout=control_idle_timeout,
                           metrics=_hostport("--metrics", metrics))
    if config.control_tcp and not is_loopback(config.control_tcp[0]):
        _fail(f"--control-tcp must listen on a loopback address such as 127.0.0.1, not "
              f"{config.control_tcp[0]}: the control socket has no authentication")
    if check:
        _checked("forward")

    def ready(fwd) -> None:
        log.once("started", pid=os.getpid(), version=VERSION, iface=iface, to=config.to,
                 vnet_hdr="on" if vnet_hdr_support else "off")
        log.once("ready")

    try:
        fwd = serve_forward(config, log, on_ready=ready)
    except EndpointError as exc:
        _fail(exc.strerror, code=1)
    log.once("stopped", **fwd.summary_fields())
    if fwd.fatal:
        _fail(fwd.fatal, code=1)


@main.command("install-units")
@click.option("--dir", "target", default="/etc/systemd/system", show_default=True,
              metavar="DIR", help="Where to write the unit files.")
@click.option("--exec", "executable", metavar="PATH",
              help="The colo-xdp the units start (default: this one).")
@click.option("--dry-run", is_flag=True, help="Print the units instead of writing them.")
def install_units(target, executable, dry_run) -> None:
    """Install the systemd units colo-xdp-compare@.service and
    colo-xdp-forward@.service (docs/service.md), with ExecStart naming this
    colo-xdp.  Then: systemctl daemon-reload."""
    from colo_xdp.service import units

    try:
        executable = executable or units.running_executable()
        if dry_run:
            for name, text in units.rendered_units(executable).items():
                click.echo(f"# {os.path.join(target, name)}\n{text}")
            return
        for path in units.install(target, executable):
            click.echo(f"wrote {path}")
    except units.UnitsError as exc:
        _fail(str(exc), code=1)
    click.echo("now: systemctl daemon-reload; then e.g. systemctl enable --now "
               "colo-xdp-compare@vm1 (its configuration: /etc/colo-xdp/vm1.toml)")


@main.command()
@click.option("-q", "--quiet", is_flag=True, help="Print the summary only (chardev demo).")
@click.option("--chardev", is_flag=True,
              help="Run the scripted chardev scenario on loopback instead of the XDP lab.")
def demo(quiet, chardev) -> None:
    """Run COLO compare on real traffic: a lab of network namespaces on this host
    (two guests, a client, colo-xdp in XDP mode), removed at the end.  Where XDP
    is unavailable, or with --chardev, a scripted scenario through a real
    `colo-xdp compare` on loopback.

    Exits 0 when everything came out as expected, 1 when not.
    """
    from colo_xdp.lab import chardev_demo as demo_mod
    from colo_xdp.lab import xdp_demo as lab
    from colo_xdp.lab.netns import NetnsError

    if not chardev:
        problem = lab.xdp_problem()
        if problem is None:
            try:
                ok = lab.run(echo=click.echo)
            except NetnsError as exc:          # XdpDemoError, or an ip/tc command's
                _fail(str(exc), code=1)
            except KeyboardInterrupt:
                _fail("demo interrupted; its namespaces and processes are removed", code=130)
            sys.exit(0 if ok else 1)
        click.echo(f"colo-xdp demo: XDP mode is unavailable here ({problem}); running the "
                   "chardev demo instead.")
    try:
        ok = demo_mod.run(quiet=quiet, echo=click.echo)
    except demo_mod.DemoError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("demo interrupted; its service and sockets are removed", code=130)
    sys.exit(0 if ok else 1)


def _started(svc, log: EventLog) -> None:
    """Say that this process starts from nothing (a restart after a crash
    holds no frame from before) and with which configuration; then ready."""
    c, cfg = svc.engine.counters(), svc.config
    held = c.queued["primary"] + c.queued["secondary"]
    seen = c.frames_in["primary"] + c.frames_in["secondary"]
    e = cfg.engine
    log.once("started", state="clean" if not (held or seen or c.connections) else "NOT-clean",
             pid=os.getpid(), version=VERSION, held=held, connections=c.connections, frames_in=seen,
             primary_in=cfg.primary_in, secondary_in=cfg.secondary_in, outdev=cfg.outdev,
             notify_dev=cfg.notify_dev or "-", qmp=cfg.qmp or "-", vnet_hdr="on" if e.vnet_hdr else "off",
             compare_timeout_ms=e.compare_timeout_ms,
             expired_scan_cycle_ms=e.expired_scan_cycle_ms, max_queue_size=e.max_queue_size,
             max_connections=e.max_connections, flow_high_water=e.flow_high_water,
             busy_poll_us=cfg.busy_poll_us)
    log.once("ready")


def _summary(svc, log: EventLog) -> None:
    log.once("stopped", **svc.summary_fields())


# -- the control socket's clients ------------------------------------------------------------

def _control_options(func):
    func = click.option("--control-tcp", metavar="HOST:PORT",
                        help="Use the TCP control socket instead.")(func)
    func = click.option("-s", "--control", metavar="PATH", envvar="COLO_XDP_CONTROL",
                        help="Control socket (default: the one --control uses; "
                             "env COLO_XDP_CONTROL).")(func)
    return func


def _client(control: str | None, control_tcp: str | None, timeout: float | None = 5.0):
    from colo_xdp.proto.control import default_control_path
    from colo_xdp.cli.ctl_client import ClientError, ControlClient
    tcp = _hostport("--control-tcp", control_tcp)
    path = control or (None if tcp else default_control_path())
    try:
        return ControlClient.connect(path=path, tcp=tcp, timeout=timeout)
    except ClientError as exc:
        _fail(str(exc), code=1)


def _ask(ctx: click.Context, request: dict) -> dict:
    """One request; a refused one ends the command with its error (exit 1)."""
    from colo_xdp.cli.ctl_client import ClientError
    opts = ctx.obj
    client = _client(opts["control"], opts["control_tcp"], opts["timeout"])
    try:
        with client:
            reply = client.request(request)
    except ClientError as exc:
        _fail(str(exc), code=1)
    if opts["json"]:
        click.echo(json.dumps(reply))
    if not reply.get("ok"):
        if not opts["json"]:
            click.echo(f"colo-xdp: error: {reply.get('error', 'refused')}", err=True)
        sys.exit(1)
    return reply


@main.group()
@_control_options
@click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=86400), default=5.0,
              show_default=True, callback=_finite,
              metavar="SECONDS", help="How long to wait for a reply.")
@click.pass_context
def ctl(ctx, control, control_tcp, as_json, timeout) -> None:
    """Drive a running colo-xdp compare through its control socket."""
    ctx.obj = {"control": control, "control_tcp": control_tcp, "json": as_json,
               "timeout": timeout}


@ctl.command("checkpoint")
@click.pass_context
def ctl_checkpoint(ctx) -> None:
    """A checkpoint happened: release held primary frames, drop secondary ones."""
    reply = _ask(ctx, {"cmd": "checkpoint"})
    if not ctx.obj["json"]:
        click.echo(f"checkpoint: released {reply['released']} primary frame(s), dropped "
                   f"{reply['dropped_secondary']} secondary frame(s)")


@ctl.command("failover")
@click.pass_context
def ctl_failover(ctx) -> None:
    """Stop comparing for good (as SIGUSR1)."""
    reply = _ask(ctx, {"cmd": "failover"})
    if not ctx.obj["json"]:
        click.echo("failover: already done" if reply["already"] else
                   f"failover: done, released {reply['released']} held primary frame(s)")


@ctl.command("stats")
@click.option("--connections", type=click.IntRange(min=0, max=65536), default=100,
              show_default=True, metavar="N", help="Connection rows to include.")
@click.pass_context
def ctl_stats(ctx, connections) -> None:
    """Counters, queue depths and the connection table (JSON)."""
    reply = _ask(ctx, {"cmd": "stats", "connections": connections})
    if not ctx.obj["json"]:
        click.echo(json.dumps(reply["stats"], indent=2))


@ctl.command("subscribe")
@click.option("-e", "--event", "events", multiple=True, metavar="NAME",
              help="Only this event (repeatable); default: all.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N events.")
@click.pass_context
def ctl_subscribe(ctx, events, count) -> None:
    """Print events as they happen, one per line, until Ctrl-C."""
    from colo_xdp.cli.ctl_client import ClientError
    opts = ctx.obj
    request = {"cmd": "subscribe"}
    if events:
        request["events"] = list(events)
    client = _client(opts["control"], opts["control_tcp"], opts["timeout"])
    seen = 0
    try:
        with client:
            reply = client.request(request)
            if not reply.get("ok"):
                _fail(reply.get("error", "refused"), code=1)
            for event in client.events(timeout=None):
                if opts["json"]:
                    click.echo(json.dumps(event))
                else:
                    fields = {k: v for k, v in event.items() if k not in ("event", "ts")}
                    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("ts", 0)))
                    click.echo(f"{stamp} {logmod.format_text(event['event'], fields)}")
                seen += 1
                if count and seen >= count:
                    break
            else:
                _fail("the service closed the control connection", code=1)
    except ClientError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


@ctl.group("passthrough")
def ctl_passthrough() -> None:
    """Flows not to compare: add, del, list."""


@ctl_passthrough.command("add")
@click.argument("flow", nargs=-1, required=True)
@click.pass_context
def ctl_passthrough_add(ctx, flow) -> None:
    """Add FLOW, e.g. 'udp 10.0.0.0/24:* > *:53' (quote the >)."""
    reply = _ask(ctx, {"cmd": "passthrough", "op": "add", "flow": " ".join(flow)})
    if not ctx.obj["json"]:
        click.echo(f"{'added' if reply['added'] else 'already there'}: {reply['rule']['flow']}")


@ctl_passthrough.command("del")
@click.argument("flow", nargs=-1, required=True)
@click.pass_context
def ctl_passthrough_del(ctx, flow) -> None:
    """Delete FLOW (as added, or as list shows it)."""
    reply = _ask(ctx, {"cmd": "passthrough", "op": "del", "flow": " ".join(flow)})
    if not ctx.obj["json"]:
        click.echo(f"deleted: {reply['rule']['flow']}")


@ctl_passthrough.command("list")
@click.pass_context
def ctl_passthrough_list(ctx) -> None:
    """The passthrough rules, one flow a line."""
    reply = _ask(ctx, {"cmd": "passthrough", "op": "list"})
    if not ctx.obj["json"]:
        for rule in reply["rules"]:
            click.echo(rule["flow"])


@ctl.command("send")
@click.argument("request")
@click.pass_context
def ctl_send(ctx, request) -> None:
    """Send REQUEST, a JSON object, as it is; print the reply as JSON."""
    try:
        obj = json.loads(request)
    except ValueError:
        _fail("REQUEST is not valid JSON")
    if not isinstance(obj, dict):
        _fail("REQUEST must be a JSON object such as '{\"cmd\": \"help\"}'")
    ctx.obj["json"] = True
    _ask(ctx, obj)


@main.command()
@_control_options
@click.option("--interval", type=click.FloatRange(min=0.1, max=86400), default=1.0,
              show_default=True, callback=_finite,
              metavar="SECONDS", help="Refresh period.")
@click.option("--once", is_flag=True, help="Print once and exit.")
@click.option("--connections", type=click.IntRange(min=0, max=65536), default=20,
              show_default=True, metavar="N", help="Connection rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def stats(control, control_tcp, interval, once, connections, as_json) -> None:
    """A live table of a running colo-xdp compare (from its control socket)."""
    from colo_xdp.cli.ctl_client import ClientError
    from colo_xdp.observe.stats import render

    client = _client(control, control_tcp)
    before, before_t = None, 0.0
    live = not once and sys.stdout.isatty()
    try:
        with client:
            while True:
                reply = client.request({"cmd": "stats", "connections": connections})
                if not reply.get("ok"):
                    _fail(reply.get("error", "refused"), code=1)
                snap, now = reply["stats"], time.monotonic()
                if as_json:
                    text = json.dumps(snap) + "\n"
                else:
                    text = render(snap, before, now - before_t if before else 0.0)
                if live:
                    text = "\x1b[H\x1b[2J" + text
                click.echo(text, nl=False)
                if once:
                    return
                before, before_t = snap, now
                time.sleep(interval)
    except ClientError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--root", default="/", hidden=True, type=click.Path(file_okay=False),
              help="Look at a host tree under this directory (tests).")
def doctor(as_json, root) -> None:
    """Check this host for what chardev and XDP mode need; say how to fix the rest.

    Exits 1 when something chardev mode needs is missing; the XDP and lab
    checks are informative.
    """
    from colo_xdp.cli import doctor as doctor_mod

    checks = doctor_mod.run(doctor_mod.Host(root=root))
    if as_json:
        click.echo(json.dumps(doctor_mod.as_json(checks), indent=2))
    else:
        click.echo(doctor_mod.render(checks), nl=False)
    sys.exit(1 if doctor_mod.required_missing(checks) else 0)

