"""One output driver that blocks holds up no other output of the freeze cut (safety review).

SafetyCore.cut_frozen used to drive the latches one after the other in one thread (relay,
then pilot; connector 1, then 2): a relay driver that blocked (the core frozen inside it, an
I2C expander whose bus the frozen core holds) left connector 1's pilot offering current and
connector 2's relay closed with its PWM on, for as long as the freeze lasted. Every output
is now driven in a daemon thread of its own, all at once, each waited for with one bound.
"""

from __future__ import annotations

import asyncio
import threading
import time

from evsed.controller.clock import SystemClock
from evsed.controller.connector import core as core_module
from evsed.controller.connector.core import OutputLatch, SafetyCore
from evsed.controller.watchdog import FreezeGuard


class Relay:
    def __init__(self, blocks: threading.Event | None = None) -> None:
        self.energized = True
        self.blocks = blocks
        self.opens = 0  # deenergize calls begun
        self.inside = threading.Event()

    def deenergize(self) -> None:
        self.opens += 1
        if self.blocks is not None:
            self.inside.set()
            self.blocks.wait(30)
        self.energized = False

    def energize(self) -> None:
        self.energized = True

    def feedback(self) -> bool | None:
        return None

    def fault(self) -> None:
        return None

    def shutdown(self) -> None:
        pass


class Pilot:
    def __init__(self) -> None:
        self.duty = 0.533  # 32 A offered

    def set_duty(self, duty: float) -> None:
        self.duty = duty

    def shutdown(self) -> None:
        pass


def two_connectors(stuck: threading.Event) -> tuple[SafetyCore, Relay, Pilot, Relay, Pilot]:
    r1, p1, r2, p2 = Relay(stuck), Pilot(), Relay(), Pilot()
    core = SafetyCore(SystemClock(), threaded=True)
    core.latch_outputs([OutputLatch.around(r1, p1), OutputLatch.around(r2, p2)])
    return core, r1, p1, r2, p2


async def test_a_blocked_relay_driver_leaves_no_other_output_uncut() -> None:
    stuck = threading.Event()
    core, r1, p1, r2, p2 = two_connectors(stuck)
    try:
        t0 = time.monotonic()
        failed = await asyncio.to_thread(core.cut_frozen, "safety core froze")
        took = time.monotonic() - t0
        assert r1.inside.is_set() and r1.energized  # the stuck one
        assert p1.duty == 0.0, "connector 1's pilot waited behind its relay"
        assert not r2.energized and p2.duty == 0.0, "connector 2 waited behind connector 1"
        assert failed == [f"connector 1 relay: did not return within {core_module.TRIP_WAIT_S} s"]
        assert took < core_module.TRIP_WAIT_S + 1.0  # one bound for all, not one each
        # The latches closed before `frozen` is set, the stuck one too.
        assert core.frozen == "safety core froze"
        assert all(latch.contactor.tripped and latch.pilot.tripped for latch in core._latches)
    finally:
        stuck.set()


async def test_an_output_whose_trip_is_still_blocked_is_not_tripped_again_but_reported() -> None:
    stuck = threading.Event()
    core, r1, _p1, _r2, p2 = two_connectors(stuck)
    try:
        await asyncio.to_thread(core.cut_frozen, "froze")
        assert await asyncio.to_thread(r1.inside.wait, 5)
        p2.duty = 0.533  # as if something undid it: a re-drive sets it again
        failed = await asyncio.to_thread(core.cut_frozen, "froze")
        assert r1.opens == 1, "a second thread piled up behind the stuck relay driver"
        assert failed == ["connector 1 relay: its last trip is still blocked in the driver"]
        assert p2.duty == 0.0
    finally:
        stuck.set()
    last = core._latches[0].contactor._trip_run
    assert last is not None and await asyncio.to_thread(last.done.wait, 5)
    # Once it returned, the next cut drives it again, and all is safe.
    assert await asyncio.to_thread(core.cut_frozen, "froze") == []
    assert r1.opens == 2 and not r1.energized


async def test_the_guard_gets_every_other_output_cut_while_one_driver_blocks() -> None:
    """The reviewer's case through the freeze guard: three seconds of checks used to leave
    connector 2 relay closed and PWM on, and connector 1's pilot offering current."""
    stuck = threading.Event()
    core, r1, p1, r2, p2 = two_connectors(stuck)
    guard = FreezeGuard(lambda: 5.0, core.cut_frozen)
    try:
        assert await guard.check()
        assert p1.duty == 0.0 and not r2.energized and p2.duty == 0.0
        assert not await guard.check()  # connector 1's relay unsafe: driven again at once
        assert guard.redrives == 1 and r1.opens == 1
    finally:
        stuck.set()


class ExitingRelay(Relay):
    """A driver whose write ends in SystemExit (a vendor library calling sys.exit on a bus
    error): not an Exception, and the relay is still closed."""

    def deenergize(self) -> None:
        self.opens += 1
        raise SystemExit(1)


async def test_a_trip_that_raises_a_base_exception_is_reported_unsafe_not_safe() -> None:
    """Safety review, round 2: the trip's thread caught only Exception, so a SystemExit set
    `done` with no error recorded and the cut reported a closed relay as driven safe."""
    relay, pilot = ExitingRelay(), Pilot()
    core = SafetyCore(SystemClock(), threaded=True)
    core.latch_outputs([OutputLatch.around(relay, pilot)])
    failed = await asyncio.to_thread(core.cut_frozen, "safety core froze")
    assert relay.opens == 1 and relay.energized
    assert failed == ["connector 1 relay: SystemExit 1"]
    assert pilot.duty == 0.0  # the other output of the connector is cut all the same


async def test_a_base_exception_without_a_message_still_names_what_it_was() -> None:
    class Interrupted(Relay):
        def deenergize(self) -> None:
            raise KeyboardInterrupt

    core = SafetyCore(SystemClock(), threaded=True)
    core.latch_outputs([OutputLatch.around(Interrupted(), Pilot())])
    assert await asyncio.to_thread(core.cut_frozen, "froze") == [
        "connector 1 relay: KeyboardInterrupt"
    ]
