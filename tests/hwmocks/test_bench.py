"""The assembled bench, driven from other processes over its control channel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from evsed.controller.config import parse
from evsed.controller.run import Stack
from evsed.hwmocks.control import BenchClient

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


async def control(port: int, *args: str) -> dict[str, object]:
    """`python -m evsed.hwmocks.control` in another process; the loop keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evsed.hwmocks.control",
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_another_process_plugs_an_ev_and_presents_a_card() -> None:
    config = parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": 0.2},
            "connectors": [{"meter": {"port": 0, "poll_interval_s": 0.5}}],
            "authorization": {"local_tags": ["AABBCCDDEE"]},
        }
    )
    async with Stack(config) as stack:
        assert stack.charger is not None
        connector = stack.charger.connector(1)
        port = stack.bench.control_port
        statuses: asyncio.Queue[str] = asyncio.Queue()
        connector.add_listener(
            lambda kind, f: statuses.put_nowait(str(f["status"])) if kind == "status" else None
        )

        async def status_becomes(wanted: str) -> None:
            async with asyncio.timeout(10):
                while connector.status.status != wanted:
                    await statuses.get()

        assert (await control(port, "plug", "connector=1"))["ok"] is True
        await status_becomes("Preparing")
        reply = await control(port, "present_card", "uid=AABBCCDDEE")
        assert reply["ok"] is True
        await status_becomes("Charging")
        status = await control(port, "status", "connector=1")
        assert status["relay"] == {"energized": True, "contactor_closed": True}
        assert status["pilot"]["state"] == "C"
        assert status["pilot"]["duty"] == pytest.approx(0.533)
        await control(port, "inject_fault", "name=rcd_trip", "connector=1", "on=true")
        await status_becomes("Faulted")
        status = await control(port, "status", "connector=1")
        assert status["relay"]["energized"] is False
        assert status["faults"] == ["rcd_trip"]


@pytest.mark.parametrize("command", ["bench", "run"])
async def test_evsed_prints_its_control_port_and_stops_cleanly(
    tmp_path: Path, command: str
) -> None:
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path}"\n[bench]\ncontrol_port = 0\n'
        "[[connectors]]\n[connectors.meter]\nport = 0\n"
        "[central_system]\nenabled = false\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evsed.controller.cli",
        command,
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "exited before printing its control port"
                if line.startswith("bench control port "):
                    port = int(line.split()[-1])
                    break
        client = BenchClient("127.0.0.1", port)
        assert (await asyncio.to_thread(client.request, "ping"))["ok"] is True
        status = await asyncio.to_thread(client.request, "status", connector=1)
        assert status["relay"]["energized"] is False
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
