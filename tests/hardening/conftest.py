"""Hypothesis profiles: `ci` runs the 10,000 cases per property the hardening issue asks for
(`.ci/run` selects it); the default `dev` profile runs 1,000 so the suite stays quick locally."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=10_000, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("dev", max_examples=1_000, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
