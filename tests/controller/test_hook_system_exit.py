"""A hook that raises SystemExit is isolated like any callback (`Connector._isolated` already
catches it for listeners and the status hook: "a listener's sys.exit must not stop the loop").

The start hook (`_record_start`) and the authorisation (`_authorize`) caught Exception only:
a SystemExit there went up through `deliver()` or the authorisation task and stopped the
asyncio loop, the Central System's session with it, while the safety core's thread went on
driving the outputs with nobody left to record a transaction or answer a command. The start
that was not recorded is now handled as one whose hook raised (no energy, no lock, Faulted/
InternalError until unplug), and a refused authorisation answers Invalid.
"""

from __future__ import annotations

import asyncio

from evsed.controller.connector.hooks import AuthResult, LocalHooks, Transaction
from evsed.controller.connector.machine import Connector
from evsed.controller.connector.settings import Settings
from evsed.hal.types import PilotReading, PilotState
from tests.support.clock import FakeClock
from tests.support.outputs import Pilot, Relay

C = PilotReading(state=PilotState.C, high_v=6.0, low_v=-12.0)


class ExitingHooks(LocalHooks):
    def transaction_started(self, tx: Transaction) -> Transaction:
        raise SystemExit(3)

    async def authorize(self, connector_id: int, id_tag: str) -> AuthResult:
        raise SystemExit(3)


def connector(free_vend: bool) -> tuple[Connector, Relay, Pilot]:
    relay, pilot = Relay(), Pilot()
    c = Connector(
        Settings(free_vend=free_vend),
        pilot=pilot,
        contactor=relay,
        hooks=ExitingHooks(tags=["AABBCCDDEE"]),
        clock=FakeClock(),
    )
    c.on_rcd_self_test(True)
    return c, relay, pilot


def test_a_start_hook_raising_system_exit_is_a_start_not_recorded() -> None:
    c, relay, pilot = connector(free_vend=True)
    c.on_pilot(C)  # free vend: the start is recorded through the hook, which exits
    assert c.callback_errors == 1
    assert c.transaction is None
    assert not relay.energized and pilot.duty in (0.0, 1.0)
    assert c.status.status == "Faulted" and c.status.error_code == "InternalError"


async def test_an_authorize_hook_raising_system_exit_answers_invalid() -> None:
    c, relay, _pilot = connector(free_vend=False)
    c.on_pilot(C)
    c.present_tag("AABBCCDDEE")
    await asyncio.wait_for(asyncio.gather(*c._tasks), 5)
    assert c.callback_errors == 1
    assert c.transaction is None and not relay.energized
    c.present_tag("AABBCCDDEE")  # the next card is asked about, not ignored as "authorizing"
    assert c._tasks
    await asyncio.wait_for(asyncio.gather(*c._tasks), 5)
    assert c.callback_errors == 2
