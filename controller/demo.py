"""`evsed demo`: one charging session on the simulated bench, printed as a timeline.

Bench, controller and a small OCPP 1.6J Central System run in this process with the bench
defaults (no configuration file), on ephemeral ports and a temporary state directory. The
session script drives the bench
the way a person and a car would: plug in, tap the card on the simulated RDM6300 (it
travels through a real pseudo-terminal and the real driver), charge, lower the limit, let
the EV pause and resume, unplug. Every event the controller reports lands on a `Timeline`;
the reaction time from the EV's pilot change to the relay dropping is measured in real
time (perf_counter) at the relay pin itself.

The OCPP exchange appears on the timeline as the charge point sees it ("ocpp" events:
direction, action, payload; `--json` adds the raw frame).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from evsed.controller.config import Config, parse
from evsed.controller.limiter import SmartChargingLimit
from evsed.controller.readings import (
    ENERGY_DIGITS,
    POWER_DIGITS,
    MeterSample,
    drawn_a,
    reading,
)
from evsed.controller.run import Stack

log = logging.getLogger(__name__)

DEMO_CARD = "AABBCCDDEE"  # 10 hex characters: what an EM4100 card (RDM6300) carries
CONNECTOR = 1
EV_DELAY_S = 0.5  # the EV's ramp to a new current: short, so the demo stays short
LIMIT_A = 10.0
STEP_TIMEOUT_S = 10.0  # a step that takes longer than this is a bug, not a slow machine
EXIT_INTERRUPTED = 130


CHARGE_POINT_ID = "CP-DEMO"
SAMPLE_INTERVAL_S = 3  # MeterValueSampleInterval for the demo: a few MeterValues to show


def demo_config(state_dir: Path, cs_url: str) -> Config:
    """The bench defaults, on ports nothing else can hold, talking to the demo's CS."""
    return parse(
        {
            "bench": {"control_port": 0, "ev_delay_s": EV_DELAY_S},
            "connectors": [{"meter": {"port": 0}}],
            "central_system": {"url": cs_url, "charge_point_id": CHARGE_POINT_ID},
            "state_dir": str(state_dir),
            "logging": {"level": "WARNING"},
        }
    )


# ---------------------------------------------------------------------- the timeline


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # seconds since the timeline started
    kind: str
    fields: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, **self.fields}


Printer = Callable[[Event], None]


