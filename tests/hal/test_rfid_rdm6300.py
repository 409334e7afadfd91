"""RDM6300: frame parsing (pure, property-tested) and the driver against a pty simulator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evsed.hal.interfaces import TagReader
from evsed.hal.rfid import make_reader
from evsed.hal.rfid.rdm6300 import (
    Rdm6300Parser,
    Rdm6300Reader,
    build_rdm6300_frame,
    parse_rdm6300_frame,
)
from evsed.hal.types import DeviceFault, TagPresented
from evsed.hwmocks.rfid import SimRdm6300

CARD_A = "0700673158"  # REFERENCE §4.1 example: frame 02 "070067315809" 03
CARD_B = "1A2B3C4D5E"


# -- parsing --------------------------------------------------------------------------------


def test_known_frame() -> None:
    frame = b"\x02070067315809\x03"
    assert build_rdm6300_frame(bytes.fromhex(CARD_A)) == frame
    assert parse_rdm6300_frame(frame) == CARD_A


def test_lowercase_hex_is_accepted_and_uppercased() -> None:
    frame = build_rdm6300_frame(bytes.fromhex("0a00ff3158")).lower()
    assert frame[1:13] == b"0a00ff31589c"
    assert parse_rdm6300_frame(frame) == "0A00FF3158"


@pytest.mark.parametrize(
    "frame",
    [
        b"\x02070067315808\x03",  # bad checksum
        b"\x02070067315809\x04",  # bad end byte
        b"\x0207006731580\x03",  # short
        b"\x02070067315G09\x03",  # not hex
        b"",
    ],
)
def test_invalid_frames(frame: bytes) -> None:
    assert parse_rdm6300_frame(frame) is None


def test_parser_resyncs_after_garbage_and_split_frames() -> None:
    p = Rdm6300Parser()
    frame_a = build_rdm6300_frame(bytes.fromhex(CARD_A))
    frame_b = build_rdm6300_frame(bytes.fromhex(CARD_B))
    bad = frame_b[:-3] + b"00\x03"
    stream = b"\xff\x02\x02zz" + frame_a + bad + b"\x03\x02" + frame_b
    assert p.feed(stream[:9]) == []
    assert p.feed(stream[9:20]) == [CARD_A]
    assert p.feed(stream[20:]) == [CARD_B]


@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    p = Rdm6300Parser()
    for tag in p.feed(data):
        assert len(tag) == 10
    tag = parse_rdm6300_frame(data[:14])
    assert tag is None or tag == data[1:11].decode("ascii").upper()


@given(
    st.binary(max_size=100),
    st.binary(min_size=5, max_size=5),
    st.binary(max_size=100),
    st.lists(st.integers(min_value=1, max_value=20), max_size=20),
)
def test_frame_embedded_in_garbage_is_found(
    before: bytes, data: bytes, after: bytes, cuts: list[int]
) -> None:
    stream = before + build_rdm6300_frame(data) + after
    p = Rdm6300Parser()
    found: list[str] = []
    pos = 0
    for n in cuts:  # arbitrary chunking, as the port delivers it
        found += p.feed(stream[pos : pos + n])
        pos += n
    found += p.feed(stream[pos:])
    assert data.hex().upper() in found


# -- driver against the simulator -------------------------------------------------------------


class ManualTime:
    """Injected monotonic clock for the debounce; the test moves it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sim() -> Iterator[SimRdm6300]:
    s = SimRdm6300()
    yield s
    s.close()


@pytest.fixture
def clock() -> ManualTime:
    return ManualTime()


@pytest.fixture
async def events() -> asyncio.Queue[object]:
    return asyncio.Queue()


@pytest.fixture
async def reader(
    sim: SimRdm6300, clock: ManualTime, events: asyncio.Queue[object]
) -> AsyncIterator[Rdm6300Reader]:
    r = Rdm6300Reader(sim.port, retry_min_s=0.05, retry_max_s=0.2, monotonic=clock)
    r.start(events.put_nowait)
    yield r
    r.shutdown()
    assert not any(t.name == "rfid-rdm6300" for t in threading.enumerate())


async def next_event(events: asyncio.Queue[object]) -> object:
    return await asyncio.wait_for(events.get(), timeout=2)


async def hold(sim: SimRdm6300, frames: int) -> None:
    """Let the held card send `frames` more frames."""
    target = sim.frames_sent + frames
    assert await asyncio.to_thread(sim.wait_frames, target, 2.0)


