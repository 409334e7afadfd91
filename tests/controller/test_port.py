"""`ChargePointPort`: the real Charger satisfies it member by member, every member works on
the bench charger, and the OCPP layer reaches the charger through nothing else."""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

import evsed.controller.ocpp16 as ocpp16_pkg
from evsed.controller.charger import Charger
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.connector.status import ChargePointStatus, StopReason
from evsed.controller.limiter import Reason, SmartChargingLimit
from evsed.controller.ocpp16.port import ChargePointPort, Metering, Reservation
from evsed.controller.run import Stack
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock

CARD = "AABBCCDDEE"


def _members() -> list[str]:
    return sorted(
        name
        for name in vars(ChargePointPort)
        if not name.startswith("_") and name not in {"register"}
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    stack = Stack(bench_config(), clock=clock, control=False, hooks=LocalHooks(tags=[CARD]))
    await stack.start()
    try:
        yield Rig(stack, clock)
    finally:
        await stack.stop()


def test_the_charger_class_has_every_member_with_the_same_signature() -> None:
    members = _members()
    assert len(members) == 23, members  # a new member must be added to the Charger too
    for name in members:
        declared = getattr(ChargePointPort, name)
        implemented = getattr(Charger, name, None)
        if implemented is None and isinstance(declared, property):
            # A plain attribute satisfies a read-only property: it must be set in __init__
            # (its value's type is checked on the bench charger below).
            assert f"self.{name} = " in inspect.getsource(Charger.__init__), name
            continue
        assert implemented is not None, f"Charger lacks {name}"
        if isinstance(declared, property):
            assert isinstance(implemented, property), name
            want = typing.get_type_hints(declared.fget)["return"]
            got = typing.get_type_hints(implemented.fget)["return"]
            assert want == got, name
            continue
        want_sig = inspect.signature(declared)
        got_sig = inspect.signature(implemented)
        assert list(want_sig.parameters) == list(got_sig.parameters), name
        assert [p.kind for p in want_sig.parameters.values()] == [
            p.kind for p in got_sig.parameters.values()
        ], name
        assert typing.get_type_hints(declared) == typing.get_type_hints(implemented), name


async def test_the_bench_charger_is_a_port_and_every_member_works(rig: Rig) -> None:
    charger = rig.stack.charger
    assert charger is not None
    port: ChargePointPort = charger  # what OcppApp.attach takes
    assert isinstance(port, ChargePointPort)  # runtime_checkable: every member present

    # reading
    assert port.connector_ids == (1,)
    assert port.reader_faulted is False
    assert port.status(1).status is ChargePointStatus.AVAILABLE
    assert port.transaction(1) is None
    assert port.operative(1) is True
    assert port.reservation(1) is None
    metering = port.metering(1)
    assert isinstance(metering, Metering) and metering.phases == 3
    assert port.has_meter(1) is True
    seen: list[tuple[int, float]] = []
    unwatch = port.watch_meters(lambda cid, energy_wh: seen.append((cid, energy_wh)))
    await rig.until(lambda: bool(seen))
    unwatch()
    assert seen[0][0] == 1 and isinstance(seen[0][1], float)
    # No cable plugged (the bench reads PP): nothing may be offered, and it says why.
    assert (port.allowance(1).suspended, port.allowance(1).reason) == (True, Reason.CABLE)

    # asking: availability, limits, session settings
    assert port.change_availability(1, False) == "Accepted"
    assert port.operative(1) is False
    assert port.start_remote(1, CARD, None) is False  # unavailable: refused
    assert port.change_availability(1, True) == "Accepted"
    port.set_smart_charging_limit(1, SmartChargingLimit(10.0))
    port.apply_session_settings(
        connection_timeout_s=33.0, stop_on_ev_disconnect=False, unlock_on_ev_disconnect=False
    )
    assert rig.connector.settings.connection_timeout_s == 33.0
    assert rig.connector.settings.stop_on_ev_disconnect is False
    assert rig.connector.settings.unlock_on_ev_disconnect is False
    assert await port.unlock(1) == "NotSupported"  # the bench connector has a tethered cable

    # a reservation (Reserved while idle) and its cancellation
    expiry = rig.clock.now() + timedelta(hours=1)
    assert port.reserve(1, 5, CARD, None, expiry) == "Accepted"
    assert port.reservation(1) == Reservation(5, CARD, None)
    assert port.status(1).status is ChargePointStatus.RESERVED
    assert port.cancel_reservation(1, 6) is False
    assert port.cancel_reservation(1, 5) is True
    assert port.reservation(1) is None

    # a remote start, the group of its transaction, and a stop
    assert port.start_remote(1, CARD, None) is True
    await rig.bench.plug(1)
    await rig.until(lambda: port.status(1).status is ChargePointStatus.CHARGING)
    assert (port.allowance(1).amps, port.allowance(1).reason) == (10.0, Reason.SMART_CHARGING)
    tx = port.transaction(1)
    assert tx is not None and tx.parent_id_tag is None
    assert port.set_transaction_parent(1, tx.local_id + 1, "GROUP") is False  # not this one
    assert port.set_transaction_parent(1, tx.local_id, "GROUP") is True
    tx_after = port.transaction(1)
    assert tx_after is not None and tx_after.parent_id_tag == "GROUP"
    assert tx_after.local_id == tx.local_id and tx_after.id_tag == tx.id_tag
    assert port.metering(1).offered_a == 10.0
    assert port.request_stop(1, StopReason.REMOTE) is True
    await rig.until(lambda: port.transaction(1) is None)
    assert port.request_stop(1, StopReason.REMOTE) is False


async def test_invalid_id_suspension_has_its_own_slot(rig: Rig) -> None:
    """StopTransactionOnInvalidId=false used to write a 0 A smart-charging limit, which
    erased a TxProfile's limit for good; now both stand side by side."""
    charger = rig.stack.charger
    assert charger is not None
    charger.set_smart_charging_limit(1, SmartChargingLimit(10.0))
    assert charger.start_remote(1, CARD, None)
    await rig.bench.plug(1)
    await rig.until(lambda: charger.status(1).status is ChargePointStatus.CHARGING)
    charger.set_invalid_id_suspension(1, True)
    allowance = charger.allowance(1)
    assert (allowance.amps, allowance.suspended, allowance.reason) == (0.0, True, Reason.INVALID_ID)
    await rig.until(lambda: charger.status(1).status is ChargePointStatus.SUSPENDED_EVSE)
    await rig.until(lambda: not rig.sim.pins.relay_energized, within_s=10)
    charger.set_invalid_id_suspension(1, False)
    # The smart-charging limit is still there underneath (no resume hold: not a budget).
    assert (charger.allowance(1).amps, charger.allowance(1).reason) == (
        10.0,
        Reason.SMART_CHARGING,
    )


async def test_a_new_binding_limit_is_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    charger = rig.stack.charger
    assert charger is not None
    await rig.bench.plug(1)
    await rig.until(lambda: charger.allowance(1).reason is not Reason.CABLE)
    with caplog.at_level("INFO", logger="evsed.controller.charger"):
        charger.set_smart_charging_limit(1, SmartChargingLimit(8.0))
        charger.set_smart_charging_limit(1, SmartChargingLimit(8.0))  # no change: no line
    lines = [r.getMessage() for r in caplog.records if "may offer" in r.getMessage()]
    assert lines == ["connector 1 may offer 8.0 A (bound by smart_charging)"]


async def test_a_faulted_connector_is_logged_as_offering_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A new user read "may offer 8.0 A (bound by smart_charging)" beside a Faulted status
    as the fault being ignored: while any fault is active the line says it offers nothing,
    and which limit would bind once the fault clears."""
    charger = rig.stack.charger
    assert charger is not None
    await rig.bench.plug(1)
    await rig.until(lambda: charger.allowance(1).reason is not Reason.CABLE)
    await rig.bench.inject_fault("rcd_trip", 1, True)
    await rig.until(lambda: charger.connectors[1].status.status is ChargePointStatus.FAULTED)
    with caplog.at_level("INFO", logger="evsed.controller.charger"):
        charger.set_smart_charging_limit(1, SmartChargingLimit(8.0))
    lines = [r.getMessage() for r in caplog.records if "offer" in r.getMessage()]
    assert lines == [
        "connector 1 offers nothing while faulted (rcd); the limits allow 8.0 A "
        "(bound by smart_charging)"
    ]


async def test_an_empty_socket_is_logged_as_such_not_as_a_cable_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With nothing plugged the PP reads no cable, which the limiter binds as 0 A "cable":
    the log says the socket is empty, at start-up and after an unplug."""
    clock = FakeClock()
    with caplog.at_level("INFO", logger="evsed.controller.charger"):
        stack = Stack(bench_config(), clock=clock, control=False, hooks=LocalHooks(tags=[CARD]))
        await stack.start()
        try:
            rig = Rig(stack, clock)
            charger = stack.charger
            assert charger is not None
            await rig.bench.plug(1)
            await rig.until(lambda: charger.allowance(1).reason is not Reason.CABLE)
            await rig.bench.unplug(1)
            await rig.until(lambda: charger.allowance(1).reason is Reason.CABLE)
        finally:
            await stack.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "evsed.controller.charger"]
    lines = [line for line in lines if "offer" in line]
    assert lines == [
        "connector 1 offers nothing: no cable plugged",
        "connector 1 may offer 32.0 A (bound by hardware)",
        "connector 1 offers nothing: no cable plugged",
    ]


# ---------------------------------------------------------------- nothing but the port


def _ocpp16_sources() -> list[Path]:
    root = Path(ocpp16_pkg.__file__).parent
    return sorted(root.rglob("*.py"))


def test_the_ocpp_layer_uses_no_getattr_and_no_private_attribute_of_others() -> None:
    """No `getattr(...)` on anything but the library's result objects, no `x._private` on
    an object that is not `self`, and no import of the connector's state machine."""
    offences: list[str] = []
    for path in _ocpp16_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
                target = ast.unparse(node.args[0]) if node.args else ""
                # The library's result objects and payload classes are the only targets.
                if target not in {"result", "response", "call"}:
                    offences.append(f"{where} getattr({target}, ...)")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner = ast.unparse(node.value)
                if owner not in {"self", "cls", "super()"} and not node.attr.startswith("__"):
                    offences.append(f"{where} {owner}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in {
                "evsed.controller.connector.machine",
                "evsed.controller.charger",
            }:
                offences.append(f"{where} imports {node.module}")
    assert offences == []
