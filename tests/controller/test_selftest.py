"""`evsed selftest` on the simulated bench: every row passes on a healthy bench, and each
injected fault fails its own row (and only the rows that depend on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evsed.controller import cli, selftest, status
from evsed.controller.config import Config
from evsed.hal.contactor import RelayContactor


def _config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "connectors": [{"lock": {"enabled": True}, "meter": {"port": 0}}],
            "bench": {"control_port": 0},
        }
    )


def _by_part(rows: list[selftest.Row]) -> dict[str, selftest.Row]:
    return {r.part: r for r in rows}


async def test_healthy_bench_passes_every_row(tmp_path: Path) -> None:
    relay_seen: list[bool] = []

    async def watch(bench: Any) -> None:
        relay_seen.append(bench.sim(1).pins.relay_energized)

    rows = await selftest.run_selftest(
        _config(tmp_path), on_bench=watch, reader_window_s=0.5, close_relay=True
    )
    parts = _by_part(rows)
    assert set(parts) == {
        "pilot +12 V",
        "pilot -12 V",
        "proximity",
        "RCD self-test",
        "relay close",
        "relay open",
        "lock",
        "temperature",
        "meter",
        "reader",
    }
    assert [r.part for r in rows if r.ok is not True] == [], selftest.format_table(rows)
    assert relay_seen == [False]
    assert not selftest.failed(rows)
    assert selftest.format_table(rows).endswith(f"all {len(rows)} checks passed")


def test_the_summary_counts_skipped_rows_apart_from_passed_ones() -> None:
    """Fails without the change: a skipped row was folded into "all checks passed"."""

    def rows(*oks: bool | None) -> list[selftest.Row]:
        return [selftest.Row(f"part {i}", 1, ok, "") for i, ok in enumerate(oks)]

    assert selftest.format_table(rows(True, True, None, None)).endswith(
        "\nall 2 checks passed, 2 skipped"
    )
    assert selftest.summary(rows(True, True, True)) == "all 3 checks passed"
    assert selftest.summary(rows(True, False, None)) == "1 failed, 1 skipped"
    assert selftest.summary(rows(False, True)) == "1 failed"
    assert selftest.summary(rows(True, None)) == "1 check passed, 1 skipped"
    assert selftest.summary(rows(None, None)) == "no checks run, 2 skipped"


# fault injected -> the row that must fail
FAULT_ROWS = [
    ("pilot_short", "pilot +12 V"),
    ("pilot_negative_lost", "pilot -12 V"),
    ("pp_short", "proximity"),
    ("contactor_fails_to_close", "relay close"),
    ("contactor_welded", "relay open"),
    ("rcd_trip", "RCD self-test"),
    ("lock_jammed", "lock"),
    ("over_temperature", "temperature"),
    ("meter_silent", "meter"),
    ("meter_garbage", "meter"),
    ("reader_unplugged", "reader"),
]
# Rows that cannot be tried once another has failed (the relay is closed only on a good
# pilot and an untripped RCD).
DEPENDS = {
    # A short holds CP at 0 V: neither plateau can be right.
    "pilot +12 V": {"pilot -12 V", "relay close", "relay open"},
    "RCD self-test": {"relay close", "relay open"},
}


@pytest.mark.parametrize(("fault", "row"), FAULT_ROWS)
async def test_injected_fault_fails_its_row(tmp_path: Path, fault: str, row: str) -> None:
    async def inject(bench: Any) -> None:
        await bench.inject_fault(fault, 1, True)

    rows = await selftest.run_selftest(
        _config(tmp_path), on_bench=inject, reader_window_s=0.5, close_relay=True
    )
    failing = {r.part for r in rows if r.ok is False}
    assert row in failing, selftest.format_table(rows)
    allowed = {row} | DEPENDS.get(row, set())
    if fault == "contactor_welded":
        allowed.add("relay close")  # welded reads closed: that part is right
    assert failing <= allowed, selftest.format_table(rows)
    assert selftest.failed(rows)


async def test_relay_left_open_when_a_check_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def keep(bench: Any) -> None:
        seen["pins"] = bench.sim(1).pins

    original = selftest._Connector.relay

    async def relay_then_boom(self: selftest._Connector) -> None:
        self.parts.contactor.energize()
        seen["closed_mid_test"] = seen["pins"].relay_energized
        raise RuntimeError("boom")

    monkeypatch.setattr(selftest._Connector, "relay", relay_then_boom)

    async def interrupted_meter(self: selftest._Connector) -> None:
        self.parts.contactor.energize()
        raise KeyboardInterrupt

    rows = await selftest.run_selftest(_config(tmp_path), on_bench=keep, reader_window_s=0.1)
    assert seen["closed_mid_test"] is True
    assert _by_part(rows)["relay"].ok is False
    assert "boom" in _by_part(rows)["relay"].detail
    assert seen["pins"].relay_energized is False

    monkeypatch.setattr(selftest._Connector, "relay", original)
    monkeypatch.setattr(selftest._Connector, "meter", interrupted_meter)
    with pytest.raises(KeyboardInterrupt):
        await selftest.run_selftest(_config(tmp_path), on_bench=keep, reader_window_s=0.1)
    assert seen["pins"].relay_energized is False


async def test_cable_in_socket_but_not_in_car_keeps_relay_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cable plugged into the socket, its car end hanging free: CP reads A (open at the
    car end), PP reads a 32 A cable. Closing the relay would make the free pins live."""
    energized: list[int] = []
    monkeypatch.setattr(RelayContactor, "energize", lambda self: energized.append(1))

    async def cable_only(bench: Any) -> None:
        bench.sim(1).pins.set_pp_ohms(220.0)

    rows = await selftest.run_selftest(
        _config(tmp_path), on_bench=cable_only, reader_window_s=0.1, close_relay=True
    )
    by = _by_part(rows)
    assert by["pilot +12 V"].ok is True, selftest.format_table(rows)
    assert by["proximity"].detail.startswith("32 A cable")
    for part in ("relay close", "relay open"):
        assert by[part].ok is False and "cable is plugged in the socket" in by[part].detail
    assert energized == []


