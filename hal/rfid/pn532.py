"""NXP PN532 over HSU (UART, 115200 8N1), polling for ISO 14443-A cards.

Framing (REFERENCE.md §4.2): 00 | 00 FF | LEN | LCS | TFI | data | DCS | 00, with
(LEN + LCS) & 0xFF == 0 and (TFI + sum(data) + DCS) & 0xFF == 0; extended frames carry
FF FF then a 16-bit length. The chip ACKs every command (00 00 FF 00 FF 00) before it answers,
and answers with code + 1 and TFI 0xD5; TFI 0x7F is its error frame.

Start-up: wake-up bytes + SAMConfiguration (normal mode), GetFirmwareVersion (IC must be 0x32),
RFConfiguration MaxRetries with a small passive-activation retry count, so that
InListPassiveTarget answers NbTg=0 at once when no card is there instead of waiting forever
(the power-on default 0xFF). Then InListPassiveTarget every `poll_interval_s`. A card stays
"present" until no poll has seen it for `removal_timeout_s`.

The parsing functions do no I/O, so they can be tested on arbitrary bytes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

import serial

from evsed.hal.rfid import Monotonic, ReaderError, SerialTagReader
from evsed.hal.rfid.idtag import uid_to_id_tag

log = logging.getLogger(__name__)

TFI_HOST = 0xD4
TFI_PN532 = 0xD5
TFI_ERROR = 0x7F
START_CODE = b"\x00\xff"
ACK_FRAME = b"\x00\x00\xff\x00\xff\x00"
NACK_FRAME = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME = b"\x00\x00\xff\x01\xff\x7f\x81\x00"
# 0x55 0x55 pulls the HSU out of power-down; the zeros give it time to wake (Adafruit's form).
WAKEUP = b"\x55\x55" + b"\x00" * 15
# The chip's frame buffer is 264 bytes: a longer length field is garbage, not a frame to wait for.
MAX_FRAME_DATA = 264

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

SAM_NORMAL = bytes([CMD_SAM_CONFIGURATION, 0x01, 0x14, 0x01])  # normal mode, 1 s, use IRQ
GET_FIRMWARE_VERSION = bytes([CMD_GET_FIRMWARE_VERSION])
IN_LIST_PASSIVE_TARGET_106A = bytes([CMD_IN_LIST_PASSIVE_TARGET, 0x01, 0x00])  # 1 target, type A


def rf_max_retries(passive_activation: int) -> bytes:
    """RFConfiguration item 5 (MaxRetries): ATR 0xFF, PSL 1, passive activation (0xFF = forever)."""
    if not 0 <= passive_activation <= 0xFF:
        raise ValueError("passive_activation must be 0..255")
    return bytes([CMD_RF_CONFIGURATION, 0x05, 0xFF, 0x01, passive_activation])


def build_frame(data: bytes, tfi: int = TFI_HOST) -> bytes:
    """A complete information frame: `data` is the command code and its parameters."""
    body = bytes([tfi]) + data
    if len(body) > MAX_FRAME_DATA:
        raise ValueError(f"frame data too long ({len(body)} > {MAX_FRAME_DATA})")
    dcs = (-sum(body)) & 0xFF
    if len(body) <= 0xFF:
        header = bytes([len(body), (-len(body)) & 0xFF])
    else:
        hi, lo = len(body) >> 8, len(body) & 0xFF
        header = b"\xff\xff" + bytes([hi, lo, (-(hi + lo)) & 0xFF])
    return b"\x00" + START_CODE + header + body + bytes([dcs, 0x00])


FrameKind = Literal["ack", "nack", "data", "error"]


@dataclass(frozen=True, slots=True)
class Pn532Frame:
    kind: FrameKind
    tfi: int = 0
    data: bytes = b""  # after the TFI: response code and parameters


class Pn532FrameParser:
    """Incremental frame finder for either direction.

    Searches for the start code 00 FF; a header or body whose checksum fails is dropped one
    byte at a time so the search resumes inside it (a real frame may follow a false start).
    The postamble is not required: the next search skips it like any other stray byte.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Pn532Frame]:
        self._buf += data
        frames: list[Pn532Frame] = []
        while True:
            start = self._buf.find(START_CODE)
            if start < 0:
                # Keep a trailing 0x00: it may be the first half of a start code.
                keep = 1 if self._buf[-1:] == b"\x00" else 0
                del self._buf[: len(self._buf) - keep]
                break
            del self._buf[:start]
            if len(self._buf) < 4:
                break
            a, b = self._buf[2], self._buf[3]
            if (a, b) == (0x00, 0xFF):
                frames.append(Pn532Frame("ack"))
                del self._buf[:4]
                continue
            if (a, b) == (0xFF, 0x00):
                frames.append(Pn532Frame("nack"))
                del self._buf[:4]
                continue
            if (a, b) == (0xFF, 0xFF):
                if len(self._buf) < 7:
                    break
                hi, lo, lcs = self._buf[4], self._buf[5], self._buf[6]
                length, header, ok = (hi << 8) | lo, 7, (hi + lo + lcs) & 0xFF == 0
            else:
                length, header, ok = a, 4, (a + b) & 0xFF == 0
            if not ok or not 1 <= length <= MAX_FRAME_DATA:
                del self._buf[:1]
                continue
            total = header + length + 1
            if len(self._buf) < total:
                break
            body = bytes(self._buf[header : header + length])
            if (sum(body) + self._buf[header + length]) & 0xFF != 0:
                del self._buf[:1]
                continue
            del self._buf[:total]
            kind: FrameKind = "error" if body[0] == TFI_ERROR else "data"
            frames.append(Pn532Frame(kind, tfi=body[0], data=body[1:]))
        return frames

    def reset(self) -> None:
        self._buf.clear()


