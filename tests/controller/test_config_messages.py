"""The messages a newcomer's first `config check` prints: the example's placeholder key is
warned about by --file-only too, in words that say what to do, and a machine without GPIO
is named as such, not blamed on a `bench.enabled` the file does not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller import cli, config, gpiobackend, preflight

REPO = Path(__file__).resolve().parents[2]
PI = REPO / "config" / "raspberry-pi.toml"
ADVICE = "replace the example's placeholder with this charger's own key (16+ characters)"


def test_file_only_warns_about_the_placeholder_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", "--file-only", str(PI)]) == 0
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "authorization_key" in ln]
    assert line.startswith(f"{PI}: warning: central_system.authorization_key: {ADVICE}")
    assert "change-me" not in err, "the key itself is never printed"


def test_file_only_is_quiet_about_a_key_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = PI.read_text().replace("change-me-0123456789abcdef", "k3y-of-this-charger-0042")
    path = tmp_path / "evsed.toml"
    path.write_text(text)
    assert cli.main(["config", "check", "--file-only", str(path)]) == 0
    assert "authorization_key" not in capsys.readouterr().err


def test_no_gpio_is_named_gpio_without_a_given_value(monkeypatch: pytest.MonkeyPatch) -> None:
    def none_here() -> object:
        raise gpiobackend.NoGpioBackend("gpiozero has none here: not a Raspberry Pi")

    monkeypatch.setattr(gpiobackend, "default_factory", none_here)
    cfg = config.parse({"central_system": {"charge_point_id": "X"}})  # no [bench] section
    assert not cfg.bench.enabled
    report = preflight.check(cfg, environ={})
    (gpio,) = [str(p) for p in report.problems if "gpiozero" in str(p)]
    assert gpio == "GPIO: gpiozero has none here: not a Raspberry Pi"
