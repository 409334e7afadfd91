"""A store that fails while the stop waits for the queue to drain does not end the stop
(safety review).

Stack._flush polls `len(txqueue)`, an SQLite query: a failing card there (StoreError, or
sqlite3's own error) ended _stop_controller before `ocpp.stop()` and `close()`, leaving the
session and the store open; in a Reset `_start_controller` never ran (the charger None
until systemd's watchdog killed the service; without systemd, for ever).
"""

from __future__ import annotations

import logging
import sqlite3

import pytest

from evsed.controller.config import Config
from evsed.controller.run import Stack
from evsed.controller.store import StoreError


class _Queue:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        raise self.error


class _Session:
    online = True  # the flush waits only while the Central System can hear it


class _Ocpp:
    def __init__(self, error: Exception) -> None:
        self.session, self.txqueue = _Session(), _Queue(error)
        self.stopped = self.closed = False

    async def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


ERRORS = [StoreError("disk I/O error"), sqlite3.OperationalError("disk I/O error")]


@pytest.mark.parametrize("error", ERRORS, ids=["StoreError", "sqlite3"])
async def test_the_stop_goes_on_when_the_queue_cannot_be_read(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    stack = Stack(Config())
    ocpp = _Ocpp(error)
    stack.ocpp = ocpp  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="evsed.controller.run"):
        await stack._stop_controller(stack.stop_reason)
    assert ocpp.stopped and ocpp.closed, "the store's error skipped ocpp.stop()/close()"
    assert stack.ocpp is None
    assert "queue could not be read" in caplog.text


async def test_a_reset_starts_again_when_the_queue_cannot_be_read() -> None:
    stack = Stack(Config())
    ocpp = _Ocpp(StoreError("disk I/O error"))
    stack.ocpp = ocpp  # type: ignore[assignment]
    started: list[bool] = []

    async def start() -> None:
        started.append(True)

    stack._start_controller = start  # type: ignore[method-assign]
    await stack.restart("Soft")
    assert ocpp.closed and started == [True] and stack.restarts == 1
