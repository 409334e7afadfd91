"""`evsed safe-off` leaves through os._exit, whatever happens (safety review, finding 1b).

Once it has claimed the lines, the devices holding the safe levels must never be closed:
gpiozero closes every device at the interpreter's exit (and a device freed), and a closed
lgpio line is an input with no pull, so relay and pilot float. An exception escaping
`run()` or `main()` (a BrokenPipeError printing to a journal stream that has gone, a
KeyboardInterrupt, a bug) ended the process through the interpreter's exit. The report
now cannot raise, and `main()` leaves through os._exit for anything that escapes (exit 1).
The time is injected (tests.support.steptime): nothing here sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from evsed.controller import safeoff
from tests.support.steptime import StepTime

CFG = """
[central_system]
enabled = false
[[connectors]]
[connectors.pilot]
pin = 18
[connectors.contactor]
relay_pin = 17
feedback_pin = 27
"""


class BrokenStream:
    """A journal stream that has gone: every write and flush is EPIPE."""

    def write(self, _s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


class Exited(BaseException):
    """What the test's os._exit raises instead of ending pytest."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    f.close()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(CFG)
    return path


def _output(factory: MockFactory, gpio: int) -> float | None:
    pin = factory.pin(gpio)
    return float(pin.state) if pin.function == "output" else None


@pytest.mark.parametrize("broken", [("stdout",), ("stdout", "stderr")])
def test_a_broken_journal_stream_does_not_stop_safe_off(
    tmp_path: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    """Fails without the change: run() raises BrokenPipeError from its first report line,
    after the lines were claimed."""
    for name in broken:
        monkeypatch.setattr(sys, name, BrokenStream())
    clock = StepTime()
    code = safeoff.run(
        _config(tmp_path), pin_factory=factory, monotonic=clock.monotonic, sleep=clock.sleep
    )
    assert code == safeoff.EXIT_SAFE
    assert _output(factory, 17) == 0 and _output(factory, 18) == 1.0
    # The weld reported as ever, the streams broken or not.
    for device in safeoff.held:
        device.close()
    safeoff.held.clear()
    factory.pin(27).drive_high()
    code = safeoff.run(
        _config(tmp_path), pin_factory=factory, monotonic=clock.monotonic, sleep=clock.sleep
    )
    assert code == safeoff.EXIT_WELDED


@pytest.mark.parametrize(
    "escaping",
    [
        lambda: RuntimeError("a bug"),
        KeyboardInterrupt,
        lambda: BrokenPipeError(32, "Broken pipe"),
    ],
    ids=["RuntimeError", "KeyboardInterrupt", "BrokenPipeError"],
)
def test_whatever_escapes_run_leaves_through_os_exit_1_the_lines_held(
    tmp_path: Path,
    factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    escaping: Callable[[], BaseException],
) -> None:
    """An exception out of the weld check's wait, the relay and pilot already claimed
    (in drive_all's own list, not yet in `held`). Fails without the change: the exception
    escapes main() instead of os._exit(1). The exception is made afresh (nothing but its
    own traceback keeps drive_all's frame alive): without the reference main() keeps, the
    devices were freed, and closed, before os._exit."""
    factory.pin(27).drive_high()  # contacts closed: the check waits

    def sleep(_s: float) -> None:
        raise escaping()

    real = safeoff.run

    def run(path: Path | None, *, record: Path | None = None) -> int:
        return real(path, record=record, pin_factory=factory, monotonic=lambda: 0.0, sleep=sleep)

    def exit_(code: int) -> Any:
        raise Exited(code)

    monkeypatch.setattr(safeoff, "run", run)
    monkeypatch.setattr(safeoff.os, "_exit", exit_)
    with pytest.raises(Exited) as exited:
        safeoff.main(["--config", str(_config(tmp_path))])
    assert exited.value.code == safeoff.EXIT_NOT_SAFE
    # Still driven at os._exit: nothing closed the devices on the way (a device freed
    # with the exception's frames is closed by gpiozero, its line an input).
    assert _output(factory, 17) == 0 and _output(factory, 18) == 1.0
    err = capsys.readouterr().err
    assert f"evsed safe-off: NOT SAFE: stopped by {escaping()!r}" in err
    assert "Traceback" in err
    del exited


def test_main_leaves_through_os_exit_even_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def exit_(code: int) -> Any:
        raise Exited(code)

    monkeypatch.setattr(safeoff.os, "_exit", exit_)
    with pytest.raises(Exited) as exited:
        safeoff.main(["--no-such-option"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


DRIVER = textwrap.dedent(
    """
    import atexit, os, sys
    from gpiozero.pins.mock import MockPin

    def close(self, _orig=MockPin.close):
        os.write(2, b"CLOSED a GPIO line\\n")
        _orig(self)

    MockPin.close = close
    atexit.register(lambda: os.write(2, b"INTERPRETER EXIT\\n"))
    from evsed.controller.safeoff import main
    main(sys.argv[1:])
    """
)


def test_a_journal_stream_gone_at_the_cli_still_ends_through_os_exit(tmp_path: Path) -> None:
    """The entry point as the unit runs it, stdout a pipe whose reader has gone (journald
    stopped). Fails without the change: the BrokenPipeError of main()'s flush ended the
    interpreter (exit 1), whose atexit closed every GPIO line safe-off held."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    reader, writer = os.pipe()
    os.close(reader)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", DRIVER, "--config", str(_config(tmp_path))],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert "CLOSED a GPIO line" not in ran.stderr
    assert "INTERPRETER EXIT" not in ran.stderr
    assert ran.returncode == safeoff.EXIT_SAFE, ran.stderr
