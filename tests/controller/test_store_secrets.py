"""Secrets at rest: the rotated AuthorizationKey is kept in the database (0600, in a 0700
state directory) and nowhere else: not in `evsed config check`, not in the logs."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from evsed.controller.cli import main
from evsed.controller.ocpp16.keys import ConfigurationKeys
from evsed.controller.store import DB_FILENAME, SECRET_CONFIG_KEYS, Store, secure_state_dir

CONFIGURED = "configured-key-0123456789abcdef"
ROTATED = "rotated-key-fedcba9876543210fedcba"


def _rotate(state: Path) -> None:
    with Store(secure_state_dir(state) / DB_FILENAME) as store:
        keys = ConfigurationKeys(
            store,
            number_of_connectors=1,
            supported_feature_profiles=["Core"],
            supported=["AuthorizationKey"],
        )
        assert keys.change("AuthorizationKey", ROTATED).value == "Accepted"


def test_rotated_key_is_stored_privately_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    with caplog.at_level(logging.DEBUG):
        _rotate(state)
    assert ROTATED not in caplog.text
    assert "AuthorizationKey" in SECRET_CONFIG_KEYS
    with Store(state / DB_FILENAME) as store:
        assert store.config_values()["AuthorizationKey"] == ROTATED  # kept: the link needs it
        # The WAL holds recent rows too (it exists while the database is open).
        for name in (DB_FILENAME, f"{DB_FILENAME}-wal"):
            assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_config_check_shows_neither_the_configured_nor_the_rotated_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No [bench]: config check asks gpiozero for real pins; its mock pins stand in.
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    state = tmp_path / "state"
    _rotate(state)
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{state}"\n'
        "[central_system]\n"
        'url = "ws://127.0.0.1:9/ocpp"\ncharge_point_id = "CP-1"\n'
        f'security_profile = 1\nauthorization_key = "{CONFIGURED}"\n'
    )
    code = main(["config", "check", str(cfg)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "authorization_key" in out.out  # the key is named, its value masked
    for secret in (CONFIGURED, ROTATED):
        assert secret not in out.out and secret not in out.err
