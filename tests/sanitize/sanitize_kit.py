"""The C helper under ASan + UBSan: build it, run tests against it.

``build()`` compiles colo_xdp._native with clang into build/sanitized/ from
csrc/build_cffi.py's own FFI (``make_ffibuilder``: the same cdef, sources and
CFLAGS as the installed module, -Werror included), adding the sanitizers;
the module in colo_xdp/ is not touched.  It is rebuilt only when something
in csrc/ (or this file) is newer.

``run()`` runs pytest in a subprocess in which that build stands in for
colo_xdp._native: pyhook/sitecustomize.py (on PYTHONPATH) loads it when
colo_xdp imports ``colo_xdp._native``, clang's ASan runtime is LD_PRELOADed
and every report ends the process.  The environment is inherited, so the
``colo-xdp`` processes the tests start (the service in XDP mode) run the
sanitized helper too.  Each process writes a record when it loads the
sanitized module (``loaded.<pid>.json``) and each sanitizer report goes to
a file (``sanitizer.<pid>``), both in the run's log directory.

    .venv/bin/python tests/sanitize/sanitize_kit.py [PYTEST ARGS...]

builds, then runs the default selection (or the given pytest arguments)
sanitized, printing the reports; exit status 0 only if all passed and no
sanitizer reported.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
HERE = Path(__file__).resolve().parent
PYHOOK = HERE / "pyhook"
BUILD = ROOT / "build" / "sanitized"
NATIVE = BUILD / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
ASAN_RUNTIME = "libclang_rt.asan-x86_64.so"

# As tests/fuzz/fuzzlib.py builds the engine fuzzer: no sanitizer recovers.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
# Python's own CFLAGS (which setuptools puts first) have -fwrapv, under which
# clang 14 does not check signed overflow: the fuzzer's build has no -fwrapv.
COMPILE_ARGS = ["-g", "-fno-wrapv", *SANITIZE]
# The runtime as a shared library (clang links it statically into programs
# by default, and not at all into shared objects): the python that loads the
# module has it LD_PRELOADed, so that it comes first.
LINK_ARGS = ["-fsanitize=address,undefined", "-shared-libasan"]

# Leaks are not checked: CPython does not free everything at exit.
ASAN_OPTIONS = ["detect_leaks=0", "halt_on_error=1", "abort_on_error=0",
                "allocator_may_return_null=0", "detect_stack_use_after_return=1",
                "print_summary=1"]
UBSAN_OPTIONS = ["halt_on_error=1", "print_stacktrace=1"]

# The default selection: every test that drives the C helper in-process, and
# the XDP-mode service tests whose colo-xdp process moves frames from AF_XDP
# sockets into the engine and from the engine out of one (xdp_glue.c).
ENGINE_TESTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "unit")
                      .glob("test_engine_*.py"))
PROPERTY_TESTS = ["tests/property"]
# csrc/segment.c in-process: super-frames cut for the wire.
SEGMENT_TESTS = ["tests/unit/test_segment.py"]
# csrc/chardev_glue.c in-process: an input's turn on socketpairs.
CHARDEV_GLUE_TESTS = ["tests/unit/test_chardev_glue.py"]
XSK_TESTS = ["tests/xdp/test_xsk.py", "tests/xdp/test_tap.py", "tests/xdp/test_glue.py",
             "tests/xdp/test_multiqueue.py"]
# Super-frames through the colo-xdp process: multi-buffer rx, segment.c on tx.
OFFLOAD_TESTS = ["tests/xdp/test_offload.py"]
SERVICE_TESTS = [f"tests/xdp/test_service_xdp.py::{name}" for name in (
    "test_xdp_mode_releases_matching_frames_in_order_and_detaches",
    "test_xdp_mode_mismatch_requests_a_checkpoint",
    "test_xdp_mode_tcp_with_different_segmentation",
    "test_xdp_outdev_sends_released_frames_on_the_uplink",
    "test_xdp_outdev_finishes_offloaded_checksums",
    "test_forward_sends_the_secondary_guests_frames_to_the_primary",
    "test_frames_the_kernel_drops_are_counted_not_lost",
)]
# Hypothesis examples per property test (tests/property/property_settings.py
# reads FUZZ_EXAMPLES under HYPOTHESIS_PROFILE=fuzz): fewer than `make test`
# runs, the sanitizers make each one slower.
PROPERTY_EXAMPLES = 100

# A line that only a sanitizer report has.
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|"
                    r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)")


class ToolMissing(RuntimeError):
    """clang or its sanitizer runtime is not installed."""


def need(ok: bool, message: str) -> None:
    """For the tests: skip without a capability; under CI (env CI set) fail
    instead, as tests/xdp does: CI must not pass by skipping."""
    import pytest

    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def clang() -> str:
    path = shutil.which("clang")
    if not path:
        raise ToolMissing("clang is missing: run scripts/setup-host.sh "
                          "(Debian packages clang and libclang-rt-dev)")
    return path


def asan_runtime() -> Path:
    """clang's ASan runtime as a shared library (it holds UBSan's too)."""
    out = subprocess.run([clang(), f"-print-file-name={ASAN_RUNTIME}"],
                         capture_output=True, text=True).stdout.strip()
    path = Path(out)
    if not path.is_absolute() or not path.exists():
        raise ToolMissing(f"clang has no {ASAN_RUNTIME}: install Debian's "
                          "libclang-rt-dev (scripts/setup-host.sh)")
    return path


def _inputs() -> list[Path]:
    return [*(p for p in CSRC.iterdir() if p.suffix in (".c", ".h", ".py")), Path(__file__)]


def up_to_date() -> bool:
    return NATIVE.exists() and NATIVE.stat().st_mtime >= max(
        p.stat().st_mtime for p in _inputs())


def build() -> Path:
    """The sanitized module (build/sanitized/_native.*.so), rebuilt when a
    csrc/ file is newer.  Raises ToolMissing, or RuntimeError with the
    compiler's words."""
    runtime = asan_runtime()
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # one build at a time
        if up_to_date():
            return NATIVE
        work = Path(tempfile.mkdtemp(prefix="work-", dir=BUILD))
        try:
            # setuptools' compiler takes CC and builds the link line from it.
            env = {**os.environ, "CC": clang(), "PYTHONDONTWRITEBYTECODE": "1"}
            proc = subprocess.run(
                [sys.executable, __file__, "--compile", str(work), str(runtime.parent)],
                cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"building the sanitized helper failed:\n"
                                   f"{proc.stdout}\n{proc.stderr}")
            os.replace(proc.stdout.strip().splitlines()[-1], NATIVE)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return NATIVE


