"""The installed charging profiles and the rules for installing and clearing them.

Replacement follows OCPP 1.6 §3.13.2 and §5.16.3: a new profile replaces the one with the same
chargingProfileId, and the one with the same stackLevel and purpose on the same connector
(a TxDefaultProfile on connector 1 does not replace one on connector 0: it shadows it for that
connector only, §3.13.1). ClearChargingProfile follows errata v4.0 §3.25/§3.26.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from evsed.controller.smartcharging.model import ChargingProfile, InvalidProfile, Purpose


class ProfileSet:
    def __init__(
        self,
        profiles: Iterable[ChargingProfile] = (),
        *,
        max_stack_level: int = 8,
        max_periods: int = 48,
        max_installed: int = 16,
    ) -> None:
        self.max_stack_level = max_stack_level
        self.max_periods = max_periods
        self.max_installed = max_installed
        # Restored from the store as they were accepted: limits changed since do not drop them.
        self._profiles: list[ChargingProfile] = list(profiles)
        self.version = 0

    def install(self, profile: ChargingProfile) -> list[ChargingProfile]:
        """Install `profile`; the profiles it replaced. Raises InvalidProfile past a limit."""
        if profile.stack_level > self.max_stack_level:
            raise InvalidProfile(
                f"stackLevel {profile.stack_level} is above ChargeProfileMaxStackLevel "
                f"{self.max_stack_level}"
            )
        if len(profile.schedule.periods) > self.max_periods:
            raise InvalidProfile(
                f"{len(profile.schedule.periods)} periods are more than ChargingScheduleMaxPeriods "
                f"{self.max_periods}"
            )
        replaced = [p for p in self._profiles if _replaces(profile, p)]
        kept = [p for p in self._profiles if not _replaces(profile, p)]
        if len(kept) + 1 > self.max_installed:
            raise InvalidProfile(
                f"MaxChargingProfilesInstalled ({self.max_installed}) profiles are installed"
            )
        kept.append(profile)
        self._profiles = kept
        self.version += 1
        return replaced

    def restore(self, profile: ChargingProfile) -> None:
        """Install a profile from the store as it was accepted: limits lowered since
        (ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods, MaxChargingProfilesInstalled)
        do not drop it; a CS that wants it gone clears or replaces it."""
        self._profiles = [p for p in self._profiles if not _replaces(profile, p)]
        self._profiles.append(profile)
        self.version += 1

    def clear(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> list[ChargingProfile]:
        """Remove what ClearChargingProfile names; the removed profiles (empty: Unknown)."""
        if id is not None:
            removed = [p for p in self._profiles if p.id == id]
        else:
            removed = [
                p
                for p in self._profiles
                if (connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            ]
        return self._remove(removed)

    def end_transaction(self, connector_id: int) -> list[ChargingProfile]:
        """A TxProfile ceases to be valid when its transaction ends (§7.10)."""
        return self._remove(
            [
                p
                for p in self._profiles
                if p.purpose is Purpose.TX and p.connector_id == connector_id
            ]
        )

    def expire(self, now: datetime) -> list[ChargingProfile]:
        """Drop the profiles whose validTo has passed (they can never apply again)."""
        return self._remove(
            [p for p in self._profiles if p.valid_to is not None and p.valid_to <= now]
        )

    def profiles(self) -> tuple[ChargingProfile, ...]:
        return tuple(
            sorted(self._profiles, key=lambda p: (p.connector_id, p.purpose, p.stack_level, p.id))
        )

    def __len__(self) -> int:
        return len(self._profiles)

    def _remove(self, removed: list[ChargingProfile]) -> list[ChargingProfile]:
        if removed:
            gone = {id(p) for p in removed}
            self._profiles = [p for p in self._profiles if id(p) not in gone]
            self.version += 1
        return removed


def _replaces(new: ChargingProfile, old: ChargingProfile) -> bool:
    return old.id == new.id or (
        old.stack_level == new.stack_level
        and old.purpose == new.purpose
        and old.connector_id == new.connector_id
    )
