"""idTag normalisation and the presentation debounce, on an explicit clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evsed.hal.rfid.idtag import (
    ID_TAG_MAX_LEN,
    PresenceDebouncer,
    normalize_id_tag,
    rdm6300_id_tag,
    uid_to_id_tag,
)


def test_uid_is_uppercase_hex_byte0_first() -> None:
    assert uid_to_id_tag(bytes([0x04, 0xA2, 0x3B, 0x1C])) == "04A23B1C"
    assert uid_to_id_tag(bytes.fromhex("04a1b2c3d4e5f6")) == "04A1B2C3D4E5F6"


@pytest.mark.parametrize("uid", [b"", bytes(11)])
def test_uid_that_cannot_be_an_id_tag_is_refused(uid: bytes) -> None:
    with pytest.raises(ValueError):
        uid_to_id_tag(uid)


@given(st.binary(min_size=1, max_size=10))
def test_any_uid_up_to_10_bytes_fits_ocpp(uid: bytes) -> None:
    tag = uid_to_id_tag(uid)
    assert len(tag) <= ID_TAG_MAX_LEN
    assert tag == tag.upper()
    assert bytes.fromhex(tag) == uid


def test_rdm6300_forms() -> None:
    # REFERENCE §4.1: raw 0700673158 (checksum 09) is printed as 0006762840.
    assert rdm6300_id_tag("0700673158") == "0700673158"
    assert rdm6300_id_tag("0a00ff3158") == "0A00FF3158"
    assert rdm6300_id_tag("0700673158", "decimal10") == "0006762840"
    assert rdm6300_id_tag("FFFFFFFFFF", "decimal10") == "4294967295"
    with pytest.raises(ValueError):
        rdm6300_id_tag("0700673158", "octal")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rdm6300_id_tag("07006731")


def test_normalize_typed_tag() -> None:
    assert normalize_id_tag(" 04:a2:3b:1c ") == "04A23B1C"
    for bad in ("", "XYZ", "0" * 21):
        with pytest.raises(ValueError):
            normalize_id_tag(bad)


def test_held_card_is_one_presentation() -> None:
    d = PresenceDebouncer(removal_timeout_s=0.3)
    assert d.seen("A", 0.0)
    for i in range(1, 50):  # frames every 65 ms for ~3 s
        assert not d.seen("A", i * 0.065)
    assert d.current == "A"


def test_card_back_after_timeout_is_a_new_presentation() -> None:
    d = PresenceDebouncer(removal_timeout_s=0.3)
    assert d.seen("A", 0.0)
    assert not d.seen("A", 0.3)  # exactly at the timeout: still the same presentation
    assert d.expire(0.5) is None
    assert d.expire(0.61) == "A"
    assert d.current is None
    assert d.seen("A", 0.62)


def test_gap_is_judged_on_the_next_read_even_without_expire() -> None:
    d = PresenceDebouncer(removal_timeout_s=0.3)
    assert d.seen("A", 0.0)
    assert d.seen("A", 5.0)


def test_swapped_card_counts_at_once_and_reset_forgets() -> None:
    d = PresenceDebouncer(removal_timeout_s=0.3)
    assert d.seen("A", 0.0)
    assert d.seen("B", 0.1)
    assert d.seen("A", 0.2)
    d.reset()
    assert d.seen("A", 0.21)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PresenceDebouncer(0)
