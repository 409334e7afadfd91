"""A crash loop ends in a hold: no contactor cycling on every restart (crashguard.py).

The record is counted with an injected boot id and monotonic clock (a power cut is a new
boot id); the hold itself runs on the bench with a simulated clock, so "the relay never
closes" is watched over seconds of charger time in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller import cli, crashguard, status
from evsed.controller.config import ConfigError, parse
from evsed.controller.connector.hooks import LocalHooks
from evsed.controller.crashguard import CrashGuard, Record, Settings
from evsed.controller.run import Stack, serve
from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.bench_rig import Rig, bench_config
from tests.support.clock import FakeClock
from tests.support.ocpp_rig import CP_ID


class World:
    """The machine across evsed's restarts: one boot id and one monotonic clock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.boot = "boot-1"
        self.now = 1000.0

    def guard(
        self, settings: Settings | None = None, version: str = "1.0", **kw: Any
    ) -> CrashGuard:
        return CrashGuard(
            self.state_dir,
            settings or Settings(),
            version=version,
            boot_id=lambda: self.boot,
            monotonic=lambda: self.now,
            **kw,
        )

    def crash_after(self, seconds: float, **kw: Any) -> CrashGuard:
        """A run that starts and ends uncleanly `seconds` later (no clean_exit)."""
        g = self.guard(**kw)
        g.start()
        self.now += seconds
        return g

    def run_cleanly(self, seconds: float, **kw: Any) -> CrashGuard:
        g = self.guard(**kw)
        g.start()
        self.now += seconds
        g.clean_exit()
        return g


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_clean_exits_never_hold(world: World) -> None:
    for _ in range(10):
        assert not world.run_cleanly(20).holding
    assert not world.guard().start()


