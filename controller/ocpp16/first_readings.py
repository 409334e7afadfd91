"""At start-up, before the transactions the last run left open are stopped: wait, bounded,
for the first reading of each of their connectors' meters.

The meter kept counting until the power went (or the process was killed), so after a
restart it holds the energy of the whole session, which the stored reading (at most one
record interval old) does not. `Charger.start` only starts the meter pollers: without this
wait recovery ran before any of them had answered and always billed the stored reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from evsed.controller.clock import Clock
from evsed.controller.ocpp16.port import ChargePointPort

log = logging.getLogger(__name__)


async def first_readings(
    charger: ChargePointPort, connector_ids: Iterable[int], clock: Clock, timeout_s: float
) -> dict[int, float]:
    """The energy register (Wh) of each of ``connector_ids`` whose meter answers within
    ``timeout_s`` of ``clock``: already known, or the first reading that comes. A connector
    without a meter, or one that stays silent, is missing from the result."""
    wanted = set(connector_ids) & set(charger.connector_ids)
    readings: dict[int, float] = {}
    for cid in wanted:
        energy = charger.metering(cid).energy_wh
        if energy is not None:
            readings[cid] = float(energy)
    # A connector without a meter never reads: waiting for it would only delay recovery.
    pending = {cid for cid in wanted - readings.keys() if charger.has_meter(cid)}
    if not pending:
        return readings
    done = asyncio.Event()

    def on_meter(cid: int, energy_wh: float) -> None:
        if cid in pending:
            readings[cid] = float(energy_wh)
            pending.discard(cid)
            if not pending:
                done.set()

    unwatch = charger.watch_meters(on_meter)
    waiter = asyncio.ensure_future(done.wait())
    timer = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        unwatch()
        for task in (waiter, timer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if pending:
        log.warning(
            "no meter reading within %.0f s on connector(s) %s: their open transactions are "
            "stopped with the stored reading",
            timeout_s,
            ", ".join(map(str, sorted(pending))),
        )
    return readings
