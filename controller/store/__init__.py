"""The one SQLite database: everything that must survive a power cut.

- `database`: the file, its connection, migrations (`schema`), light and durable commits,
  syncs and checkpoints (read its docstring for which writes are synced and why).
- One repository per aggregate: `transactions` (with the last meter reading and the
  planned-restart marker), `queue` (transaction messages), `config`, `auth` (cache and
  local list), `profiles` (charging profiles), `reservations`, `firmware`.

`Store` is the database with every repository on it: the one object the rest of evsed
holds (``store.set_config(...)``, ``with store.atomic(): ...``). A repository also works
on its own over a `Database`, e.g. ``ReservationRepository(db)``.

Secrets at rest: the ``config`` table holds the AuthorizationKey set by the Central
System (security profile 1/2 password) in plain text, and the database file is therefore
0600 in a 0700 state directory. Anything that exports or archives state (a future
GetDiagnostics archive, a support bundle, `config check` output) must leave out the
``config`` rows of secret keys (see `SECRET_CONFIG_KEYS`) and never copy ``evsed.db``
itself or its ``-wal`` (which holds recent rows, secrets included) verbatim.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from evsed.controller.store.auth import AuthRepository, CachedAuth
from evsed.controller.store.config import ConfigRepository
from evsed.controller.store.database import (
    Database,
    Repository,
    StoreError,
    secure_state_dir,
)
from evsed.controller.store.firmware import FirmwareRepository, FirmwareState
from evsed.controller.store.profiles import ChargingProfileRepository, StoredProfile
from evsed.controller.store.queue import QueuedRow, QueueRepository
from evsed.controller.store.reservations import Reservation, ReservationRepository
from evsed.controller.store.schema import DB_FILENAME, SCHEMA_VERSION
from evsed.controller.store.transactions import (
    MeterReading,
    Transaction,
    TransactionRepository,
    TxState,
)

#: Configuration keys whose stored values are secrets: never exported, logged or shown.
SECRET_CONFIG_KEYS = frozenset({"AuthorizationKey"})

__all__ = [
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "SECRET_CONFIG_KEYS",
    "AuthRepository",
    "CachedAuth",
    "ChargingProfileRepository",
    "ConfigRepository",
    "Database",
    "FirmwareRepository",
    "FirmwareState",
    "MeterReading",
    "QueueRepository",
    "QueuedRow",
    "Repository",
    "Reservation",
    "ReservationRepository",
    "Store",
    "StoreError",
    "StoredProfile",
    "Transaction",
    "TransactionRepository",
    "TxState",
    "secure_state_dir",
]


class Store(
    Database,
    TransactionRepository,
    QueueRepository,
    ConfigRepository,
    AuthRepository,
    ChargingProfileRepository,
    ReservationRepository,
    FirmwareRepository,
):
    """``<state dir>/evsed.db`` with every repository. Event-loop thread only."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        meter_write_interval_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        wal_autocheckpoint_pages: int = 256,
    ) -> None:
        Database.__init__(
            self, path, synchronous=synchronous, wal_autocheckpoint_pages=wal_autocheckpoint_pages
        )
        # Every repository works on this same database (one connection, one commit scope).
        TransactionRepository.__init__(
            self, self, meter_write_interval_s=meter_write_interval_s, monotonic=monotonic
        )

    def __enter__(self) -> Store:
        return self
