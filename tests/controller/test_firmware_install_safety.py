"""A firmware installation never restarts the service under a transaction (safety review of
issue 12): from Installing on, the connectors' start gate refuses new starts (reported
Unavailable, as a scheduled ChangeAvailability would be), the block is lifted when the
installation fails, and the installer asks once more right before it switches and
restarts. Across the restart, the new version starts nothing until it is confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.update import FirmwareStatus, FirmwareUpdater, InstallFailed
from evsed.controller.store import Store
from evsed.controller.store.firmware import FirmwareState
from evsed.hwmocks.central_system import CentralSystem
from tests.support.clock import FakeClock
from tests.support.file_servers import http_server
from tests.support.ocpp_stack import CARD, CP_ID, ocpp_rig
from tests.support.status_frames import statuses, wait_status

WHEEL = b"PK\x03\x04 not really a wheel " * 100
PACKAGE = "/evsed-9.9.9-py3-none-any.whl"
KEYS = {"AuthorizeRemoteTxRequests": "false"}
FW = "FirmwareStatusNotification"


class SlowInstaller:
    """pip takes minutes: the installation waits for the test; then it switches (asking
    `may_switch` as the venv installer does) and "restarts", or fails."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.switch_allowed: bool | None = None
        self.forgotten = 0

    async def install(self, package: Path, may_switch: Callable[[], Awaitable[bool]]) -> bool:
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise InstallFailed("pip install failed (exit 1)")
        self.switch_allowed = await may_switch()
        if not self.switch_allowed:
            raise InstallFailed("a transaction is still running: nothing switched")
        return False  # the venv installer restarts the process here

    def awaiting_confirmation(self) -> bool:
        return False

    def outcome_after_restart(self) -> bool:
        return False

    def forget(self) -> None:
        self.forgotten += 1


@pytest.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    async with CentralSystem(tags={CARD: "Accepted"}) as central:
        yield central


def _connector_statuses(cs: CentralSystem, connector_id: int, since: int) -> list[str]:
    return [
        f.payload["status"]
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_call
        and f.action == "StatusNotification"
        and f.payload["connectorId"] == connector_id
    ]


async def _installing(rig: Any, cs: CentralSystem, srv: Any, installer: SlowInstaller) -> int:
    mark = cs.mark()
    now = rig.clock.now().isoformat()
    await rig.command(call.UpdateFirmware(location=srv.url(PACKAGE), retrieve_date=now))
    await wait_status(cs, FW, "Installing", mark)
    await asyncio.wait_for(installer.started.wait(), 5)
    return mark


async def test_no_transaction_starts_while_installing(cs: CentralSystem, tmp_path: Path) -> None:
    installer = SlowInstaller()
    with http_server() as srv:
        srv.files[PACKAGE] = WHEEL
        async with ocpp_rig(
            cs, tmp_path, keys=KEYS, app_options={"firmware_installer": installer}
        ) as rig:
            mark = await _installing(rig, cs, srv, installer)
            # The idle connector is out of service for the CS, connector 0 too.
            await wait_status(cs, "StatusNotification", "Unavailable", mark)
            await rig.until(lambda: "Unavailable" in _connector_statuses(cs, 0, mark))
            # A driver arrives during the minutes pip takes: plug, remote start, card.
            await rig.bench.plug(1)
            await rig.run(2)
            assert await rig.remote_start(CARD, connector_id=1) == "Rejected"
            rig.stack.charger.present_tag(CARD)  # type: ignore[union-attr]
            await rig.run(3)
            assert rig.connector.transaction is None
            assert rig.status == "Unavailable"
            installer.gate.set()
            await rig.until(lambda: installer.switch_allowed is not None)
            assert installer.switch_allowed is True
            assert rig.connector.transaction is None  # what the restart would have cut
    assert not rig.calls("StartTransaction", since=mark)


