"""The state directory when the configuration names none: never the current directory."""

from __future__ import annotations

from pathlib import Path

from evsed.controller import config
from evsed.controller.paths import default_state_dir


def test_systemd_state_directory_first() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/evsed:/var/lib/other", "XDG_STATE_HOME": "/x"}
    assert default_state_dir(env) == Path("/var/lib/evsed")


def test_per_user_directory_otherwise(monkeypatch, tmp_path) -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/home/u/.st"}) == Path("/home/u/.st/evsed")
    monkeypatch.setenv("HOME", str(tmp_path))
    # Unset, empty or relative (invalid by the XDG spec): ~/.local/state.
    for env in ({}, {"XDG_STATE_HOME": ""}, {"XDG_STATE_HOME": "rel"}):
        assert default_state_dir(env) == tmp_path / ".local" / "state" / "evsed"


def test_configuration_default_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert config.load(None).state_dir == tmp_path / "xdg" / "evsed"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/evsed")
    assert config.parse({}).state_dir == Path("/var/lib/evsed")
    assert config.parse({"state_dir": "/srv/x"}).state_dir == Path("/srv/x")
    assert not config.parse({}).state_dir.is_relative_to(tmp_path)
