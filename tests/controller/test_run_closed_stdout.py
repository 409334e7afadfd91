"""`evsed run` whose stdout reader is gone (`evsed run | head -1`, a closed terminal) keeps
the charger running: the start-up lines are a courtesy, and a charge must not end, nor the
service restart, because nobody reads them. Before, the first print raised BrokenPipeError,
which left the controller with "evsed: Broken pipe" and the start-failure status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.hwmocks.central_system import CentralSystem
from tests.support.evsed_process import CP_ID, ENV, FREE_TAG, REPO, _config


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as central:
        yield central


async def test_a_closed_stdout_is_a_warning_and_evsed_goes_on(
    cs: CentralSystem, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before evsed prints its first line
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evsed.controller.cli",
            "run",
            "--config",
            str(_config(tmp_path, cs.url)),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
            cwd=REPO,
        )
    finally:
        os.close(write_end)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "evsed ended:\n" + "".join(seen)
                seen.append(line)
                if "stdout is not writable" in line:
                    break
        # Keep reading its log (a full pipe would stall it) while it is asked to work.
        rest = asyncio.create_task(proc.stderr.read())
        await cs.wait_for_call("BootNotification", CP_ID, timeout=20)
        reply = await cs.call(CP_ID, call.TriggerMessage(requested_message="Heartbeat"))
        assert reply.status == "Accepted"
        await cs.wait_for_call("Heartbeat", CP_ID, timeout=20)
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        log = "".join(seen) + (await rest).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in log
    assert "Broken pipe" not in log.replace("stdout is not writable ([Errno 32] Broken pipe)", "")
    assert "BrokenPipeError" not in log
