"""A log line naming a URL that is masked already keeps its own punctuation: the filter
read "ws://cs/ocpp/CP?token=***: connection refused" again and wrote "token=***
connection refused", the colon eaten as if it were part of the token."""

from __future__ import annotations

import pytest

from evsed.controller.masking import mask_url
from evsed.controller.ocpp16.redaction import redact


@pytest.mark.parametrize("after", [":", ",", ".", ";", ")"])
def test_the_punctuation_after_a_masked_value_stays(after: str) -> None:
    line = f"session: cannot connect to ws://cs/ocpp/CP?token=***{after} connection refused"
    assert redact(line) == line


def test_a_value_is_still_masked_whole() -> None:
    assert mask_url("ws://cs/ocpp?token=abc:") == "ws://cs/ocpp?token=***"
    assert mask_url("ws://cs/ocpp?token=****") == "ws://cs/ocpp?token=***"
    assert mask_url("ws://cs/ocpp?token=***x&b=c") == "ws://cs/ocpp?token=***&b=***"
    assert mask_url("ws://cs/ocpp?a=***:&b=c") == "ws://cs/ocpp?a=***:&b=***"
    # The whole line, masked once and then filtered: one colon, the token never shown.
    line = f"cannot connect to {mask_url('ws://cs/ocpp/CP?token=s3cret')}: refused"
    assert redact(line) == "cannot connect to ws://cs/ocpp/CP?token=***: refused"
