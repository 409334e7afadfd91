"""The database's schema, as a list of migrations.

Entry i migrates from version i to i+1 (``PRAGMA user_version``). Never edit a released
entry; append a new one. Each runs in one transaction with its version bump.
"""

from __future__ import annotations

DB_FILENAME = "evsed.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: the first release.
    """
    CREATE TABLE config (
        key   TEXT PRIMARY KEY COLLATE NOCASE,
        value TEXT NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE transactions (
        local_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        connector_id      INTEGER NOT NULL,
        id_tag            TEXT NOT NULL,
        meter_start_wh    INTEGER NOT NULL,
        start_time        TEXT NOT NULL,
        reservation_id    INTEGER,
        cs_transaction_id INTEGER,
        start_dropped     INTEGER NOT NULL DEFAULT 0,
        state             TEXT NOT NULL DEFAULT 'open'
                          CHECK (state IN ('open', 'stopping', 'stopped')),
        meter_stop_wh     INTEGER,
        stop_time         TEXT,
        stop_reason       TEXT,
        stop_id_tag       TEXT
    );
    -- A connector carries at most one open transaction.
    CREATE UNIQUE INDEX transactions_one_open
        ON transactions (connector_id) WHERE state = 'open';
    CREATE TABLE tx_queue (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        action      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        tx_local_id INTEGER REFERENCES transactions (local_id),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        parked      INTEGER NOT NULL DEFAULT 0
    );
    -- Exactly one StopTransaction per transaction, ever queued (see TxQueue.stop_transaction).
    CREATE UNIQUE INDEX tx_queue_one_stop
        ON tx_queue (tx_local_id) WHERE action = 'StopTransaction';
    CREATE TABLE auth_cache (
        id_tag      TEXT PRIMARY KEY COLLATE NOCASE,
        id_tag_info TEXT NOT NULL,
        expiry      TEXT
    );
    CREATE TABLE local_list (
        id_tag      TEXT PRIMARY KEY COLLATE NOCASE,
        id_tag_info TEXT NOT NULL
    );
    CREATE TABLE charging_profiles (
        profile_id   INTEGER PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        purpose      TEXT NOT NULL,
        stack_level  INTEGER NOT NULL,
        profile      TEXT NOT NULL
    );
    CREATE TABLE meter (
        connector_id INTEGER PRIMARY KEY,
        energy_wh    REAL NOT NULL,
        at           TEXT NOT NULL
    );
    """,
    # 2: reservations and the firmware update's progress, for the profiles to come.
    """
    CREATE TABLE reservations (
        reservation_id INTEGER PRIMARY KEY,
        connector_id   INTEGER NOT NULL,
        id_tag         TEXT NOT NULL COLLATE NOCASE,
        parent_id_tag  TEXT,
        expiry         TEXT NOT NULL
    );
    -- One reservation per connector (OCPP 1.6 §5.13: a second one for it is Occupied);
    -- connector 0 (the charger) may hold several.
    CREATE UNIQUE INDEX reservations_one_per_connector
        ON reservations (connector_id) WHERE connector_id > 0;
    CREATE TABLE firmware (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        location       TEXT NOT NULL,
        retrieve_at    TEXT NOT NULL,
        status         TEXT NOT NULL,
        retries_left   INTEGER NOT NULL,
        retry_interval_s INTEGER NOT NULL,
        updated_at     TEXT NOT NULL
    );
    """,
    # 3: the queue without AUTOINCREMENT. Its sqlite_sequence row was one more page written
    # to the WAL by every MeterValues (about a quarter of the bytes written while charging).
    # Ids of deleted rows may now come back; nothing refers to a message after its removal
    # (retry due times are dropped with it, see TxQueue).
    """
    CREATE TABLE tx_queue_v3 (
        id          INTEGER PRIMARY KEY,
        action      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        tx_local_id INTEGER REFERENCES transactions (local_id),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        parked      INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO tx_queue_v3 (id, action, payload, tx_local_id, attempts, last_error, parked)
        SELECT id, action, payload, tx_local_id, attempts, last_error, parked FROM tx_queue;
    DROP TABLE tx_queue;
    ALTER TABLE tx_queue_v3 RENAME TO tx_queue;
    CREATE UNIQUE INDEX tx_queue_one_stop
        ON tx_queue (tx_local_id) WHERE action = 'StopTransaction';
    DELETE FROM sqlite_sequence WHERE name = 'tx_queue';
    """,
    # 4: the authorisation cache gets a size bound and evicts the least recently used entry
    # (OCPP 1.6 §3.5.1): each entry carries when it was last used, as a counter (an order,
    # not a time: a Pi without a clock battery boots with the wrong date). Entries of older
    # databases get 0, the oldest, and are the first candidates. The index keeps both the
    # next counter value (max) and the eviction order cheap.
    """
    ALTER TABLE auth_cache ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX auth_cache_lru ON auth_cache (last_used);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
