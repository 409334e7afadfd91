"""Simulated RFID readers on pseudo-terminals: an RDM6300 and a PN532 in HSU mode.

Each simulator owns an `os.openpty()` pair in raw mode and plays the chip on the master end;
the driver opens `.port` with pyserial like a real tty.

Unplug / replug: a real USB-serial reader comes back at the same path (a udev
/dev/serial/by-id/... symlink), but a pty cannot be re-created at the same /dev/pts/N. So
`.port` is such a symlink, in a private temporary directory, to the current slave tty (`.tty`).
`unplug()` closes the pty and removes the symlink (the driver's read fails, its reopen finds no
file); `replug()` makes a new pty and points the symlink at it, so the driver recovers by
reopening the same path exactly as it would on the real device. Replugging a PN532 also
power-cycles it: it sleeps again and forgets its RF configuration.

Both simulators are thread-safe; `close()` stops their threads and removes the pty and symlink.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import tempfile
import threading
import time
import tty
from types import TracebackType
from typing import Self

from evsed.hal.rfid.pn532 import ACK_FRAME, ERROR_FRAME, TFI_PN532, Pn532FrameParser, build_frame
from evsed.hal.rfid.rdm6300 import build_rdm6300_frame

# What a UART at the wrong baud rate makes of a frame: bytes with no frame in them.
_GARBAGE = bytes.fromhex("FE7F009AE61CFF8033C50DF06681")


DIR_PREFIX = "evsed-rfid-"


def remove_stale_dirs(tmp: str | None = None) -> list[str]:
    """Remove the symlink directories of benches whose process is gone: a bench killed
    (kill -9, a watchdog, a test killing evsed) never ran close(), and each left one
    behind in /tmp. Only ours, only those whose pid no longer runs. What it removed."""
    tmp = tmp or tempfile.gettempdir()
    removed: list[str] = []
    with contextlib.suppress(OSError), os.scandir(tmp) as entries:
        for entry in entries:
            pid_text = entry.name.removeprefix(DIR_PREFIX).partition("-")[0]
            if not entry.name.startswith(DIR_PREFIX) or not pid_text.isdigit():
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
            except OSError:
                continue  # alive (another user's: PermissionError) or gone meanwhile
    return removed


class _SimPty:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        remove_stale_dirs()
        self._dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
        self.port = os.path.join(self._dir, "ttyRFID")
        self.tty = ""
        self._master = -1
        self._slave = -1
        self.plugged = False
        self._closed = False
        self._plug()

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        # Non-blocking so a full tty buffer (nobody reading) drops bytes instead of hanging us.
        os.set_blocking(master, False)
        # The sim keeps the slave open: without any slave fd the master reads EIO in a loop.
        self._master, self._slave = master, slave
        self.tty = os.ttyname(slave)
        tmp = self.port + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self.tty, tmp)
        os.replace(tmp, self.port)
        self.plugged = True

    def _unplug(self) -> None:
        self.plugged = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _write(self, data: bytes) -> None:
        if not self.plugged:
            return
        with contextlib.suppress(OSError):  # buffer full or closing: the bytes are lost
            os.write(self._master, data)

    def send_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (garbage, corrupted frames)."""
        with self._lock:
            self._write(data)

    def _remove_dir(self) -> None:
        with self._lock:
            self._unplug()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()  # type: ignore[attr-defined]


