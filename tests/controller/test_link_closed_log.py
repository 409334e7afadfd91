"""A link never goes down without a trace: the log line says who ended it and how, and a
receive loop that fails is logged with its traceback (it used to end the link silently,
seen once as a FirmwareStatusNotification "got no answer: LinkLost" with nothing else)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from evsed.controller.ocpp16.protocol import StrictChargePoint
from evsed.hwmocks.central_system import CentralSystem
from tests.support.ocpp_rig import CP_ID, ocpp_rig

SESSION_LOG = "evsed.controller.ocpp16.session"


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem() as central:
        yield central


class ClosedLines(logging.Handler):
    """The session's "link closed" lines, and an event for the first one (it is logged
    after the link's tasks are gathered, a little after the session reads offline)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("session: link closed"):
            self.lines.append(record.getMessage())
            self.seen.set()


@pytest.fixture
def closed() -> Iterator[ClosedLines]:
    handler = ClosedLines()
    logger = logging.getLogger(SESSION_LOG)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.setLevel(level)
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("abrupt", "code", "expected"),
    [
        (False, 4000, "closed by the Central System: code 4000"),
        (True, 1000, "cut without a close frame (1006)"),
    ],
)
async def test_the_log_says_how_the_central_system_ended_the_link(
    cs: CentralSystem,
    tmp_path: Path,
    closed: ClosedLines,
    abrupt: bool,
    code: int,
    expected: str,
) -> None:
    async with ocpp_rig(cs, tmp_path):
        await cs.disconnect(CP_ID, abrupt=abrupt, code=code)
        await asyncio.wait_for(closed.seen.wait(), 5)
    assert expected in closed.lines[0], closed.lines


async def test_a_failing_receive_loop_is_logged_with_its_traceback(
    cs: CentralSystem,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    closed: ClosedLines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = StrictChargePoint.route_message
    armed = {"on": False}

    async def failing(self: StrictChargePoint, raw: Any) -> None:
        if armed["on"]:
            armed["on"] = False
            raise RuntimeError("a bug in the receive path")
        await original(self, raw)

    monkeypatch.setattr(StrictChargePoint, "route_message", failing)
    async with ocpp_rig(cs, tmp_path):
        armed["on"] = True
        await cs.send_raw(CP_ID, '[2,"x1","Heartbeat",{}]')
        await asyncio.wait_for(closed.seen.wait(), 5)
    failed = [r for r in caplog.records if r.getMessage() == "session: the receive loop failed"]
    assert failed and failed[0].levelno == logging.ERROR
    assert failed[0].exc_info is not None and "a bug in the receive path" in str(
        failed[0].exc_info[1]
    )
    assert "the receive loop failed: RuntimeError" in closed.lines[0]
