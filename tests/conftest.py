"""Shared test configuration: Hypothesis profiles.

`ci` (the default) keeps every property test quick; `thorough` is for hunting bugs locally:
`HYPOTHESIS_PROFILE=thorough pytest tests/unit`.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=25)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
