"""The one line evsed prints when gpiozero finds no pin factory: what is really missing on
this machine (lgpio, a GPIO chip, the permission to open it), and the simulated bench offered
only where it can be the answer: a machine that is no charger, never `safe-off`."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest

from evsed.controller import config, gpiobackend, run

BAD = RuntimeError("Unable to load any default pin factory!")
PI = "Raspberry Pi 4 Model B Rev 1.4"


@pytest.fixture(autouse=True)
def _real_factory_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)


def machine(tmp_path: Path, *, model: str | None, chips: int) -> tuple[Path, Path]:
    """A /proc/device-tree/model and a /dev as a Pi (model) or a PC (none) has them."""
    model_file = tmp_path / "model"
    if model is not None:
        model_file.write_bytes(model.encode() + b"\0")  # as the kernel writes it
    dev = tmp_path / "dev"
    dev.mkdir()
    for n in range(chips):
        (dev / f"gpiochip{n}").write_text("")
    return model_file, dev


def lgpio(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    # None in sys.modules makes `import lgpio` raise ImportError, as without the [pi] extra.
    monkeypatch.setitem(sys.modules, "lgpio", types.ModuleType("lgpio") if installed else None)


def explain(tmp_path: Path, *, model: str | None, chips: int, bench_hint: bool = True) -> str:
    model_file, dev = machine(tmp_path, model=model, chips=chips)
    return gpiobackend.explain(BAD, model_file=model_file, dev=dev, bench_hint=bench_hint)


def test_on_a_pc_the_bench_is_offered_to_run_and_config_check(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=False)
    line = explain(tmp_path, model=None, chips=0)
    assert "not a Raspberry Pi" in line and "no GPIO chip (/dev/gpiochip*)" in line
    assert "set enabled = true under [bench]" in line
    assert "pip install 'evsed[pi]'" in line  # for when this file is meant for the Pi
    assert "\n" not in line


def test_on_a_pc_safe_off_gets_no_bench_advice(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=False)
    line = explain(tmp_path, model=None, chips=0, bench_hint=False)
    assert "not a Raspberry Pi" in line and "no GPIO chip" in line
    assert "[bench]" not in line


def test_a_pi_without_the_pi_extra_names_the_environment(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=False)
    line = explain(tmp_path, model=PI, chips=2)
    assert line.startswith(f"no GPIO backend for the {PI}: the [pi] extra is not installed")
    assert f"{sys.prefix}/bin/pip install lgpio" in line
    assert "[bench]" not in line  # a real charger: simulating it is no answer


def test_a_pi_whose_gpio_chip_is_hidden(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=True)
    line = explain(tmp_path, model=PI, chips=0)
    assert line.startswith(f"no GPIO chip (/dev/gpiochip*) on the {PI}")
    assert "[bench]" not in line


def test_a_pi_whose_gpio_chip_may_not_be_opened(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=True)
    # The tests may run as root, whom os.access always allows: the check stands in.
    monkeypatch.setattr(gpiobackend, "_accessible", lambda chip: False)
    line = explain(tmp_path, model=PI, chips=1)
    assert line.startswith(f"no permission to open {tmp_path}/dev/gpiochip0 (group ")
    assert "run as a member of the" in line and "evsed install" in line
    assert "[bench]" not in line


def test_another_board_with_gpio_but_no_lgpio(tmp_path, monkeypatch) -> None:
    lgpio(monkeypatch, installed=False)
    line = explain(tmp_path, model=None, chips=1)
    assert "this machine (not a Raspberry Pi)" in line and "the [pi] extra" in line
    assert "[bench]" not in line  # it has a GPIO chip: it may well be the charger


def test_a_requested_factory_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "lgpio")
    assert explain(tmp_path, model=PI, chips=1).startswith("GPIOZERO_PIN_FACTORY=lgpio ")


# -- `evsed safe-off` on a real configuration, on this machine's real gpiozero -----------


def _no_real_gpio() -> None:
    from gpiozero import BadPinFactory, Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Device._default_pin_factory().close()
    except BadPinFactory:
        return
    pytest.skip("this machine has GPIO")


@pytest.mark.parametrize(
    ("model", "chips", "says"),
    [
        (PI, 1, "the [pi] extra is not installed"),
        (None, 0, "not a Raspberry Pi (no board model in /proc/device-tree) and no GPIO chip"),
    ],
)
def test_safe_off_says_what_is_wrong_and_never_offers_the_bench(
    tmp_path, monkeypatch, capsys, model, chips, says
) -> None:
    lgpio(monkeypatch, installed=False)
    _no_real_gpio()
    model_file, dev = machine(tmp_path, model=model, chips=chips)
    monkeypatch.setattr(gpiobackend, "_MODEL", model_file)
    monkeypatch.setattr(gpiobackend, "_DEV", dev)
    cfg = config.parse({"central_system": {"enabled": False}, "state_dir": str(tmp_path)})
    assert not cfg.bench.enabled  # a real configuration
    assert run.safe_off(cfg) == run.EXIT_NOT_SAFE
    err = capsys.readouterr().err
    assert says in err
    assert "NOT SAFE" in err
    assert "[bench]" not in err, err
