"""Connector 0's composite is what the whole charge point applies: each connector's limit is
capped by the ChargePointMaxProfile as it runs for that connector before they are summed.

Found by the Hypothesis property test_connector_zero_never_exceeds_charge_point_max_nor_the_sum
(tests/controller/test_smartcharging_properties.py): with a Relative ChargePointMaxProfile
(Home Assistant sends its maximum that way), connector 1 runs it from its transaction's
start, the whole charge point from the window's start; the whole said 2 A while its
connectors applied 0 A + 1 A.
"""

from __future__ import annotations

from datetime import timedelta

from evsed.controller.smartcharging.composite import (
    ElectricalContext,
    TxContext,
    composite,
    limit_at,
)
from evsed.controller.smartcharging.model import Kind, Purpose, RateUnit
from evsed.controller.smartcharging.profileset import ProfileSet
from tests.support.smartcharging import at, profile

T = at("2026-12-03T10:00")
H = 3600
EL = ElectricalContext(phases=3, voltage_v=230.0)
CONNECTORS = (1, 2)


def installed() -> ProfileSet:
    ps = ProfileSet()
    # ChargePointMax, Relative: 2 A for an hour, then 0 A.
    ps.install(profile(1, Purpose.CHARGE_POINT_MAX, 0, [(0, 2.0), (H, 0.0)], kind=Kind.RELATIVE))
    # Every connector's TxDefault: 1 A from T on.
    ps.install(profile(2, Purpose.TX_DEFAULT, 0, [(0, 1.0)], start=T))
    return ps


def test_the_whole_is_the_sum_of_what_each_connector_applies() -> None:
    ps = installed()
    tx = TxContext(5, T - timedelta(hours=1))  # connector 1's hour of 2 A is over at T
    one = composite(
        ps, 1, T, H, RateUnit.A, transaction=tx, electrical=EL, connector_ids=CONNECTORS
    )
    two = composite(
        ps, 2, T, H, RateUnit.A, transaction=None, electrical=EL, connector_ids=CONNECTORS
    )
    assert [p.limit for p in one.periods] == [0.0]  # its ChargePointMax is at 0 A
    assert [p.limit for p in two.periods] == [1.0]  # the TxDefault, under its 2 A
    whole = composite(
        ps,
        0,
        T,
        H,
        RateUnit.A,
        transaction=None,
        electrical=EL,
        connector_ids=CONNECTORS,
        transactions={1: tx},
    )
    assert [(p.start_s, p.limit) for p in whole.periods] == [(0, 1.0)]  # 0 + 1, not 2
    now = limit_at(
        ps, 0, T, transaction=None, electrical=EL, connector_ids=CONNECTORS, transactions={1: tx}
    )
    assert now.limit == 1.0