def _compile(work: Path, runtime_dir: str) -> None:
    """In the build subprocess (cwd: the repository root, CC=clang): build
    csrc/build_cffi.py's extension with the sanitizers; prints its path."""
    from setuptools import Distribution     # first: cffi then gets its distutils

    sys.path.insert(0, str(CSRC))
    import build_cffi

    builder = build_cffi.make_ffibuilder(
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=[*LINK_ARGS, f"-Wl,-rpath,{runtime_dir}"])
    ext = builder.distutils_extension(tmpdir=str(work), verbose=False)
    dist = Distribution({"ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_temp = str(work / "obj")
    cmd.build_lib = str(work / "lib")
    cmd.force = True                    # build() decided; headers are no dependency here
    dist.run_command("build_ext")
    print(cmd.get_ext_fullpath(ext.name))


def instrumented(path: Path) -> dict[str, bool]:
    """Does the shared object call into ASan and UBSan?"""
    data = path.read_bytes()
    return {"asan": b"__asan_report_load" in data, "ubsan": b"__ubsan_handle_" in data}


def sanitized_env(log_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process tree that runs the sanitized helper."""
    base = dict(os.environ if base is None else base)

    def prepend(name: str, value: str, sep: str) -> str:
        return sep.join(v for v in (value, base.get(name, "")) if v)

    log = f"log_path={log_dir / 'sanitizer'}"
    env = {
        **base,
        "CX_SANITIZED_NATIVE": str(NATIVE),
        "CX_SANITIZE_LOG": str(log_dir),
        "LD_PRELOAD": prepend("LD_PRELOAD", str(asan_runtime()), " "),
        "ASAN_OPTIONS": ":".join([*ASAN_OPTIONS, log]),
        "UBSAN_OPTIONS": ":".join([*UBSAN_OPTIONS, log]),
        # Python's objects from malloc: cffi's buffers get ASan's redzones.
        "PYTHONMALLOC": "malloc",
        "PYTHONPATH": prepend("PYTHONPATH", str(PYHOOK), os.pathsep),
        "HYPOTHESIS_PROFILE": "fuzz",
        "FUZZ_EXAMPLES": str(PROPERTY_EXAMPLES),
    }
    symbolizer = shutil.which("llvm-symbolizer")
    if symbolizer:
        env["ASAN_SYMBOLIZER_PATH"] = symbolizer
    return env


def selection(xdp: bool) -> list[str]:
    return [*ENGINE_TESTS, *PROPERTY_TESTS, *SEGMENT_TESTS, *CHARDEV_GLUE_TESTS,
            *((XSK_TESTS + SERVICE_TESTS + OFFLOAD_TESTS) if xdp else [])]


@dataclass(repr=False)
class Run:
    returncode: int
    output: str
    log_dir: Path
    pid: int                                                     # pytest's
    summary: dict[str, int] = field(default_factory=dict)
    cases: list[tuple[str, str]] = field(default_factory=list)   # (classname, outcome)

    def reports(self) -> dict[str, str]:
        """Sanitizer reports, by file name (sanitizer.<pid>)."""
        return {p.name: p.read_text(errors="replace")
                for p in sorted(self.log_dir.glob("sanitizer.*"))}

    def loads(self) -> list[dict]:
        """What each process that loaded the sanitized module recorded."""
        return [json.loads(p.read_text()) for p in sorted(self.log_dir.glob("loaded.*.json"))]

    def passed(self, where: str) -> int:
        """Tests that passed in the file ``where`` (a path ending .py), or in
        the files whose path starts with ``where``."""
        return sum(1 for name, outcome in self.cases
                   if outcome == "passed" and _in(name, where))

    @property
    def ok(self) -> bool:
        return (self.returncode == 0 and not self.reports()
                and not REPORT.search(self.output))

    def __repr__(self) -> str:
        return f"Run(exit status {self.returncode}, {self.summary}, logs in {self.log_dir})"

    def explain(self, lines: int = 60) -> str:
        tail = "\n".join(self.output.splitlines()[-lines:])
        reports = "\n".join(f"--- {name}\n{text}" for name, text in self.reports().items())
        return f"exit status {self.returncode}\n{tail}\n{reports}"


def _in(classname: str, where: str) -> bool:
    if where.endswith(".py"):
        module = where[:-3].replace("/", ".")
        return classname == module or classname.startswith(module + ".")
    return classname.startswith(where.replace("/", "."))


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def parse_summary(output: str) -> dict[str, int]:
    """pytest's last line, '12 passed, 1 skipped in 3.4s', as a dict."""
    for line in reversed(output.splitlines()):
        if re.search(r" in [\d.]+s", line):
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                    for n, kind in SUMMARY.findall(line)}
    return {}


def parse_junit(path: Path) -> list[tuple[str, str]]:
    """(classname, outcome) of every test case in pytest's junit XML; the
    classname is the test's module, dotted (tests.xdp.test_xsk), then its
    class if it has one."""
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = ("failed" if kinds & {"failure", "error"}
                   else "skipped" if "skipped" in kinds else "passed")
        cases.append((case.get("classname", ""), outcome))
    return cases


def run(args: list[str], log_dir: Path, timeout: float = 600) -> Run:
    """pytest with ``args`` in a subprocess, sanitized; the module must be built."""
    log_dir.mkdir(parents=True, exist_ok=True)
    junit = log_dir / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *args]
    with subprocess.Popen(cmd, cwd=ROOT, env=sanitized_env(log_dir), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output += f"\n[sanitize_kit: killed after {timeout:.0f} s]"
    return Run(proc.returncode, output, log_dir, proc.pid, parse_summary(output),
               parse_junit(junit))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compile"]:
        _compile(Path(argv[1]), argv[2])
        return 0
    print(f"sanitized helper: {build()}", file=sys.stderr)
    if not argv:
        sys.path.insert(0, str(ROOT))
        from colo_xdp.transport.xdp import classifier as xdp
        argv = selection(xdp.unavailable() is None)
    log_dir = Path(tempfile.mkdtemp(prefix="cx-sanitize-"))
    result = run(argv, log_dir)
    print(result.output)
    for name, text in result.reports().items():
        print(f"--- {name}\n{text}")
    print(f"sanitizer logs in {log_dir}", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