async def test_relay_closed_only_with_consent(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def keep(bench: Any) -> None:
        seen["pins"] = bench.sim(1).pins

    rows = await selftest.run_selftest(_config(tmp_path), on_bench=keep, reader_window_s=0.1)
    by = _by_part(rows)
    for part in ("relay close", "relay open"):
        assert (by[part].ok, by[part].detail) == (None, "not tried (needs --close-relay)")
    assert not selftest.failed(rows)

    asked: list[tuple[int, bool]] = []

    def no(n: int) -> bool:
        asked.append((n, seen["pins"].relay_energized))
        return False

    rows = await selftest.run_selftest(
        _config(tmp_path), on_bench=keep, reader_window_s=0.1, close_relay=no
    )
    assert asked == [(1, False)]  # asked before anything closed
    assert _by_part(rows)["relay close"].ok is None

    def yes(n: int) -> bool:
        asked.append((n, seen["pins"].relay_energized))
        return True

    rows = await selftest.run_selftest(
        _config(tmp_path), on_bench=keep, reader_window_s=0.1, close_relay=yes
    )
    assert _by_part(rows)["relay close"].ok is True, selftest.format_table(rows)


async def test_no_pwm_once_a_vehicle_is_seen(tmp_path: Path) -> None:
    """pilot +12 V found a vehicle (state B): a 50 % duty would offer it 30 A."""
    duties: list[float] = []

    async def vehicle(bench: Any) -> None:
        await bench.plug(1)

    original = selftest._Connector.pilot_minus

    async def watch(self: selftest._Connector) -> None:
        set_duty = self.parts.pilot.set_duty

        def spy(duty: float) -> None:
            duties.append(duty)
            set_duty(duty)

        self.parts.pilot.set_duty = spy  # type: ignore[method-assign]
        try:
            await original(self)
        finally:
            self.parts.pilot.set_duty = set_duty  # type: ignore[method-assign]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selftest._Connector, "pilot_minus", watch)
        rows = await selftest.run_selftest(
            _config(tmp_path), on_bench=vehicle, reader_window_s=0.1, close_relay=True
        )
    by = _by_part(rows)
    assert by["pilot +12 V"].ok is False, selftest.format_table(rows)
    assert by["pilot -12 V"].ok is None and "vehicle" in by["pilot -12 V"].detail
    assert [d for d in duties if d < 1.0] == []
    assert by["relay close"].detail.startswith("not tried")


def test_cli_exit_status_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[bench]\ncontrol_port = 0\n"
        "[[connectors]]\n[connectors.meter]\nport = 0\n"
    )
    assert cli.main(["selftest", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "pilot +12 V" in out and "PASS" in out
    # No --close-relay and no terminal: the relay rows are skipped, and counted.
    skips = sum(" skip " in line for line in out.splitlines())
    assert skips >= 2, out
    assert out.rstrip().splitlines()[-1] == f"all 7 checks passed, {skips} skipped", out

    async def broken(config: Config, **_: Any) -> list[selftest.Row]:
        return [selftest.Row("meter", 1, False, "no answer")]

    monkeypatch.setattr(selftest, "run_selftest", broken)
    assert cli.main(["selftest", "--config", str(cfg)]) == 1
    assert "FAIL" in capsys.readouterr().out


def _cli_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "evsed.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[bench]\ncontrol_port = 0\n"
        "[[connectors]]\n[connectors.meter]\nport = 0\n"
    )
    return cfg


def test_cli_relay_needs_flag_or_a_yes_on_a_tty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    async def record(config: Config, **kw: Any) -> list[selftest.Row]:
        seen.append(kw["close_relay"])
        return [selftest.Row("relay close", 1, None, selftest.NEEDS_CONSENT)]

    monkeypatch.setattr(selftest, "run_selftest", record)
    cfg = str(_cli_config(tmp_path))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["selftest", "--config", cfg]) == 0
    assert cli.main(["selftest", "--config", cfg, "--close-relay"]) == 0
    assert seen == [False, True]
    assert "needs --close-relay" in capsys.readouterr().out

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert cli.main(["selftest", "--config", cfg]) == 0
    ask = seen[-1]
    assert callable(ask)
    prompts: list[str] = []
    for answer, expected in (("y", True), ("", False), ("no", False)):
        monkeypatch.setattr("builtins.input", lambda p, a=answer: prompts.append(p) or a)
        assert ask(1) is expected
    assert "LIVE" in prompts[0]


