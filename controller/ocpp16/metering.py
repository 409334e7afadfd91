"""OCPP 1.6 meter values: MeterValue objects from meter samples, the clock-aligned and
sampled schedules, and the bounded transactionData of StopTransaction (spec §3.16, §4.7,
§7.30-7.35, §7.43, §7.45, §7.49, §9.1; errata v4.0 3.14-3.16).

Output is wire form (camelCase dicts) ready for ``call.MeterValues(meter_value=[...])`` or
``call.StopTransaction(transaction_data=[...])``.

Choices, and where the spec says so:
- Every sampledValue carries context, format ("Raw"), measurand, location and (except
  Frequency) unit explicitly, so no CS has to know the defaults.
- Energy is the meter's register in Wh, rounded to an integer the way the connector rounds
  meterStart/meterStop, never re-based to zero (§7.31 note) and never kWh.
- Frequency has no unit: OCPP 1.6 has no UnitOfMeasure for it and says it is Hertz
  (§7.31). (The ocpp library's schema accepts "Hertz", the spec does not list it.)
- Temperature is the charge point's own (§7.31 "inside Charge Point"): location Body
  (§7.30, "e.g. Temperature"), unit Celsius. SoC comes from the EV: location EV, Percent.
- Phases, from the meter's point of view (§4.7): Voltage per phase as L1-N/L2-N/L3-N,
  Current.Import per phase as L1/L2/L3; Power.Active.Import, Power.Reactive.Import and
  Power.Factor as a total without phase plus one value per phase on a multi-phase
  connector (a power factor's total is the meter's own, never a sum).
- Units: energy Wh (import and export registers), power W, reactive power var, current A,
  voltage V; Power.Factor, a ratio, has no UnitOfMeasure in 1.6 and goes without unit.
- A configured item may name one phase ("Voltage.L1", §9.1.17): only that phase is
  reported.
- Import measurands never go below zero (a signed meter reports export as negative power).
- Numbers: energy and power (active and reactive) as integers, current/voltage/temperature
  to 0.1, frequency and power factor to 0.01, SoC as an integer. NaN or infinite readings
  are left out.
- Energy.Active.Import.Interval needs the register at the start of the interval: the caller
  passes ``interval_start_wh``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from evsed.controller.clock import Clock
from evsed.controller.ocpp16.measurands import (
    BUILDABLE,
    LINE,
    LINE_NEUTRAL,
    PHASES,
    SPEC_MEASURANDS,
    TABLE,
    MeasurandRow,
    PhaseStyle,
)
from evsed.controller.readings import MeterSample

# Spec §7.35.
READING_CONTEXTS = frozenset(
    {
        "Interruption.Begin",
        "Interruption.End",
        "Other",
        "Sample.Clock",
        "Sample.Periodic",
        "Transaction.Begin",
        "Transaction.End",
        "Trigger",
    }
)


def iso8601_utc(ts: datetime) -> str:
    """``2026-01-01T00:15:00Z``; milliseconds only when there are any. Naive = UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    millis = ts.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def _fmt(value: float | None, decimals: int, *, floor0: bool = False) -> str | None:
    if value is None or not math.isfinite(value):
        return None
    if floor0:
        value = max(0.0, value)
    rounded = round(value, decimals) if decimals else round(value)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    return f"{rounded:.{decimals}f}"


@dataclass(frozen=True, slots=True)
class MeasurandItem:
    """One entry of a Meter*Data key: a measurand, optionally restricted to one phase."""

    measurand: str
    phase: str | None = None


def parse_measurands(items: Iterable[str]) -> list[MeasurandItem]:
    """Meter*Data CSL items ("Voltage", "Current.Import.L2"). ValueError names the bad
    item. Duplicates are dropped, order kept."""
    parsed: list[MeasurandItem] = []
    for raw in items:
        item = raw.strip()
        if item in SPEC_MEASURANDS:
            entry = MeasurandItem(item)
        else:
            base, _, phase = item.rpartition(".")
            if base not in SPEC_MEASURANDS or phase not in PHASES:
                raise ValueError(f"unknown measurand {item!r} (OCPP 1.6 §7.31)")
            entry = MeasurandItem(base, phase)
        if entry not in parsed:
            parsed.append(entry)
    return parsed