def test_the_third_unclean_end_within_the_window_holds(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.crash_after(22)  # a build that crashes 20 s into each run, restarted after 2 s
    assert not world.crash_after(22).holding  # found 1
    assert not world.crash_after(22).holding  # found 2
    with caplog.at_level(logging.CRITICAL, logger="evsed.controller.crashguard"):
        held = world.guard()
        assert held.start()  # found 3 within 10 min
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "crash loop hold: 3 unclean exits within 10 min" in line
    assert "evsed clear-hold" in line and "Reset" in line
    # A clean restart (systemctl restart) does not end it: an operator or quiet does.
    world.now += 5
    held.clean_exit()
    assert world.guard().start()


def test_unclean_ends_spread_beyond_the_window_do_not_hold(world: World) -> None:
    for _ in range(6):
        assert not world.crash_after(301).holding  # two at most within any 600 s


def test_a_power_cut_is_not_counted_and_a_reboot_ends_the_hold(world: World) -> None:
    world.crash_after(22)
    world.crash_after(22)
    world.boot, world.now = "boot-2", 5.0  # power cut: the mark was left by another boot
    assert not world.crash_after(22).holding  # the two before the cut are gone too
    assert not world.crash_after(22).holding
    for _ in range(3):
        world.crash_after(22)
    assert world.guard().start()
    world.boot, world.now = "boot-3", 7.0
    assert not world.guard().start()  # a reboot is a fresh start


def test_an_unknown_boot_id_falls_back_on_the_monotonic_clock(world: World) -> None:
    world.boot = ""
    world.crash_after(22)
    world.now = 3.0  # the monotonic clock went back: another boot
    assert not world.crash_after(22).holding
    assert world.guard().record.unclean == []


def test_a_quiet_period_lifts_the_hold_and_the_next_crash_holds_at_once(world: World) -> None:
    settings = Settings(quiet_s=3600)
    for _ in range(3):
        world.crash_after(22, settings=settings)
    g = world.guard(settings)
    assert g.start()
    assert g.quiet_until() == world.now + 3600
    world.now += 3600
    assert g.lift("quiet")  # what the running evsed's hold task does at quiet_until
    world.now += 60
    g.clean_exit()
    assert not world.run_cleanly(600, settings=settings).holding  # charging again
    world.crash_after(22, settings=settings)
    assert world.guard(settings).start()  # on probation: one unclean end holds again


def test_a_hold_stopped_cleanly_is_lifted_at_a_start_after_its_quiet(world: World) -> None:
    settings = Settings(quiet_s=3600)
    for _ in range(3):
        world.crash_after(22, settings=settings)
    world.run_cleanly(60, settings=settings)  # held, then `systemctl stop`
    world.now += 3600
    g = world.guard(settings)
    assert not g.start()
    assert g.record.probation


def test_quiet_zero_holds_until_an_operator(world: World) -> None:
    settings = Settings(quiet_s=0)
    for _ in range(3):
        world.crash_after(22, settings=settings)
    g = world.guard(settings)
    assert g.start() and g.quiet_until() is None
    world.now += 30 * 86400
    g.clean_exit()
    g = world.guard(settings)
    assert g.start()
    assert not g.cleared_by_operator()
    assert crashguard.clear_hold(world.state_dir) is True
    assert g.cleared_by_operator()  # what the running evsed looks for
    assert g.lift("evsed clear-hold")
    assert not world.guard(settings).start()


def test_a_new_version_starts_the_count_afresh(world: World) -> None:
    for _ in range(3):
        world.crash_after(22, version="1.0")
    assert not world.guard(version="1.1").start()


def test_a_corrupt_record_counts_as_empty(world: World) -> None:
    crashguard.record_path(world.state_dir).write_text("{not json")
    assert not world.guard().start()
    crashguard.record_path(world.state_dir).write_text("[1, 2]")
    assert not world.guard().start()
    for shape in ('{"running_since": "x"}', '{"unclean": 5}', '{"hold_since": [1]}'):
        crashguard.record_path(world.state_dir).write_text(shape)
        assert not world.guard().start()


def test_a_failing_write_never_stops_the_start(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def full(path: Path, record: Record) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for _ in range(3):
        world.crash_after(22)
    with caplog.at_level(logging.ERROR, logger="evsed.controller.crashguard"):
        g = world.guard(write=full)
        assert g.start()  # counted from what could be read: it holds, and runs
    assert not g.recording
    assert "could not be written" in caplog.text and "not counted" in caplog.text
    g.clean_exit()  # no write tried, nothing raised
    assert g.lift("Reset")  # the hold still ends in memory


def test_the_settings_are_validated() -> None:
    assert parse({}).crash_guard.max_unclean_exits == 3
    with pytest.raises(ConfigError, match="crash_guard"):
        parse({"crash_guard": {"max_unclean_exits": 0}})
    with pytest.raises(ConfigError, match="quiet_s"):
        parse({"crash_guard": {"window_s": 600, "quiet_s": 60}})
    assert parse({"crash_guard": {"quiet_s": 0}}).crash_guard.quiet_s == 0


# ---------------------------------------------------------------- the hold on the bench


@pytest.fixture
async def held(world: World) -> AsyncIterator[tuple[Rig, LocalHooks, CrashGuard]]:
    for _ in range(3):
        world.crash_after(22)
    guard = world.guard()
    assert guard.start()
    hooks = LocalHooks()
    clock = FakeClock()
    config = bench_config(authorization={"free_vend": True})
    stack = Stack(config, clock=clock, control=False, hooks=hooks, crash_guard=guard)
    await stack.start()
    try:
        yield Rig(stack, clock), hooks, guard
    finally:
        await stack.stop()


def energised(rig: Rig) -> Callable[[], bool]:
    return lambda: bool(rig.sim.pins.relay_energized)


async def test_a_held_charger_never_closes_its_relay_and_says_why(
    held: tuple[Rig, LocalHooks, CrashGuard],
) -> None:
    rig, hooks, _guard = held
    closed: list[bool] = []
    rig.connector.add_listener(
        lambda kind, fields: (
            closed.append(True) if kind == "contactor" and fields["closed"] else None
        )
    )
    await rig.bench.plug(1)  # a car that asks for charge (state C once offered)
    await rig.run(20.0)
    assert closed == [] and not rig.sim.pins.relay_energized
    assert hooks.started == []  # free vend started nothing
    assert rig.sim.pins.pilot_duty == 1.0  # +12 V: nothing offered
    st = rig.connector.status
    assert (str(st.status), str(st.error_code), st.vendor_error_code) == (
        "Faulted",
        "OtherError",
        "CrashLoopHold",
    )
    assert "crash loop hold" in st.info
    assert hooks.statuses[1] == st  # what the StatusNotification is made of
    link = status.LinkTracker(bench_config(), rig.clock)
    snap = status.snapshot(rig.stack, link)
    assert snap["hold"]["reason"].startswith("crash loop hold")
    assert "HOLD: crash loop hold" in status.format_table(snap)


async def test_clear_hold_ends_it_in_the_running_evsed(
    held: tuple[Rig, LocalHooks, CrashGuard], world: World
) -> None:
    rig, _hooks, guard = held
    await rig.bench.plug(1)
    await rig.run(3.0)
    assert not rig.stack.check_hold()  # nothing changed: still held
    assert crashguard.clear_hold(world.state_dir)
    assert rig.stack.check_hold()
    assert not guard.holding
    # The car plugged in during the hold waits (Preparing) for a start: a card, a
    # RemoteStart (evcc sends one on Preparing), or plugging in again with free vend.
    await rig.until(lambda: str(rig.connector.status.status) == "Preparing", within_s=2)
    charger = rig.stack.charger
    assert charger is not None and charger.start_remote(1, "AABBCCDDEE", None)
    await rig.until(energised(rig), within_s=10)
    assert str(rig.connector.status.status) == "Charging"
    assert json.loads(crashguard.record_path(world.state_dir).read_text())["hold_since"] is None


async def test_a_reset_from_the_central_system_ends_it(
    held: tuple[Rig, LocalHooks, CrashGuard],
) -> None:
    rig, _hooks, guard = held
    await rig.stack.restart("Soft")
    assert not guard.holding
    await rig.bench.plug(1)
    await rig.until(energised(rig), within_s=10)


async def test_the_quiet_period_ends_it_while_running(
    held: tuple[Rig, LocalHooks, CrashGuard], world: World
) -> None:
    rig, _hooks, guard = held
    until = guard.quiet_until()
    assert until is not None
    world.now = until - 1
    assert not rig.stack.check_hold()
    world.now = until
    assert rig.stack.check_hold()
    await rig.bench.plug(1)
    await rig.until(energised(rig), within_s=10)
    assert guard.record.probation  # the next unclean end holds again at once


# ---------------------------------------------------------------- `evsed run`'s serve()


async def serve_once(config: Any, fail: bool) -> tuple[Stack, dict[str, Any]]:
    """One `evsed run` in this process, and its status snapshot once ready; `fail`: it
    ends without an orderly stop (as an exception or a kill would)."""
    stop = asyncio.Event()
    ready: asyncio.Future[Stack] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, on_ready=ready.set_result, stop=stop))
    stack = await asyncio.wait_for(ready, 15)
    snapshot = status.snapshot(stack, status.LinkTracker(config, stack.clock))
    if fail:
        task.cancel()
    else:
        stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 15)
    return stack, snapshot


