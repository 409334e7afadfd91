"""An MCP3xxx SPI ADC channel read as volts.

Sensors (pilot, proximity, NTC) take anything with `read_volts()` (the VoltageSource
protocol) so they do not care which chip, bus or double sits underneath.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gpiozero import MCP3004, MCP3008, MCP3204, MCP3208

# Chips sharing the single-ended MCP3xxx protocol; value = code * vref / 2**bits (datasheet).
_CHIPS: dict[str, tuple[type[Any], int, int]] = {
    "MCP3004": (MCP3004, 10, 4),
    "MCP3008": (MCP3008, 10, 8),
    "MCP3204": (MCP3204, 12, 4),
    "MCP3208": (MCP3208, 12, 8),
}

# Pi SPI0 pins (BCM): used when a chip select other than CE0/CE1 is wired to a plain GPIO.
SPI0_SCLK, SPI0_MOSI, SPI0_MISO = 11, 10, 9


@runtime_checkable
class VoltageSource(Protocol):
    def read_volts(self) -> float: ...

    def close(self) -> None: ...


class AdcChannel:
    """One single-ended channel of an MCP3004/3008/3204/3208.

    Either `port`/`device` (hardware SPI via spidev, CE0 = device 0) or `select_pin`
    (software SPI on the SPI0 pins with that GPIO as chip select). `vref` is the voltage
    on the chip's VREF pin. Read errors (OSError from spidev, gpiozero errors) propagate:
    each sensor turns them into its own fault value.
    """

    def __init__(
        self,
        chip: str = "MCP3008",
        channel: int = 0,
        *,
        port: int = 0,
        device: int = 0,
        select_pin: int | None = None,
        vref: float = 3.3,
        pin_factory: Any = None,
    ) -> None:
        try:
            cls, bits, channels = _CHIPS[chip.upper()]
        except KeyError:
            raise ValueError(f"unknown ADC chip {chip!r}; known: {', '.join(_CHIPS)}") from None
        if not 0 <= channel < channels:
            raise ValueError(f"{chip} has channels 0..{channels - 1}, got {channel}")
        if vref <= 0:
            raise ValueError(f"vref must be positive, got {vref}")
        spi: dict[str, Any]
        if select_pin is None:
            spi = {"port": port, "device": device}
        else:
            spi = {
                "clock_pin": SPI0_SCLK,
                "mosi_pin": SPI0_MOSI,
                "miso_pin": SPI0_MISO,
                "select_pin": select_pin,
            }
        self.chip = chip.upper()
        self.channel = channel
        self.bits = bits
        self.vref = float(vref)
        self._lsb_v = self.vref / (1 << bits)
        self._dev = cls(channel=channel, max_voltage=vref, pin_factory=pin_factory, **spi)

    def read_volts(self) -> float:
        return self._dev.raw_value * self._lsb_v

    def close(self) -> None:
        # The shared SPI interface and its bus, taken before close() lets go of them.
        interface = getattr(self._dev, "_spi", None)
        shared = [interface, getattr(interface, "_bus", None)]
        self._dev.close()
        for obj in shared:
            _disarm_if_closed(obj)


def _closed(*_: object) -> None:
    """close() of a shared SPI interface or bus that is closed for good."""


def _disarm_if_closed(obj: Any) -> None:
    """Keep a closed shared gpiozero SPI interface/bus from closing a newer one later.

    gpiozero's SharedMixin (devices.py, GPIOMeta.__call__) caches these per key in a
    class-wide dict, without the pin factory, and replaces the instance's `close` with a
    closure over the instance: a reference cycle, so only the cyclic GC frees it, at any
    later allocation. Its __del__ then calls that close again, and the closure's
    `finally` deletes the cache entry for its key, whichever instance holds it by then:
    after a Reset, the rebuild's open interface/bus. The rebuild's next channel then
    opens a second bus on the same clock pin: GPIOPinInUse (SPI0 SCLK, GPIO11). Once the
    instance is really closed (its last channel is gone), its close must do nothing;
    replacing it also breaks the cycle, so the instance goes at once.
    """
    if obj is None or not getattr(obj, "closed", False) or "close" not in vars(obj):
        return
    obj.close = _closed


__all__ = ["AdcChannel", "VoltageSource"]
