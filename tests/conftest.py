"""Suite-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, settings

from evsed.hwmocks.pins import install_mock_factory, uninstall_mock_factory

# CI runs on a shared 2-core machine: the same examples every run (a property that fails
# does so reproducibly, found first by a developer's randomised run) and no per-example
# deadline, which a busy machine would turn into false failures.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
if os.environ.get("CI"):
    settings.load_profile("ci")


# A fresh gpiozero MockFactory (MockPWMPin) per test, installed globally and reset after.
@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    previous = Device.pin_factory
    factory = install_mock_factory()
    try:
        yield factory
    finally:
        # Close whatever the test left open so pins and reservations do not leak.
        for pin in list(factory.pins.values()):
            pin.close()
        uninstall_mock_factory(factory)
        Device.pin_factory = previous
