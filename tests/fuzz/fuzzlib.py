"""Build and run the fuzzers; `make fuzz` runs this file, the tests import it.

    .venv/bin/python tests/fuzz/fuzzlib.py [--seconds N] [TARGET ...]

Targets: ``engine`` (tests/fuzz/fuzz_engine.c with the csrc/ sources,
libFuzzer + ASan + UBSan, Debian's clang), ``segment`` (tests/fuzz/
fuzz_segment.c with csrc/segment.c, the same way) and ``framing``, ``notify``,
``spec``, ``control`` (tests/fuzz/fuzz_parsers.py under atheris).  Each
runs for ``--seconds`` (FUZZ_SECONDS, default 60) from its corpus in
tests/fuzz/corpus/<target>/; what it found that adds coverage is merged back
into that corpus, and a crash is written to tests/fuzz/crashes/<target>/,
where the tests replay it from then on.  Exits 1 if any target crashed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"
CORPUS = FUZZ / "corpus"
CRASHES = FUZZ / "crashes"
BUILD = ROOT / "build" / "fuzz"

# Seconds each fuzzer runs inside `make test`; `make fuzz` runs them longer.
SHORT_RUN_S = int(os.environ.get("FUZZ_TEST_SECONDS", "4"))

ENGINE = "engine"
SEGMENT = "segment"
PYTHON_TARGETS = ("framing", "notify", "spec", "control")
TARGETS = (ENGINE, SEGMENT, *PYTHON_TARGETS)

# The cffi build's warnings, as errors (csrc/build_cffi.py CFLAGS), plus the
# sanitizers; nothing may recover, so any report fails the run.
CFLAGS = ["-g", "-O1", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:allocator_may_return_null=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
# A line any sanitizer or libFuzzer prints when it found something.
REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|"
                    r"SUMMARY: UndefinedBehaviorSanitizer|invariant broken|Traceback")


class ToolMissing(RuntimeError):
    """A fuzzing tool is not installed; the message says how to get it."""


def clang() -> str:
    path = shutil.which("clang")
    if not path:
        raise ToolMissing("clang is missing: run scripts/setup-host.sh "
                          "(Debian packages clang and libclang-rt-dev)")
    return path


REPRODUCER_PREFIXES = ("crash-", "leak-", "timeout-", "oom-")   # libFuzzer's names


def reproducers(target: str) -> list[Path]:
    """The crash reproducers kept for ``target`` (tests/fuzz/crashes/<target>/)."""
    where = CRASHES / target
    return sorted(p for p in where.glob("*") if p.name.startswith(REPRODUCER_PREFIXES))


def atheris_available() -> None:
    if importlib.util.find_spec("atheris") is None:
        raise ToolMissing("atheris is missing: run 'make setup' (it is in the test extra)")


def engine_sources() -> list[Path]:
    """The engine's C files: csrc/cx_*.c (the AF_XDP helpers beside them are
    not the engine and are not fuzzed here)."""
    sources = sorted((ROOT / "csrc").glob("cx_*.c"))
    if not sources:
        raise RuntimeError("no csrc/cx_*.c: where did the engine go?")
    return sources


def build(name: str, main_source: Path, fuzzer: bool = True,
          with_sources: list[Path] | None = None) -> Path:
    """Compile ``main_source`` with the engine (or ``with_sources``),
    sanitized; rebuilt when older than any source or header.  Raises
    RuntimeError with the compiler's words."""
    out = BUILD / name
    sources = [main_source, *(engine_sources() if with_sources is None else with_sources)]
    inputs = sources + list((ROOT / "csrc").glob("*.h")) + [Path(__file__)]
    if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return out
    BUILD.mkdir(parents=True, exist_ok=True)
    sanitize = [s.replace("-fsanitize=", "-fsanitize=fuzzer,") if fuzzer else s
                for s in SANITIZE]
    cmd = [clang(), *CFLAGS, *sanitize, f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'bpf'}", *map(str, sources),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"building {name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return out


def engine_fuzzer() -> Path:
    return build("fuzz_engine", FUZZ / "fuzz_engine.c")


def segment_fuzzer() -> Path:
    return build("fuzz_segment", FUZZ / "fuzz_segment.c",
                 with_sources=[ROOT / "csrc" / "segment.c"])


def command(target: str) -> list[str]:
    """The fuzzer's argv before libFuzzer options and corpus directories."""
    if target == ENGINE:
        return [str(engine_fuzzer())]
    if target == SEGMENT:
        return [str(segment_fuzzer())]
    atheris_available()
    return [sys.executable, str(FUZZ / "fuzz_parsers.py"), target]


def env() -> dict[str, str]:
    """The sanitizers' options; this python first on PATH (libFuzzer's -merge
    runs fuzz_parsers.py as a program, through its #! line)."""
    return {**os.environ, **SANITIZER_ENV,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def dictionary(target: str) -> list[str]:
    """-dict=tests/fuzz/dicts/<target>.dict when there is one."""
    path = FUZZ / "dicts" / f"{target}.dict"
    return [f"-dict={path}"] if path.exists() else []


@dataclass
class Result:
    target: str
    returncode: int
    log: str
    crashes: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes and not REPORT.search(self.log)

    def stat(self, name: str) -> int:
        match = re.search(rf"stat::{name}:\s+(\d+)", self.log)
        return int(match.group(1)) if match else 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


def fuzz(target: str, seconds: int, work: Path, artifacts: Path) -> Result:
    """Fuzz for ``seconds``: new inputs go to ``work``, the target's corpus
    is read too; a crash is written under ``artifacts``.  Only the crashes
    this run wrote count: the reproducers kept there from earlier ones are
    regression tests."""
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    kept = set(artifacts.iterdir())
    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    cmd = command(target) + dictionary(target) + [
                             f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/",
                             "-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048",
                             "-max_len=4096", str(work), str(corpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env(),
                          timeout=seconds + 120)
    crashes = sorted(p for p in artifacts.iterdir()
                     if p.name.startswith(REPRODUCER_PREFIXES) and p not in kept)
    return Result(target, proc.returncode, proc.stdout + proc.stderr, crashes)


def short_run(target: str, tmp: Path) -> tuple[Result, list[Path]]:
    """The SHORT_RUN_S run ``make test`` makes of a target; what it finds is
    kept under CRASHES/target, a regression test from then on.  The result
    and the reproducers kept."""
    result = fuzz(target, SHORT_RUN_S, tmp / "new", tmp / "crashes")
    kept = []
    for crash in result.crashes:
        (CRASHES / target).mkdir(parents=True, exist_ok=True)
        kept.append(Path(shutil.copy(crash, CRASHES / target / crash.name)))
    return result, kept


def replay_corpus(target: str, files: list[Path]) -> list[Result]:
    """Every file run once, 500 to a process (the argv stays short)."""
    return [replay(target, files[start:start + 500]) for start in range(0, len(files), 500)]


def replay(target: str, files: list[Path], extra_env: dict | None = None) -> Result:
    """Run each input once (no fuzzing)."""
    cmd = command(target) + [str(f) for f in files]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                          env={**env(), **(extra_env or {})}, timeout=600)
    return Result(target, proc.returncode, proc.stdout + proc.stderr)


def merge(target: str, found: Path) -> int:
    """Add what ``found`` holds that adds coverage to the target's corpus;
    returns how many files were added."""
    corpus = CORPUS / target
    before = len(list(corpus.iterdir()))
    cmd = command(target) + ["-merge=1", str(corpus), str(found)]
    subprocess.run(cmd, capture_output=True, env=env(), timeout=1200, check=False)
    return len(list(corpus.iterdir())) - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"any of {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {', '.join(sorted(unknown))}; known: {', '.join(TARGETS)}")
    args.targets = args.targets or list(TARGETS)
    failed = []
    with tempfile.TemporaryDirectory(prefix="cx-fuzz-") as tmp:
        for target in args.targets:
            try:
                result = fuzz(target, args.seconds, Path(tmp) / target, CRASHES / target)
            except ToolMissing as exc:
                print(f"fuzz {target}: {exc}", file=sys.stderr)
                failed.append(target)
                continue
            added = merge(target, Path(tmp) / target)
            verdict = "ok" if result.ok else "FOUND A PROBLEM"
            print(f"fuzz {target}: {verdict}: {result.stat('number_of_executed_units')} runs "
                  f"in {args.seconds} s, {added} inputs added to tests/fuzz/corpus/{target}/")
            if not result.ok:
                failed.append(target)
                print(result.tail(), file=sys.stderr)
                for crash in result.crashes:
                    print(f"fuzz {target}: reproducer {crash.relative_to(ROOT)}", file=sys.stderr)
    print(f"fuzz: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
