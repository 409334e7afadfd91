"""kill -9 while queueing: every message acknowledged to the caller is in the database."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import Store

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from datetime import UTC, datetime
from evsed.controller.store import Store
from evsed.controller.ocpp16.txqueue import TxQueue

queue = TxQueue(Store(sys.argv[1]))
now = datetime.now(UTC)
local = queue.start_transaction(1, "KILL9", 0, now)
print("tx", local, flush=True)
i = 0
while True:
    i += 1
    mv = [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": str(i)}]}]
    msg_id = queue.meter_values(1, mv, local)   # returns after the commit
    print(msg_id, flush=True)
"""

WANT_IDS = 1500
TIMEOUT_S = 20.0


def run_and_kill(db: Path) -> tuple[int, list[int]]:
    """Start the child, wait (with a deadline) for WANT_IDS committed ids, SIGKILL it, and
    return the transaction's local id and every id it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while buf.count(b"\n") < WANT_IDS + 1:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                proc.kill()
                proc.wait(timeout=TIMEOUT_S)
                pytest.fail(f"child too slow; stderr: {proc.stderr.read().decode()}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait(timeout=TIMEOUT_S)
                pytest.fail(f"child exited early: {proc.stderr.read().decode()}")
            buf += chunk
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
        buf += proc.stdout.read()  # lines printed before the kill are still in the pipe
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT_S)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    lines = buf.decode().splitlines()
    complete = lines if buf.endswith(b"\n") else lines[:-1]  # a torn last line is not a promise
    head, *ids = complete
    assert head.startswith("tx ")
    return int(head.split()[1]), [int(x) for x in ids]


@pytest.mark.parametrize("round_", range(2))
def test_every_printed_id_survives_sigkill(tmp_path: Path, round_: int) -> None:
    db = tmp_path / "evsed.db"
    local, printed = run_and_kill(db)
    assert len(printed) >= WANT_IDS
    with Store(db) as store:
        assert store.integrity_check() == "ok"
        queue = TxQueue(store)
        pending = queue.pending()
        ids = [m.id for m in pending]
        assert set(printed) <= set(ids)
        assert ids == sorted(ids)  # FIFO order intact
        assert pending[0].action == "StartTransaction"
        [tx] = queue.open_transactions()
        assert tx.local_id == local
        # The reopened database is fully usable: stop the cut transaction once.
        assert queue.stop_transaction(local, 0, tx.start_time, "PowerLoss") is not None
        assert queue.stop_transaction(local, 0, tx.start_time, "PowerLoss") is None
