"""Which gpiozero pin factory drives the real pins, and a one-line answer when there is none.

gpiozero tries lgpio, RPi.GPIO, pigpio and its native factory in turn, warns for each one it
skips and ends with `BadPinFactory: Unable to load any default pin factory!`, which says
nothing about what to install. On Raspberry Pi OS Bookworm (and on any Pi 5, where RPi.GPIO
and pigpio do not work) the factory is lgpio's, which also does the SPI of the ADC
(`/dev/spidev*`, so spidev is not needed): `pip install 'evsed[pi]'` brings it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "install the lgpio backend into evsed's environment: pip install 'evsed[pi]' "
    "(or pip install lgpio)"
)
_MODEL = Path("/proc/device-tree/model")


class NoGpioBackend(RuntimeError):
    """No pin factory for real GPIO; str() is one line saying what to do."""


def board_model(model_file: Path = _MODEL) -> str | None:
    try:
        return model_file.read_bytes().rstrip(b"\0\n").decode(errors="replace") or None
    except OSError:
        return None


def explain(exc: BaseException, *, model_file: Path = _MODEL) -> str:
    """Why gpiozero found no pin factory here, and what to do about it (one line)."""
    requested = os.environ.get("GPIOZERO_PIN_FACTORY", "").strip()
    if requested:
        return f"GPIOZERO_PIN_FACTORY={requested} could not be loaded ({exc})"
    model = board_model(model_file)
    try:
        importlib.import_module("lgpio")
    except ImportError:
        if model is None:
            return (
                "gpiozero has none here (no Raspberry Pi, no lgpio): on the Pi, "
                f"{INSTALL_HINT}; to simulate the charger here, add a [bench] section"
            )
        return f"no GPIO backend for the {model}: {INSTALL_HINT}"
    if model is None:
        return (
            f"gpiozero has none here ({exc}: no Raspberry Pi); to simulate the charger "
            "here, add a [bench] section"
        )
    # lgpio is there on a Pi but could not open the GPIO chip: usually permissions.
    return (
        f"lgpio could not open the GPIO chip of the {model} ({exc}): run as a member of the "
        "gpio group (`evsed install` sets the service user up so), or check /dev/gpiochip*"
    )


def default_factory(*, model_file: Path = _MODEL) -> Any:
    """The factory gpiozero would pick (GPIOZERO_PIN_FACTORY honoured), without its
    fallback warnings; raises NoGpioBackend with `explain()`'s line."""
    from gpiozero import Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per factory it skips
            return Device._default_pin_factory()
    except Exception as exc:
        raise NoGpioBackend(explain(exc, model_file=model_file)) from exc
