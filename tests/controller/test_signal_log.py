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
