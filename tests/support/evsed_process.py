"""`evsed run` as a child process against the embedded CS (the kill -9 and SIGTERM tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

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


async def until_charging(cs: CentralSystem, since: int, timeout: float = 20) -> Frame:
    """The Central System's record of connector 1 reporting Charging, after frame `since`."""
    return await cs.wait_for(
        lambda f: (
            f.is_call
            and f.direction is Direction.CP_TO_CS
            and f.action == "StatusNotification"
            and f.payload.get("connectorId") == 1
            and f.payload.get("status") == "Charging"
        ),
        timeout=timeout,
        since=since,
    )


def _cp_calls(cs: CentralSystem, action: str, since: int = 0) -> list[Frame]:
    return [
        f
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]
