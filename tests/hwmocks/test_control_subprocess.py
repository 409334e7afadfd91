"""A separate process drives the bench through `python -m evsed.hwmocks.control`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from evsed.hwmocks.control import ControlServer

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0  # a cold interpreter start on a slow CI box


class RecordingBench:
    connector_ids = (1,)

    def __init__(self) -> None:
        self.plugged: asyncio.Queue[int] = asyncio.Queue()

    async def plug(self, connector: int) -> dict[str, Any]:
        self.plugged.put_nowait(connector)
        return {"state": "B"}

    async def unplug(self, connector: int) -> None: ...

    async def set_ev(self, connector: int, **fields: Any) -> None: ...

    async def present_card(
        self, uid: str, reader: str = "rdm6300", hold_s: float | None = None
    ) -> None: ...

    async def inject_fault(self, name: str, connector: int, on: bool) -> None: ...

    async def status(self, connector: int | None = None) -> dict[str, Any]:
        return {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


async def _run_cli(port: int, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evsed.hwmocks.control",
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else {}, err.decode()


async def test_another_process_plugs_an_ev() -> None:
    bench = RecordingBench()
    async with ControlServer(bench, port=0) as server:
        status, reply, err = await _run_cli(server.port, "plug", "connector=1")
        assert (status, err) == (0, "")
        assert reply == {"id": 1, "ok": True, "state": "B"}
        assert await asyncio.wait_for(bench.plugged.get(), TIMEOUT) == 1


async def test_another_process_sees_errors_with_exit_status_1() -> None:
    async with ControlServer(RecordingBench(), port=0) as server:
        status, reply, _ = await _run_cli(server.port, "plug", "connector=7")
        assert status == 1
        assert reply["ok"] is False
        assert "unknown connector 7" in reply["error"]
