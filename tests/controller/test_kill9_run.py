"""`evsed run` killed with SIGKILL mid-charge: the restart stops the transaction once.

The embedded Central System runs in the test process; `evsed run` (bench enabled) runs as
a child process. An EV is plugged through the bench's control channel, free vend starts a
transaction, the CS confirms it; then the process is killed with no chance to clean up.
The second `evsed run` on the same state directory must send one StopTransaction with
reason PowerLoss for the CS's transactionId, and never the StartTransaction again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.controller.store import Store
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from evsed.hwmocks.control import BenchClient

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
CP_ID = "CP-KILL9"
FREE_TAG = "FREEVEND"


def _config(tmp_path: Path, cs_url: str) -> Path:
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[bench]\ncontrol_port = 0\nev_delay_s = 0.2\n"
        "[[connectors]]\n[connectors.meter]\nport = 0\npoll_interval_s = 0.5\n"
        f'[central_system]\nurl = "{cs_url}"\ncharge_point_id = "{CP_ID}"\n'
        f'[authorization]\nfree_vend = true\nfree_vend_id_tag = "{FREE_TAG}"\n'
    )
    return cfg


class Evsed:
    """One `evsed run` child process; its log goes to a file (a full pipe would stall it)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.control_port = 0

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "evsed.controller.cli",
                "run",
                "--config",
                str(self.config),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=ENV,
                cwd=REPO,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, f"evsed exited before its control port:\n{self.log.read_text()}"
                if line.startswith("bench control port "):
                    self.control_port = int(line.split()[-1])
                    return

    async def bench(self, cmd: str, **args: object) -> dict[str, object]:
        client = BenchClient("127.0.0.1", self.control_port)
        reply = await asyncio.to_thread(client.request, cmd, **args)
        assert reply["ok"] is True, reply
        return reply

    async def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 15)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    # A short heartbeat: the "later frame" that closes the grace period comes quickly.
    async with CentralSystem(tags={FREE_TAG: "Accepted"}, heartbeat_interval=1) as central:
        yield central


def _cp_calls(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    return [
        f
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]


async def test_sigkill_while_charging_stops_the_transaction_once_after_restart(
    cs: CentralSystem, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, cs.url)
    first = Evsed(cfg, tmp_path / "evsed-1.log")
    second = Evsed(cfg, tmp_path / "evsed-2.log")
    try:
        await first.start()
        await cs.wait_for_call("BootNotification", CP_ID, timeout=30)
        await first.bench("plug", connector=1)

        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=20)
        reply = await cs.wait_for(
            lambda f: f.direction is Direction.CS_TO_CP and f.unique_id == start.unique_id,
            since=start.seq,
        )
        tx_id = reply.payload["transactionId"]
        assert reply.payload["idTagInfo"]["status"] == "Accepted"
        # Sent after the StartTransaction's answer was acknowledged on disk (one CALL at a
        # time on the link, and the ack is committed before the lock is given up).
        await cs.wait_for(
            lambda f: (
                f.is_call
                and f.direction is Direction.CP_TO_CS
                and f.action == "StatusNotification"
                and f.payload.get("connectorId") == 1
                and f.payload.get("status") == "Charging"
            ),
            timeout=20,
            since=reply.seq,
        )

        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
        with Store(tmp_path / "state" / "evsed.db") as store:
            (left_open,) = store.open_transactions()
            assert left_open.cs_transaction_id == tx_id
            assert left_open.id_tag == FREE_TAG

        mark = cs.mark()
        await second.start()
        stop = await cs.wait_for_call("StopTransaction", CP_ID, timeout=30, since=mark)
        payload = stop.payload
        assert payload["reason"] == "PowerLoss"
        assert payload["transactionId"] == tx_id
        assert payload["meterStop"] >= start.payload["meterStart"]
        answered = await cs.wait_for(
            lambda f: f.direction is Direction.CS_TO_CP and f.unique_id == stop.unique_id,
            since=stop.seq,
        )
        assert cs.transactions[tx_id].stop_reason == "PowerLoss"

        # Grace period: the second run's next heartbeat comes after everything it had queued.
        await cs.wait_for_call("Heartbeat", CP_ID, timeout=10, since=answered.seq)
        stops = [f for f in _cp_calls(cs, "StopTransaction") if f.payload["transactionId"] == tx_id]
        assert len(stops) == 1
        assert len(_cp_calls(cs, "StartTransaction")) == 1
        assert len(cs.transactions) == 1
        # The new bench's EV is unplugged: the restarted charger reports Available.
        statuses = [
            f.payload["status"]
            for f in _cp_calls(cs, "StatusNotification", mark)
            if f.payload["connectorId"] == 1
        ]
        assert statuses and statuses[-1] == "Available"

        assert await second.signal(signal.SIGTERM) == 0
    finally:
        await first.close()
        await second.close()
