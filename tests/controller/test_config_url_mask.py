"""A bad central_system.url with a password in it is one line and exit 2, password masked
(review of issue 13): mask_url parsed the port and host, so `h:99999` or an unclosed
`[::1` raised ValueError while a problem line was being written; the chained traceback
carried pydantic's input_value (the password) into the journal, exit 1, and Restart=always
wrote it again every 2 s. Query values ("?token=...") were shown unmasked."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller import cli, config

SECRET = "s3cr3tpassword"


@pytest.mark.parametrize(
    "url",
    [
        f"ws://cp1:{SECRET}@h:99999/x",
        f"ws://cp1:{SECRET}@[::1/x",
        f"ws://cp1:{SECRET}@h:port/x",
        f"wss://:{SECRET}@h/x",
    ],
)
def test_bad_url_with_a_password_is_one_masked_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(f'[central_system]\nurl = "{url}"\ncharge_point_id = "cp1"\n')
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--config", str(cfg)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert SECRET not in text
    assert "input_value" not in text and "Traceback" not in text
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "central_system.url" in lines[0], lines
    assert "***" in lines[0]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ws://cp1:pw@h:99999/x", "ws://cp1:***@h:99999/x"),
        ("ws://cp1:pw@[::1/x", "ws://cp1:***@[::1/x"),
        ("ws://a:b:c@d@h:9000/ocpp", "ws://a:***@h:9000/ocpp"),
        ("ws://cp1@h/ocpp", "ws://cp1@h/ocpp"),  # a user name alone is the CP id
        ("ws://h:9000/ocpp/cp1", "ws://h:9000/ocpp/cp1"),
        ("ws://h/ocpp/cp1?token=abc&x=1", "ws://h/ocpp/cp1?token=***&x=***"),
        ("wss://u:p@h/cp1/?key=v;flag#frag=z", "wss://u:***@h/cp1/?key=***;***#frag=***"),
        ("ws://h?t=1", "ws://h?t=***"),
        ("not a url?x=1", "not a url?x=***"),
        ("", ""),
    ],
)
def test_mask_url_works_on_the_text_and_never_raises(url: str, shown: str) -> None:
    assert config.mask_url(url) == shown


def test_mask_is_total() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError(SECRET)

    assert config._mask("central_system.url", Unprintable()) == "'***'"
    assert config._mask("connectors[0].pilot.pin", Unprintable()) == "'***'"
