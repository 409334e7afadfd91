"""The frame worker process (ocpp16/offload.py) never outlives the charger's process: a
charger killed with SIGKILL sends no stop, yet its worker must not stay behind for ever."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, os, signal
from evsed.controller.ocpp16 import protocol

async def main() -> None:
    assert await protocol.FRAME_WORKERS.warm_up()
    await protocol.FRAME_WORKERS.run(protocol.prepare_frame, '[2, "u", "Heartbeat", {}]')
    (pid,) = protocol.FRAME_WORKERS._pool._processes
    print(pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":  # "spawn" imports the main module again in the worker
    asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_the_worker_leaves_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "charger.py"
    script.write_text(SCRIPT)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # Files, not pipes: a worker left behind would hold a pipe open, and run() wait for it.
    with out.open("w") as stdout, err.open("w") as stderr:
        parent = subprocess.run(
            [sys.executable, str(script)], stdout=stdout, stderr=stderr, timeout=60
        )
    assert parent.returncode == -9, err.read_text()
    worker = int(out.read_text().split()[0])
    try:
        pidfd = os.pidfd_open(worker)
    except ProcessLookupError:
        return  # already gone
    try:
        # Readable once the worker has exited; it is not our child, so no wait() is needed.
        readable, _, _ = select.select([pidfd], [], [], 10.0)
    finally:
        os.close(pidfd)
    if not readable:
        os.kill(worker, 9)
    assert readable, f"worker {worker} still runs after its parent was killed"
