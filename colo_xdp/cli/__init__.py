"""The colo-xdp command: click commands, nothing else."""
from colo_xdp.cli.commands import main

__all__ = ["main"]
