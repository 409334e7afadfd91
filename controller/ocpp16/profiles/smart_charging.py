"""Smart Charging (OCPP 1.6 §3.13, §5.5, §5.7, §5.16, §9.4): SetChargingProfile,
ClearChargingProfile, GetCompositeSchedule, and a RemoteStartTransaction's TxProfile.

The handlers only translate: the profiles, their validity and the composite schedule are
`evsed.controller.smartcharging` (pure); `SmartChargingService` keeps the installed set,
persists it (`store/profiles.py`, synced before the answer), restores it at start-up and
hands the charger the limit in force through the runner (`ChargePointPort.
set_smart_charging_limit`, and `set_phases` where the charger has a phase relay).

Answers, where the specification leaves a choice:
- SetChargingProfile: Rejected for an unknown connector, a ChargePointMaxProfile not on
  connector 0, a TxProfile on connector 0 or without a running transaction on the
  connector or naming another transactionId, a chargingRateUnit not in
  ChargingScheduleAllowedChargingRateUnit, a stack level above ChargeProfileMaxStackLevel,
  more periods than ChargingScheduleMaxPeriods, MaxChargingProfilesInstalled reached, or
  a malformed schedule. Accepted otherwise (NotSupported is never needed: every purpose
  and kind is implemented).
- ClearChargingProfile: Accepted when at least one profile was removed, else Unknown.
- GetCompositeSchedule: Rejected for an unknown connector or a unit not allowed; the
  schedule starts now; where no profile applies the connector's own maximum stands (for
  connector 0, the sum of the connectors').
- Profiles survive restarts; TxProfiles end with their transaction (and none survives a
  restart: the transactions do not either).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key
from evsed.controller.smartcharging.composite import (
    ElectricalContext,
    TxContext,
    UnknownConnector,
    composite,
    enforced_at,
)
from evsed.controller.smartcharging.model import (
    ChargingProfile,
    InvalidProfile,
    Purpose,
    RateUnit,
    format_datetime,
)
from evsed.controller.smartcharging.profileset import ProfileSet
from evsed.controller.smartcharging.runner import Evaluation, SmartChargingRunner
from evsed.controller.store.profiles import StoredProfile

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext
    from evsed.controller.ocpp16.port import ChargePointPort

log = logging.getLogger(__name__)

NAME = "SmartCharging"

_UNIT_NAMES = {"Current": RateUnit.A, "Power": RateUnit.W}


class SmartChargingService:
    """The installed profiles of one charger, persisted, and the runner applying them."""

    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx
        keys = ctx.keys
        self.profiles = ProfileSet(
            max_stack_level=_int(ctx, "ChargeProfileMaxStackLevel", 8),
            max_periods=_int(ctx, "ChargingScheduleMaxPeriods", 24),
            max_installed=_int(ctx, "MaxChargingProfilesInstalled", 16),
        )
        self._keys = keys
        self.runner: SmartChargingRunner | None = None
        #: Stored profiles that could not be restored (corrupt row, invalid object). Each
        #: row is kept in the store for diagnosis; while one is here its connector fails
        #: safe (`FAILSAFE_A`) until the CS installs or clears a profile of its purpose there.
        self.unreadable: list[StoredProfile] = []
        self._restore()

    def _restore(self) -> None:
        stale_tx = False
        for stored in self.ctx.store.profiles():
            if stored.purpose == Purpose.TX.value:
                stale_tx = True  # its transaction did not survive the restart
                continue
            try:
                if stored.error is not None:
                    raise InvalidProfile(stored.error)
                profile = ChargingProfile.from_ocpp(stored.profile, stored.connector_id)
                # As accepted: limits lowered since (ChargeProfileMaxStackLevel, ...) do not
                # drop a profile the CS was told is installed.
                self.profiles.restore(profile)
            except Exception as e:  # any corrupt content: never stop start-up, never lift
                log.error(
                    "stored charging profile %s (connector %s, %s, stack level %s) unreadable:"
                    " %s; row kept, connector held at %.0f A until the Central System sets"
                    " or clears a %s there",
                    stored.profile_id,
                    stored.connector_id,
                    stored.purpose,
                    stored.stack_level,
                    e,
                    FAILSAFE_A,
                    stored.purpose,
                )
                self.unreadable.append(stored)
        if stale_tx:
            self.ctx.store.profile_clear(purpose=Purpose.TX.value)

    def _held(self, connector_id: int) -> bool:
        """An unreadable stored profile could have limited `connector_id` (0: the whole)."""
        for stored in self.unreadable:
            if stored.purpose == Purpose.TX_DEFAULT.value:
                if connector_id != 0 and stored.connector_id in (0, connector_id):
                    return True
            elif stored.purpose != Purpose.TX.value:
                return True  # a ChargePointMaxProfile, or a purpose unreadable too: all
        return False

    def _supersede(self, matches: Any) -> int:
        """Forget (and delete) the unreadable rows `matches(stored)` selects: the CS has said
        again what it wants there."""
        gone = [s for s in self.unreadable if matches(s)]
        for stored in gone:
            self.unreadable.remove(stored)
            self.ctx.store.profile_clear(profile_id=stored.profile_id)
        return len(gone)

    # ------------------------------------------------------------ running

    def start(self, charger: ChargePointPort) -> None:
        self.runner = SmartChargingRunner(
            charger,
            self.ctx.clock,
            self.evaluate,
            # Connector 0: the ChargePointMaxProfile for the whole charge point, which the
            # charger shares among its connectors (each alone could take all of it).
            connector_ids=(0, *charger.connector_ids),
            set_phases=charger.set_phases,
        )
        self.runner.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()

    def reevaluate(self, connector_id: int | None = None) -> None:
        if self.runner is not None:
            self.runner.reevaluate(connector_id)

    def electrical(self, connector_id: int, *, with_rating: bool = False) -> ElectricalContext:
        connectors = self.ctx.config.connectors
        cfg = connectors[max(0, connector_id - 1)]
        own = [c.max_current_a or c.rated_current_a for c in connectors]
        rating = float(sum(own) if connector_id == 0 else own[connector_id - 1])
        # The wired phases: with a phase relay a period's numberPhases says how many of
        # them the EV draws then (whatever the relay is at now); without one, all of them.
        return ElectricalContext(
            phases=cfg.phases,
            voltage_v=cfg.nominal_voltage_v,
            max_current_a=rating if with_rating else None,
            phase_switch=cfg.phase_switch.enabled,
        )

    @property
    def connector_ids(self) -> tuple[int, ...]:
        charger = self.ctx.charger
        return () if charger is None else tuple(charger.connector_ids)

    def transactions(self) -> dict[int, TxContext]:
        out: dict[int, TxContext] = {}
        for cid in self.connector_ids:
            tx = self.tx_context(cid)
            if tx is not None:
                out[cid] = tx
        return out

    def tx_context(self, connector_id: int) -> TxContext | None:
        charger = self.ctx.charger
        if charger is None or connector_id not in charger.connector_ids:
            return None
        tx = charger.transaction(connector_id)
        if tx is None:
            return None
        stored = self.ctx.store.transaction(tx.local_id) if tx.local_id else None
        cs_id = None if stored is None else stored.cs_transaction_id
        # -1 until StartTransaction.conf numbered it: no TxProfile can name it yet, one
        # installed without transactionId (RemoteStart's) applies all the same.
        return TxContext(-1 if cs_id is None else cs_id, tx.started_at)

    def evaluate(self, connector_id: int, now: datetime) -> Evaluation:
        if connector_id == 0:
            whole = enforced_at(self.profiles, 0, now, transaction=None)
            rate = whole.cap
            cap = None if rate is None else SmartChargingLimit(rate.limit, rate.unit.value)
            if self._held(0):
                el = self.electrical(0)
                amps = None
                if rate is not None:
                    amps = (
                        rate.limit
                        if rate.unit is RateUnit.A
                        else rate.limit / (el.voltage_v * el.phases)
                    )
                if amps is None or amps > FAILSAFE_A:
                    cap = SmartChargingLimit(FAILSAFE_A)
            return Evaluation(cap, whole.next_change)
        got = enforced_at(
            self.profiles, connector_id, now, transaction=self.tx_context(connector_id)
        )
        # Each limit goes to the limiter in its own unit: a W limit becomes amps there, with
        # the phases the EV really draws (the meter's, else the connector's: a numberPhases 1
        # period on a three-phase connector without a phase relay is still drawn on three),
        # and the lower of the Tx/TxDefaultProfile's and the ChargePointMaxProfile's in amps
        # binds. The minChargingRate goes with the limit (same unit): the limiter pauses
        # rather than offer less than it.
        cap = None if got.cap is None else SmartChargingLimit(got.cap.limit, got.cap.unit.value)
        if got.tx is not None:
            tx = got.tx
            value = SmartChargingLimit(tx.limit, tx.unit.value, tx.min_rate, cap)
        else:
            value = cap
        if self._held(connector_id):
            value = _with_failsafe(value)
        return Evaluation(value, got.next_change, got.number_phases)

    # ------------------------------------------------------------ changes

    def install(self, profile: ChargingProfile) -> None:
        """Install and persist (synced) before the answer; InvalidProfile: nothing changed."""
        self.profiles.install(profile)
        if profile.purpose is not Purpose.TX:
            self._supersede(
                lambda s: (
                    s.purpose == profile.purpose.value and s.connector_id == profile.connector_id
                )
            )
        self.ctx.store.profile_put(
            profile.id,
            profile.connector_id,
            profile.purpose.value,
            profile.stack_level,
            profile.to_ocpp(),
        )
        self.reevaluate(None if profile.connector_id == 0 else profile.connector_id)

    def clear(self, **criteria: Any) -> int:
        gone = self.profiles.clear(**criteria)
        for p in gone:
            self.ctx.store.profile_clear(profile_id=p.id)
        held = self._supersede(lambda s: _clears(s, **criteria))
        if gone or held:
            self.reevaluate()
        return len(gone) + held

    def end_transaction(self, connector_id: int) -> None:
        """The transaction ended (or the EV of a RemoteStart never came)."""
        for p in self.profiles.end_transaction(connector_id):
            self.ctx.store.profile_clear(profile_id=p.id)
        self.reevaluate(connector_id)

    def allowed_units(self) -> set[RateUnit]:
        try:
            names = self.ctx.keys.csl("ChargingScheduleAllowedChargingRateUnit")
        except KeyError:
            names = ["Current", "Power"]
        return {_UNIT_NAMES[n] for n in names if n in _UNIT_NAMES}


#: What a connector is held at while a stored profile that could have limited it cannot be
#: read. Chosen over a pause: the lowest current that still charges never exceeds a cap a
#: site could have set for charging (below 6 A nothing charges), while a pause would leave
#: the car empty in the morning if the CS (as Home Assistant) sends its cap only once. A
#: lost pause (evcc's limit 0) charges at 6 A until evcc's next profile.
FAILSAFE_A = 6.0


def _with_failsafe(value: SmartChargingLimit | None) -> SmartChargingLimit:
    """`value` with FAILSAFE_A as one more limit at the end of its chain."""
    if value is None:
        return SmartChargingLimit(FAILSAFE_A)
    return replace(value, cap=_with_failsafe(value.cap))


def _clears(
    stored: StoredProfile,
    id: int | None = None,
    connector_id: int | None = None,
    purpose: Purpose | None = None,
    stack_level: int | None = None,
) -> bool:
    """ClearChargingProfile's criteria on a stored row's columns (as ProfileSet.clear)."""
    if id is not None:
        return stored.profile_id == id
    return (
        (connector_id is None or stored.connector_id == connector_id)
        and (purpose is None or stored.purpose == purpose.value)
        and (stack_level is None or stored.stack_level == stack_level)
    )


def _int(ctx: OcppContext, name: str, default: int) -> int:
    try:
        return ctx.keys.int(name)
    except (KeyError, ValueError):
        return default


def remote_start_profile(ctx: OcppContext, connector_id: int, raw: dict[str, Any]) -> bool:
    """RemoteStartTransaction's chargingProfile (snake_case from the library): installed as
    the coming transaction's TxProfile, its whole schedule. False if it cannot be."""
    service = ctx.smart_charging
    if service is None:
        return False
    try:
        profile = ChargingProfile.from_ocpp(snake_to_camel_case(raw), connector_id)
        if profile.purpose is not Purpose.TX:
            return False
        if profile.schedule.unit not in service.allowed_units():
            return False
        service.install(profile)
    except InvalidProfile as e:
        log.info("RemoteStartTransaction's charging profile not installed: %s", e)
        return False
    return True