async def test_serve_holds_after_three_unclean_ends_and_not_after_clean_ones(
    tmp_path: Path,
) -> None:
    config = bench_config(central_system={"enabled": False}, state_dir=str(tmp_path / "s"))
    for _ in range(3):
        _, snap = await serve_once(config, fail=False)
        assert snap["hold"] is None
    for _ in range(3):
        await serve_once(config, fail=True)
    _, snap = await serve_once(config, fail=False)
    assert snap["hold"]["reason"] == "crash loop hold: 3 unclean exits within 10 min"
    assert [(c["status"], c["error_code"]) for c in snap["connectors"]] == [
        ("Faulted", "OtherError")
    ]


async def test_serve_starts_when_the_record_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, record: Record) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(crashguard, "write_record", read_only)
    config = bench_config(central_system={"enabled": False}, state_dir=str(tmp_path / "s"))
    for fail in (True, True, True, False):
        stack, snap = await serve_once(config, fail=fail)
        assert stack.crash_guard is not None and not stack.crash_guard.recording
        assert snap["hold"] is None
        assert snap["connectors"][0]["status"] == "Available"


# ---------------------------------------------------------------- real processes


CHILD = """
import os, signal, sys
from pathlib import Path
from evsed.controller.crashguard import CrashGuard
guard = CrashGuard(Path(sys.argv[1]), version="t")
print("holding" if guard.start() else "running", flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
guard.clean_exit()
"""


