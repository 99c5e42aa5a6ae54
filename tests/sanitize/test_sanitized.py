"""The whole C helper (csrc/cx_engine.c, chardev_glue.c, xsk.c, segment.c,
xdp_glue.c) under ASan and UBSan: the engine's unit tests, the property tests
against the model, segment.c's and chardev_glue.c's unit tests, the AF_XDP socket tests (test_xsk, test_tap:
xsk.c in-process) and the XDP-mode service tests (the colo-xdp process:
xdp_glue.c from rx burst into the engine and from its releases to tx bursts
with checksums finished, super-frames joined and cut: test_offload), all
against a sanitized build of colo_xdp._native.  See sanitize_kit.py; alone:

    .venv/bin/python -m pytest -q tests/sanitize
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sanitize_kit as kit
from sanitize_kit import need

# Fewer than the selection has today (a test removed elsewhere should not
# fail this one), enough that a run which collected next to nothing fails.
MIN_ENGINE_TESTS = 300
MIN_PROPERTY_TESTS = 8
MIN_XSK_TESTS = 20
MIN_CHARDEV_GLUE_TESTS = 12


def test_the_helper_is_built_with_asan_and_ubsan(sanitized_build):
    assert sanitized_build == kit.NATIVE
    assert kit.instrumented(sanitized_build) == {"asan": True, "ubsan": True}


def test_the_tests_pass_and_no_sanitizer_reports(sanitized_run):
    assert sanitized_run.ok, sanitized_run.explain()
    assert not sanitized_run.summary.get("failed") and not sanitized_run.summary.get("error")


def test_every_process_ran_the_sanitized_helper_under_asan(sanitized_run):
    loads = sanitized_run.loads()
    assert sanitized_run.pid in {r["pid"] for r in loads}, \
        f"pytest (pid {sanitized_run.pid}) never loaded the sanitized helper: {loads}"
    for record in loads:
        assert Path(record["file"]) == kit.NATIVE, record
        assert record["module_mapped"] and record["asan_mapped"], record


def test_enough_tests_ran(sanitized_run):
    passed = sanitized_run.summary.get("passed", 0)
    assert passed == len(sanitized_run.cases) or not sanitized_run.ok, sanitized_run.summary
    assert sanitized_run.passed("tests/unit/test_engine_") >= MIN_ENGINE_TESTS, \
        sanitized_run.explain()
    assert sanitized_run.passed("tests/property/") >= MIN_PROPERTY_TESTS, \
        sanitized_run.explain()
    assert sanitized_run.passed("tests/unit/test_chardev_glue.py") >= MIN_CHARDEV_GLUE_TESTS, \
        sanitized_run.explain()


def test_the_af_xdp_code_ran_sanitized(sanitized_run, bpf_problem):
    """xsk.c in the pytest process, xdp_glue.c in the colo-xdp processes
    (compare and forward) that the service tests started."""
    need(bpf_problem is None, bpf_problem or "")
    run = sanitized_run
    xsk = run.passed("tests/xdp/test_xsk.py") + run.passed("tests/xdp/test_tap.py")
    assert xsk >= MIN_XSK_TESTS, run.explain()
    assert run.passed("tests/xdp/test_service_xdp.py") == len(kit.SERVICE_TESTS), run.explain()
    assert run.passed("tests/xdp/test_offload.py") >= 3, run.explain()
    commands = {r["argv"][2] for r in run.loads()
                if len(r["argv"]) > 2 and Path(r["argv"][1]).name == "colo-xdp"}
    assert {"compare", "forward"} <= commands, run.loads()


@pytest.mark.parametrize("line,kind", [
    ("5 passed in 1.20s", {"passed": 5}),
    ("1 failed, 387 passed, 2 skipped in 51.87s (0:00:51)",
     {"failed": 1, "passed": 387, "skipped": 2}),
    ("2 errors in 0.10s", {"error": 2}),
])
def test_pytest_summary_is_read(line, kind):
    assert kit.parse_summary(f"....\n{line}\n") == kind


def test_passed_tests_are_counted_by_file(tmp_path):
    run = kit.Run(0, "", tmp_path, 1, cases=[
        ("tests.unit.test_engine_tcp", "passed"), ("tests.unit.test_engine_tcp.TestX", "passed"),
        ("tests.unit.test_engine_time", "skipped"), ("tests.xdp.test_xsk", "passed"),
        ("tests.xdp.test_xsk_more", "passed")])
    assert run.passed("tests/unit/test_engine_") == 2
    assert run.passed("tests/xdp/test_xsk.py") == 1
    assert run.passed("tests/xdp/") == 2