async def test_a_failed_installation_lets_drivers_charge_again(
    cs: CentralSystem, tmp_path: Path
) -> None:
    installer = SlowInstaller(fail=True)
    with http_server() as srv:
        srv.files[PACKAGE] = WHEEL
        async with ocpp_rig(
            cs, tmp_path, keys=KEYS, app_options={"firmware_installer": installer}
        ) as rig:
            mark = await _installing(rig, cs, srv, installer)
            # Both out of service for the CS before the failure: the reporter may still be
            # on connector 0's Unavailable, and connector 1's, back to Available before it
            # is sent, would be no change to report.
            await rig.until(
                lambda: all("Unavailable" in _connector_statuses(cs, c, mark) for c in (0, 1))
            )
            installer.gate.set()
            await wait_status(cs, FW, "InstallationFailed", mark)
            await rig.until(lambda: rig.status == "Available")
            for cid in (1, 0):
                await rig.until(lambda c=cid: _connector_statuses(cs, c, mark)[-1] == "Available")
            await rig.start_transaction()
    assert statuses(cs, FW, mark) == [
        "Downloading",
        "Downloaded",
        "Installing",
        "InstallationFailed",
    ]


# ----------------------------------------------------------------- the updater alone


class Updater:
    """A FirmwareUpdater with a downloaded package waiting, a scripted `busy`, and a record
    of the block on starts (what the charger's start gate is told)."""

    def __init__(self, tmp_path: Path, busy: list[bool], installer: Any, **kw: Any) -> None:
        self.clock = FakeClock()
        self.store = Store(tmp_path / "evsed.db")
        self.busy_answers = busy
        self.looks = 0
        self.blocks: list[str | None] = []
        self.sent: list[str] = []
        (tmp_path / "fw").mkdir()
        (tmp_path / "fw" / "evsed-9.9.9-py3-none-any.whl").write_bytes(WHEEL)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        self.store.set_firmware_state(
            FirmwareState(
                location="http://127.0.0.1:1/evsed-9.9.9-py3-none-any.whl",
                retrieve_at=now,
                status=FirmwareStatus.DOWNLOADED,
                retries_left=0,
                retry_interval_s=0,
                updated_at=now,
            )
        )
        self.online = True
        self.updater = FirmwareUpdater(
            store=self.store,
            clock=self.clock,
            download_dir=tmp_path / "fw",
            send=self._send,
            busy=self._busy,
            installer=installer,
            online=lambda: self.online,
            maintenance=self.blocks.append,
            busy_poll_s=10,
            **kw,
        )

    async def _send(self, status: str) -> bool:
        self.sent.append(status)
        return True

    def _busy(self) -> bool:
        self.looks += 1
        return self.busy_answers.pop(0) if self.busy_answers else False


async def test_a_transaction_that_slipped_in_before_the_block_is_waited_for(
    tmp_path: Path,
) -> None:
    installer = SlowInstaller()
    installer.gate.set()
    # Idle at the first look; the block is set; a transaction had started in between.
    u = Updater(tmp_path, [False, True, True, False, False], installer)
    u.updater.resume()
    await u.clock.advance(0)
    assert u.blocks == ["firmware installation", None]  # lifted while it waits
    assert "Installing" not in u.sent
    await u.clock.advance(20)  # that transaction ends
    assert u.blocks == ["firmware installation", None, "firmware installation"]
    assert u.sent == ["Installing"] and installer.switch_allowed is True


async def test_the_switch_is_refused_while_a_transaction_still_runs(tmp_path: Path) -> None:
    installer = SlowInstaller()
    # Idle when Installing began; busy at the last look, for longer than the bound.
    u = Updater(tmp_path, [False, False], installer, switch_wait_s=60)
    u.busy_answers.extend([True] * 100)
    u.updater.resume()
    await u.clock.advance(0)
    installer.gate.set()
    await u.clock.advance(30)
    assert installer.switch_allowed is None  # still waiting, bounded
    await u.clock.advance(40)
    assert installer.switch_allowed is False
    assert u.sent == ["Installing", "InstallationFailed"]
    assert u.blocks == ["firmware installation", None]  # charging may go on


class Unconfirmed(SlowInstaller):
    def __init__(self, new_version: bool, rolled_back: bool = False) -> None:
        super().__init__()
        self.new_version = new_version
        self.rolled_back = rolled_back

    def awaiting_confirmation(self) -> bool:
        return self.new_version

    def outcome_after_restart(self) -> bool:
        return self.new_version and not self.rolled_back