class MeterValueBuilder:
    """Builds one MeterValue for a configured measurand list and a connector's phases.

    Spec measurands this module cannot produce (e.g. RPM) are accepted and never reported
    (``unsupported`` lists them); names outside the spec raise ValueError.
    """

    def __init__(
        self,
        measurands: Iterable[str],
        phases: int,
        *,
        location: str = "Outlet",
    ) -> None:
        if phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, not {phases}")
        self.items = parse_measurands(measurands)
        self.phases = phases
        self.location = location
        self.unsupported = sorted({i.measurand for i in self.items} - BUILDABLE)

    def _wanted(self, item: MeasurandItem, phase: str) -> bool:
        # "Voltage.L1" names the line; the value is reported as measured, L1-N.
        return item.phase is None or item.phase == phase or f"{item.phase}-N" == phase

    def build(
        self,
        sample: MeterSample | None,
        context: str,
        *,
        timestamp: datetime,
        offered_a: float | None = None,
        offered_w: float | None = None,
        temperature_c: float | None = None,
        soc_percent: float | None = None,
        interval_start_wh: float | None = None,
    ) -> dict[str, Any] | None:
        """A MeterValue dict, or None when nothing configured could be reported."""
        if context not in READING_CONTEXTS:
            raise ValueError(f"unknown reading context {context!r} (OCPP 1.6 §7.35)")
        sample = sample or MeterSample()
        n = self.phases
        # (total, per phase) for each measurand the table knows; the table says which to send.
        energy = sample.energy_import_wh
        raw: dict[str, tuple[float | None, tuple[float | None, ...]]] = {
            "Energy.Active.Import.Register": (energy, ()),
            "Energy.Active.Import.Interval": (
                None if energy is None or interval_start_wh is None else energy - interval_start_wh,
                (),
            ),
            "Energy.Active.Export.Register": (sample.energy_export_wh, ()),
            "Power.Active.Import": (self._total_power(sample), sample.power_w[:n]),
            "Power.Reactive.Import": (
                self._total(sample.reactive_power_total_var, sample.reactive_power_var),
                sample.reactive_power_var[:n],
            ),
            # A power factor does not add up over the phases: the meter's total or none.
            "Power.Factor": (sample.power_factor_total, sample.power_factor[:n]),
            "Current.Import": (None, sample.current_a[:n]),
            "Voltage": (None, sample.voltage_v[:n]),
            "Current.Offered": (offered_a, ()),
            "Power.Offered": (
                offered_w if offered_w is not None else self._offered_w(sample, offered_a),
                (),
            ),
            "Frequency": (sample.frequency_hz, ()),
            "Temperature": (temperature_c, ()),
            "SoC": (soc_percent, ()),
        }
        values: list[dict[str, str]] = []
        for item in self.items:
            row = TABLE.get(item.measurand)
            if row is None:
                continue  # a spec measurand evsed cannot build (``unsupported``)
            total, per_phase = raw[item.measurand]
            for phase, value in self._split(row, item, total, per_phase):
                sv = self._sampled_value(row, phase, value, context)
                if sv is not None:
                    values.append(sv)
        if not values:
            return None
        return {"timestamp": iso8601_utc(timestamp), "sampledValue": values}

    def _split(
        self,
        row: MeasurandRow,
        item: MeasurandItem,
        total: float | None,
        per_phase: tuple[float | None, ...],
    ) -> list[tuple[str | None, float | None]]:
        """The (phase, value) pairs to report for one configured item, per the table."""
        out: list[tuple[str | None, float | None]] = []
        if row.phases in (PhaseStyle.NONE, PhaseStyle.TOTAL_AND_LINE) and item.phase is None:
            out.append((None, total))
        names: tuple[str, ...] = ()
        if row.phases is PhaseStyle.LINE_NEUTRAL:
            names = LINE_NEUTRAL
        elif row.phases is PhaseStyle.LINE or (
            row.phases is PhaseStyle.TOTAL_AND_LINE and self.phases > 1
        ):
            names = LINE
        for phase, value in zip(names[: self.phases], per_phase, strict=False):
            if self._wanted(item, phase):
                out.append((phase, value))
        return out

    def _sampled_value(
        self, row: MeasurandRow, phase: str | None, value: float | None, context: str
    ) -> dict[str, str] | None:
        text = _fmt(value, row.decimals, floor0=row.non_negative)
        if text is None:
            return None
        sv = {"value": text, "context": context, "format": "Raw", "measurand": row.name}
        if phase is not None:
            sv["phase"] = phase
        # "Outlet" rows take the builder's location; Body (temperature) and EV (SoC) are fixed.
        sv["location"] = self.location if row.location == "Outlet" else row.location
        if row.unit is not None:
            sv["unit"] = row.unit
        return sv

    def _total_power(self, sample: MeterSample) -> float | None:
        return self._total(sample.power_total_w, sample.power_w)

    def _total(self, total: float | None, per_phase: tuple[float | None, ...]) -> float | None:
        """The meter's total, else the sum of the connector's phases (None if one is missing)."""
        if total is not None:
            return total
        phases = per_phase[: self.phases]
        if any(p is None for p in phases):
            return None
        return sum(p for p in phases if p is not None)

    def _offered_w(self, sample: MeterSample, offered_a: float | None) -> float | None:
        """Offered current times the measured phase voltages (None if any is unknown)."""
        if offered_a is None:
            return None
        volts = sample.voltage_v[: self.phases]
        if any(v is None for v in volts):
            return None
        return offered_a * sum(v for v in volts if v is not None)


