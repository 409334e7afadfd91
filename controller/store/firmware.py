"""The firmware update in progress (UpdateFirmware), so that a restart in the middle of a
download or an installation resumes it, or reports how it ended, instead of forgetting it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from evsed.controller.store.codec import dt, ts
from evsed.controller.store.database import Repository


@dataclass(frozen=True, slots=True)
class FirmwareState:
    location: str  # URI to download from
    retrieve_at: datetime  # UpdateFirmware.retrieveDate
    status: str  # the last FirmwareStatusNotification status (Downloading, Installed, ...)
    retries_left: int
    retry_interval_s: int
    updated_at: datetime


class FirmwareRepository(Repository):
    """One row at most: a charger runs one update at a time. Writes are durable."""

    def firmware_state(self) -> FirmwareState | None:
        row = self._db.execute(
            "SELECT location, retrieve_at, status, retries_left, retry_interval_s, updated_at "
            "FROM firmware WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        retrieve_at, updated_at = dt(row[1]), dt(row[5])
        assert retrieve_at is not None and updated_at is not None
        return FirmwareState(row[0], retrieve_at, row[2], row[3], row[4], updated_at)

    def set_firmware_state(self, state: FirmwareState) -> None:
        with self._db.durable():
            self._db.execute(
                "INSERT INTO firmware (id, location, retrieve_at, status, retries_left, "
                "retry_interval_s, updated_at) VALUES (1, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET location = excluded.location, "
                "retrieve_at = excluded.retrieve_at, status = excluded.status, "
                "retries_left = excluded.retries_left, "
                "retry_interval_s = excluded.retry_interval_s, updated_at = excluded.updated_at",
                (
                    state.location,
                    ts(state.retrieve_at),
                    state.status,
                    state.retries_left,
                    state.retry_interval_s,
                    ts(state.updated_at),
                ),
            )

    def clear_firmware_state(self) -> None:
        """The update ended and its final status was delivered."""
        with self._db.durable():
            self._db.execute("DELETE FROM firmware WHERE id = 1")
