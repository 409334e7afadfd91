"""Which gpiozero pin factory drives the real pins, and a one-line answer when there is none.

gpiozero tries lgpio, RPi.GPIO, pigpio and its native factory in turn, warns for each one it
skips and ends with `BadPinFactory: Unable to load any default pin factory!`, which says
nothing about what to install. On Raspberry Pi OS Bookworm (and on any Pi 5, where RPi.GPIO
and pigpio do not work) the factory is lgpio's, which also does the SPI of the ADC
(`/dev/spidev*`, so spidev is not needed): `pip install 'evsed[pi]'` brings it.

The answer names what is really missing, found from the machine itself (gpiozero's own
exception says none of it): lgpio (the [pi] extra) not installed, no GPIO chip
(/dev/gpiochip*: not a Pi, or hidden from the process), no permission on the chip (not in
its group). "Add a [bench] section" is only offered where it can be the answer: on a machine
that is no charger (not a Pi, no GPIO chip), and never to `safe-off`, which a real
configuration's unit runs after every exit.
"""

from __future__ import annotations

import grp
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "install the lgpio backend into evsed's environment: pip install 'evsed[pi]' "
    "(or pip install lgpio)"
)
BENCH_HINT = "to simulate the charger on this machine, set enabled = true under [bench]"
_MODEL = Path("/proc/device-tree/model")
_DEV = Path("/dev")


class NoGpioBackend(RuntimeError):
    """No pin factory for real GPIO; str() is one line saying what to do."""


def board_model(model_file: Path | None = None) -> str | None:
    try:
        raw = (model_file or _MODEL).read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0\n").decode(errors="replace") or None


def _has_lgpio() -> bool:
    try:
        importlib.import_module("lgpio")
    except ImportError:
        return False
    return True


def _accessible(chip: Path) -> bool:
    """May this process open the chip for reading and writing (what lgpio does)?"""
    return os.access(chip, os.R_OK | os.W_OK)


def _group(path: Path) -> str:
    try:
        return grp.getgrgid(path.stat().st_gid).gr_name
    except (KeyError, OSError):
        return "gpio"


def _lgpio_error() -> str | None:
    """What lgpio's factory says when it is opened alone (it touches no pin)."""
    try:
        from gpiozero.pins.lgpio import LGPIOFactory

        LGPIOFactory().close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _install_hint() -> str:
    # Name the environment: on a charger it is /opt/evsed/venvs/<version>, not the
    # user's own pip (which would install lgpio where evsed never looks).
    return f"{INSTALL_HINT} (this evsed runs from {sys.prefix}: {sys.prefix}/bin/pip install lgpio)"


def explain(
    exc: BaseException,
    *,
    model_file: Path | None = None,
    dev: Path | None = None,
    bench_hint: bool = True,
) -> str:
    """Why gpiozero found no pin factory here, and what to do about it (one line).
    `bench_hint`: whether the simulated bench may be offered (never for `safe-off`)."""
    requested = os.environ.get("GPIOZERO_PIN_FACTORY", "").strip()
    if requested:
        return f"GPIOZERO_PIN_FACTORY={requested} could not be loaded ({exc})"
    model = board_model(model_file)
    chips = sorted((dev or _DEV).glob("gpiochip*"))
    lgpio = _has_lgpio()
    if model is None and not chips:
        # A PC, a container, a CI runner: no charger here at all.
        line = (
            "gpiozero has none here: not a Raspberry Pi (no board model in "
            "/proc/device-tree) and no GPIO chip (/dev/gpiochip*)"
        )
        if bench_hint:
            line += f"; {BENCH_HINT}"
        if not lgpio:
            line += f"; on the Pi, {INSTALL_HINT}"
        return line
    where = f"the {model}" if model is not None else "this machine (not a Raspberry Pi)"
    if not lgpio:
        return f"no GPIO backend for {where}: the [pi] extra is not installed; {_install_hint()}"
    if not chips:
        return (
            f"no GPIO chip (/dev/gpiochip*) on {where}: the kernel shows none to this "
            "process (a container, or a unit with PrivateDevices=?)"
        )
    if not any(_accessible(chip) for chip in chips):
        chip = chips[0]
        group = _group(chip)
        return (
            f"no permission to open {chip} (group {group}): run as a member of the {group} "
            "group (`evsed install` sets the service user up so; after usermod -aG, log in "
            "again)"
        )
    # lgpio and a chip it may open, and still no factory: lgpio's own words, which
    # gpiozero's BadPinFactory leaves out.
    why = _lgpio_error() or str(exc)
    return f"lgpio could not open the GPIO chip of {where} ({why}): check /dev/gpiochip*"


def default_factory(
    *, model_file: Path | None = None, dev: Path | None = None, bench_hint: bool = True
) -> Any:
    """The factory gpiozero would pick (GPIOZERO_PIN_FACTORY honoured), without its
    fallback warnings; raises NoGpioBackend with `explain()`'s line."""
    from gpiozero import Device

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per factory it skips
            return Device._default_pin_factory()
    except Exception as exc:
        raise NoGpioBackend(
            explain(exc, model_file=model_file, dev=dev, bench_hint=bench_hint)
        ) from exc
