"""Running evsed: the stack (bench, drivers, charger, OCPP) and the `run`/`bench` commands."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evsed.controller import __version__, crashguard, hardware, stdout
from evsed.controller.charger import Charger
from evsed.controller.clock import Clock, SystemClock
from evsed.controller.config import Config
from evsed.controller.connector.core import OutputLatch
from evsed.controller.connector.faults import Fault
from evsed.controller.connector.hooks import ConnectorHooks, LocalHooks
from evsed.controller.connector.sampler import Rates
from evsed.controller.connector.status import StopReason
from evsed.controller.limiter import LimiterConfig
from evsed.controller.status import AlreadyRunning
from evsed.controller.store import StoreError
from evsed.controller.watchdog import FreezeGuard, Watchdog, ping_interval_s, sd_notify

log = logging.getLogger(__name__)


class Stack:
    """Bench (when configured), drivers, charger: everything `evsed run` runs, in one place.

    Tests and the demo use it as `async with Stack(config) as stack:`.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        bench: bool | None = None,
        control: bool = True,
        hooks: ConnectorHooks | None = None,
        ocpp: bool = False,
        ocpp_setup: Callable[[Any], None] | None = None,
        state_dir: Path | None = None,
        rates: Rates | None = None,
        limiter_config: LimiterConfig | None = None,
        stop_reason: StopReason = StopReason.REBOOT,
        crash_guard: crashguard.CrashGuard | None = None,
    ) -> None:
        """`ocpp=True`: the OCPP side (store, queue, session when a CS is configured) supplies
        the connector hooks; otherwise `hooks`, or local tags with transactions in memory."""
        self.config = config
        self.clock = clock or SystemClock()
        self.use_bench = config.bench.enabled if bench is None else bench
        self.control = control
        self.use_ocpp = ocpp
        # Called with the OcppApp before its session starts (observers, key changes).
        self.ocpp_setup = ocpp_setup
        self.state_dir = state_dir or config.state_dir
        self.hooks: ConnectorHooks = hooks or LocalHooks(tags=config.authorization.local_tags)
        self.rates = rates
        self.limiter_config = limiter_config
        self.stop_reason = stop_reason
        self.bench: Any = None
        self.charger: Charger | None = None
        self.ocpp: Any = None
        self._wired = config
        self._restarting: asyncio.Task[None] | None = None
        self.restarts = 0
        #: Cuts the outputs from the loop if the safety core freezes (threaded core only).
        self.freeze_guard: FreezeGuard | None = None
        self._freeze_task: asyncio.Task[None] | None = None
        self._hooks_in_use: ConnectorHooks = self.hooks
        #: `serve`'s, started already: while it holds, every connector is Faulted.
        self.crash_guard = crash_guard
        self._hold_task: asyncio.Task[None] | None = None

    def safety_tick_age(self) -> float:
        """The charger's (math.inf while none runs, e.g. during a reset): for the watchdog."""
        charger = self.charger
        return math.inf if charger is None else charger.safety_tick_age()

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        if self.use_bench:
            from evsed.controller import simbench  # the bench only exists where it is used

            self.bench = simbench.build_bench(config, self.clock)
            try:
                await self.bench.start(control=self.control)
                config = simbench.wired(config, self.bench.endpoints())
            except BaseException:
                await self.bench.stop()
                raise
        self._wired = config
        try:
            await self._start_controller()
        except BaseException:
            await self.stop()
            raise

    async def _start_controller(self) -> None:
        config = self._wired
        hooks = self.hooks
        if self.use_ocpp:
            from evsed.controller.ocpp16.app import OcppApp

            self.ocpp = OcppApp(config, self.clock, Path(self.state_dir), on_reset=self._on_reset)
            if self.ocpp_setup is not None:
                self.ocpp_setup(self.ocpp)
            hooks = self.ocpp.hooks
        parts = hardware.build(config, self.clock)
        if self.bench is not None:
            self.bench.drivers_ready()
        # Relay and pilot through latches, so that the loop can cut them if the core freezes
        # and the core, woken mid-step, cannot undo that (SafetyCore.cut_frozen).
        latches = [OutputLatch.around(c.contactor, c.pilot) for c in parts.connectors]
        for c, latch in zip(parts.connectors, latches, strict=True):
            c.contactor, c.pilot = latch.contactor, latch.pilot
        self.charger = Charger(
            config, parts, hooks, self.clock, rates=self.rates, limiter_config=self.limiter_config
        )
        self.charger.core.latch_outputs(latches)
        self._hooks_in_use = hooks
        if self.ocpp is not None:
            self.ocpp.attach(self.charger)
        holding = self.crash_guard is not None and self.crash_guard.holding
        if holding:
            self._hold_connectors()
        await self.charger.start()
        self._start_freeze_guard()
        if holding:
            self._hold_task = asyncio.get_running_loop().create_task(
                self._watch_hold(), name="crash-hold"
            )
        if self.ocpp is not None:
            await self.ocpp.start()

    # ------------------------------------------------------------------ crash-loop hold

    def _hold_connectors(self) -> None:
        """Before the core starts (each command runs inline then): no tick can close a relay
        first. The fault blocks every start and every offer; the pilot stays at +12 V."""
        assert self.charger is not None and self.crash_guard is not None
        for connector in self.charger.connectors.values():
            connector.raise_fault(Fault.CRASH_LOOP, self.crash_guard.reason)

    def check_hold(self) -> bool:
        """One look (the hold task's, every HOLD_POLL_S): end the hold if `evsed clear-hold`
        cleared it or its quiet period has passed. True if it ended now."""
        guard = self.crash_guard
        if guard is None or not guard.holding:
            return False
        until = guard.quiet_until()
        if guard.cleared_by_operator():
            why = "evsed clear-hold"
        elif until is not None and guard.now() >= until:
            why = "quiet"
        else:
            return False
        guard.lift(why)
        self._release_hold()
        return True

    def _release_hold(self) -> None:
        charger = self.charger
        if charger is None:
            return
        for connector in charger.connectors.values():
            connector.recover(Fault.CRASH_LOOP)

    async def _watch_hold(self) -> None:
        guard = self.crash_guard
        while guard is not None and guard.holding:
            until = guard.quiet_until()
            wait = crashguard.HOLD_POLL_S
            if until is not None:
                wait = min(wait, max(0.0, until - guard.now()))
            await asyncio.sleep(wait)  # the guard's clock is the system's monotonic one
            self.check_hold()

    async def _stop_hold_task(self) -> None:
        task, self._hold_task = self._hold_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ frozen core

    def _start_freeze_guard(self) -> None:
        charger = self.charger
        if charger is None or not charger.core.threaded:
            return  # simulated time: the core runs inline on the loop, nothing to freeze apart
        self.freeze_guard = FreezeGuard(
            charger.safety_tick_age, charger.core.cut_frozen, on_cut=self._report_frozen
        )
        self._freeze_task = asyncio.get_running_loop().create_task(
            self.freeze_guard.run(), name="freeze-guard"
        )

    async def _stop_freeze_guard(self) -> None:
        task, self._freeze_task = self._freeze_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                # The guard had died (it should not): the stop goes on all the same (the
                # session, the store, a Reset's start).
                log.exception("the freeze guard had ended with an error")

    def _report_frozen(self) -> None:
        """The connectors read Faulted while the core is frozen (Connector.status asks the
        core): have the Central System hear it now, not when the core wakes."""
        charger = self.charger
        if charger is None:
            return
        for cid in charger.connector_ids:
            try:
                self._hooks_in_use.status_changed(cid, charger.status(cid))
            except Exception:
                log.exception("connector %s: the frozen-core status was not reported", cid)

    async def _stop_controller(self, reason: StopReason) -> None:
        await self._stop_hold_task()
        if self.charger is not None:
            # The freeze guard watches the stop too: a core that freezes in it (stopping
            # the transactions, opening the relays) has its outputs cut by the loop. Once
            # the core has stopped its tick age is inf, no freeze, so the guard cannot act
            # on a charger being shut down; it ends before the charger is let go.
            try:
                await self.charger.stop(reason)
            finally:
                await self._stop_freeze_guard()
            self.charger = None
        if self.ocpp is not None:
            await self._flush()
            await self.ocpp.stop()
            self.ocpp.close()
            self.ocpp = None

    async def _flush(self, timeout_s: float = 3.0) -> None:
        """Give the session a moment to deliver the StopTransactions just queued: they are
        safe on disk either way, but a CS that hears of them now is nicer to its drivers.

        Bounded in real time (the loop's clock), not the charger's: the answer comes over
        the network and a stop is bounded by systemd's TimeoutStopSec, both real time. On
        an injected clock that nobody moves (a test's FakeClock) a
        stop or a Reset waited here for ever."""
        ocpp = self.ocpp
        session = ocpp.session if ocpp is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # A poll: the queue has no "drained" signal, and this runs once per stop.
        while session is not None and session.online and loop.time() < deadline:
            try:
                # An SQLite query: a failing card must end the flush, never the stop (the
                # session and the store still to close, a Reset's start still to come).
                if not len(ocpp.txqueue):
                    return
            except (StoreError, sqlite3.Error):
                log.exception("stop: the queue could not be read; not waiting for it")
                return
            await asyncio.sleep(0.05)

    def _on_reset(self, kind: str) -> None:
        # Called from inside the session: restart from a task of its own, so the session
        # can be stopped without waiting on itself.
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self.restart(kind))

    async def restart(self, kind: str) -> None:
        """Reset: stop every transaction with SoftReset/HardReset, then start again."""
        reason = StopReason.HARD_RESET if kind == "Hard" else StopReason.SOFT_RESET
        log.info("%s reset: restarting the controller", kind)
        await self._stop_controller(reason)
        if self.crash_guard is not None:
            # The operator's answer to the hold the Central System shows.
            self.crash_guard.lift(f"{kind} Reset from the Central System")
        await self._start_controller()
        self.restarts += 1

    async def stop(self) -> None:
        if self._restarting is not None and not self._restarting.done():
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        await self._stop_controller(self.stop_reason)
        if self.bench is not None:
            await self.bench.stop()
            self.bench = None


