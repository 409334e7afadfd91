"""Logs fit for a journal: frames only at DEBUG, card ids masked at INFO and above, one line
per event that matters; `--trace FILE` keeps every frame (secrets redacted)."""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ocpp.v16 import call

from evsed.controller import cli
from evsed.controller.clock import SystemClock
from evsed.controller.masking import mask_tag
from evsed.controller.trace import FrameTrace
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CARD, CP_ID, ocpp_rig

SECRET = "s3cret-authorization-key-42"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def _ours(caplog: pytest.LogCaptureFixture, at_least: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("evsed") and r.levelno >= at_least]


async def test_a_session_at_info(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ocpp_rig(cs, tmp_path) as rig:
        await rig.start_transaction(CARD)
        await rig.run(5)  # some energy
        await rig.bench.unplug(1)
        await rig.until(lambda: rig.connector.transaction is None)
        await rig.call_of("StopTransaction")
    info = _ours(caplog, logging.INFO)
    text = "\n".join(r.getMessage() for r in info)
    assert CARD not in text, "card ids are masked at INFO and above"
    assert mask_tag(CARD) in text
    assert not [r for r in info if '[2,"' in r.getMessage() or '[3,"' in r.getMessage()], (
        "no OCPP frame at INFO"
    )
    for line in (
        f"connected to {cs.url}/{CP_ID}",
        "boot accepted",
        "transaction (local 1) started",
        "transaction 1 (local 1): Central System answered Accepted",
        "transaction (local 1) stopped: EVDisconnected",
    ):
        assert line in text, line
    assert any("stopped" in m and m.endswith(" Wh") for m in text.splitlines())
    frames = [r for r in _ours(caplog, logging.DEBUG) if r.levelno == logging.DEBUG]
    assert any("StartTransaction" in r.getMessage() for r in frames), "frames at DEBUG"


async def test_trace_file_has_every_frame_without_secrets(
    cs: CentralSystem, tmp_path: Path
) -> None:
    path = tmp_path / "frames.log"
    trace = FrameTrace(path, SystemClock())
    async with ocpp_rig(cs, tmp_path) as rig:
        rig.ocpp.ctx.observers.append(trace.observe)
        reply = await rig.command(call.ChangeConfiguration(key="AuthorizationKey", value=SECRET))
        assert reply.status == "Accepted"
        await rig.command(call.GetConfiguration(key=["HeartbeatInterval"]))
    trace.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert any(" cs->cp " in line and "ChangeConfiguration" in line for line in lines)
    assert any(" cp->cs " in line and "HeartbeatInterval" in line for line in lines)
    assert any(" cp->cs " in line and "BootNotification" in line for line in lines) is False
    assert SECRET not in path.read_text()


def test_log_level_and_trace_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli._parser().parse_args(["run", "--log-level", "DEBUG", "--trace", "t.log"])
    assert args.log_level == "DEBUG" and args.trace == Path("t.log")
    code = cli.main(["run", "--trace", str(tmp_path / "no" / "such" / "dir" / "t.log")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("evsed run: --trace") and "Traceback" not in err
