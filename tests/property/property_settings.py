"""Hypothesis settings for the property tests (see conftest.py)."""
import os

from hypothesis import HealthCheck, settings

_FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"

profile = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "4000")) if _FUZZ else 400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
