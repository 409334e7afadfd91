"""Pin-level doubles for the simulated bench, built on gpiozero's MockFactory.

Everything here sits *under* the real drivers (hal.*): the drivers talk to gpiozero
devices, gpiozero talks to these mock pins, and the pins behave like the wiring of a
charger: relay feedback follows the relay, the RCD test output trips the RCD input, the
ADC answers MCP3008/MCP3208 SPI frames with the voltage of whatever is on each channel.

Order matters: call `install_mock_factory()`, build `BenchPins` (it creates the special
pins), then create the drivers. gpiozero only checks on reuse that a pin is (or is not)
PWM-capable, so every pin class here derives from MockPWMPin to share one factory with
the pilot's PWM pin.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, MockSPIDevice

from evsed.hal.pilot.sense import DEFAULT_GAIN, DEFAULT_OFFSET, cp_to_adc_volts
from evsed.hal.proximity import pp_volts
from evsed.hal.temperature import ntc_volts

Volts = float | Callable[[], float]

PWM_FREQUENCY_HZ = 1000.0
SPI0_SCLK, SPI0_MOSI, SPI0_MISO = 11, 10, 9


def install_mock_factory() -> MockFactory:
    """A fresh MockFactory of PWM-capable pins, installed as Device.pin_factory.

    It must be the global default, not only passed as pin_factory=: gpiozero 2.0.1's
    software SPI bus ignores the pin_factory argument and uses Device.pin_factory.
    """
    factory = MockFactory(pin_class=BoundedPin)
    Device.pin_factory = factory
    return factory


def uninstall_mock_factory(factory: MockFactory) -> None:
    """Forget all pins and reservations and remove the global factory."""
    factory.reset()
    if Device.pin_factory is factory:
        Device.pin_factory = None
    # gpiozero shares SPI buses through a weak-valued cache keyed by pin numbers; a bus of
    # this factory that only a reference cycle keeps alive would otherwise be found (or
    # vanish mid-lookup) when the next bench builds its ADC on the same pins.
    gc.collect()


def _factory(pin_factory: MockFactory | None) -> MockFactory:
    f = pin_factory if pin_factory is not None else Device.pin_factory
    if not isinstance(f, MockFactory):
        raise RuntimeError("no MockFactory installed: call install_mock_factory() first")
    return f


# -- pin classes ------------------------------------------------------------------------


class BoundedPin(MockPWMPin):
    """A MockPWMPin that keeps only its last few states.

    gpiozero's mock pins append every change to `states` for test assertions and never
    drop any; the bench's software SPI toggles its clock ~24,000 times a second while
    charging, so an unbounded history grows by megabytes a minute and its garbage
    collections stall the event loop for tens of milliseconds.
    """

    HISTORY = 16

    def clear_states(self) -> None:
        super().clear_states()
        self.states = deque(self.states, maxlen=self.HISTORY)


class LogicPin(BoundedPin):
    """A PWM-capable mock pin that stores plain bools when used as a digital output.

    MockPWMPin stores 1.0/0.0 even for on/off outputs; the SPI double needs bits.
    """

    def _set_state(self, value: Any) -> None:
        if self._frequency is None:
            MockPin._set_state(self, value)
        else:
            MockPWMPin._set_state(self, value)


class WatchedPin(LogicPin):
    """Calls `on_change()` after every state change (runs in the thread that drove it)."""

    on_change: Callable[[], None] | None = None

    def _change_state(self, value: Any) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self.on_change is not None:
            self.on_change()
        return changed


class _SpiClockPin(LogicPin):
    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.spi_devices: list[MockSPIDevice] = []

    def _set_state(self, value: Any) -> None:
        super()._set_state(value)
        for dev in self.spi_devices:
            dev.on_clock()


class _SpiSelectPin(LogicPin):
    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.spi_device: MockSPIDevice | None = None

    def _set_state(self, value: Any) -> None:
        super()._set_state(value)
        if self.spi_device is not None:
            self.spi_device.on_select()


def _drive(pin: MockPin, level: bool) -> None:
    """Drive an input pin; an output (a driver wired wrongly) is left alone."""
    if pin.function != "input":
        return
    if level:
        pin.drive_high()
    else:
        pin.drive_low()


# -- ADC ------------------------------------------------------------------------------


class SimMcp3xxx(MockSPIDevice):
    """MCP3008 (bits=10) / MCP3208 (bits=12) on the SPI0 pins with chip select `select_pin`.

    Each of the 8 channels is a constant in volts or a zero-argument callable evaluated at
    the instant of the conversion (so a waveform can be sampled like a real ADC does).
    Values are clamped to 0..vref and quantised as code = floor(v / vref * 2**bits).
    Create it before the evsed.hal.adc.AdcChannel that reads it. `reads` counts conversions.
    """

    def __init__(
        self,
        bits: int = 10,
        vref: float = 3.3,
        select_pin: int = 8,
        pin_factory: MockFactory | None = None,
    ) -> None:
        if bits not in (10, 12):
            raise ValueError("bits must be 10 (MCP3008) or 12 (MCP3208)")
        f = _factory(pin_factory)
        clock = f.pin(SPI0_SCLK, pin_class=_SpiClockPin)
        select = f.pin(select_pin, pin_class=_SpiSelectPin)
        if not isinstance(clock, _SpiClockPin) or not isinstance(select, _SpiSelectPin):
            raise RuntimeError("SPI pins already exist as plain pins: create SimMcp3xxx first")
        # Same attributes as MockSPIDevice.__init__, which hard-codes non-PWM pin classes.
        self.clock_pin = clock
        self.mosi_pin = f.pin(SPI0_MOSI, pin_class=LogicPin)
        self.miso_pin = f.pin(SPI0_MISO, pin_class=LogicPin)
        self.select_pin = select
        self.clock_polarity = False
        self.clock_phase = False
        self.lsb_first = False
        self.bits_per_word = 8
        self.select_high = False
        self.rx_bit = 0
        self.rx_buf: list[Any] = []
        self.tx_buf: list[int] = []
        clock.spi_devices.append(self)
        select.spi_device = self
        self.bits = bits
        self.vref = vref
        self.channels: list[Volts] = [0.0] * 8
        self.reads = 0
        self.state = "idle"
        #: A dead chip (unpowered, or its MISO held low): every conversion reads code 0.
        self.dead = False

    def set_dead(self, dead: bool) -> None:
        self.dead = dead

    def set_channel(self, channel: int, volts: Volts) -> None:
        self.channels[channel] = volts

    def volts(self, channel: int) -> float:
        v = self.channels[channel]
        return float(v() if callable(v) else v)

    def code(self, channel: int) -> int:
        if self.dead:
            return 0
        v = min(max(self.volts(channel), 0.0), self.vref)
        top = (1 << self.bits) - 1
        return min(int(v / self.vref * (1 << self.bits)), top)

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        # Frame: leading zeros, start bit 1, single/diff bit, 3 channel bits, then the
        # chip clocks out a null bit and the result MSB first (bits + 2 including slack).
        if self.state == "idle":
            if self.rx_buf[-1]:
                self.state, self.rx_buf = "mode", []
        elif self.state == "mode":
            self.state, self.rx_buf = "chan", []
        elif self.state == "chan" and len(self.rx_buf) == 3:
            self.reads += 1
            self.tx_word(self.code(self.rx_word()), self.bits + 2)
            self.state = "result"
        elif self.state == "result" and not self.tx_buf:
            self.state, self.rx_buf = "idle", []


def pwm_waveform_volts(
    high_v: float,
    low_v: float,
    duty: float,
    t: float | None = None,
    frequency: float = PWM_FREQUENCY_HZ,
) -> float:
    """The pilot square wave at time `t` (default time.perf_counter()): `high_v` during the
    first `duty` of each period, `low_v` for the rest. Bursts of reads thus see both
    plateaus, and a short high plateau can be missed, as with a real ADC."""
    if duty >= 1.0:
        return high_v
    if duty <= 0.0:
        return low_v
    now = time.perf_counter() if t is None else t
    phase = (now * frequency) % 1.0
    return high_v if phase < duty else low_v


# -- one connector's wiring -------------------------------------------------------------


class BenchPins:
    """The pins of one simulated connector, wired like the real charger.

    Build it after install_mock_factory() and before the drivers, with the pin numbers
    (BCM) the drivers will use. Wiring:
    - pilot: a PWM pin; the CP voltage is computed from its duty (see set_cp).
    - relay -> relay_feedback: feedback follows the relay unless weld()/fail_to_close().
    - rcd_test -> rcd_fault: test output high trips the input, unless the test path is
      broken; rcd_trip() trips it regardless.
    - lock / unlock -> lock_feedback: a lock pulse sets the feedback, an unlock pulse
      clears it (with unlock_pin=None the feedback follows the hold output); lock_jam()
      freezes it.
    - ADC (SimMcp3xxx on SPI0, chip select adc_select_pin): channel cp_channel = CP through
      the pilot front-end (gain/offset as evsed.hal.pilot.sense), pp_channel = PP divider,
      temp_channel = NTC divider (parameters as evsed.hal.temperature.AdcNtcTemperature); a
      channel given as None is not wired. Pass `adc=` another connector's chip to share it
      (as connectors of one charger share the one ADC): adc_select_pin/adc_bits are then
      unused, the channels must differ from the other connector's, and only the connector
      that created the chip closes it.
    All injection methods take effect immediately (callbacks of the drivers' input
    devices run synchronously in the caller's thread).
    """

    def __init__(
        self,
        factory: MockFactory | None = None,
        *,
        pilot_pin: int = 18,
        relay_pin: int = 17,
        relay_feedback_pin: int | None = 27,
        phase_switch_pin: int | None = None,
        rcd_fault_pin: int | None = 22,
        rcd_test_pin: int | None = 23,
        lock_pin: int | None = 24,
        unlock_pin: int | None = 25,
        lock_feedback_pin: int | None = 5,
        adc_select_pin: int = 8,
        adc_bits: int = 10,
        vref: float = 3.3,
        cp_channel: int = 0,
        pp_channel: int | None = 1,
        temp_channel: int | None = 2,
        cp_gain: float = DEFAULT_GAIN,
        cp_offset: float = DEFAULT_OFFSET,
        pp_pull_up_ohms: float = 1000.0,
        pp_supply_v: float = 3.3,
        ntc_beta: float = 3950.0,
        ntc_r25: float = 10_000.0,
        ntc_series_r: float = 10_000.0,
        ntc_vref: float = 3.3,
        adc: SimMcp3xxx | None = None,
    ) -> None:
        f = self.factory = _factory(factory)
        self._owns_adc = adc is None
        if adc is None:
            adc = SimMcp3xxx(bits=adc_bits, vref=vref, select_pin=adc_select_pin, pin_factory=f)
        self.adc = adc
        self.pilot = f.pin(pilot_pin)
        self.relay = self._watched(relay_pin, self._sync_relay)
        self.relay_feedback = None if relay_feedback_pin is None else f.pin(relay_feedback_pin)
        self.phase_relay = None if phase_switch_pin is None else f.pin(phase_switch_pin)
        self.rcd_fault = None if rcd_fault_pin is None else f.pin(rcd_fault_pin)
        self.rcd_test = (
            None if rcd_test_pin is None else self._watched(rcd_test_pin, self._sync_rcd)
        )
        self.lock_out = None if lock_pin is None else self._watched(lock_pin, self._on_lock_out)
        self.unlock_out = (
            None if unlock_pin is None else self._watched(unlock_pin, self._on_unlock_out)
        )
        self.lock_feedback = None if lock_feedback_pin is None else f.pin(lock_feedback_pin)
        self._cp_channel, self._pp_channel, self._temp_channel = (
            cp_channel,
            pp_channel,
            temp_channel,
        )
        self._cp_gain, self._cp_offset, self._vref = cp_gain, cp_offset, vref
        self._pp = (pp_pull_up_ohms, pp_supply_v)
        self._ntc = (ntc_beta, ntc_r25, ntc_series_r, ntc_vref)
        self._relay_override: bool | None = None
        self._rcd_tripped = False
        self._rcd_test_broken = False
        self._locked = False
        self._lock_jammed = False
        #: A motor lock whose position switch changes only when its pulse ends (the motor
        #: takes the whole pulse to travel), not when the pulse starts: a real lock's
        #: timing, for tests of what evsed reads back (off by default: instant).
        self.lock_moves_at_pulse_end = False
        self._travelling: bool | None = None  # the position a running pulse drives to
        self._cp_high: Callable[[], float] = lambda: 12.0
        self._diode = True
        self._negative_supply = True
        self.adc.set_channel(cp_channel, self._cp_adc_volts)
        self.set_pp_ohms(None)
        self.set_temperature(25.0)
        self.sync()

    def _watched(self, pin: int, on_change: Callable[[], None]) -> WatchedPin:
        p = self.factory.pin(pin, pin_class=WatchedPin)
        if not isinstance(p, WatchedPin):
            raise RuntimeError(f"GPIO{pin} already exists: build BenchPins before the drivers")
        p.on_change = on_change
        return p

    # -- wiring logic ---------------------------------------------------------------------

    def sync(self) -> None:
        """Re-drive every input from the model. Call it after creating a driver that sets
        a pull resistor on an input (that resets the pin to the pull level)."""
        self._sync_relay()
        self._sync_rcd()
        self._sync_lock()

    @staticmethod
    def _out(pin: MockPin | None) -> bool:
        return pin is not None and pin.function == "output" and bool(pin.state)

    def _sync_relay(self) -> None:
        if self.relay_feedback is None:
            return
        closed = self._relay_override
        if closed is None:
            closed = self._out(self.relay)
        _drive(self.relay_feedback, closed)

    def _sync_rcd(self) -> None:
        if self.rcd_fault is None:
            return
        test = self._out(self.rcd_test) and not self._rcd_test_broken
        _drive(self.rcd_fault, self._rcd_tripped or test)

    def _on_lock_out(self) -> None:
        high = self._out(self.lock_out)
        if self.unlock_out is not None and self.lock_moves_at_pulse_end:
            self._pulse_edge(high, True)
        elif not self._lock_jammed and (high or self.unlock_out is None):
            self._locked = high
        self._sync_lock()

    def _on_unlock_out(self) -> None:
        high = self._out(self.unlock_out)
        if self.lock_moves_at_pulse_end:
            self._pulse_edge(high, False)
        elif not self._lock_jammed and high:
            self._locked = False
        self._sync_lock()

    def _pulse_edge(self, high: bool, to_locked: bool) -> None:
        if high:
            self._travelling = to_locked
        elif self._travelling is to_locked:
            self._travelling = None
            if not self._lock_jammed:
                self._locked = to_locked

    def _sync_lock(self) -> None:
        if self.lock_feedback is not None:
            _drive(self.lock_feedback, self._locked)

    # -- fault injection and scene setting ------------------------------------------------

    def weld(self, on: bool) -> None:
        """Contactor welded: feedback reads closed whatever the relay does (off: heal)."""
        self._relay_override = True if on else None
        self._sync_relay()

    def fail_to_close(self, on: bool) -> None:
        """Contactor never closes: feedback reads open whatever the relay does."""
        self._relay_override = False if on else None
        self._sync_relay()

    def rcd_trip(self, on: bool) -> None:
        """Residual current present (True) or gone (False): drives the RCD fault input."""
        self._rcd_tripped = on
        self._sync_rcd()

    def set_rcd_test_broken(self, broken: bool) -> None:
        """Break the RCD test path: the test output no longer trips the input."""
        self._rcd_test_broken = broken
        self._sync_rcd()

    def lock_jam(self, on: bool) -> None:
        """Lock motor jammed: pulses no longer move the feedback."""
        self._lock_jammed = on

    def set_temperature(self, celsius: float) -> None:
        """NTC channel voltage for `celsius` (parameters as given to the constructor)."""
        # No NTC wired: nothing to drive, and the channel may be another connector's.
        if self._temp_channel is not None:
            self.adc.set_channel(self._temp_channel, ntc_volts(celsius, *self._ntc))

    def set_pp_ohms(self, ohms: float | None) -> None:
        """PP resistor in the plug (None = no cable / open; 0 = short)."""
        if self._pp_channel is not None:
            self.adc.set_channel(self._pp_channel, pp_volts(ohms, *self._pp))

    def lose_negative_supply(self, lost: bool) -> None:
        """The pilot driver's -12 V rail is gone: the low half of the PWM reads 0 V."""
        self._negative_supply = not lost

    def set_cp(self, high_v_fn: Callable[[], float] | float, diode: bool = True) -> None:
        """What the EV does to CP. `high_v_fn()` returns the high plateau the EV's load
        makes right now (12 none, 9 B, 6 C, 3 D, 0 short); it is called at each ADC
        conversion, so an EV model can change state between reads. `diode=False` models a
        missing/shorted diode: the low plateau becomes -(high) instead of -12 V. A high
        level within 0.5 V of 0 is a CP-PE short: both plateaus read 0 V."""
        self._cp_high = high_v_fn if callable(high_v_fn) else (lambda v=float(high_v_fn): v)
        self._diode = diode

    # -- read-back ------------------------------------------------------------------------

    @property
    def pilot_duty(self) -> float | None:
        """Duty the pilot pin drives (0..1), or None when no driver holds it."""
        if self.pilot.function != "output":
            return None
        return float(self.pilot.state)

    @property
    def relay_energized(self) -> bool:
        return self._out(self.relay)

    @property
    def phases_switched_to_one(self) -> bool:
        """The 1/3-phase relay is energised: L2 and L3 are off the connector."""
        return self._out(self.phase_relay)

    @property
    def contactor_closed(self) -> bool:
        """What the feedback contact reports (the relay itself when none is wired)."""
        if self.relay_feedback is None:
            return self.relay_energized
        return bool(self.relay_feedback.state)

    @property
    def locked(self) -> bool:
        return self._locked

    def cp_volts(self, t: float | None = None) -> float:
        """Instantaneous CP voltage: a released pilot (no driver) reads 0 V."""
        duty = self.pilot_duty
        if duty is None:
            return 0.0
        high = float(self._cp_high())
        if abs(high) < 0.5:
            return 0.0
        low = -12.0 if self._diode else -abs(high)
        if not self._negative_supply:
            low = 0.0
        return pwm_waveform_volts(high, low, duty, t)

    def _cp_adc_volts(self) -> float:
        v = cp_to_adc_volts(self.cp_volts(), self._cp_gain, self._cp_offset)
        return min(max(v, 0.0), self._vref)

    def close(self) -> None:
        if self._owns_adc:
            self.adc.close()
        for pin in (self.relay, self.rcd_test, self.lock_out, self.unlock_out):
            if pin is not None:
                pin.on_change = None


__all__ = [
    "BenchPins",
    "LogicPin",
    "SimMcp3xxx",
    "WatchedPin",
    "install_mock_factory",
    "pwm_waveform_volts",
    "uninstall_mock_factory",
]