# -- schedules ------------------------------------------------------------------------------


class ClockAlignedSchedule:
    """ClockAlignedDataInterval: boundaries at midnight UTC + k x interval (§3.16.2,
    §9.1.5). When the interval does not divide a day, the day's last interval is short and
    the next day starts again at midnight. ``interval_s`` 0 means off; it may be changed
    (e.g. from ``keys.on_change``) and applies to the next wait."""

    def __init__(self, interval_s: int, clock: Clock) -> None:
        self.interval_s = interval_s
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def next_boundary(self, now: datetime) -> datetime:
        """The first boundary strictly after ``now``."""
        if not self.enabled:
            raise ValueError("clock-aligned data is off (ClockAlignedDataInterval = 0)")
        now = now.astimezone(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        elapsed = (now - midnight).total_seconds()
        k = math.floor(elapsed / self.interval_s) + 1
        boundary = midnight + timedelta(seconds=k * self.interval_s)
        return min(boundary, midnight + timedelta(days=1))

    async def wait_next(self) -> datetime:
        """Sleep on the clock until the next boundary; returns it (the reading's
        timestamp). Sleeps again if it wakes early (wall clock set back)."""
        boundary = self.next_boundary(self._clock.now())
        while True:
            delay = (boundary - self._clock.now()).total_seconds()
            if delay <= 0:
                return boundary
            await self._clock.sleep(delay)


class SampledSchedule:
    """MeterValueSampleInterval: samples every ``interval_s`` from the transaction start
    (§3.16.1, §9.1.19), on the monotonic clock so a wall-clock correction (BootNotification
    time sync) neither skips nor doubles a sample. 0 means off."""

    def __init__(self, interval_s: int) -> None:
        self.interval_s = interval_s

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def next_due(self, started_at: float, now: float) -> float:
        """Monotonic time of the first sample strictly after ``now``."""
        if not self.enabled:
            raise ValueError("sampled data is off (MeterValueSampleInterval = 0)")
        k = math.floor((now - started_at) / self.interval_s) + 1
        return started_at + k * self.interval_s

    async def wait_next(self, clock: Clock, started_at: float) -> float:
        """Sleep until the next sample; returns its monotonic due time."""
        due = self.next_due(started_at, clock.monotonic())
        await clock.sleep(due - clock.monotonic())
        return due


# -- StopTransaction.transactionData --------------------------------------------------------


class TransactionData:
    """MeterValues collected for StopTransaction.transactionData (StopTxnSampledData,
    StopTxnAlignedData), in memory and bounded.

    At most ``max_entries`` MeterValue objects are kept. The first one (Transaction.Begin)
    and the newest (at the end, Transaction.End) are never dropped (errata v4.0 3.16.6).
    In between, readings are kept on a stride: the n-th reading after the first stays while
    n is a multiple of the stride; when the list is full the stride doubles and the
    readings off it go. The series keeps covering the whole transaction with even spacing,
    coarser the longer it runs. Not persisted: after a power loss the StopTransaction goes
    without transactionData.
    """

    def __init__(self, max_entries: int = 100) -> None:
        if max_entries < 3:
            raise ValueError("max_entries must be at least 3")
        self.max_entries = max_entries
        self.clear()

    def add(self, meter_value: Mapping[str, Any] | None) -> None:
        if not meter_value:
            return
        entry = dict(meter_value)
        if self._first is None:
            self._first = entry
            return
        if self._tail is not None:
            index, tail = self._tail
            if index % self._stride == 0:
                self._middle.append((index, tail))
            else:
                self.dropped += 1
        self._count += 1
        self._tail = (self._count, entry)
        while len(self) > self.max_entries:
            self._stride *= 2
            kept = [(i, e) for i, e in self._middle if i % self._stride == 0]
            self.dropped += len(self._middle) - len(kept)
            self._middle = kept

    def __len__(self) -> int:
        return (self._first is not None) + len(self._middle) + (self._tail is not None)

    def to_list(self) -> list[dict[str, Any]] | None:
        """For ``transaction_data``: None when empty (StopTxn*Data empty, §3.16.5)."""
        out = [] if self._first is None else [self._first]
        out += [e for _, e in self._middle]
        if self._tail is not None:
            out.append(self._tail[1])
        return [dict(e) for e in out] or None

    def clear(self) -> None:
        self._first: dict[str, Any] | None = None
        self._middle: list[tuple[int, dict[str, Any]]] = []
        self._tail: tuple[int, dict[str, Any]] | None = None
        self._count = 0
        self._stride = 1
        self.dropped = 0
