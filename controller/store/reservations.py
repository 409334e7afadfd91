"""Reservations (ReserveNow / CancelReservation): kept durably, so that a restart does not
hand a reserved connector to someone else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evsed.controller.store.codec import dt, ts
from evsed.controller.store.database import Repository


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: int
    connector_id: int  # 0: any connector of the charger
    id_tag: str
    expiry: datetime
    parent_id_tag: str | None = None


_COLS = "reservation_id, connector_id, id_tag, parent_id_tag, expiry"


def _reservation(row: tuple[Any, ...]) -> Reservation:
    expiry = dt(row[4])
    assert expiry is not None
    return Reservation(row[0], row[1], row[2], expiry, row[3])


class ReservationRepository(Repository):
    def reservation_put(self, reservation: Reservation) -> None:
        """Install, replacing the reservation with the same id (OCPP 1.6 §5.13). Raises
        sqlite3.IntegrityError if the connector (> 0) holds another one. Durable: ReserveNow
        is answered Accepted after it."""
        with self._db.durable():
            self._db.execute(
                "DELETE FROM reservations WHERE reservation_id = ?", (reservation.reservation_id,)
            )
            self._db.execute(
                f"INSERT INTO reservations ({_COLS}) VALUES (?, ?, ?, ?, ?)",
                (
                    reservation.reservation_id,
                    reservation.connector_id,
                    reservation.id_tag,
                    reservation.parent_id_tag,
                    ts(reservation.expiry),
                ),
            )

    def reservation_get(self, reservation_id: int) -> Reservation | None:
        row = self._db.execute(
            f"SELECT {_COLS} FROM reservations WHERE reservation_id = ?", (reservation_id,)
        ).fetchone()
        return None if row is None else _reservation(row)

    def reservation_on(self, connector_id: int) -> Reservation | None:
        """The reservation of a connector (> 0); for 0, the oldest charger-wide one."""
        row = self._db.execute(
            f"SELECT {_COLS} FROM reservations WHERE connector_id = ? "
            "ORDER BY reservation_id LIMIT 1",
            (connector_id,),
        ).fetchone()
        return None if row is None else _reservation(row)

    def reservations(self) -> list[Reservation]:
        rows = self._db.execute(
            f"SELECT {_COLS} FROM reservations ORDER BY connector_id, reservation_id"
        ).fetchall()
        return [_reservation(r) for r in rows]

    def reservation_delete(self, reservation_id: int) -> bool:
        """CancelReservation, or the reservation was used. Durable. False if unknown."""
        with self._db.durable():
            cur = self._db.execute(
                "DELETE FROM reservations WHERE reservation_id = ?", (reservation_id,)
            )
        return cur.rowcount == 1

    def reservations_expire(self, now: datetime) -> list[Reservation]:
        """Remove and return the reservations whose expiry is not after ``now``."""
        expired = [r for r in self.reservations() if r.expiry <= now]
        if expired:
            with self._db.durable():
                for r in expired:
                    self._db.execute(
                        "DELETE FROM reservations WHERE reservation_id = ?", (r.reservation_id,)
                    )
        return expired