@pytest.mark.parametrize("new_version", [True, False])
async def test_the_new_version_starts_nothing_until_confirmed(
    tmp_path: Path, new_version: bool
) -> None:
    """The new version waits (offline here) for its accepted boot: no start meanwhile, so
    that a rollback, which restores the database of the switch, loses no transaction. The
    old version back after a rollback charges at once, offline too."""
    u = Updater(tmp_path, [], Unconfirmed(new_version))
    state = u.store.firmware_state()
    assert state is not None
    u.store.set_firmware_state(replace(state, status=FirmwareStatus.INSTALLING))
    u.online = False
    u.updater.hold_starts_if_unconfirmed()  # the charger built, not yet running
    assert u.blocks == (["firmware not yet confirmed"] if new_version else [])
    u.updater.resume()
    await u.clock.advance(30)
    assert u.blocks == (["firmware not yet confirmed"] * 2 if new_version else [])
    assert u.sent == []
    u.online = True
    await u.clock.advance(1)
    held = ["firmware not yet confirmed"] * 2 + [None]
    assert u.blocks == (held if new_version else [])
    assert u.sent == ["Installed" if new_version else "InstallationFailed"]


async def test_the_new_version_confirms_before_its_queue_delivers(
    cs: CentralSystem, tmp_path: Path
) -> None:
    """A message queued before the switch is in the database snapshot: delivered by a new
    version that is rolled back after all, the old one would send it again. So the new
    version confirms as the session goes online, before the queue's first message."""
    from evsed.controller.ocpp16.app import OcppApp
    from tests.support.bench_rig import bench_config

    before = OcppApp(bench_config(), FakeClock(), tmp_path)
    stamp = "2026-01-01T00:00:00Z"
    sample = {"timestamp": stamp, "sampledValue": [{"value": "1"}]}
    before.txqueue.enqueue("MeterValues", {"connectorId": 1, "meterValue": [sample]}, None)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    before.store.set_firmware_state(
        FirmwareState("http://cs/evsed-9.9.9.whl", t, FirmwareStatus.INSTALLING, 0, 0, t)
    )
    before.close()

    class NewVersion(Unconfirmed):
        delivered_before: int | None = None

        def outcome_after_restart(self) -> bool:
            if self.delivered_before is None:
                self.delivered_before = len(
                    [f for f in cs.frames_of(CP_ID) if f.is_call and f.action == "MeterValues"]
                )
            return True

    installer = NewVersion(new_version=True)
    mark = cs.mark()
    async with ocpp_rig(
        cs, tmp_path, keys=KEYS, app_options={"firmware_installer": installer}
    ) as rig:
        await rig.call_of("MeterValues", since=mark)
        await rig.run(2)
        await wait_status(cs, FW, "Installed", mark)
    assert installer.delivered_before == 0


async def test_a_new_version_rolled_back_while_it_starts_leaves_the_report_to_the_old(
    tmp_path: Path,
) -> None:
    """The deadline passed as it came online: the watcher put the previous version back and
    restarts it. This one neither reports (forget would drop the database snapshot the
    old version needs) nor lets a transaction start (the restart would cut it)."""
    installer = Unconfirmed(new_version=True, rolled_back=True)
    u = Updater(tmp_path, [], installer)
    state = u.store.firmware_state()
    assert state is not None
    u.store.set_firmware_state(replace(state, status=FirmwareStatus.INSTALLING))
    u.updater.hold_starts_if_unconfirmed()
    u.updater.resume()
    await u.clock.advance(5)
    assert u.sent == [] and installer.forgotten == 0
    assert u.blocks[-1] == "firmware not yet confirmed"  # still blocked
    assert u.store.firmware_state() is not None  # the old version reports from it


class FirstFormInstaller:
    """A pluggable installer written before the switch check: install(package) only."""

    def __init__(self) -> None:
        self.installed = 0

    async def install(self, package: Path) -> bool:
        self.installed += 1
        return True

    def outcome_after_restart(self) -> bool:
        return False

    def forget(self) -> None:
        pass


async def test_an_installer_of_the_first_form_still_works(tmp_path: Path) -> None:
    installer = FirstFormInstaller()
    u = Updater(tmp_path, [], installer)
    u.updater.hold_starts_if_unconfirmed()  # no awaiting_confirmation: nothing held
    u.updater.resume()
    await u.clock.advance(1)
    assert installer.installed == 1
    assert u.sent == ["Installing", "Installed"]
    assert u.blocks == ["firmware installation", None]
