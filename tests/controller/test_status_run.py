"""`evsed status` against a running `evsed run` on the bench, with the embedded CS."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evsed.controller import cli
from evsed.hwmocks.central_system import CentralSystem
from tests.support.evsed_process import CP_ID, ENV, FREE_TAG, REPO, Evsed, _config, until_charging


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={FREE_TAG: "Accepted"}) as central:
        yield central


async def _status(config: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evsed.controller.cli",
        "status",
        "--config",
        str(config),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_of_a_charging_session(cs: CentralSystem, tmp_path: Path) -> None:
    config = _config(tmp_path, cs.url)
    evsed = Evsed(config, tmp_path / "evsed.log")
    try:
        await evsed.start()
        sock = tmp_path / "state" / "status.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        await evsed.bench("plug", connector=1)
        start = await cs.wait_for_call("StartTransaction", CP_ID, timeout=20)
        await until_charging(cs, start.seq)
        code, out, err = await _status(config, "--json")
        assert code == 0, err
        snap = json.loads(out)
        (c1,) = snap["connectors"]
        assert c1["status"] == "Charging"
        assert c1["pilot"] == "C"
        assert c1["offered_a"] > 0
        assert c1["limit"]["reason"] in {"hardware", "config", "cable"}
        assert c1["transaction"]["id_tag"].endswith(FREE_TAG[-4:])
        assert FREE_TAG not in out, "the card id is masked"
        link = snap["central_system"]
        assert link["online"] is True and link["connected"] is True
        assert link["url"].startswith(cs.url) and link["since"]
        assert isinstance(snap["queue_depth"], int)

        code, out, err = await _status(config)
        assert code == 0, err
        assert "Central System: online since" in out
        assert "Charging" in out and "C" in out

        assert await evsed.signal(signal.SIGTERM) == 0
        assert not sock.exists(), "the socket goes with the service"
    finally:
        await evsed.close()


def test_status_without_a_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    code = cli.main(["status", "--socket", str(tmp_path / "status.sock")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("evsed status: evsed is not running")
    assert "Traceback" not in err