class SmartChargingHandlers:
    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx

    @property
    def _service(self) -> SmartChargingService | None:
        return self.ctx.smart_charging

    def _known(self, connector_id: int) -> bool:
        charger = self.ctx.charger
        return charger is not None and (connector_id == 0 or connector_id in charger.connector_ids)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any]
    ) -> call_result.SetChargingProfile:
        service = self._service
        status = "Rejected"
        if service is not None and self._known(connector_id):
            try:
                profile = ChargingProfile.from_ocpp(
                    snake_to_camel_case(cs_charging_profiles), connector_id
                )
                problem = self._problem(service, profile)
                if problem is None:
                    service.install(profile)
                    status = "Accepted"
                else:
                    log.info("SetChargingProfile %s: Rejected (%s)", profile.id, problem)
            except InvalidProfile as e:
                log.info("SetChargingProfile: Rejected (%s)", e)
        self.ctx.emit("set_charging_profile", connector_id=connector_id, status=status)
        return call_result.SetChargingProfile(status=status)

    def _problem(self, service: SmartChargingService, profile: ChargingProfile) -> str | None:
        cid = profile.connector_id
        if profile.purpose is Purpose.CHARGE_POINT_MAX and cid != 0:
            return "a ChargePointMaxProfile goes on connector 0"
        if profile.schedule.unit not in service.allowed_units():
            return f"chargingRateUnit {profile.schedule.unit} not allowed"
        if profile.purpose is Purpose.TX:
            if cid == 0:
                return "a TxProfile needs a connector"
            tx = service.tx_context(cid)
            if tx is None:
                return "no transaction on the connector"
            if profile.transaction_id is not None and profile.transaction_id != tx.transaction_id:
                return f"transaction {profile.transaction_id} is not the one running"
        return None

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
    ) -> call_result.ClearChargingProfile:
        service = self._service
        removed = 0
        if service is not None:
            removed = service.clear(
                id=id,
                connector_id=connector_id,
                purpose=None
                if charging_profile_purpose is None
                else Purpose(charging_profile_purpose),
                stack_level=stack_level,
            )
        return call_result.ClearChargingProfile(status="Accepted" if removed else "Unknown")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None
    ) -> call_result.GetCompositeSchedule:
        service = self._service
        charger = self.ctx.charger
        unit = RateUnit(charging_rate_unit) if charging_rate_unit else RateUnit.A
        if (
            service is None
            or charger is None
            or not self._known(connector_id)
            or unit not in service.allowed_units()
        ):
            return call_result.GetCompositeSchedule(status="Rejected")
        try:
            result = composite(
                service.profiles,
                connector_id,
                self.ctx.clock.now(),
                duration,
                unit,
                transaction=service.tx_context(connector_id),
                electrical=service.electrical(connector_id, with_rating=True),
                connector_ids=service.connector_ids,
                transactions=service.transactions(),
            )
        except UnknownConnector:
            return call_result.GetCompositeSchedule(status="Rejected")
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=format_datetime(result.start),
            charging_schedule=result.to_ocpp(),
        )


PROFILE = declare(
    NAME,
    cs_to_cp={"ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile"},
    keys=(
        key("ChargeProfileMaxStackLevel", KeyType.INT, Access.R, "8"),
        key(
            "ChargingScheduleAllowedChargingRateUnit",
            KeyType.CSL,
            Access.R,
            "Current,Power",
            allowed=frozenset({"Current", "Power"}),
        ),
        key("ChargingScheduleMaxPeriods", KeyType.INT, Access.R, "48"),
        key("ConnectorSwitch3to1PhaseSupported", KeyType.BOOL, Access.R, "false"),
        key("MaxChargingProfilesInstalled", KeyType.INT, Access.R, "16"),
    ),
    handlers=SmartChargingHandlers,
)
