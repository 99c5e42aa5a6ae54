"""Every command line in README.md and docs/*.md works as written.

Command lines are the lines of fenced code blocks without an info string
(or ``sh``/``shell``/``console``/``bash``); blocks of output or synopses are
fenced ```` ```text ````.  For each line:

* ``colo-xdp compare`` and ``colo-xdp forward`` run for real with
  ``--check`` added: every option, SPEC, flow and the --config file (the
  ```` ```toml ```` block of the docs whose first line names it) is validated
  exactly as at start, nothing is opened;
* the other ``colo-xdp`` commands (ctl, stats, doctor, install-units, ...)
  are parsed by the CLI itself (options, arguments, subcommands), flows
  handed to ``ctl passthrough`` parsed too, and ``--version`` and
  ``install-units --dry-run`` run;
* ``make TARGET`` is dry-run (``make -n``), ``python -m pytest ...`` collects
  (``--collect-only``), ``python -m MODULE`` finds the module;
* nothing may stand for something left out (``...``).

Other commands (``mkdir``, ``systemctl``, ``ip``, ``tcpdump``...) are the
host's; they are not run here.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from colo_xdp.cli import main
from colo_xdp.cli.configfile import load
from colo_xdp.proto.control import parse_flow
from test_service import colo_xdp_argv

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("", "sh", "shell", "console", "bash")
FENCE = re.compile(r"^```([A-Za-z]*)\n(.*?)^```", re.M | re.S)
PREFIXES = (("sudo",), ("ip", "netns", "exec", None))   # None: any one word


def blocks(kinds: tuple[str, ...]):
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text()):
            if match.group(1) in kinds:
                yield doc, match.group(2)


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command of every shell block; && splits."""
    out = []
    for doc, body in blocks(SHELL_FENCES):
        body = re.sub(r"\\\n\s*", " ", body)
        for n, line in enumerate(body.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            head = strip_prefixes(line.split())[:1]
            if not head or not re.fullmatch(r"(\S*/)?(colo-xdp|make|python3?)", head[0]):
                continue                  # a picture, a protocol exchange, another tool
            words = shlex.split(line, comments=True)
            while "&&" in words:
                i = words.index("&&")
                out.append((f"{doc.name}: {line.strip()}", words[:i]))
                words = words[i + 1:]
            out.append((f"{doc.name}: {line.strip()}", words))
    return out


def strip_prefixes(words: list[str]) -> list[str]:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if len(words) > len(prefix) and all(p is None or p == w
                                                for p, w in zip(prefix, words)):
                words = words[len(prefix):]
                changed = True
    return words


def toml_for(path: str) -> str | None:
    """The docs' TOML block that says it is ``path`` (its first line: ``# path``)."""
    for _, body in blocks(("toml",)):
        first = body.splitlines()[0] if body.strip() else ""
        if first.strip() == f"# {path}":
            return body
    return None


LINES = command_lines()
COLO = [(w, words) for w, words in ((w, strip_prefixes(x)) for w, x in LINES)
        if words and Path(words[0]).name == "colo-xdp"]


def test_the_docs_have_command_lines_to_check():
    assert len(COLO) >= 20, COLO
    assert any(words[1:2] == ["compare"] for _, words in COLO)


@pytest.mark.parametrize("where, words", LINES, ids=[w for w, _ in LINES])
def test_nothing_is_left_out(where, words):
    assert "..." not in words, f"{where}: '...' is not a command line that runs as written"


def parse_only(args: list[str]) -> click.Context:
    """The CLI's own parsing of a command line, without running it."""
    cmd, name, parent = main, "colo-xdp", None
    while True:
        ctx = cmd.make_context(name, list(args), parent=parent)
        if not isinstance(cmd, click.Group):
            return ctx
        rest = list(getattr(ctx, "_protected_args", [])) + list(ctx.args)
        name, cmd, args = cmd.resolve_command(ctx, rest)
        parent = ctx


@pytest.mark.parametrize("where, words", COLO, ids=[w for w, _ in COLO])
def test_colo_xdp_command_lines(where, words, tmp_path):
    args = words[1:]
    if args[:1] in (["compare"], ["forward"]):
        if "--config" in args:
            i = args.index("--config") + 1
            text = toml_for(args[i])
            assert text is not None, f"{where}: no ```toml block in the docs starts '# {args[i]}'"
            args[i] = str(tmp_path / "config.toml")
            Path(args[i]).write_text(text)
        result = subprocess.run(colo_xdp_argv() + args + ["--check"], capture_output=True,
                                text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        assert result.stdout == f"colo-xdp {args[0]}: the configuration is valid\n"
        return
    if args in (["--version"], ["-V"]) or args[:1] == ["install-units"] and "--dry-run" in args:
        result = subprocess.run(colo_xdp_argv() + args, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        return
    try:
        ctx = parse_only(args)
    except click.ClickException as exc:
        pytest.fail(f"{where}: {exc.format_message()}")
    if ctx.parent and ctx.parent.command.name == "passthrough" and "flow" in ctx.params:
        parse_flow(" ".join(ctx.params["flow"]))


MAKE = [(w, strip_prefixes(x)) for w, x in LINES if strip_prefixes(x)[:1] == ["make"]]


@pytest.mark.parametrize("where, words", MAKE, ids=[w for w, _ in MAKE])
def test_make_lines_dry_run(where, words):
    result = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{where}\n{result.stderr}"


PYTHON_M = [(w, words) for w, words in ((w, strip_prefixes(x)) for w, x in LINES)
            if len(words) > 2 and Path(words[0]).name.startswith("python") and words[1] == "-m"]


@pytest.mark.parametrize("where, words", PYTHON_M, ids=[w for w, _ in PYTHON_M])
def test_python_m_lines(where, words):
    module = words[2]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    if module == "pytest":
        result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                                 "-p", "no:cacheprovider", *words[3:]], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{where}\n{result.stdout[-2000:]}{result.stderr}"


TOMLS = list(blocks(("toml",)))


@pytest.mark.parametrize("doc, body", TOMLS, ids=[d.name for d, _ in TOMLS])
def test_toml_examples_are_valid_configs(doc, body, tmp_path):
    data = tomllib.loads(body)
    command = main.commands["forward" if "xdp" in data or "to" in data else "compare"]
    path = tmp_path / "example.toml"
    path.write_text(body)
    assert load(str(path), command)


def test_a_broken_line_would_be_caught(tmp_path):
    """The checks above can fail: a misspelled option, a bad SPEC."""
    with pytest.raises(click.ClickException):
        parse_only(["ctl", "passthrough", "ad", "icmp"])
    result = subprocess.run(colo_xdp_argv() + [
        "compare", "--primary-in", "tcp:127.0.0.1:9001", "--secondary-in", "tcp:x:0",
        "--outdev", "tcp:127.0.0.1:9005", "--check"], capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 2
