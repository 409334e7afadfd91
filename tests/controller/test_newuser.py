"""What a newcomer following the README tripped on (issue 13's new-user trial)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller import cli


def test_selftest_checks_the_wiring_before_the_central_system_is_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Commissioning comes before the Central System's details: a CA file not copied over
    # yet and a state directory that cannot be created must not stop the self-test (it
    # talks to no Central System and stores nothing), though `config check` names both.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{blocker / "state"}"\n'
        "[central_system]\n"
        f'ca_file = "{tmp_path / "cs-ca.pem"}"\n'
        'authorization_key = "change-me-0123456789abcdef"\n'
        "[bench]\ncontrol_port = 0\n"
        "[[connectors]]\n[connectors.meter]\nport = 0\n"
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "check", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "central_system.ca_file" in err and "state_dir" in err

    assert cli.main(["selftest", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert "all checks passed" in captured.out
    assert "central_system" not in captured.err and "state_dir" not in captured.err


@pytest.mark.parametrize("kind", ["below a file", "a plain file"])
def test_status_where_no_socket_can_be_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # A state_dir written wrong (here: under a file) or a --socket naming something else
    # gave `evsed status` (and the running-service probe of `selftest`) a NotADirectoryError
    # or ConnectionRefused traceback instead of "evsed is not running".
    plain = tmp_path / "plain"
    plain.write_text("")
    socket = plain / "status.sock" if kind == "below a file" else plain
    assert cli.main(["status", "--socket", str(socket)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evsed status: ")


@pytest.mark.parametrize(
    ("cs", "shown"),
    [
        (
            {"url": "ws://cs.example:9000/ocpp", "charge_point_id": "PI-1"},
            "ws://cs.example:9000/ocpp/PI-1",
        ),
        (
            {"url": "ws://cs.example/ocpp/{charge_point_id}/?v=1", "charge_point_id": "PI-1"},
            "ws://cs.example/ocpp/PI-1/?v=1",
        ),
        (
            {"url": "wss://cs.example", "charge_point_id": "PI-1", "tls_without_auth": True},
            "wss://cs.example/PI-1",
        ),
    ],
)
def test_status_shows_the_url_the_link_dials(cs: dict[str, object], shown: str) -> None:
    # The trial: `evsed status` printed "url: ws://127.0.0.1:9000/ocpp" while the journal
    # said "cannot connect to ws://127.0.0.1:9000/ocpp/CP-SIM-1": the template, not the
    # address a 404 is about.
    from evsed.controller.clock import SystemClock
    from evsed.controller.config import Config
    from evsed.controller.status import LinkTracker

    link = LinkTracker(Config.model_validate({"central_system": cs}), SystemClock())
    assert link.url == shown
    link.observe("connect_failed", {"url": "wss://other.example/PI-1", "http_status": 404})
    assert link.url == "wss://other.example/PI-1"
