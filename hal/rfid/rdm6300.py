"""RDM6300 125 kHz (EM4100) reader: a UART that only transmits.

Frame (REFERENCE.md §4.1): 0x02, 10 ASCII-hex data chars (5 bytes: version + 32-bit id),
2 ASCII-hex chars of the XOR of the 5 data bytes, 0x03; 9600 8N1. The module repeats the frame
about every 65 ms while a tag is in the field and never says when it left, so removal is a
timeout (default 300 ms, as arduino12/rdm6300).

idTag form: by default the 10 data hex chars uppercase (`id_format="hex"`, e.g. "0700673158");
`id_format="decimal10"` gives the 10-digit number printed on the card ("0006762840").
"""

from __future__ import annotations

import string
import time

import serial

from evsed.hal.rfid import Monotonic, SerialTagReader
from evsed.hal.rfid.idtag import Rdm6300IdFormat, rdm6300_id_tag

STX = 0x02
ETX = 0x03
FRAME_LEN = 14
_HEX_BYTES = frozenset(string.hexdigits.encode())


def build_rdm6300_frame(data: bytes) -> bytes:
    """The 14-byte frame the module sends for 5 data bytes (bench simulator, tests)."""
    if len(data) != 5:
        raise ValueError("EM4100 data is 5 bytes")
    checksum = 0
    for b in data:
        checksum ^= b
    return bytes([STX]) + (data.hex() + f"{checksum:02x}").upper().encode() + bytes([ETX])


def parse_rdm6300_frame(frame: bytes) -> str | None:
    """The 10 data hex chars (uppercase) of one exact 14-byte frame, or None if it is not valid."""
    if len(frame) != FRAME_LEN or frame[0] != STX or frame[-1] != ETX:
        return None
    body = frame[1:13]
    if not all(b in _HEX_BYTES for b in body):
        return None
    raw = bytes.fromhex(body.decode("ascii"))
    checksum = 0
    for b in raw[:5]:
        checksum ^= b
    if checksum != raw[5]:
        return None
    return body[:10].decode("ascii").upper()


class Rdm6300Parser:
    """Incremental frame finder: feed whatever the port returned, get the valid frames' data.

    Anything that is not a valid frame is dropped one byte at a time and the search resumes at
    the next 0x02, so garbage or a corrupted frame costs at most that frame.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Bytes dropped since the last valid frame (a garbled line shows here).
        self.dropped = 0

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        found: list[str] = []
        while True:
            start = self._buf.find(STX)
            if start < 0:
                self.dropped += len(self._buf)
                self._buf.clear()
                break
            self.dropped += start
            del self._buf[:start]
            if len(self._buf) < FRAME_LEN:
                break
            tag = parse_rdm6300_frame(bytes(self._buf[:FRAME_LEN]))
            if tag is None:
                self.dropped += 1
                del self._buf[:1]  # resync on the next STX, which may lie inside this window
            else:
                found.append(tag)
                self.dropped = 0
                del self._buf[:FRAME_LEN]
        return found

    def reset(self) -> None:
        self._buf.clear()
        self.dropped = 0


# Also bounds how long shutdown() waits for the reader thread.
IDLE_READ_TIMEOUT_S = 0.25
# An RDM6300 only transmits, so silence is its idle state and cannot be told from a dead one;
# a stream of bytes that never forms a frame can (wrong baud rate, a loose or noisy RX wire).
# About a second of a held card's frames with not one valid: a card at the edge of the field
# garbles a few frames, never this many in a row.
GARBAGE_LIMIT_BYTES = 256


class Rdm6300Reader(SerialTagReader):
    """TagReader for an RDM6300 on `port` (any `serial.serial_for_url` string)."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        name: str = "rdm6300",
        id_format: Rdm6300IdFormat = "hex",
        removal_timeout_s: float = 0.3,
        read_timeout_s: float = 0.05,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        if id_format not in ("hex", "decimal10"):
            raise ValueError(f"unknown id_format {id_format!r} (expected 'hex' or 'decimal10')")
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
        self.id_format: Rdm6300IdFormat = id_format
        self._parser = Rdm6300Parser()

    def _step(self, ser: serial.SerialBase) -> None:
        # With a card in the field the removal timeout needs short reads; with none there is
        # nothing to time out, and fewer wake-ups keep an idle charger idle.
        timeout = self._read_timeout_s if self._debounce.current else IDLE_READ_TIMEOUT_S
        if ser.timeout != timeout:  # the setter reconfigures the tty (tcsetattr) every time
            ser.timeout = timeout
        # Block for the first byte (or the timeout), then take whatever else has arrived.
        data = ser.read(max(1, ser.in_waiting))
        for data_hex in self._parser.feed(data):
            self._recovered("valid frames again")
            self._tag_read(rdm6300_id_tag(data_hex, self.id_format))
        if self._parser.dropped >= GARBAGE_LIMIT_BYTES:
            # The port stays open: the fault clears with the next valid frame.
            self._fault(f"{self._parser.dropped} bytes of garbage and no valid frame")

    def _on_close(self) -> None:
        self._parser.reset()
