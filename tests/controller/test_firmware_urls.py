"""URLs from the Central System: allowed schemes only, no local files, bounded, and no
password ever printed."""

from __future__ import annotations

import logging

import pytest

from evsed.controller.firmware.urls import UrlRejected, check_url, redact_url
from evsed.controller.ocpp16.redaction import FILTER, redact


@pytest.mark.parametrize(
    "url",
    [
        "http://cs.example/fw.whl",
        "HTTPS://cs.example:8443/a/b.whl?x=1",
        "ftp://user:pw@10.0.0.1/fw/evsed.whl",
        "ftps://user:pw@cs.example:2121/fw/evsed.whl",
    ],
)
def test_network_schemes_pass(url: str) -> None:
    assert check_url(url).host


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/shadow",
        "/var/lib/evsed/evsed.db",
        "../evsed.db",
        "data:text/plain,hi",
        "gopher://cs.example/x",
        "sftp://cs.example/x",  # not spoken: refused
        "http:///no-host",
        "http://cs.example/a b",
        "http://cs.example:99999/x",
        "",
        "http://cs.example/" + "a" * 3000,
    ],
)
def test_everything_else_is_refused(url: str) -> None:
    with pytest.raises(UrlRejected):
        check_url(url)


def test_credentials_are_decoded_and_never_in_the_rejection() -> None:
    url = check_url("ftp://us%40er:p%3Ass@cs.example:2121/fw.whl")
    assert (url.username, url.password, url.port, url.path) == ("us@er", "p:ss", 2121, "/fw.whl")
    assert "p%3Ass" not in url.redacted and "***" in url.redacted
    with pytest.raises(UrlRejected) as e:
        check_url("http://admin:hunter2@/x")
    assert "hunter2" not in str(e.value)


def test_redaction_of_any_text() -> None:
    line = 'UpdateFirmware {"location": "ftp://fw:Pa55@cs.example/x.whl", "b": "https://a:b@h/"}'
    clean = redact_url(line)
    assert "Pa55" not in clean and ":b@" not in clean
    assert "ftp://fw:***@cs.example/x.whl" in clean
    # The process-wide redaction (frames, log lines) does it too.
    assert "Pa55" not in redact(line)


def test_log_records_through_the_filter_lose_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("evsed.test.urls")
    logger.addFilter(FILTER)
    try:
        with caplog.at_level(logging.INFO, logger="evsed.test.urls"):
            logger.info("fetching %s", "http://u:topsecret@cs.example/f")
    finally:
        logger.removeFilter(FILTER)
    assert "topsecret" not in caplog.text and "u:***@" in caplog.text