class Timeline:
    """What happened, in order, with elapsed time; printers and waiters see each event."""

    def __init__(self, printer: Printer | None = None) -> None:
        self.t0 = time.perf_counter()
        self.events: list[Event] = []
        self._printer = printer
        self._waiters: list[
            tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future[Event]]
        ] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, kind: str, **fields: Any) -> Event:
        event = Event(self.elapsed(), kind, fields)
        self.events.append(event)
        if self._printer is not None:
            self._printer(event)
        for waiter in list(self._waiters):
            want, pred, fut = waiter
            if fut.done():
                self._waiters.remove(waiter)
            elif want == kind and pred(fields):
                fut.set_result(event)
                self._waiters.remove(waiter)
        return event

    def expect(
        self, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> asyncio.Future[Event]:
        """A future for the next `kind` event matching `pred`; create it before the cause."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, pred, fut))
        return fut

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


def json_printer(out: TextIO = sys.stdout) -> Printer:
    def emit(event: Event) -> None:
        out.write(json.dumps(event.as_dict(), default=str) + "\n")
        out.flush()

    return emit


def text_printer(out: TextIO = sys.stdout) -> Printer:
    contactor_open_at: float | None = None

    def emit(event: Event) -> None:
        nonlocal contactor_open_at
        line = describe(event)
        if event.kind == "contactor":
            contactor_open_at = None if event.fields.get("closed") else event.t
        elif event.kind == "meter" and _stale(event, contactor_open_at):
            # A new user read "6.87 kW" after "contactor open" as current still flowing.
            line += "  (read as the contactor opened)"
        out.write(f"{event.t:7.2f}s  {line}\n")
        out.flush()

    return emit


#: How long after the contactor opened a meter reading may still show the load: the poll
#: began before, or the meter had not refreshed its registers (0.5-1 s).
STALE_READING_S = 0.5


def _stale(event: Event, contactor_open_at: float | None) -> bool:
    power = event.fields.get("power_w")
    return (
        contactor_open_at is not None
        and event.t - contactor_open_at <= STALE_READING_S
        and isinstance(power, int | float)
        and power > 0
    )


class StopWhenGone:
    """The printer, until the reader of stdout goes away (`evsed demo | head -2`): then it
    prints nothing more and calls ``stop`` once (thread-safe; the demo sets it to cancel
    itself), instead of a BrokenPipeError from every callback that adds an event and a
    session that runs on with no one watching."""

    def __init__(self, printer: Printer) -> None:
        self._printer = printer
        self.gone = False
        self.stop: Callable[[], None] = lambda: None

    def __call__(self, event: Event) -> None:
        if self.gone:
            return
        try:
            self._printer(event)
        except BrokenPipeError:
            self.gone = True
            self.stop()


def describe(event: Event) -> str:
    """One readable line for an event."""
    f = event.fields
    match event.kind:
        case "pilot":
            return f"pilot          {f.get('previous')} -> {f.get('state')}"
        case "status":
            error = f.get("error_code")
            suffix = f" ({error})" if error and error != "NoError" else ""
            return f"status         {f.get('status')}{suffix}"
        case "duty":
            duty = float(f.get("duty", 1.0))
            amps = float(f.get("amps", 0.0))
            if duty >= 1.0:
                return "duty           +12 V steady (no current offered)"
            if duty <= 0.0:
                return "duty           -12 V (state F)"
            return f"duty           {duty * 100:.1f} % = {amps:g} A offered"
        case "contactor":
            return f"contactor      {'closed' if f.get('closed') else 'open'}"
        case "meter":
            power = f.get("power_w")
            energy = f.get("energy_wh")
            amps = f.get("current_a")
            parts = [
                "meter         ",
                "-" if power is None else f"{power / 1000:6.2f} kW",
                "" if amps is None else f"{amps:5.1f} A/phase",
                "" if energy is None else f"{energy:9.1f} Wh",
            ]
            return " ".join(p for p in parts if p)
        case "transaction_started":
            return (
                f"transaction    {f.get('transaction')} started for {f.get('id_tag')} "
                f"(meter {f.get('meter_start_wh')} Wh)"
            )
        case "transaction_stopped":
            return (
                f"transaction    {f.get('transaction')} stopped: {f.get('reason')}, "
                f"{f.get('energy_wh')} Wh"
            )
        case "authorized":
            return f"authorisation  {f.get('id_tag')}: {f.get('status')}"
        case "card":
            return f"reader         card {f.get('id_tag')} read (RDM6300)"
        case "phase":
            return f"session        {f.get('previous')} -> {f.get('phase')}"
        case "cable":
            if f.get("cable_a") is None:
                return "cable          none (PP reads no cable)"
            return f"cable          {f.get('cable_a')} A rating (PP)"
        case "fault":
            state = "raised" if f.get("active") else "cleared"
            return f"fault          {f.get('fault')} {state} {f.get('detail', '')}".rstrip()
        case "reaction":
            return f"reaction       pilot {f.get('cause')} -> relay open in {f.get('ms'):.1f} ms"
        case "ocpp":
            arrow = "->" if f.get("direction") == "cp->cs" else "<-"
            what = f.get("action") or ""
            kind = {2: "", 3: " result", 4: " ERROR"}.get(int(f.get("type") or 0), "")
            payload = json.dumps(f.get("payload"), separators=(",", ":"), default=str)
            if len(payload) > 90:
                payload = payload[:87] + "..."
            return f"ocpp        {arrow} {what}{kind} {payload}"
        case "bench" | "step":
            return f"{event.kind:<14} {f.get('what')}"
        case "summary":
            return (
                f"summary        {f.get('transactions')} transaction(s) "
                f"(CS transactionId {f.get('cs_transaction_ids')}), "
                f"{f.get('ocpp_frames')} OCPP frames, "
                f"{f.get('energy_wh'):.1f} Wh, slowest contactor reaction "
                f"{f.get('max_reaction_ms'):.1f} ms, {f.get('duration_s'):.1f} s"
            )
        case _:
            return f"{event.kind:<14} {json.dumps(f, default=str)}"


# ---------------------------------------------------------------------- relay timing


class ReactionProbe:
    """Times pilot change -> relay de-energised at the relay pin (real time).

    The bench already uses the relay pin's on_change to move the contactor feedback; the
    probe chains after it and puts it back on `close()`.
    """

    def __init__(self, relay_pin: Any, energized: Callable[[], bool]) -> None:
        self._pin = relay_pin
        self._energized = energized
        # Called with the relay's new state after each change (in the driving thread).
        self.listeners: list[Callable[[bool], None]] = []
        self._previous: Callable[[], None] | None = relay_pin.on_change
        self._armed_at: float | None = None
        self.dropped_at: float | None = None
        self.samples_ms: list[float] = []
        relay_pin.on_change = self._on_change

    def arm(self) -> None:
        """Call just before changing the pilot."""
        self.dropped_at = None
        self._armed_at = time.perf_counter()

    def _on_change(self) -> None:
        now = time.perf_counter()
        if self._previous is not None:
            self._previous()
        energized = bool(self._energized())
        if self._armed_at is not None and not energized:
            self.dropped_at = now
            self.samples_ms.append((now - self._armed_at) * 1000.0)
            self._armed_at = None
        for listener in self.listeners:
            listener(energized)

    def close(self) -> None:
        if self._pin.on_change == self._on_change:
            self._pin.on_change = self._previous


# ---------------------------------------------------------------------- the session


@dataclass
class Session:
    stack: Stack
    timeline: Timeline
    probe: ReactionProbe
    tx_ids: list[int] = field(default_factory=list)

    @property
    def bench(self) -> Any:
        return self.stack.bench

    async def step(self, fut: asyncio.Future[Event], what: str) -> Event:
        try:
            return await asyncio.wait_for(fut, STEP_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(
                f"demo step did not happen in {STEP_TIMEOUT_S:g} s: {what}"
            ) from None

    async def note(self, what: str) -> None:
        self.timeline.add("bench", what=what)

    async def contactor_drop(self, cause: str, action: Callable[[], Any]) -> None:
        """Do `action` (a pilot change), wait for the relay to drop, record the time."""
        dropped = self.timeline.expect("contactor", lambda f: f.get("closed") is False)
        self.probe.arm()
        await action()
        await self.step(dropped, f"contactor opens after {cause}")
        ms = self.probe.samples_ms[-1] if self.probe.samples_ms else float("nan")
        self.timeline.add("reaction", cause=cause, ms=round(ms, 3))


async def play(session: Session) -> None:
    """The scripted session; each step waits for the controller's answer, not a fixed time."""
    tl, bench = session.timeline, session.bench
    charger = session.stack.charger
    assert charger is not None

    preparing = tl.expect("status", lambda f: f["status"] == "Preparing")
    await session.note("EV plugged in (32 A cable)")
    await bench.plug(CONNECTOR)
    await session.step(preparing, "Preparing after plug-in")

    charging = tl.expect("status", lambda f: f["status"] == "Charging")
    await session.note(f"card {DEMO_CARD} held to the RDM6300")
    await bench.present_card(DEMO_CARD, "rdm6300")
    await session.step(charging, "Charging after the card")
    await _meter_samples(tl, 3)

    follows = tl.expect("meter", lambda f: (f.get("current_a") or 99.0) <= LIMIT_A + 0.5)
    duty = tl.expect("duty", lambda f: f.get("amps") == LIMIT_A)
    tl.add("step", what=f"smart-charging limit {LIMIT_A:g} A")
    charger.set_smart_charging_limit(CONNECTOR, SmartChargingLimit(LIMIT_A))
    await session.step(duty, "duty follows the limit")
    await session.step(follows, "EV current follows the duty")
    await _meter_samples(tl, 1)

    async def pause() -> None:
        await session.note("EV pauses on its own (S2 open: C -> B)")
        await bench.set_ev(CONNECTOR, paused=True)

    suspended = tl.expect("status", lambda f: f["status"] == "SuspendedEV")
    await session.contactor_drop("C -> B", pause)
    await session.step(suspended, "SuspendedEV after the pause")
    await _meter_samples(tl, 2)

    charging = tl.expect("status", lambda f: f["status"] == "Charging")
    await session.note("EV resumes (S2 closed: B -> C)")
    await bench.set_ev(CONNECTOR, paused=False)
    await session.step(charging, "Charging again after resume")
    await _meter_samples(tl, 3)

    async def unplug() -> None:
        await session.note("EV unplugged while charging (C -> A)")
        await bench.unplug(CONNECTOR)

    stopped = tl.expect("transaction_stopped")
    available = tl.expect("status", lambda f: f["status"] == "Available")
    await session.contactor_drop("C -> A", unplug)
    await session.step(stopped, "transaction stops on unplug")
    await session.step(available, "Available after unplug")
    await _meter_samples(tl, 1)  # the meter's final reading


async def _meter_samples(tl: Timeline, count: int) -> None:
    for _ in range(count):
        await asyncio.wait_for(tl.expect("meter"), STEP_TIMEOUT_S)


def summary(timeline: Timeline, probe: ReactionProbe) -> dict[str, Any]:
    energies = [
        float(e.fields["energy_wh"])
        for e in timeline.of("meter")
        if e.fields.get("energy_wh") is not None
    ]
    cs_ids = [
        e.fields["payload"].get("transactionId")
        for e in timeline.of("ocpp")
        if e.fields.get("action") == "StartTransaction" and e.fields.get("type") == 3
    ]
    billed = [float(e.fields["energy_wh"]) for e in timeline.of("transaction_stopped")]
    return {
        # What the transactions billed (meterStop - meterStart, Wh); the meter's own
        # difference when no transaction ended.
        "energy_wh": sum(billed)
        if billed
        else round(energies[-1] - energies[0], 3)
        if energies
        else 0.0,
        "transactions": len(timeline.of("transaction_started")),
        "cs_transaction_ids": cs_ids,
        "ocpp_frames": len(timeline.of("ocpp")),
        "max_reaction_ms": round(max(probe.samples_ms), 3) if probe.samples_ms else None,
        "reactions_ms": [round(ms, 3) for ms in probe.samples_ms],
        "duration_s": round(timeline.elapsed(), 3),
    }


class FrameTap:
    """Puts the charge point's OCPP frames on the timeline, results named by their CALL."""

    def __init__(self, timeline: Timeline, json_frames: bool) -> None:
        self.timeline = timeline
        self.json_frames = json_frames
        self._actions: dict[str, str] = {}

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event != "frame":
            return
        raw = str(fields.get("raw", ""))
        try:
            frame = json.loads(raw)
            kind, unique_id = int(frame[0]), str(frame[1])
        except (ValueError, TypeError, IndexError, KeyError):
            self.timeline.add("ocpp", direction=fields.get("direction"), raw=raw)
            return
        if kind == 2:
            action, payload = str(frame[2]), frame[3]
            self._actions[unique_id] = action
        else:
            action = self._actions.pop(unique_id, "")
            payload = frame[2] if kind == 3 else {"code": frame[2], "description": frame[3]}
        extra = {"raw": raw} if self.json_frames else {}
        self.timeline.add(
            "ocpp",
            direction=fields.get("direction"),
            type=kind,
            id=unique_id,
            action=action,
            payload=payload,
            **extra,
        )


def meter_event(fields: dict[str, object], sample: MeterSample | None) -> dict[str, object]:
    """A meter note as the timeline shows it: rounded as `evsed status --json` rounds
    (the bench's phases summed to 22080.000000000004 W), None for what was not read."""
    data = dict(fields)
    for key, digits in (("energy_wh", ENERGY_DIGITS), ("power_w", POWER_DIGITS)):
        value = data.get(key)
        data[key] = reading(value, digits) if isinstance(value, int | float) else None
    if sample is not None:
        data["current_a"] = drawn_a(sample)
    return data


def _attach(stack: Stack, timeline: Timeline, session: Session) -> None:
    """Route the controller's own reports onto the timeline."""
    charger = stack.charger
    assert charger is not None
    connector = charger.connector(CONNECTOR)

    def on_note(kind: str, fields: dict[str, object]) -> None:
        data = dict(fields)
        if kind == "meter":
            data = meter_event(data, connector.last_sample)
        elif kind == "transaction_started" and connector.transaction is not None:
            session.tx_ids.append(connector.transaction.local_id)
            data["transaction"] = connector.transaction.local_id
        elif kind == "transaction_stopped" and session.tx_ids:
            data["transaction"] = session.tx_ids[-1]
        timeline.add(kind, **data)

    connector.add_listener(on_note)
    charger.events.tag.append(lambda id_tag: timeline.add("card", id_tag=id_tag))


async def demo(timeline: Timeline, state_dir: Path, json_frames: bool = False) -> dict[str, Any]:
    from evsed.controller.simbench import CentralSystem

    async with CentralSystem(tags={DEMO_CARD: "Accepted"}) as cs:
        config = demo_config(state_dir, cs.url)

        def setup(app: Any) -> None:
            app.ctx.observers.append(FrameTap(timeline, json_frames))
            app.keys.change("MeterValueSampleInterval", str(SAMPLE_INTERVAL_S))

        online = timeline.expect("ocpp", lambda f: f.get("action") == "StatusNotification")
        async with Stack(config, ocpp=True, ocpp_setup=setup, state_dir=state_dir) as stack:
            sim = stack.bench.sim(CONNECTOR)
            probe = ReactionProbe(sim.pins.relay, lambda: bool(sim.pins.relay_energized))
            try:
                session = Session(stack, timeline, probe)
                _attach(stack, timeline, session)
                timeline.add(
                    "step",
                    what=f"bench ready: control port {stack.bench.control_port}, "
                    f"meter port {sim.meter.port if sim.meter else '-'}; "
                    f"Central System {cs.url}",
                )
                await session.step(online, "boot and StatusNotification")
                confirmed = timeline.expect(
                    "ocpp", lambda f: f.get("action") == "StopTransaction" and f.get("type") == 3
                )
                await play(session)
                await session.step(confirmed, "the CS confirms the StopTransaction")
            finally:
                probe.close()
        return summary(timeline, probe)


async def _main(timeline: Timeline, json_frames: bool, output: StopWhenGone) -> dict[str, Any]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    output.stop = lambda: loop.call_soon_threadsafe(task.cancel)  # as Ctrl-C does
    try:
        with tempfile.TemporaryDirectory(prefix="evsed-demo-") as state_dir:
            return await demo(timeline, Path(state_dir), json_frames)
    finally:
        output.stop = lambda: None  # the loop closes after this
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_demo(json_lines: bool = False) -> int:
    """Raises BrokenPipeError once the demo stopped because stdout's reader went away (the
    CLI's entry point answers that for every command)."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    output = StopWhenGone(json_printer() if json_lines else text_printer())
    timeline = Timeline(output)
    try:
        result = asyncio.run(_main(timeline, json_lines, output))
    except (asyncio.CancelledError, KeyboardInterrupt):
        if output.gone:
            raise BrokenPipeError(errno.EPIPE, "stdout closed by its reader") from None
        print("demo interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as exc:
        if output.gone:
            raise BrokenPipeError(errno.EPIPE, "stdout closed by its reader") from None
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    timeline.add("summary", **result)
    if output.gone:
        raise BrokenPipeError(errno.EPIPE, "stdout closed by its reader")
    return 0
