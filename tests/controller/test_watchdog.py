"""The honest watchdog, on a real unix datagram socket as NOTIFY_SOCKET.

A receiver thread binds the socket (a path, or the abstract namespace as systemd may use)
and timestamps every datagram as it arrives, so a blocked event loop cannot hide pings from
the test. The safety core is simulated by a thread that stamps its "last tick" every 10 ms:
freezing it makes the tick age grow, as a frozen sampler's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from evsed.controller.run import Stack, serve
from evsed.controller.watchdog import MAX_LOOP_LAG_S as MAX_LOOP_LAG
from evsed.controller.watchdog import Watchdog, ping_interval_s, sd_notify
from tests.support.bench_rig import bench_config
from tests.support.realtime import Changes

INTERVAL_S = 0.05
MAX_TICK_AGE_S = 0.3
MAX_LOOP_LAG_S = 0.3


class Receiver:
    """systemd's end of NOTIFY_SOCKET: every datagram with its arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        self.on_arrival: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.received.append((time.monotonic(), data.decode()))
            self.arrived.set()
            self.on_arrival()

    def pings(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        with self._lock:
            return [t for t, d in self.received if d == "WATCHDOG=1" and since <= t < until]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class SafetyCore:
    """Stamps `last_tick` every 10 ms in its own thread until frozen."""

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            if not self._frozen.is_set():
                self.last_tick = time.monotonic()

    def tick_age(self) -> float:
        return time.monotonic() - self.last_tick

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class ObservedWatchdog(Watchdog):
    changes: Changes

    def beat(self, loop_lag_s: float = 0.0) -> bool:
        pinged = super().beat(loop_lag_s)
        self.changes.event.set()
        return pinged


@pytest.fixture(params=["path", "abstract"])
def receiver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    if request.param == "path":
        address = str(tmp_path / "notify")
        if len(address) > 100:  # sun_path holds 108 bytes
            address = f"/tmp/evsed-notify-{uuid.uuid4().hex[:8]}"
    else:
        address = f"@evsed-test-{uuid.uuid4().hex}"
    r = Receiver(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        yield r
    finally:
        r.close()
        if not address.startswith("@"):
            Path(address).unlink(missing_ok=True)


@pytest.fixture
def core() -> Iterator[SafetyCore]:
    c = SafetyCore()
    try:
        yield c
    finally:
        c.close()


@contextlib.asynccontextmanager
async def running(core: SafetyCore, receiver: Receiver) -> AsyncIterator[ObservedWatchdog]:
    watchdog = ObservedWatchdog(
        core.tick_age,
        INTERVAL_S,
        max_tick_age_s=MAX_TICK_AGE_S,
        max_loop_lag_s=MAX_LOOP_LAG_S,
    )
    watchdog.changes = Changes()
    receiver.on_arrival = watchdog.changes.from_thread
    task = asyncio.create_task(watchdog.run())
    try:
        yield watchdog
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_pings_arrive_while_healthy(receiver: Receiver, core: SafetyCore) -> None:
    async with running(core, receiver) as w:
        await w.changes.until(lambda: len(receiver.pings()) >= 5)
    assert w.withheld == 0


async def test_pings_stop_while_the_safety_core_is_frozen_and_resume_after(
    receiver: Receiver, core: SafetyCore
) -> None:
    async with running(core, receiver) as w:
        await w.changes.until(lambda: len(receiver.pings()) >= 3)
        core.freeze()
        frozen_at = time.monotonic()
        # Withheld for a good while: long past the age limit, the loop still turning.
        await w.changes.until(lambda: w.withheld >= 10)
        checked_until = time.monotonic()
        # Pings stop once the tick is older than the limit (one interval of slack for the
        # check that was already under way, and the datagram's trip).
        silent_from = frozen_at + MAX_TICK_AGE_S + INTERVAL_S + 0.05
        assert receiver.pings(silent_from, checked_until) == []
        assert checked_until - silent_from > 0.3  # the silence was observed, not assumed
        core.thaw()
        thawed_at = time.monotonic()
        await w.changes.until(lambda: len(receiver.pings(since=thawed_at)) >= 3)


async def test_pings_stop_while_the_loop_is_blocked(receiver: Receiver, core: SafetyCore) -> None:
    async with running(core, receiver) as w:
        await w.changes.until(lambda: len(receiver.pings()) >= 3)
        loop = asyncio.get_running_loop()
        blocked_at = time.monotonic()
        # A callback that blocks the application loop for 1.5 s (the safety core, in its
        # own thread, keeps ticking: only the loop is unhealthy).
        blocked = loop.create_future()
        loop.call_soon(lambda: (time.sleep(1.5), blocked.set_result(None)))
        await blocked
        unblocked_at = time.monotonic()
        assert unblocked_at - blocked_at >= 1.5
        assert receiver.pings(blocked_at + 0.1, unblocked_at) == []
        # The first check after the block sees the pinger 1.5 s late and withholds.
        await w.changes.until(lambda: w.withheld >= 1)
        await w.changes.until(lambda: len(receiver.pings(since=unblocked_at)) >= 3)


def test_a_failing_or_nan_age_is_unhealthy() -> None:
    sent: list[str] = []

    def boom() -> float:
        raise RuntimeError("no charger")

    assert not Watchdog(boom, 1.0, notify=lambda s: bool(sent.append(s))).beat()
    assert not Watchdog(lambda: float("nan"), 1.0, notify=lambda s: bool(sent.append(s))).beat()
    assert not Watchdog(lambda: float("inf"), 1.0, notify=lambda s: bool(sent.append(s))).beat()
    assert sent == []


def test_interval_is_a_quarter_of_watchdog_usec_and_sd_notify_reaches_the_socket(
    receiver: Receiver,
) -> None:
    assert ping_interval_s({"WATCHDOG_USEC": "8000000"}) == 2.0
    assert ping_interval_s({}) is None
    assert ping_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert sd_notify("READY=1\nSTATUS=x")
    assert receiver.arrived.wait(5)
    assert receiver.received[0][1] == "READY=1\nSTATUS=x"


async def test_serve_pings_only_while_the_real_safety_core_ticks(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evsed run`'s serve() on the bench: READY=1, then pings while the core thread ticks;
    none while that thread is frozen (a command that hangs on it, the loop free), pings
    again once it is released, none once the charger's core is stopped (tick age inf)."""
    monkeypatch.setenv("WATCHDOG_USEC", str(int(INTERVAL_S * 4e6)))
    config = bench_config(central_system={"enabled": False}, state_dir=str(tmp_path / "state"))
    stop = asyncio.Event()
    ready: asyncio.Future[Stack] = asyncio.get_running_loop().create_future()
    changes = Changes()
    receiver.on_arrival = changes.from_thread
    withholding = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "withholding" in record.getMessage():
                withholding.set()

    handler = Seen()
    logging.getLogger("evsed.controller.watchdog").addHandler(handler)
    server = asyncio.create_task(serve(config, on_ready=ready.set_result, stop=stop))
    try:
        stack = await asyncio.wait_for(ready, 15)
        await changes.until(lambda: len(receiver.pings()) >= 5)
        assert receiver.received[0][1].startswith("READY=1")
        assert stack.safety_tick_age() <= 1.0
        charger = stack.charger
        assert charger is not None and charger.core.threaded

        # Freeze the core thread until released: a command that blocks on it, queued
        # from a worker so the loop stays free (the loop's own commands then cost it one
        # CALL_TIMEOUT_S wait, and are answered at once after that). The freeze's own
        # bound is far beyond the window, so the core cannot come back inside it.
        release = threading.Event()
        withholding.clear()  # a start-up check may have withheld before the first tick
        frozen_at = time.monotonic()
        hang = asyncio.create_task(asyncio.to_thread(charger.core.call, lambda: release.wait(30)))
        await asyncio.wait_for(withholding.wait(), 5)  # once the tick is 1 s old
        silent_from = time.monotonic()
        assert silent_from - frozen_at >= 1.0
        await asyncio.sleep(0.5)  # the observation window of the silence
        release.set()
        released_at = time.monotonic()
        await hang
        assert receiver.pings(silent_from + 0.05, released_at) == []
        await changes.until(lambda: len(receiver.pings(since=released_at)) >= 3)

        withholding.clear()
        await charger.stop()
        stopped_at = time.monotonic()
        assert stack.safety_tick_age() == math.inf
        # The watchdog's next check withholds its ping and says so (sustained silence is
        # the frozen-core test's business above).
        await asyncio.wait_for(withholding.wait(), 5)
        assert receiver.pings(stopped_at + INTERVAL_S) == []
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)
    logging.getLogger("evsed.controller.watchdog").removeHandler(handler)
    await changes.until(lambda: receiver.received[-1][1] == "STOPPING=1")


def test_the_unit_kills_within_seconds_of_the_last_honest_ping() -> None:
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "evsed.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("WatchdogSec=")]
    watchdog_s = float(line.split("=", 1)[1].rstrip("s"))
    assert 5 <= watchdog_s <= 10
    interval = ping_interval_s({"WATCHDOG_USEC": str(int(watchdog_s * 1e6))})
    assert interval is not None
    # A hiccup that withholds one ping (a late pinger) does not get a healthy evsed killed.
    assert 2 * interval + MAX_LOOP_LAG < watchdog_s