def configure_logging(config: Config, level: str | None = None) -> None:
    """Journal-friendly: one line per record on stderr (systemd adds the time too).
    ``level`` (``--log-level``) wins over the configuration's."""
    logging.basicConfig(
        level=level or config.logging.level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every timeout with frame dumps at ERROR: our poller reports meter faults.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def serve(
    config: Config,
    *,
    on_ready: Callable[[Stack], None] | None = None,
    stop: asyncio.Event,
    trace: Path | None = None,
) -> None:
    from evsed.controller import status
    from evsed.controller.trace import FrameTrace

    clock = SystemClock()
    link = status.LinkTracker(config, clock)
    frames = FrameTrace(trace, clock) if trace is not None else None

    def observe_link(app: Any) -> None:  # again after every Reset: a new OcppApp
        app.ctx.observers.append(link.observe)
        if frames is not None:
            app.ctx.observers.append(frames.observe)

    guard = crash_guard(config)
    # The lock before the store, the drivers or the session open anything (InstanceLock).
    async with status.InstanceLock(config.state_dir):
        # Before anything is driven; after the lock, so a second evsed never overwrites it.
        record_outputs(config)
        guard.start()  # counts the last run's end; holding, the connectors start Faulted
        await _serve_stack(config, clock, guard, observe_link, link, on_ready, stop)
        guard.clean_exit()  # only an orderly end gets here: anything else counts
    if frames is not None:
        frames.close()


def record_outputs(config: Config, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The pins safe-off needs, for the unit's ExecStopPost to drive safe should the
    configuration file no longer read then (evsed.controller.safeoff's docstring: why in
    the runtime directory). A failure is logged: evsed starts all the same (then
    safe-off reads the file, as it did before there was a record). Where it went, or None."""
    from evsed.controller import safeoff

    path = safeoff.record_path(environ)
    if path is None:
        log.debug("no $RUNTIME_DIRECTORY: the outputs are not recorded for safe-off")
        return None
    try:
        safeoff.write_record(config, path)
    except Exception as exc:
        log.error(
            "could not record the outputs for safe-off in %s (%s): starting all the same; "
            "safe-off reads the configuration file alone",
            path,
            exc,
        )
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)  # not an older record, pins since changed
        return None
    return path


def crash_guard(config: Config) -> crashguard.CrashGuard:
    cfg = config.crash_guard
    settings = crashguard.Settings(
        enabled=cfg.enabled,
        max_unclean_exits=cfg.max_unclean_exits,
        window_s=cfg.window_s,
        quiet_s=cfg.quiet_s,
    )
    return crashguard.CrashGuard(Path(config.state_dir), settings, version=__version__)


async def _serve_stack(
    config: Config,
    clock: Clock,
    guard: crashguard.CrashGuard,
    observe_link: Callable[[Any], None],
    link: Any,
    on_ready: Callable[[Stack], None] | None,
    stop: asyncio.Event,
) -> None:
    from evsed.controller import status

    async with Stack(
        config, clock=clock, ocpp=True, ocpp_setup=observe_link, crash_guard=guard
    ) as stack:
        server = status.StatusServer(stack, link, status.server_socket_path(config))
        await server.start()
        # Everything built so far lives as long as the process: keep it out of the
        # collector's scans, so that no full collection stalls the pilot sampling.
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready(stack)
        # `systemctl status evsed` shows a hold on its Status: line.
        state = guard.reason if guard.holding else "charging controller running"
        sd_notify(f"READY=1\nSTATUS={state}")
        interval = ping_interval_s()
        watchdog = (
            None
            if interval is None
            else asyncio.create_task(Watchdog(stack.safety_tick_age, interval).run())
        )
        try:
            await stop.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            sd_notify("STOPPING=1")
            await server.stop()


def _main(coro_factory: Callable[[asyncio.Event], Any]) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            # The stop first: a log line (a slow or full journal, a handler that raises)
            # must never delay it or keep it from happening.
            already = stop.is_set()
            stop.set()
            # The journal says why evsed ends (a new user saw it end without a word).
            if already:
                log.info("%s received: already stopping", sig.name)
            else:
                log.info("%s received: stopping evsed", sig.name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await coro_factory(stop)

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"evsed: {first_run_message(exc)}", file=sys.stderr)
        return EXIT_START
    except AlreadyRunning as exc:
        print(f"evsed: {exc}: {STOP_IT}", file=sys.stderr)
        return EXIT_START
    except StoreError as exc:
        # A database this version cannot use (written by a newer evsed): restarting changes
        # nothing, so the status the unit does not restart on (RestartPreventExitStatus=2).
        print(f"evsed: {exc}", file=sys.stderr)
        return EXIT_UNRUNNABLE
    return 0


#: What to do when another evsed holds the state (a bench has no systemd unit).
STOP_IT = "stop the running evsed (sudo systemctl stop evsed if it runs as the service)"

#: Could not start (a port in use, a device it may not open): one line, not a traceback.
EXIT_START = 1
#: Cannot run as things are (as a bad configuration: cli.EXIT_CONFIG): systemd gives up.
EXIT_UNRUNNABLE = 2


#: Which group opens a device (as `evsed install` gives them to the service user).
_DEVICE_GROUPS = (
    (("/dev/tty", "/dev/serial"), "dialout", "a serial port"),
    (("/dev/gpiochip", "/dev/gpiomem", "/sys/class/pwm"), "gpio", "GPIO (and the kernel PWM)"),
    (("/dev/spidev",), "spi", "SPI"),
)


def _permission_message(what: str, filename: str, euid: int) -> str:
    """A device evsed may not open: the fix for who runs it (a new user read "the service
    user needs the groups ..." while running it as themselves, and as root)."""
    found = [(g, why) for prefixes, g, why in _DEVICE_GROUPS if filename.startswith(prefixes)]
    group, why = found[0] if found else ("gpio, spi and dialout", "the charger's devices")
    if euid == 0:
        return (
            f"{what}, to root as well: no group would help (another program holding the "
            "device, a serial console on the port, a read-only file system?)"
        )
    groups = group.replace(" and ", ",").replace(", ", ",")
    verb = "needs the group" if groups == group else "need the groups"
    return (
        f"{what} ({why} {verb} {group}): as the service, `sudo evsed install` does that "
        f"for its user, then `sudo systemctl restart evsed`; as yourself, "
        f"`sudo usermod -aG {groups} $USER`, then log out and in again"
    )


def first_run_message(exc: OSError, euid: int | None = None) -> str:
    """What a first run trips on, said in one line with what to do; `euid`: whose run it is
    (the process's own when None)."""
    what = exc.strerror or str(exc)
    if exc.filename:
        what = f"{exc.filename}: {what}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{what or 'address in use'}: a port is in use; is another evsed running? "
            "(`evsed status`; a second bench here: control_port = 0 in [bench], port = 0 in "
            "each [connectors.meter], another state_dir)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        euid = os.geteuid() if euid is None else euid
        return _permission_message(what, str(exc.filename or ""), euid)
    if exc.errno == errno.ENOENT:
        return f"{what}: not found (a serial port or device named in the configuration?)"
    return what


def run_controller(
    config: Config, *, log_level: str | None = None, trace: Path | None = None
) -> int:
    configure_logging(config, log_level)

    def ready(stack: Stack) -> None:
        lines = ["evsed running"]
        if stack.bench is not None and stack.bench.control_port is not None:
            lines.insert(0, f"bench control port {stack.bench.control_port}")
        announce(lines)

    return _main(lambda stop: serve(config, on_ready=ready, stop=stop, trace=trace))


def announce(lines: list[str]) -> None:
    """Print the start-up lines; a stdout whose reader is gone (`evsed run | head -1`, a
    closed terminal) is a warning, never the end of the controller: a charge must not stop
    because nobody reads a courtesy line."""
    try:
        for line in lines:
            print(line, flush=True)
    except OSError as exc:  # BrokenPipeError, EIO of a hung-up terminal
        stdout.point_at_devnull()
        log.warning("stdout is not writable (%s): evsed goes on; its log is on stderr", exc)


def run_bench(config: Config) -> int:
    configure_logging(config)

    async def bench_only(stop: asyncio.Event) -> None:
        from evsed.controller import simbench

        bench = simbench.build_bench(config)
        await bench.start()
        try:
            wired = simbench.wired(config, bench.endpoints())
            lines = [f"bench control port {bench.control_port}"]
            lines += [
                f"connector {i} meter modbus-tcp 127.0.0.1:{c.meter.port}"
                for i, c in enumerate(wired.connectors, 1)
                if c.meter.transport == "tcp"
            ]
            lines += [
                f"{config.reader.model} reader {reader.port}"
                for reader in (bench.rdm6300, bench.pn532)
                if reader is not None
            ]
            announce(lines)
            await stop.wait()
        finally:
            await bench.stop()

    return _main(bench_only)


#: `evsed safe-off` could not reach the safe state on some output (systemd shows the
#: ExecStopPost failure; the journal names the output).
EXIT_NOT_SAFE = 1


#: The devices holding the safe levels: referenced until the process ends (see
#: hardware.safe_off; `evsed safe-off` then leaves through os._exit, closing nothing).
_held: list[Any] = []


def safe_off(config: Config, *, pin_factory: Any = None) -> int:
    if config.bench.enabled and not config.bench.force:
        # The bench's pins lived in the process that ran it; nothing real to drive.
        print("evsed safe-off: simulated bench, no real outputs to make safe", file=sys.stderr)
        return 0
    failed, held = hardware.safe_off(config, pin_factory=pin_factory)
    _held.extend(held)
    for line in failed:
        print(f"evsed safe-off: {line}", file=sys.stderr)
    if failed:
        print("evsed safe-off: NOT SAFE: check the relay and the pilot", file=sys.stderr)
        return EXIT_NOT_SAFE
    return 0
