"""A fresh gpiozero MockFactory (MockPWMPin) per test, installed globally and reset after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from evsed.hwmocks.pins import install_mock_factory, uninstall_mock_factory


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