def parse_in_list_passive_target(params: bytes) -> bytes | None:
    """UID of the first target in an InListPassiveTarget (106 kbps type A) answer, after D5 4B.

    params = NbTg, Tg, SENS_RES(2), SEL_RES, NFCIDlen, NFCID...; None when no target or when
    the answer is malformed (a UID longer than 10 bytes cannot be an idTag anyway).
    """
    if len(params) < 1 or params[0] == 0:
        return None
    if len(params) < 6:
        return None
    uid_len = params[5]
    uid = params[6 : 6 + uid_len]
    if not 1 <= uid_len <= 10 or len(uid) != uid_len:
        return None
    return uid


class Pn532Reader(SerialTagReader):
    """TagReader for a PN532 in HSU mode on `port` (any `serial.serial_for_url` string)."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        name: str = "pn532",
        poll_interval_s: float = 0.1,
        removal_timeout_s: float = 0.35,
        passive_retries: int = 1,
        ack_timeout_s: float = 0.1,
        response_timeout_s: float = 0.5,
        read_timeout_s: float = 0.02,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        super().__init__(
            port,
            baudrate,
            name=name,
            removal_timeout_s=removal_timeout_s,
            read_timeout_s=read_timeout_s,
            retry_min_s=retry_min_s,
            retry_max_s=retry_max_s,
            monotonic=monotonic,
        )
        if passive_retries == 0xFF:
            raise ValueError("passive_retries 0xFF makes polls block until a card comes")
        self._rf_config = rf_max_retries(passive_retries)
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.response_timeout_s = response_timeout_s
        self.firmware: tuple[int, int, int, int] | None = None
        self._parser = Pn532FrameParser()
        self._frames: deque[Pn532Frame] = deque()

    # -- protocol --------------------------------------------------------------------------

    def _next_frame(self, ser: serial.SerialBase, timeout_s: float) -> Pn532Frame | None:
        # Real time on purpose: the injected clock is for the debounce, not for I/O timeouts.
        deadline = time.monotonic() + timeout_s
        while not self._frames:
            if time.monotonic() >= deadline:
                return None
            self._frames.extend(self._parser.feed(ser.read(max(1, ser.in_waiting))))
        return self._frames.popleft()

    def _transact(self, ser: serial.SerialBase, command: bytes, prefix: bytes = b"") -> bytes:
        """Send a command, expect ACK then the answer; return the answer after its code."""
        for _attempt in range(2):
            # A late answer to an earlier command must not be taken for this one.
            ser.reset_input_buffer()
            self._parser.reset()
            self._frames.clear()
            ser.write(prefix + build_frame(command))
            ack = self._next_frame(ser, self.ack_timeout_s)
            if ack is None or ack.kind != "ack":
                continue
            answer = self._next_frame(ser, self.response_timeout_s)
            if answer is None:
                ser.write(ACK_FRAME)  # abort the command before retrying it
                continue
            if answer.kind == "error":
                raise ReaderError(f"PN532 error frame for command 0x{command[0]:02X}")
            if answer.tfi == TFI_PN532 and answer.data[:1] == bytes([command[0] + 1]):
                return answer.data[1:]
            log.debug("reader %s: unexpected frame %r", self.name, answer)
        raise ReaderError(f"PN532 does not answer command 0x{command[0]:02X}")

    def _on_open(self, ser: serial.SerialBase) -> None:
        self.firmware = None
        self._transact(ser, SAM_NORMAL, prefix=WAKEUP)
        fw = self._transact(ser, GET_FIRMWARE_VERSION)
        if len(fw) < 4 or fw[0] != 0x32:
            raise ReaderError(f"not a PN532: firmware answer {fw.hex()}")
        self.firmware = (fw[0], fw[1], fw[2], fw[3])
        self._transact(ser, self._rf_config)
        log.info("reader %s: PN532 firmware %d.%d on %s", self.name, fw[1], fw[2], self.port)

    def _step(self, ser: serial.SerialBase) -> None:
        uid = parse_in_list_passive_target(self._transact(ser, IN_LIST_PASSIVE_TARGET_106A))
        if uid is not None:
            self._tag_read(uid_to_id_tag(uid))
        self._stop.wait(self.poll_interval_s)

    def _on_close(self) -> None:
        self._parser.reset()
        self._frames.clear()