def test_cli_refuses_while_a_service_holds_the_instance_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service still starting (its socket not up yet) owns the outputs already."""
    ran: list[bool] = []

    async def record(config: Config, **_: Any) -> list[selftest.Row]:
        ran.append(True)
        return []

    monkeypatch.setattr(selftest, "run_selftest", record)
    cfg = str(_cli_config(tmp_path))
    with status.InstanceLock(tmp_path / "state"):
        assert cli.main(["selftest", "--config", cfg]) == cli.EXIT_CONFIG
    assert ran == []
    err = capsys.readouterr().err
    assert "another evsed uses" in err
    # a bench has no unit: the hint says what to stop, systemctl only for the service
    assert "stop the running evsed (sudo systemctl stop evsed if it runs as the service)" in err
    # released afterwards: a service may start once the test is over
    assert cli.main(["selftest", "--config", cfg]) == 0
    with status.InstanceLock(tmp_path / "state"):
        pass


def test_cli_lock_file_unreadable_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def record(config: Config, **_: Any) -> list[selftest.Row]:
        raise AssertionError("selftest ran without knowing whether evsed runs")

    monkeypatch.setattr(selftest, "run_selftest", record)
    cfg = str(_cli_config(tmp_path))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / status.LOCK_NAME).write_text("")

    def denied(self: status.InstanceLock) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(status.InstanceLock, "acquire", denied)
    assert cli.main(["selftest", "--config", cfg]) == cli.EXIT_CONFIG
    assert "cannot tell whether evsed is running" in capsys.readouterr().err
