"""csrc/segment.c under ASan and UBSan (tests/fuzz/fuzz_segment.c): the seeds
(tests/fuzz/make_seeds.py) and the whole corpus replay clean, every kept
reproducer replays clean, and a short libFuzzer run (FUZZ_TEST_SECONDS)
finds nothing.  The harness checks that every planned wire frame is written
within its room, fits the MTU and carries the frame's payload in order."""
from __future__ import annotations

import pytest

import fuzzlib

CORPUS = fuzzlib.CORPUS / fuzzlib.SEGMENT


@pytest.fixture(scope="session")
def segment_fuzzer(engine_fuzzer):
    """Built like the engine's harness (the engine_fuzzer fixture skips or
    fails without clang, as this one should)."""
    return fuzzlib.segment_fuzzer()


def _clean(result: fuzzlib.Result) -> None:
    assert result.ok, f"sanitizer or invariant report:\n{result.tail(60)}"


def test_seeds_and_corpus_replay_clean(segment_fuzzer):
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    assert len([p for p in files if p.name.startswith("seed-")]) >= 8, \
        "run tests/fuzz/make_seeds.py"
    for result in fuzzlib.replay_corpus(fuzzlib.SEGMENT, files):
        _clean(result)


@pytest.mark.parametrize("reproducer", fuzzlib.reproducers(fuzzlib.SEGMENT) or [None],
                         ids=lambda p: p.name if p else "none-yet")
def test_crash_reproducer_replays_clean(segment_fuzzer, reproducer):
    if reproducer is None:
        return
    _clean(fuzzlib.replay(fuzzlib.SEGMENT, [reproducer]))


def test_short_fuzz_run_finds_nothing(segment_fuzzer, tmp_path):
    result, kept = fuzzlib.short_run(fuzzlib.SEGMENT, tmp_path)
    assert result.ok, (f"the segment fuzzer found a problem; reproducers kept in {kept}:\n"
                       f"{result.tail(60)}")
    assert result.stat("number_of_executed_units") > 1000
