from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from evsed.hal.contactor import RelayContactor
from evsed.hal.interfaces import Contactor
from evsed.hal.types import ContactorFault
from evsed.hwmocks.pins import BenchPins
from tests.support.clock import FakeClock


class Rig:
    def __init__(self, factory: MockFactory) -> None:
        self.clock = FakeClock()
        self.bench = BenchPins(factory)
        self.k = RelayContactor(17, 27, settle_s=0.1, monotonic=self.clock.monotonic)

    def wait(self, s: float) -> None:
        self.clock._mono += s  # only monotonic() is used here; no sleepers to wake


@pytest.fixture
def rig(mock_factory: MockFactory) -> Iterator[Rig]:
    r = Rig(mock_factory)
    yield r
    r.k.shutdown()
    r.bench.close()


def test_starts_open_and_follows(rig: Rig) -> None:
    assert isinstance(rig.k, Contactor)
    assert (rig.k.energized, rig.k.feedback(), rig.bench.relay_energized) == (False, False, False)
    rig.k.energize()
    assert rig.bench.relay_energized and rig.k.feedback() is True
    rig.wait(5)
    assert rig.k.fault() is None
    rig.k.deenergize()
    assert rig.k.feedback() is False
    rig.wait(5)
    assert rig.k.fault() is None


def test_welded_after_settle_time(rig: Rig) -> None:
    rig.k.energize()
    rig.bench.weld(True)
    rig.k.deenergize()
    assert rig.k.feedback() is True
    rig.wait(0.05)
    assert rig.k.fault() is None  # still within the contactor's opening time
    rig.wait(0.1)
    assert rig.k.fault() is ContactorFault.WELDED
    rig.bench.weld(False)
    assert rig.k.fault() is None


def test_weld_appearing_later_counts_from_the_edge(rig: Rig) -> None:
    rig.wait(10)
    rig.bench.weld(True)  # feedback closes long after the last command
    assert rig.k.fault() is None
    rig.wait(0.2)
    assert rig.k.fault() is ContactorFault.WELDED


def test_failed_to_close(rig: Rig) -> None:
    rig.bench.fail_to_close(True)
    rig.k.energize()
    assert rig.bench.relay_energized and rig.k.feedback() is False
    rig.wait(0.2)
    assert rig.k.fault() is ContactorFault.FAILED_TO_CLOSE


def test_shutdown_deenergises_first(rig: Rig, mock_factory: MockFactory) -> None:
    rig.k.energize()
    pin = mock_factory.pin(17)
    pin.clear_states()
    rig.k.shutdown()
    assert [bool(s.state) for s in pin.states] == [True, False]
    assert rig.k.feedback() is None
    rig.k.energize()  # after shutdown: ignored, no exception
    assert not rig.bench.relay_energized


def test_without_feedback(mock_factory: MockFactory) -> None:
    k = RelayContactor(17, active_high=False)
    pin = mock_factory.pin(17)
    assert bool(pin.state) is True  # active-low relay board: de-energised = high
    k.energize()
    assert bool(pin.state) is False
    assert k.feedback() is None and k.fault() is None
    k.shutdown()