class SimRdm6300(_SimPty):
    """An RDM6300: while a card is present it sends its 14-byte frame every `period_s`."""

    def __init__(self, period_s: float = 0.065) -> None:
        super().__init__()
        self.period_s = period_s
        self.frames_sent = 0
        self._cond = threading.Condition(self._lock)
        self._card: bytes | None = None
        self._until: float | None = None
        self.garbage = False
        self._thread = threading.Thread(target=self._run, name="sim-rdm6300", daemon=True)
        self._thread.start()

    def present(self, uid_hex: str, hold_s: float | None = None) -> None:
        """Card in the field: `uid_hex` is the 10 hex chars (version byte + 32-bit id)."""
        data = bytes.fromhex(uid_hex)
        if len(data) != 5:
            raise ValueError("an EM4100 card carries 5 bytes (10 hex chars)")
        with self._cond:
            self._card = data
            self._until = None if hold_s is None else time.monotonic() + hold_s
            self._cond.notify_all()

    def remove(self) -> None:
        """Card out of the field. Once this returns no further frame of it is written."""
        with self._cond:
            self._card = None
            self._until = None
            self._cond.notify_all()

    def set_garbage(self, on: bool) -> None:
        """A garbled line (wrong baud rate, noisy RX wire): a frame's worth of bytes that is
        never a frame every `period_s`, card or no card."""
        with self._cond:
            self.garbage = on
            self._cond.notify_all()

    def wait_frames(self, count: int, timeout: float) -> bool:
        """Block until `count` frames in total have been sent (for tests: a held card)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.frames_sent >= count, timeout)

    def unplug(self) -> None:
        with self._cond:
            self._unplug()
            self._cond.notify_all()

    def replug(self) -> None:
        with self._cond:
            if not self.plugged:
                self._plug()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2)
        self._remove_dir()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._until is not None and now >= self._until:
                    self._card, self._until = None, None
                if self._card is None and not self.garbage:
                    self._cond.wait()
                    continue
                if self.plugged and self.garbage:
                    self._write(_GARBAGE)
                    self.frames_sent += 1
                    self._cond.notify_all()
                elif self.plugged and self._card is not None:
                    self._write(build_rdm6300_frame(self._card))
                    self.frames_sent += 1
                    self._cond.notify_all()
                wait = self.period_s
                if self._until is not None:
                    wait = min(wait, max(0.0, self._until - now))
                self._cond.wait(wait)


class SimPn532(_SimPty):
    """A PN532 in HSU mode with one ISO 14443-A card that can be put on and taken off.

    Like the chip after power-on: it ignores frames until it has seen the 0x55 wake-up bytes;
    it ACKs each valid command, then answers GetFirmwareVersion (IC 0x32, v1.6),
    SAMConfiguration, RFConfiguration and InListPassiveTarget; anything else gets the error
    frame. InListPassiveTarget with no card: with MaxRetries passive activation 0xFF (the
    power-on default) the chip keeps searching and answers only when a card arrives (a host
    ACK aborts the search); with any other value it answers NbTg=0. `set_silent(True)` makes
    it stop answering altogether, with the port still there; `set_garbage(True)` makes it
    answer every command with bytes that are no frame.
    """

    FIRMWARE = bytes([0x32, 0x01, 0x06, 0x07])

    def __init__(self, require_wakeup: bool = True) -> None:
        self.require_wakeup = require_wakeup
        self.commands: list[bytes] = []  # every command received, code + params
        self.silent = False
        self.garbage = False
        self._uid: bytes | None = None
        self._until: float | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        super().__init__()
        self._cond = threading.Condition(self._lock)
        self._reset_chip()
        self._start_thread()

    # -- control ---------------------------------------------------------------------------

    def present(self, uid_hex: str, hold_s: float | None = None) -> None:
        uid = bytes.fromhex(uid_hex)
        if not 1 <= len(uid) <= 10:
            raise ValueError("a UID is 1..10 bytes")
        with self._lock:
            self._uid = uid
            self._until = None if hold_s is None else time.monotonic() + hold_s
            if self._pending_poll:
                self._pending_poll = False
                self._answer(self._poll_answer())

    def remove(self) -> None:
        with self._lock:
            self._uid = None
            self._until = None

    def set_silent(self, silent: bool) -> None:
        with self._lock:
            self.silent = silent

    def set_garbage(self, on: bool) -> None:
        """Answer every command with bytes that are no frame (a garbled line)."""
        with self._lock:
            self.garbage = on

    def command_codes(self) -> list[int]:
        with self._lock:
            return [c[0] for c in self.commands]

    def wait_commands(self, count: int, timeout: float) -> bool:
        """Block until `count` commands in total have been received (for tests: polls)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.commands) >= count, timeout)

    def unplug(self) -> None:
        self._stop_thread()
        with self._lock:
            self._unplug()

    def replug(self) -> None:
        with self._lock:
            if self.plugged or self._closed:
                return
            self._plug()
            self._reset_chip()
        self._start_thread()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_thread()
        self._remove_dir()

    # -- chip ------------------------------------------------------------------------------

    def _reset_chip(self) -> None:
        self.awake = not self.require_wakeup
        self.max_passive_retries = 0xFF
        self.sam_configured = False
        self._pending_poll = False
        self._last_answer = b""
        self._parser = Pn532FrameParser()

    def _start_thread(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="sim-pn532", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        master, wake = self._master, self._wake_r
        while True:
            ready, _, _ = select.select([master, wake], [], [], 0.02)
            if wake in ready:
                return
            with self._lock:
                if self._until is not None and time.monotonic() >= self._until:
                    self._uid, self._until = None, None
                if master not in ready:
                    continue
                try:
                    data = os.read(master, 4096)
                except OSError:
                    continue
                self._receive(data)

    def _receive(self, data: bytes) -> None:
        if not self.awake:
            idx = data.find(0x55)
            if idx < 0:
                return
            self.awake = True
            data = data[idx:]
        for frame in self._parser.feed(data):
            if self.silent:
                continue
            if self.garbage:
                self._write(_GARBAGE)
                continue
            if frame.kind == "ack":
                self._pending_poll = False  # the host aborts the running command
            elif frame.kind == "nack":
                self._write(self._last_answer)
            elif frame.kind == "data" and frame.tfi == 0xD4 and frame.data:
                self._write(ACK_FRAME)
                self._command(frame.data)
                self.commands.append(frame.data)
                self._cond.notify_all()

    def _command(self, cmd: bytes) -> None:
        code = cmd[0]
        if code == 0x02:
            self._answer(bytes([0x03]) + self.FIRMWARE)
        elif code == 0x14:
            self.sam_configured = True
            self._answer(bytes([0x15]))
        elif code == 0x32:
            if len(cmd) >= 5 and cmd[1] == 0x05:
                self.max_passive_retries = cmd[4]
            self._answer(bytes([0x33]))
        elif code == 0x4A and len(cmd) >= 3:
            if self._uid is None and self.max_passive_retries == 0xFF:
                self._pending_poll = True
            else:
                self._answer(self._poll_answer())
        else:
            self._last_answer = ERROR_FRAME
            self._write(ERROR_FRAME)

    def _poll_answer(self) -> bytes:
        if self._uid is None:
            return bytes([0x4B, 0x00])
        sens_res = b"\x00\x44" if len(self._uid) > 4 else b"\x00\x04"
        sel_res = 0x00 if len(self._uid) > 4 else 0x08
        return bytes([0x4B, 0x01, 0x01]) + sens_res + bytes([sel_res, len(self._uid)]) + self._uid

    def _answer(self, data: bytes) -> None:
        self._last_answer = build_frame(data, tfi=TFI_PN532)
        self._write(self._last_answer)
