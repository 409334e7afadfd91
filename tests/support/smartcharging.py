"""Small builders for charging profiles in tests (hand-worked cases and Hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime

from evsed.controller.smartcharging.model import (
    ChargingProfile,
    Kind,
    Period,
    Purpose,
    RateUnit,
    Recurrency,
    Schedule,
)


def at(text: str) -> datetime:
    """`at("2026-12-07T10:00")`: an instant in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def profile(
    id: int,
    purpose: Purpose,
    stack_level: int,
    periods: list[tuple[int, float]] | list[tuple[int, float, int | None]],
    *,
    connector_id: int | None = None,
    kind: Kind = Kind.ABSOLUTE,
    start: datetime | None = None,
    duration_s: int | None = None,
    unit: RateUnit = RateUnit.A,
    recurrency: Recurrency | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    transaction_id: int | None = None,
) -> ChargingProfile:
    if connector_id is None:
        connector_id = 1 if purpose is Purpose.TX else 0
    return ChargingProfile(
        id=id,
        connector_id=connector_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        recurrency=recurrency,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=transaction_id,
        schedule=Schedule(
            unit=unit,
            periods=tuple(Period(*p) for p in periods),
            duration_s=duration_s,
            start=start,
            min_rate=None,
        ),
    )
