"""Faults a connector can have, what each one does, and the only way each one clears.

A fault that *ends* the transaction is a safety fault: energy must not flow again until the
rule says so. A fault that *suspends* it is a condition the charger waits out (a meter that
stopped answering, a hot socket): the transaction stays open and resumes when it clears.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from enum import StrEnum

from evsed.controller.connector.status import ErrorCode


class Fault(StrEnum):
    RCD = "rcd"
    WELDED = "contactor_welded"
    FAILED_TO_CLOSE = "contactor_failed_to_close"
    OVER_CURRENT = "over_current"
    PILOT_SHORT = "pilot_short"  # state E
    PILOT_SENSE = "pilot_sense"  # state F while evsed drives +12 V or PWM: ADC/generator
    DIODE_MISSING = "diode_missing"
    OVER_TEMPERATURE = "over_temperature"
    TEMPERATURE_SENSOR = "temperature_sensor"  # unreadable (open or shorted NTC, dead bus)
    METER = "meter"
    LOCK = "lock"
    CABLE = "cable"  # PP short
    RCD_SELF_TEST = "rcd_self_test"
    INTERNAL = "internal"  # the safety core itself (or a driver) raised
    CRASH_LOOP = "crash_loop"  # evsed ended uncleanly too often (crashguard.py): a hold


class Clear(StrEnum):
    UNPLUG = "unplug"  # the pilot returned to A
    RESET = "reset"  # a Reset from the CS or a restart of evsed
    RECOVERY = "recovery"  # the source reports it is well again


@dataclass(frozen=True, slots=True)
class FaultRule:
    error_code: ErrorCode
    ends_transaction: bool
    clears_on: frozenset[Clear]
    # EVCommunicationError is shown as SuspendedEVSE, not Faulted (OCPP 1.6 §7.6 note).
    faulted: bool = True
    # StatusNotification.vendorErrorCode: what an OtherError really is.
    vendor_error_code: str = ""


_U, _R, _V = Clear.UNPLUG, Clear.RESET, Clear.RECOVERY

RULES: dict[Fault, FaultRule] = {
    # A residual-current trip means a person may have been at risk: the EV is unplugged, or
    # someone resets the charger, before it may be tried again.
    Fault.RCD: FaultRule(ErrorCode.GROUND_FAILURE, True, frozenset({_U, _R})),
    # A welded contact cannot be cured by unplugging; it needs someone to look (reset).
    Fault.WELDED: FaultRule(ErrorCode.POWER_SWITCH_FAILURE, True, frozenset({_R})),
    Fault.FAILED_TO_CLOSE: FaultRule(ErrorCode.POWER_SWITCH_FAILURE, True, frozenset({_U, _R})),
    Fault.OVER_CURRENT: FaultRule(ErrorCode.OVER_CURRENT_FAILURE, True, frozenset({_U, _R})),
    Fault.PILOT_SHORT: FaultRule(
        ErrorCode.EV_COMMUNICATION_ERROR, False, frozenset({_V, _U, _R}), faulted=False
    ),
    # Only the EVSE drives -12 V: reading it while evsed drives +12 V or the PWM means its
    # own pilot generator or ADC failed. Nothing may be supervised meanwhile (the session
    # ends); it clears when the pilot reads a real state again (or a reset).
    Fault.PILOT_SENSE: FaultRule(ErrorCode.INTERNAL_ERROR, True, frozenset({_V, _R})),
    Fault.DIODE_MISSING: FaultRule(
        ErrorCode.EV_COMMUNICATION_ERROR, False, frozenset({_U, _R}), faulted=False
    ),
    Fault.OVER_TEMPERATURE: FaultRule(ErrorCode.HIGH_TEMPERATURE, False, frozenset({_V})),
    # OCPP 1.6 has no code for a failed sensor: HighTemperature would send someone to cool
    # a socket that is fine. OtherError, the sensor named in vendorErrorCode and info; as
    # fail-safe as a hot socket (nothing flows) until the sensor reads again.
    Fault.TEMPERATURE_SENSOR: FaultRule(
        ErrorCode.OTHER_ERROR, False, frozenset({_V}), vendor_error_code="TemperatureSensor"
    ),
    Fault.METER: FaultRule(ErrorCode.POWER_METER_FAILURE, False, frozenset({_V})),
    Fault.LOCK: FaultRule(ErrorCode.CONNECTOR_LOCK_FAILURE, True, frozenset({_U, _R})),
    Fault.CABLE: FaultRule(ErrorCode.OTHER_ERROR, True, frozenset({_U, _V, _R})),
    # Without a passing self-test since boot we may not trust the RCD: never energise.
    Fault.RCD_SELF_TEST: FaultRule(ErrorCode.GROUND_FAILURE, False, frozenset({_V, _R})),
    # A bug or a driver that raised: we cannot vouch for the outputs, so they are cut and
    # the session ends; the EV leaving (or a reset) is a fresh start for the code as well.
    Fault.INTERNAL: FaultRule(ErrorCode.INTERNAL_ERROR, True, frozenset({_U, _R})),
    # A crash loop: no energy until an operator (clear-hold, a Reset) or a quiet period
    # ends the hold (RECOVERY); unplugging changes nothing about the code that crashed.
    Fault.CRASH_LOOP: FaultRule(
        ErrorCode.OTHER_ERROR, True, frozenset({_V, _R}), vendor_error_code="CrashLoopHold"
    ),
}

# When several faults are active the status shows the most serious one.
SEVERITY: tuple[Fault, ...] = (
    Fault.WELDED,
    Fault.RCD,
    Fault.RCD_SELF_TEST,
    Fault.CRASH_LOOP,
    Fault.INTERNAL,
    Fault.PILOT_SENSE,  # before the temperature: a dead ADC also reads a hot NTC
    Fault.FAILED_TO_CLOSE,
    Fault.OVER_CURRENT,
    Fault.OVER_TEMPERATURE,
    Fault.TEMPERATURE_SENSOR,
    Fault.LOCK,
    Fault.CABLE,
    Fault.METER,
    Fault.PILOT_SHORT,
    Fault.DIODE_MISSING,
)


def most_serious(active: Container[Fault]) -> Fault | None:
    for fault in SEVERITY:
        if fault in active:
            return fault
    return None