def test_implements_tag_reader() -> None:
    assert isinstance(Rdm6300Reader("loop://"), TagReader)
    r = make_reader("rdm6300", "loop://", id_format="decimal10")
    assert isinstance(r, Rdm6300Reader) and r.id_format == "decimal10" and r.baudrate == 9600
    assert isinstance(make_reader("pn532", "loop://", 57600), TagReader)
    with pytest.raises(ValueError):
        make_reader("mifare", "loop://")
    with pytest.raises(ValueError):
        Rdm6300Reader("loop://", id_format="octal")  # type: ignore[arg-type]


async def test_held_card_gives_one_event(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object]
) -> None:
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    await hold(sim, 6)
    sim.remove()
    sim.present(CARD_B)
    # Had any of A's repeated frames produced an event, it would come before B's.
    assert await next_event(events) == TagPresented(CARD_B, "rdm6300")


async def test_card_presented_again_after_timeout_gives_new_event(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object], clock: ManualTime
) -> None:
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    sim.remove()
    clock.t += 1.0  # longer than the 300 ms removal timeout
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    await hold(sim, 4)
    sim.remove()
    sim.present(CARD_B)
    assert await next_event(events) == TagPresented(CARD_B, "rdm6300")


async def test_quick_lift_within_timeout_is_the_same_presentation(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object], clock: ManualTime
) -> None:
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    sim.remove()
    clock.t += 0.2
    sim.present(CARD_A)
    await hold(sim, 3)
    sim.remove()
    sim.present(CARD_B)
    assert await next_event(events) == TagPresented(CARD_B, "rdm6300")


async def test_garbage_and_bad_checksum_are_ignored(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object]
) -> None:
    corrupt_b = build_rdm6300_frame(bytes.fromhex(CARD_B))[:-3] + b"00\x03"
    sim.send_raw(b"\x00\xff\x02\x0212345" + corrupt_b + b"\x03\x03garbage\x02")
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    sim.remove()
    sim.send_raw(b"\x02\x02\xfe")
    sim.present(CARD_B)
    assert await next_event(events) == TagPresented(CARD_B, "rdm6300")


async def test_decimal10_format(sim: SimRdm6300, events: asyncio.Queue[object]) -> None:
    r = Rdm6300Reader(sim.port, id_format="decimal10", name="door")
    r.start(events.put_nowait)
    try:
        sim.present(CARD_A)
        assert await next_event(events) == TagPresented("0006762840", "door")
    finally:
        r.shutdown()


async def test_unplug_gives_fault_then_recovery(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object]
) -> None:
    sim.present(CARD_A)
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
    sim.unplug()
    fault = await next_event(events)
    assert isinstance(fault, DeviceFault)
    assert (fault.device, fault.active) == ("reader", True)
    assert "rdm6300" in fault.detail
    sim.replug()
    recovered = await next_event(events)
    assert isinstance(recovered, DeviceFault)
    assert (recovered.device, recovered.active) == ("reader", False)
    # The card still lies on the reader: after the loss it counts as a new presentation.
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")


async def test_missing_port_at_start_is_a_fault_until_it_appears(
    sim: SimRdm6300, events: asyncio.Queue[object]
) -> None:
    sim.unplug()
    r = Rdm6300Reader(sim.port, retry_min_s=0.05, retry_max_s=0.1)
    r.start(events.put_nowait)
    try:
        fault = await next_event(events)
        assert isinstance(fault, DeviceFault) and fault.active
        sim.replug()
        recovered = await next_event(events)
        assert isinstance(recovered, DeviceFault) and not recovered.active
        sim.present(CARD_B)
        assert await next_event(events) == TagPresented(CARD_B, "rdm6300")
    finally:
        r.shutdown()
    assert events.empty()


async def test_a_line_of_garbage_is_a_fault_until_a_valid_frame(
    sim: SimRdm6300, reader: Rdm6300Reader, events: asyncio.Queue[object]
) -> None:
    sim.set_garbage(True)
    fault = await next_event(events)
    assert isinstance(fault, DeviceFault) and fault.active
    assert "garbage" in fault.detail
    sim.set_garbage(False)
    sim.present(CARD_A)
    recovered = await next_event(events)
    assert isinstance(recovered, DeviceFault) and not recovered.active
    assert await next_event(events) == TagPresented(CARD_A, "rdm6300")
