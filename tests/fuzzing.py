"""Hypothesis settings of the fuzz tests, in one place: a few hundred examples in `make test`,
10 000 under `make fuzz` (which sets HYPOTHESIS_PROFILE=fuzz)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = 10_000


def fuzz_settings(examples_in_make_test: int) -> settings:
    fuzzing = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
    return settings(max_examples=FUZZ_EXAMPLES if fuzzing else examples_in_make_test,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
