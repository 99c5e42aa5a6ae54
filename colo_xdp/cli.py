"""colo-xdp command line: click commands and nothing else."""
from __future__ import annotations

import sys

import click

from colo_xdp import log as logmod
from colo_xdp.log import EventLog
from colo_xdp.engine import (DEFAULT_COMPARE_TIMEOUT_MS, DEFAULT_EXPIRED_SCAN_CYCLE_MS,
                             DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUE_SIZE, EngineConfig,
                             EngineError)
from colo_xdp.transport.chardev import EndpointError, SpecError, parse_spec


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"colo-xdp: error: {message}", err=True)
    sys.exit(code)


def _spec(option: str, text: str | None):
    if text is None:
        return None
    try:
        return parse_spec(text)
    except SpecError as exc:
        _fail(f"{option}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """COLO network output comparison, a drop-in for QEMU's colo-compare."""


@main.command()
@click.option("--primary-in", required=True, metavar="SPEC",
              help="Primary guest's frames (QEMU primary_in), e.g. tcp:127.0.0.1:9001.")
@click.option("--secondary-in", required=True, metavar="SPEC",
              help="Secondary guest's frames (QEMU secondary_in).")
@click.option("--outdev", required=True, metavar="SPEC",
              help="Where released primary frames go (QEMU outdev).")
@click.option("--notify-dev", metavar="SPEC",
              help="QEMU notify_dev peer: DO_CHECKPOINT out, COLO_CHECKPOINT in.")
@click.option("--vnet-hdr-support", is_flag=True,
              help="Frames carry a vnet header and the framing its length.")
@click.option("--compare-timeout", type=click.IntRange(min=1), metavar="MS",
              default=DEFAULT_COMPARE_TIMEOUT_MS, show_default=True,
              help="A frame held longer than this requests a checkpoint.")
@click.option("--expired-scan-cycle", type=click.IntRange(min=1), metavar="MS",
              default=DEFAULT_EXPIRED_SCAN_CYCLE_MS, show_default=True,
              help="How often to look for frames held too long.")
@click.option("--max-queue-size", type=click.IntRange(min=1, max=1 << 24), metavar="N",
              default=DEFAULT_MAX_QUEUE_SIZE, show_default=True,
              help="Frames held per side of a connection.")
@click.option("--max-connections", type=click.IntRange(min=1, max=1 << 24), metavar="N",
              default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Connection table size; idle connections are evicted to make room.")
@click.option("-v", "--verbose", is_flag=True, help="Log connection events too.")
def compare(primary_in, secondary_in, outdev, notify_dev, vnet_hdr_support, compare_timeout,
            expired_scan_cycle, max_queue_size, max_connections, verbose) -> None:
    """Compare primary and secondary output; release matching primary frames.

    SPEC is unix:PATH or tcp:HOST:PORT, with ,server=on to listen and
    ,reconnect=SECONDS to keep trying to connect.
    """
    from colo_xdp.service import ServiceConfig, serve

    logmod.setup(verbose)
    config = ServiceConfig(
        primary_in=_spec("--primary-in", primary_in),
        secondary_in=_spec("--secondary-in", secondary_in),
        outdev=_spec("--outdev", outdev),
        notify_dev=_spec("--notify-dev", notify_dev),
        engine=EngineConfig(compare_timeout_ms=compare_timeout,
                            expired_scan_cycle_ms=expired_scan_cycle,
                            max_queue_size=max_queue_size, max_connections=max_connections,
                            vnet_hdr=vnet_hdr_support),
    )
    try:
        config.check()
        svc = serve(config, EventLog(), on_ready=lambda _svc: logmod.logger.info("ready"))
    except (SpecError, EngineError) as exc:
        _fail(str(exc))
    except EndpointError as exc:
        _fail(exc.strerror, code=1)
    _summary(svc)


@main.command()
@click.option("-q", "--quiet", is_flag=True, help="Print the summary only.")
def demo(quiet) -> None:
    """Run a scripted COLO scenario through a real `colo-xdp compare` on loopback.

    Exits 0 when everything came out as the scenario expects, 1 when not.
    """
    from colo_xdp import demo as demo_mod

    try:
        ok = demo_mod.run(quiet=quiet, echo=click.echo)
    except demo_mod.DemoError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("demo interrupted; its service and sockets are removed", code=130)
    sys.exit(0 if ok else 1)


def _summary(svc) -> None:
    c = svc.engine.counters()
    logmod.logger.info(
        "stopped frames_in=%d/%d released=%d dropped=%d/%d checkpoints_requested=%d",
        c.frames_in["primary"], c.frames_in["secondary"], c.released_total,
        c.dropped_total("primary"), c.dropped_total("secondary"), sum(c.checkpoints.values()))


if __name__ == "__main__":
    main()
