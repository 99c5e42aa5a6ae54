"""Fixtures for the fuzz tests: the sanitized engine harness, atheris.

A missing tool fails these tests when CI is set (CI must fuzz) and skips
them otherwise, naming what to install.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib  # noqa: E402

def missing(exc: Exception):
    if os.environ.get("CI"):
        pytest.fail(str(exc), pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def engine_fuzzer() -> Path:
    """tests/fuzz/fuzz_engine.c built with libFuzzer, ASan and UBSan."""
    try:
        return fuzzlib.engine_fuzzer()
    except fuzzlib.ToolMissing as exc:
        missing(exc)


@pytest.fixture(scope="session")
def sanitized_build():
    """Build a C file with the engine, ASan and UBSan (no libFuzzer)."""
    def make(name: str, source: str) -> Path:
        try:
            return fuzzlib.build(name, fuzzlib.FUZZ / source, fuzzer=False)
        except fuzzlib.ToolMissing as exc:
            missing(exc)
    return make


@pytest.fixture(scope="session")
def atheris_ready() -> None:
    try:
        fuzzlib.atheris_available()
    except fuzzlib.ToolMissing as exc:
        missing(exc)
