"""The engine's C core under ASan and UBSan (tests/fuzz/fuzz_engine.c).

* The seed corpus (one program per compare rule, tests/fuzz/make_seeds.py)
  replays clean, and together the seeds reach every release, drop and
  checkpoint reason: every rule has run under the sanitizers.
* The whole corpus and every crash reproducer in tests/fuzz/crashes/engine/
  replay clean.
* A short libFuzzer run (FUZZ_TEST_SECONDS, default 4) finds nothing; what it
  would find is kept as a reproducer.
The harness checks the engine's invariants after every step (see its
header), so "clean" means no sanitizer report and no broken invariant.
"""
from __future__ import annotations

import subprocess

import pytest

import fuzzlib

ENGINE_CORPUS = fuzzlib.CORPUS / fuzzlib.ENGINE

RELEASE = ["matched", "unsupported", "no_payload", "retransmit", "flushed", "failover",
           "passthrough"]
DROP = ["-", "unsupported", "queue_full", "table_full", "flushed", "failover", "empty",
        "oversize", "truncated", "no_memory", "passthrough", "frag_timeout", "frag_overlap",
        "frag_limit"]
FRAG = ["reassembled", "timed_out", "overlap", "over_limit"]
CHECKPOINT = ["-", "mismatch", "timeout", "queue_full", "table_full"]
# Not reachable from frames: what only the other side can drop, and running
# out of memory.
UNREACHABLE = {"dropped0.unsupported", "dropped0.flushed", "dropped0.failover",
               "dropped0.passthrough", "dropped0.no_memory", "dropped1.no_memory"}


def _clean(result: fuzzlib.Result) -> None:
    assert result.ok, f"sanitizer or invariant report:\n{result.tail(60)}"


def _reached(log: str) -> set[str]:
    """Counter names that some input's cx-stats line shows above zero."""
    names = {"released": RELEASE, "dropped0": DROP, "dropped1": DROP,
             "checkpoints": CHECKPOINT, "mismatches": ["tcp", "udp_icmp", "other"],
             "frag0": FRAG, "frag1": FRAG}
    seen = set()
    for line in log.splitlines():
        if not line.startswith("cx-stats "):
            continue
        for word in line.split()[1:]:
            name, _, values = word.partition("=")
            for i, value in enumerate(values.split(",")):
                if int(value):
                    seen.add(f"{name}.{names[name][i]}" if name in names else name)
    return seen


def test_every_rule_runs_clean_under_asan_and_ubsan(engine_fuzzer):
    seeds = sorted(ENGINE_CORPUS.glob("seed-*"))
    assert len(seeds) >= 30, "run tests/fuzz/make_seeds.py"
    result = fuzzlib.replay(fuzzlib.ENGINE, seeds, {"CX_FUZZ_STATS": "1"})
    _clean(result)
    assert result.log.count("cx-stats ") == 3 * len(seeds)   # counters, then frag0, frag1
    wanted = {f"released.{r}" for r in RELEASE}
    wanted |= {f"dropped{s}.{r}" for s in "01" for r in DROP[1:]} - UNREACHABLE
    wanted |= {f"checkpoints.{r}" for r in CHECKPOINT[1:]}
    wanted |= {f"frag{s}.{o}" for s in "01" for o in FRAG}
    wanted |= {"mismatches.tcp", "mismatches.udp_icmp", "mismatches.other", "skipped",
               "evicted", "events_lost", "evidence_lost", "outdev_cut"}
    assert wanted - _reached(result.log) == set(), "rules the seeds no longer reach"


def test_whole_corpus_replays_clean(engine_fuzzer):
    files = sorted(p for p in ENGINE_CORPUS.iterdir() if p.is_file())
    for result in fuzzlib.replay_corpus(fuzzlib.ENGINE, files):
        _clean(result)


@pytest.mark.parametrize("reproducer", fuzzlib.reproducers(fuzzlib.ENGINE) or [None],
                         ids=lambda p: p.name if p else "none-yet")
def test_crash_reproducer_replays_clean(engine_fuzzer, reproducer):
    if reproducer is None:
        return
    _clean(fuzzlib.replay(fuzzlib.ENGINE, [reproducer]))


def test_short_fuzz_run_finds_nothing(engine_fuzzer, tmp_path):
    result, kept = fuzzlib.short_run(fuzzlib.ENGINE, tmp_path)
    assert result.ok, (f"the engine fuzzer found a problem; reproducers kept in {kept}:\n"
                       f"{result.tail(60)}")
    assert result.stat("number_of_executed_units") > 1000


def test_out_peek_before_any_release_is_defined(sanitized_build):
    """Found by the fuzzer (fixed in bb004e7): out_peek did arithmetic on a
    NULL buffer before the first release, on every loop turn of the service."""
    exe = sanitized_build("peek_before_release", "peek_before_release.c")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=fuzzlib.env(),
                          timeout=60)
    assert proc.returncode == 0 and "runtime error" not in proc.stderr, proc.stderr