def _child(state_dir: Path, end: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(state_dir), end],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout.strip()


def test_kill_9_is_counted_across_real_processes(tmp_path: Path) -> None:
    """The real boot id and monotonic clock, the real write (fsync, rename) and a real
    SIGKILL: three kills hold the fourth start; a clean end leaves the hold standing."""
    assert _child(tmp_path, "clean") == (0, "running")
    for _ in range(3):
        assert _child(tmp_path, "kill") == (-signal.SIGKILL, "running")
    assert _child(tmp_path, "clean") == (0, "holding")
    assert _child(tmp_path, "clean") == (0, "holding")  # an orderly restart keeps it
    assert crashguard.clear_hold(tmp_path)
    assert _child(tmp_path, "clean") == (0, "running")


def test_the_clear_hold_command(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        world.crash_after(22)
    assert world.guard().start()
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(f'state_dir = "{world.state_dir}"\n[bench]\n')
    assert cli.main(["clear-hold", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == "hold cleared"
    assert crashguard.read_record(crashguard.record_path(world.state_dir)).hold_since is None
    assert cli.main(["clear-hold", "-c", str(cfg)]) == 0
    assert "no hold" in capsys.readouterr().out


# ---------------------------------------------------------------- over the wire


async def test_the_central_system_sees_the_hold_and_ends_it_with_a_reset(
    world: World, tmp_path: Path
) -> None:
    def status_of(f: Frame) -> bool:
        return (
            f.is_call
            and f.direction is Direction.CP_TO_CS
            and f.action == "StatusNotification"
            and f.payload["connectorId"] == 1
        )

    for _ in range(3):
        world.crash_after(22)
    guard = world.guard()
    assert guard.start()
    async with CentralSystem() as cs:
        config = bench_config(central_system={"url": cs.url, "charge_point_id": CP_ID})
        stack = Stack(
            config,
            clock=FakeClock(),
            control=False,
            ocpp=True,
            state_dir=tmp_path / "db",
            crash_guard=guard,
        )
        await stack.start()
        try:
            held = await cs.wait_for(status_of, timeout=10)
            payload = held.payload
            assert (payload["status"], payload["errorCode"]) == ("Faulted", "OtherError")
            assert payload["vendorErrorCode"] == "CrashLoopHold"
            assert payload["info"].startswith("crash loop hold")
            mark = cs.mark()
            reply = await cs.call(CP_ID, call.Reset(type="Soft"))
            assert reply.status == "Accepted"
            back = await cs.wait_for(
                lambda f: status_of(f) and f.payload["status"] == "Available",
                timeout=20,
                since=mark,
            )
            assert back.payload["errorCode"] == "NoError"
            assert not guard.holding
        finally:
            await stack.stop()


def _holding(world: World) -> CrashGuard:
    settings = Settings(max_unclean_exits=3, window_s=600, quiet_s=0)
    for _ in range(3):
        world.crash_after(20, settings=settings)
    held = world.guard(settings)
    held.start()
    assert held.holding
    return held


@pytest.mark.parametrize("how", ["eio", "garbled"])
def test_a_record_that_cannot_be_read_now_never_lifts_the_hold(
    world: World, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Safety review M1: the running hold looks at the file every few seconds for an
    `evsed clear-hold`; a transient read error of the card, or a garbled file, read as an
    empty record, that is as cleared, and the charger left its hold mid crash loop. A clean
    exit then wrote the empty record back, so the next start did not hold either."""
    held = _holding(world)
    path = world.state_dir / crashguard.RECORD_NAME
    if how == "garbled":
        path.write_text("\x00\x00\x00")
    else:
        real = Path.read_text

        def eio(self: Path, *a: Any, **k: Any) -> str:
            if self.name == crashguard.RECORD_NAME:
                raise OSError(errno.EIO, "Input/output error")
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "read_text", eio)
    assert not held.cleared_by_operator()
    held.clean_exit()
    monkeypatch.undo()
    again = world.guard(Settings(max_unclean_exits=3, window_s=600, quiet_s=0))
    again.start()
    assert again.holding, "the hold did not survive a restart after a read error"
