"""Installed charging profiles (SetChargingProfile / ClearChargingProfile), kept durably."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evsed.controller.store.codec import dumps, loads
from evsed.controller.store.database import Repository


@dataclass(frozen=True, slots=True)
class StoredProfile:
    profile_id: int
    connector_id: int
    purpose: str
    stack_level: int
    profile: dict[str, Any]  # the csChargingProfiles object as received
    # Why the row's text is not a profile object (then `profile` is {}): the row is kept,
    # for diagnosis and so that the service can fail safe for what it was (its columns).
    error: str | None = None


def _row(r: tuple[Any, ...]) -> StoredProfile:
    """One row, parsed on its own: a corrupt one never hides the others (nor stops start-up)."""
    try:
        profile = loads(r[4])
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        return StoredProfile(r[0], r[1], r[2], r[3], {}, f"not JSON: {e}")
    if not isinstance(profile, dict):
        return StoredProfile(r[0], r[1], r[2], r[3], {}, "not a JSON object")
    return StoredProfile(r[0], r[1], r[2], r[3], profile)


class ChargingProfileRepository(Repository):
    def profile_put(
        self,
        profile_id: int,
        connector_id: int,
        purpose: str,
        stack_level: int,
        profile: Mapping[str, Any],
    ) -> None:
        """Install, replacing a profile with the same id or the same connector, purpose and
        stack level (OCPP 1.6 §3.13.2). Durable: answered Accepted after it."""
        with self._db.durable():
            self._db.execute(
                "DELETE FROM charging_profiles WHERE profile_id = ? OR "
                "(connector_id = ? AND purpose = ? AND stack_level = ?)",
                (profile_id, connector_id, purpose, stack_level),
            )
            self._db.execute(
                "INSERT INTO charging_profiles "
                "(profile_id, connector_id, purpose, stack_level, profile) VALUES (?, ?, ?, ?, ?)",
                (profile_id, connector_id, purpose, stack_level, dumps(profile)),
            )

    def profiles(
        self, connector_id: int | None = None, purpose: str | None = None
    ) -> list[StoredProfile]:
        rows = self._db.execute(
            "SELECT profile_id, connector_id, purpose, stack_level, profile "
            "FROM charging_profiles WHERE (:c IS NULL OR connector_id = :c) "
            "AND (:p IS NULL OR purpose = :p) ORDER BY connector_id, purpose, stack_level",
            {"c": connector_id, "p": purpose},
        ).fetchall()
        return [_row(r) for r in rows]

    def profile_clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile semantics: an id selects only that profile; otherwise the
        other criteria filter (all None clears everything). Returns how many were removed.
        Durable."""
        with self._db.durable():
            if profile_id is not None:
                cur = self._db.execute(
                    "DELETE FROM charging_profiles WHERE profile_id = ?", (profile_id,)
                )
            else:
                cur = self._db.execute(
                    "DELETE FROM charging_profiles WHERE (:c IS NULL OR connector_id = :c) "
                    "AND (:p IS NULL OR purpose = :p) AND (:s IS NULL OR stack_level = :s)",
                    {"c": connector_id, "p": purpose, "s": stack_level},
                )
        return cur.rowcount
