"""``--config FILE``: a TOML file that says what the command line would.

Keys are the long option names without their dashes; values are what the
option takes (a string, a number, true/false for a flag, a list for an
option that repeats)::

    primary-in = "tcp:127.0.0.1:9001"
    secondary-in = "tcp:0.0.0.0:9004,server=on"
    outdev = "tcp:127.0.0.1:9005"
    compare-timeout = 3000
    passthrough = ["udp * > *:53"]

Options on the command line override the file (the file's values become
click's defaults).  An unknown key, a table, or a value of the wrong kind is
one sentence naming the file and the key.
"""
from __future__ import annotations

import tomllib

import click

from colo_xdp.errors import ConfigError


class ConfigFileError(ConfigError):
    """The config file cannot be used; the message is one sentence."""


def _kind(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag and not param.multiple:
        return "flag"
    return "list" if getattr(param, "multiple", False) else "value"


def load(path: str, command: click.Command) -> dict:
    """The file as click's ``default_map`` for ``command``: {param name: value}."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path} is not valid TOML: {exc}") from None
    options = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("config", "help"):
            for opt in param.opts:
                if opt.startswith("--"):
                    options[opt[2:]] = param
    out: dict = {}
    for key, value in data.items():
        param = options.get(key) or options.get(key.replace("_", "-"))
        if param is None:
            known = ", ".join(sorted(options))
            raise ConfigFileError(f"--config {path}: unknown key {key!r} for colo-xdp "
                                  f"{command.name} (known: {known})")
        kind = _kind(param)
        if isinstance(value, dict):
            raise ConfigFileError(f"--config {path}: {key} is a table; give it a value")
        if kind == "flag":
            if not isinstance(value, bool):
                raise ConfigFileError(f"--config {path}: {key} takes true or false")
            if not getattr(param, "is_bool_flag", False) and isinstance(param.flag_value, str):
                # an option with an optional value (--control [PATH]): true means bare
                value = param.flag_value if value else None
        elif kind == "list":
            if isinstance(value, (str, int, float)):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, (str, int, float))
                                                      for v in value):
                raise ConfigFileError(f"--config {path}: {key} takes a list of values")
            value = [str(v) for v in value]
        else:
            if isinstance(value, bool) and getattr(param, "flag_value", None) is not None \
                    and not param.is_flag:
                value = param.flag_value if value else None
            elif isinstance(value, bool):
                raise ConfigFileError(f"--config {path}: {key} takes a value, not "
                                      f"{str(value).lower()}")
            elif isinstance(value, list):
                raise ConfigFileError(f"--config {path}: {key} takes one value, not a list")
            elif not isinstance(value, str):
                value = str(value)
        out[param.name] = value
    return out


def option(func):
    """``--config FILE`` for a command: read first, its values the defaults."""
    def callback(ctx: click.Context, _param, value):
        if value:
            try:
                ctx.default_map = {**(ctx.default_map or {}), **load(value, ctx.command)}
            except ConfigFileError as exc:
                click.echo(f"colo-xdp: error: {exc}", err=True)
                ctx.exit(2)
        return value
    return click.option("--config", metavar="FILE", is_eager=True, expose_value=False,
                        callback=callback,
                        help="Read options from this TOML file (keys: the long option names; "
                             "the command line overrides it).")(func)
