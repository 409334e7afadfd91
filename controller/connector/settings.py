"""What one connector is configured to do: its rating and the timings of its reactions
(built by the charger from the configuration and the OCPP keys)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    connector_id: int = 1
    rated_current_a: float = 32.0
    max_current_a: float | None = None
    phases: int = 3
    # For a meter that gives only the total power (SDM72D-M v1): its current, per phase.
    nominal_voltage_v: float = 230.0
    free_vend: bool = False
    free_vend_id_tag: str = "FREEVEND"
    ventilation_available: bool = False  # state D may charge only where the room is ventilated
    connection_timeout_s: float = 60.0  # OCPP ConnectionTimeOut
    stop_on_ev_disconnect: bool = True  # OCPP StopTransactionOnEVSideDisconnect
    # OCPP UnlockConnectorOnEVSideDisconnect: the EV unplugged, no session left, the lock
    # (kept by a card's Local stop) lets the cable go.
    unlock_on_ev_disconnect: bool = True
    # An EV may briefly overshoot after a duty decrease; IEC gives it 5 s to follow. EVerest
    # trips after 7 s beyond the limit; we use the same grace and a 2 A / 10 % tolerance.
    overcurrent_grace_s: float = 7.0
    overcurrent_tolerance_a: float = 2.0
    overcurrent_tolerance_ratio: float = 0.10
    # C2 -> C1 (PWM withdrawn): the EV should open S2; force the contactor off after 6 s.
    power_off_under_load_s: float = 6.0
    # After a fault stops charging, state F for >= 300 ms (IEC 61851-1 Table A.5).
    fault_state_f_s: float = 0.3
    pwm_resolution: float = 0.001
    # State F (-12 V) read this long while evsed does not drive it: its pilot generator or
    # ADC failed (Fault.PILOT_SENSE). Two readings at least, so one glitch is no fault.
    pilot_f_fault_s: float = 0.1
    # A motor lock's pulse is ~0.5 s; no confirmation within this is a ConnectorLockFailure
    # (locking), or UnlockFailed (an unlock whose position switch still reads locked).
    lock_timeout_s: float = 2.0
    # UnlockConnector waits this long beyond the soft stop for the contactor to read open;
    # then the unlock is withdrawn (UnlockFailed), never carried out later by surprise.
    unlock_margin_s: float = 1.0
    # With a meter fitted a start waits this long for a first reading after start-up: a card
    # left on the reader across a restart must not start with meterStart 0 (issue 14 #11).
    # No reading by then: the start is refused and the meter reported failed, never
    # recorded with a number the meter did not give (see `_start_waiting_for_meter`).
    # 10 s covers a slow first RTU poll (a timeout and a retry) without a user giving up.
    has_meter: bool = False
    meter_wait_s: float = 10.0
    # A stop's meter reading is the first one taken after the contactor reads open: the EV
    # draws until it reacts to the withdrawn PWM (up to `power_off_under_load_s`), and that
    # energy is this session's. No reading within this after the contactor opened (a meter
    # poll plus a slow answer; the charger sets it from the poll interval): the newest known.
    stop_meter_wait_s: float = 3.0
