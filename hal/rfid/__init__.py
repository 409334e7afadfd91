"""RFID card readers on a serial port (RDM6300, PN532 over HSU).

Drivers: `evsed.hal.rfid.rdm6300.Rdm6300Reader`, `evsed.hal.rfid.pn532.Pn532Reader`; id
normalisation and debounce: `evsed.hal.rfid.idtag`. This module holds what both drivers share:
the reader thread that opens the port, survives the reader being unplugged and hands events to
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import serial

from evsed.hal.interfaces import EventSink, TagReader
from evsed.hal.rfid.idtag import PresenceDebouncer
from evsed.hal.types import DeviceFault, TagPresented

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]


class ReaderError(Exception):
    """The reader answered wrongly or not at all: treated like a lost port (fault, reopen)."""


class SerialTagReader:
    """Base of the serial RFID drivers: one daemon thread per reader.

    The thread opens the port, lets the subclass initialise the chip (`_on_open`), then calls
    `_step` until shutdown. Any serial error, `ReaderError` or unexpected exception closes the
    port, raises DeviceFault("reader", active=True) once, and the thread reopens the port with
    a back-off from `retry_min_s` doubling to `retry_max_s`; success after a fault sends
    active=False. A real USB reader comes back at the same path (/dev/serial/by-id/...), so
    reopening the same path is the whole recovery. A driver may also report a fault with the
    port kept open (`_fault`, e.g. a line that carries only garbage) and clear it itself
    (`_recovered`).
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        *,
        name: str,
        removal_timeout_s: float,
        read_timeout_s: float = 0.05,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self._read_timeout_s = read_timeout_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._monotonic = monotonic
        self._debounce = PresenceDebouncer(removal_timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: EventSink | None = None
        self._faulted = False

    # -- TagReader -------------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"reader {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rfid-{self.name}", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Reads time out every read_timeout_s, so the thread sees the flag quickly.
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.error("reader %s: thread did not stop", self.name)
            self._thread = None

    # -- subclass hooks --------------------------------------------------------------------

    def _on_open(self, ser: serial.SerialBase) -> None:
        """Bring the chip into reading state; raise ReaderError when it does not answer."""

    def _step(self, ser: serial.SerialBase) -> None:
        """One read or poll; report ids through `_tag_read`. Must return within ~0.5 s."""
        raise NotImplementedError

    def _on_close(self) -> None:
        """Drop protocol state (parser buffers) when the port goes away."""

    # -- helpers for subclasses ------------------------------------------------------------

    def _tag_read(self, id_tag: str) -> None:
        if self._debounce.seen(id_tag, self._monotonic()):
            # DEBUG: a card number is a credential (the charger logs it masked at INFO).
            log.debug("reader %s: card %s", self.name, id_tag)
            self._emit(TagPresented(id_tag=id_tag, reader=self.name))

    def _tick(self) -> None:
        removed = self._debounce.expire(self._monotonic())
        if removed is not None:
            log.debug("reader %s: card %s removed", self.name, removed)

    # -- thread ----------------------------------------------------------------------------

    def _emit(self, event: object) -> None:
        loop, sink = self._loop, self._sink
        if loop is None or sink is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is listening
            loop.call_soon_threadsafe(sink, event)

    def _fault(self, detail: str) -> None:
        if not self._faulted:
            self._faulted = True
            log.warning("reader %s: %s", self.name, detail)
            self._emit(DeviceFault("reader", active=True, detail=f"{self.name}: {detail}"))

    def _recovered(self, how: str) -> None:
        if self._faulted:
            self._faulted = False
            log.info("reader %s: %s", self.name, how)
            self._emit(DeviceFault("reader", active=False, detail=f"{self.name}: ok"))

    def _run(self) -> None:
        delay = self._retry_min_s
        while not self._stop.is_set():
            ser: serial.SerialBase | None = None
            try:
                ser = serial.serial_for_url(
                    self.port, baudrate=self.baudrate, timeout=self._read_timeout_s
                )
                self._on_open(ser)
                self._recovered(f"back on {self.port}")
                delay = self._retry_min_s
                while not self._stop.is_set():
                    self._step(ser)
                    self._tick()
            except (serial.SerialException, OSError, ReaderError) as exc:
                self._fault(str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug must not kill the thread: report and retry
                log.exception("reader %s: unexpected error", self.name)
                self._fault(f"internal error: {exc!r}")
            finally:
                if ser is not None:
                    with contextlib.suppress(Exception):
                        ser.close()
                self._debounce.reset()
                self._on_close()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._retry_max_s)


def make_reader(model: str, port: str, baudrate: int | None = None, **options: object) -> TagReader:
    """The driver for a configured `[reader]` ("rdm6300" or "pn532"); baudrate None = chip default.

    `options` go to the driver's constructor (e.g. id_format="decimal10" for an RDM6300).
    """
    # Imported here: the driver modules import this package for the base class.
    from evsed.hal.rfid.pn532 import Pn532Reader
    from evsed.hal.rfid.rdm6300 import Rdm6300Reader

    drivers: dict[str, type[SerialTagReader]] = {"rdm6300": Rdm6300Reader, "pn532": Pn532Reader}
    if model not in drivers:
        raise ValueError(f"unknown reader model {model!r}; expected one of {', '.join(drivers)}")
    cls = drivers[model]
    if baudrate is not None:
        options["baudrate"] = baudrate
    return cls(port, **options)  # type: ignore[arg-type]
