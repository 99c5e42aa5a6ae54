"""The property tests: engine_kit on the path, and their hypothesis settings.

``profile`` (a settings decorator) keeps ``make test`` short; with
HYPOTHESIS_PROFILE=fuzz (``make fuzz``) it runs FUZZ_EXAMPLES examples a
test (default 4000).  Only the tests decorated with it are affected.  The
examples that failed before are replayed first from .hypothesis/.
"""
import sys
from pathlib import Path

# engine_kit (the accounting invariant) lives with the unit tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
