"""PN532 over HSU: framing (pure, property-tested) and the driver against a pty simulator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from evsed.hal.interfaces import TagReader
from evsed.hal.rfid.pn532 import (
    ACK_FRAME,
    ERROR_FRAME,
    NACK_FRAME,
    Pn532Frame,
    Pn532FrameParser,
    Pn532Reader,
    build_frame,
    parse_in_list_passive_target,
)
from evsed.hal.types import DeviceFault, TagPresented
from evsed.hwmocks.rfid import SimPn532

UID4 = "04A23B1C"
UID7 = "04A1B2C3D4E5F6"

# -- framing ---------------------------------------------------------------------------------


def test_build_frame_matches_known_frames() -> None:
    # REFERENCE §4.2 (nfcpy's SAMConfiguration) and the well-known GetFirmwareVersion frame.
    assert build_frame(bytes.fromhex("14010000")) == bytes.fromhex("0000FF05FBD41401000017 00")
    assert build_frame(b"\x02") == bytes.fromhex("0000FF02FED4022A00")


def test_parser_recognises_ack_nack_error_and_answers() -> None:
    p = Pn532FrameParser()
    answer = build_frame(bytes.fromhex("0332010607"), tfi=0xD5)
    frames = p.feed(ACK_FRAME + answer + NACK_FRAME + ERROR_FRAME)
    assert frames == [
        Pn532Frame("ack"),
        Pn532Frame("data", tfi=0xD5, data=bytes.fromhex("0332010607")),
        Pn532Frame("nack"),
        Pn532Frame("error", tfi=0x7F),
    ]


def test_extended_frame_round_trip() -> None:
    data = bytes([0x40]) + bytes(range(256))[:259]
    frame = build_frame(data)
    assert frame[3:5] == b"\xff\xff"
    assert Pn532FrameParser().feed(frame) == [Pn532Frame("data", tfi=0xD4, data=data)]


def test_bad_checksums_are_skipped_and_parser_resyncs() -> None:
    good = build_frame(b"\x15", tfi=0xD5)
    bad_lcs = bytearray(good)
    bad_lcs[4] ^= 0x01
    bad_dcs = bytearray(good)
    bad_dcs[-2] ^= 0x01
    p = Pn532FrameParser()
    stream = b"\x55\x00\xff" + bytes(bad_lcs) + bytes(bad_dcs) + b"\xff\x00" + good
    found: list[Pn532Frame] = []
    for i in range(len(stream)):  # byte by byte, the worst chunking
        found += p.feed(stream[i : i + 1])
    assert found == [Pn532Frame("data", tfi=0xD5, data=b"\x15")]


def test_in_list_passive_target_answers() -> None:
    assert parse_in_list_passive_target(b"\x00") is None
    assert parse_in_list_passive_target(bytes.fromhex("0101000408" + "04" + UID4)) == (
        bytes.fromhex(UID4)
    )
    assert parse_in_list_passive_target(bytes.fromhex("0101004400" + "07" + UID7)) == (
        bytes.fromhex(UID7)
    )
    assert parse_in_list_passive_target(bytes.fromhex("010100040807" + UID4)) is None  # truncated
    assert parse_in_list_passive_target(bytes.fromhex("0101000408")) is None
    assert parse_in_list_passive_target(b"") is None


@given(st.binary(max_size=600), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    p = Pn532FrameParser()
    pos = 0
    for n in [*cuts, len(data)]:
        for frame in p.feed(data[pos : pos + n]):
            assert frame.kind in ("ack", "nack", "data", "error")
        pos += n
    parse_in_list_passive_target(data)


@given(
    st.binary(max_size=200),
    st.binary(min_size=1, max_size=263),
    st.binary(max_size=200),
    st.sampled_from([0xD4, 0xD5]),
    st.lists(st.integers(min_value=1, max_value=50), max_size=20),
)
def test_frame_embedded_in_garbage_is_found(
    before: bytes, data: bytes, after: bytes, tfi: int, cuts: list[int]
) -> None:
    # Garbage holding a start code may announce a long false frame that swallows the real
    # one until its checksum fails; the property is about garbage without one.
    assume(b"\x00\xff" not in before)
    stream = before + build_frame(data, tfi=tfi) + after
    p = Pn532FrameParser()
    found: list[Pn532Frame] = []
    pos = 0
    for n in [*cuts, len(stream)]:
        found += p.feed(stream[pos : pos + n])
        pos += n
    assert Pn532Frame("data", tfi=tfi, data=data) in found


# -- driver against the simulator -------------------------------------------------------------


class ManualTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sim() -> Iterator[SimPn532]:
    s = SimPn532()
    yield s
    s.close()


@pytest.fixture
def clock() -> ManualTime:
    return ManualTime()


@pytest.fixture
async def events() -> asyncio.Queue[object]:
    return asyncio.Queue()


def make_reader(port: str, clock: ManualTime | None = None) -> Pn532Reader:
    return Pn532Reader(
        port,
        poll_interval_s=0.02,
        retry_min_s=0.05,
        retry_max_s=0.2,
        response_timeout_s=0.2,
        **({"monotonic": clock} if clock else {}),
    )


@pytest.fixture
async def reader(
    sim: SimPn532, clock: ManualTime, events: asyncio.Queue[object]
) -> AsyncIterator[Pn532Reader]:
    r = make_reader(sim.port, clock)
    r.start(events.put_nowait)
    yield r
    r.shutdown()
    assert not any(t.name == "rfid-pn532" for t in threading.enumerate())


async def next_event(events: asyncio.Queue[object]) -> object:
    return await asyncio.wait_for(events.get(), timeout=2)


async def polls(sim: SimPn532, count: int) -> None:
    """Wait until the driver has sent `count` more commands."""
    target = len(sim.commands) + count
    assert await asyncio.to_thread(sim.wait_commands, target, 2.0)


def test_implements_tag_reader() -> None:
    assert isinstance(Pn532Reader("loop://"), TagReader)
    with pytest.raises(ValueError):
        Pn532Reader("loop://", passive_retries=0xFF)


async def test_init_sequence_then_polling_without_card(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object]
) -> None:
    await polls(sim, 6)
    codes = sim.command_codes()
    assert codes[:3] == [0x14, 0x02, 0x32]  # SAMConfiguration, GetFirmwareVersion, RFConfig
    assert set(codes[3:]) == {0x4A}
    assert sim.sam_configured
    # Without this the chip would wait forever for a card and every poll would time out.
    assert sim.max_passive_retries == 1
    assert reader.firmware == (0x32, 0x01, 0x06, 0x07)
    assert events.empty()


async def test_held_card_gives_one_event_and_a_swap_another(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object]
) -> None:
    sim.present(UID4)
    assert await next_event(events) == TagPresented(UID4, "pn532")
    await polls(sim, 5)
    sim.present(UID7)  # other card on the reader
    assert await next_event(events) == TagPresented(UID7, "pn532")


async def test_card_presented_again_after_timeout_gives_new_event(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object], clock: ManualTime
) -> None:
    sim.present(UID4)
    assert await next_event(events) == TagPresented(UID4, "pn532")
    sim.remove()
    await polls(sim, 2)  # the driver has seen the reader empty
    clock.t += 1.0
    await polls(sim, 2)
    sim.present(UID4)
    assert await next_event(events) == TagPresented(UID4, "pn532")
    await polls(sim, 3)
    sim.present(UID7)
    assert await next_event(events) == TagPresented(UID7, "pn532")


async def test_garbage_on_the_line_is_survived(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object]
) -> None:
    await polls(sim, 4)
    for _ in range(3):
        sim.send_raw(b"\x00\xff\x05\x00\x55\xaa\x00\x00\xff\xff")
        await polls(sim, 1)
    sim.present(UID4)
    assert await next_event(events) == TagPresented(UID4, "pn532")


async def test_unplug_gives_fault_and_replug_reinitialises(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object]
) -> None:
    sim.present(UID4)
    assert await next_event(events) == TagPresented(UID4, "pn532")
    sim.unplug()
    fault = await next_event(events)
    assert isinstance(fault, DeviceFault)
    assert (fault.device, fault.active) == ("reader", True)
    before = len(sim.commands)
    sim.replug()  # power-cycled: asleep, MaxRetries back to 0xFF, card still on it
    recovered = await next_event(events)
    assert isinstance(recovered, DeviceFault)
    assert (recovered.device, recovered.active) == ("reader", False)
    assert sim.command_codes()[before : before + 3] == [0x14, 0x02, 0x32]
    assert await next_event(events) == TagPresented(UID4, "pn532")


async def test_silent_chip_is_a_fault_until_it_answers(
    sim: SimPn532, reader: Pn532Reader, events: asyncio.Queue[object]
) -> None:
    await polls(sim, 4)
    sim.set_silent(True)
    fault = await next_event(events)
    assert isinstance(fault, DeviceFault) and fault.active
    assert "0x" in fault.detail
    sim.set_silent(False)
    recovered = await next_event(events)
    assert isinstance(recovered, DeviceFault) and not recovered.active
    sim.present(UID7)
    assert await next_event(events) == TagPresented(UID7, "pn532")


async def test_sim_without_max_retries_waits_for_a_card() -> None:
    """The simulator's chip model: power-on MaxRetries 0xFF holds the answer until a card."""
    import os
    import select

    with SimPn532(require_wakeup=False) as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, build_frame(bytes.fromhex("4A0100")))
            p = Pn532FrameParser()
            got: list[Pn532Frame] = []
            while not got:
                assert select.select([fd], [], [], 2)[0]
                got += p.feed(os.read(fd, 64))
            assert got == [Pn532Frame("ack")]
            sim.present(UID4)
            while len(got) < 2:
                assert select.select([fd], [], [], 2)[0]
                got += p.feed(os.read(fd, 64))
            assert parse_in_list_passive_target(got[1].data[1:]) == bytes.fromhex(UID4)
        finally:
            os.close(fd)
