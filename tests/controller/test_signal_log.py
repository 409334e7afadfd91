"""`evsed run` says in the journal which signal stopped it (it used to end without a word)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from evsed.controller import run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_signal_that_begins_the_stop_is_logged_once(
    caplog: pytest.LogCaptureFixture, sig: signal.Signals
) -> None:
    async def until_stopped(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), sig)  # the handlers are in place once this runs
        await asyncio.wait_for(stop.wait(), 5)

    with caplog.at_level(logging.INFO, logger="evsed.controller.run"):
        assert run._main(until_stopped) == 0
    said = [r for r in caplog.records if r.name == "evsed.controller.run"]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (logging.INFO, f"{sig.name} received: stopping evsed")
    ]


def test_the_stop_is_set_before_the_line_is_logged() -> None:
    """A log call that blocks or raises (a full journal, a broken handler) must not keep
    the signal from stopping evsed: the event is set first."""
    seen: list[bool] = []
    events: list[asyncio.Event] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "received" in record.getMessage():
                seen.append(events[0].is_set())

    async def until_stopped(stop: asyncio.Event) -> None:
        events.append(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)

    logger = logging.getLogger("evsed.controller.run")
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert run._main(until_stopped) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert seen == [True], "the signal's line was logged before the stop was set"
