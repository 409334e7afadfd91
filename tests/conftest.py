"""Suite-wide settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI runs on a shared 2-core machine: the same examples every run (a property that fails
# does so reproducibly, found first by a developer's randomised run) and no per-example
# deadline, which a busy machine would turn into false failures.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
if os.environ.get("CI"):
    settings.load_profile("ci")
