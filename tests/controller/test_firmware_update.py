"""UpdateFirmware end to end: the embedded Central System asks, the charger downloads from
a server the test runs on loopback (http.server, pyftpdlib), installs through an installer
double (the venv installer has its own tests), and reports every step."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call

from evsed.controller.firmware.update import InstallFailed
from evsed.controller.ocpp16.profiles import SUPPORTED_FEATURE_PROFILES
from evsed.hwmocks.central_system import CentralSystem, Frame
from tests.support.clock import FakeClock
from tests.support.file_servers import ftp_server, http_server
from tests.support.ocpp_stack import CARD, CP_ID, OcppRig, ocpp_rig
from tests.support.status_frames import statuses, wait_status
from tests.support.stopping import call_advancing

WHEEL = b"PK\x03\x04 not really a wheel " * 100
KEYS = {"AuthorizeRemoteTxRequests": "false"}


class RecordingInstaller:
    """Installs at once (no restart), or fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.installed: list[bytes] = []
        self.forgotten = 0

    async def install(self, package: Path, may_switch: Any = None) -> bool:
        if self.fail:
            raise InstallFailed("pip install failed (exit 1)")
        self.installed.append(await asyncio.to_thread(package.read_bytes))
        return True

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


def _statuses(cs: CentralSystem, since: int = 0) -> list[str]:
    return statuses(cs, "FirmwareStatusNotification", since)


async def _status(cs: CentralSystem, status: str, since: int, timeout: float = 5) -> Frame:
    return await wait_status(cs, "FirmwareStatusNotification", status, since, timeout)


async def _update(rig: OcppRig, location: str, **kw: Any) -> None:
    now = rig.clock.now().isoformat()
    result = await rig.command(call.UpdateFirmware(location=location, retrieve_date=now, **kw))
    assert result is not None  # UpdateFirmware.conf is empty


def _rig(cs: CentralSystem, state: Path, installer: Any, **kw: Any) -> Any:
    return ocpp_rig(cs, state, keys=KEYS, app_options={"firmware_installer": installer}, **kw)


async def test_profile_is_supported_and_advertised(cs: CentralSystem, tmp_path: Path) -> None:
    assert "FirmwareManagement" in SUPPORTED_FEATURE_PROFILES
    async with _rig(cs, tmp_path, RecordingInstaller()) as rig:
        got = await rig.command(call.GetConfiguration(key=["SupportedFeatureProfiles"]))
        assert "FirmwareManagement" in got.configuration_key[0]["value"]


async def test_http_download_then_install(cs: CentralSystem, tmp_path: Path) -> None:
    installer = RecordingInstaller()
    with http_server() as srv:
        srv.files["/fw/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, installer) as rig:
            mark = cs.mark()
            await _update(rig, srv.url("/fw/evsed-9.9.9-py3-none-any.whl"))
            await _status(cs, "Installed", mark)
            assert _statuses(cs, mark) == ["Downloading", "Downloaded", "Installing", "Installed"]
            assert installer.installed == [WHEEL]
            # The final status answered: the stored update is history.
            await rig.until(lambda: rig.ocpp.store.firmware_state() is None, within_s=1)
            assert rig.ocpp.ctx.firmware is not None
            assert rig.ocpp.ctx.firmware.current_status() == "Idle"


async def test_ftp_download_with_credentials_never_logged(
    cs: CentralSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installer = RecordingInstaller()
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "evsed-9.9.9.tar.gz").write_bytes(WHEEL)
    with ftp_server(root) as ftp, caplog.at_level(logging.DEBUG):
        async with _rig(cs, tmp_path / "state", installer) as rig:
            mark = cs.mark()
            await _update(rig, ftp.url("/evsed-9.9.9.tar.gz"))
            await _status(cs, "Installed", mark)
    assert installer.installed == [WHEEL]
    # evsed's own records: the embedded CS logs through the library's "ocpp" logger.
    ours = [r for r in caplog.records if r.name.startswith("evsed")]
    assert not [r.name for r in ours if ftp.password in r.getMessage()]
    # The received frame and the transfer are logged, masked.
    masked = [r.name for r in ours if f"{ftp.user}:***@" in r.getMessage()]
    assert "evsed.controller.ocpp16.protocol" in masked
    assert "evsed.controller.firmware.transfer" in masked


async def test_failed_download_with_retries(cs: CentralSystem, tmp_path: Path) -> None:
    installer = RecordingInstaller()
    with http_server() as srv:
        srv.fail_next = 100
        async with _rig(cs, tmp_path, installer) as rig:
            mark = cs.mark()
            await _update(rig, srv.url("/fw/evsed-9.9.9-py3-none-any.whl"), retries=2)
            # The default retryInterval (60 s) passes on the injected clock.
            for attempt in range(1, 3):
                await rig.event(
                    "firmware_retry_wait", lambda e, n=attempt: e["retries_left"] == 2 - n
                )
                await rig.clock.advance(59)
                assert srv.requests == attempt  # not before the interval
                await rig.clock.advance(1)
            await _status(cs, "DownloadFailed", mark)
    assert srv.requests == 3  # the first try and two retries
    assert _statuses(cs, mark) == ["Downloading"] * 3 + ["DownloadFailed"]
    assert installer.installed == []


async def test_a_local_file_is_refused_and_reported(cs: CentralSystem, tmp_path: Path) -> None:
    async with _rig(cs, tmp_path, RecordingInstaller()) as rig:
        mark = cs.mark()
        await _update(rig, f"file://{tmp_path}/evsed.db", retries=3, retry_interval=1)
        await _status(cs, "DownloadFailed", mark)
        assert _statuses(cs, mark) == ["Downloading", "DownloadFailed"]  # no retries


async def test_installation_failure_is_reported(cs: CentralSystem, tmp_path: Path) -> None:
    with http_server() as srv:
        srv.files["/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, RecordingInstaller(fail=True)) as rig:
            mark = cs.mark()
            await _update(rig, srv.url("/evsed-9.9.9-py3-none-any.whl"))
            await _status(cs, "InstallationFailed", mark)
    assert _statuses(cs, mark)[-2:] == ["Installing", "InstallationFailed"]


async def test_installation_waits_until_the_transaction_ends(
    cs: CentralSystem, tmp_path: Path
) -> None:
    installer = RecordingInstaller()
    with http_server() as srv:
        srv.files["/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, installer) as rig:
            tx_id = await rig.start_transaction()
            mark = cs.mark()
            await _update(rig, srv.url("/evsed-9.9.9-py3-none-any.whl"))
            await _status(cs, "Downloaded", mark)
            await rig.run(120)  # two minutes of charging: no installation
            assert rig.status == "Charging"
            assert _statuses(cs, mark) == ["Downloading", "Downloaded"]
            assert installer.installed == []
            assert rig.ocpp.ctx.firmware is not None
            assert rig.ocpp.ctx.firmware.current_status() == "Downloaded"
            stop = cs.mark()
            result = await rig.command(call.RemoteStopTransaction(transaction_id=tx_id))
            assert result.status == "Accepted"
            await call_advancing(rig, "StopTransaction", since=stop)
            await rig.bench.unplug(1)
            await rig.until(lambda: rig.status == "Available", within_s=5)
            await rig.run(11)  # the next look at the connectors
            await _status(cs, "Installed", mark)
    assert installer.installed == [WHEEL]
    installing = next(
        f for f in cs.frames_of(CP_ID, since=mark) if f.payload.get("status") == "Installing"
    )
    assert installing.seq > stop  # only after the transaction


async def test_a_scheduled_update_survives_a_restart(cs: CentralSystem, tmp_path: Path) -> None:
    installer = RecordingInstaller()
    clock = FakeClock()
    with http_server() as srv:
        srv.files["/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, installer, clock=clock) as rig:
            later = (clock.now() + timedelta(minutes=2)).isoformat()
            await rig.command(
                call.UpdateFirmware(
                    location=srv.url("/evsed-9.9.9-py3-none-any.whl"), retrieve_date=later
                )
            )
            state = rig.ocpp.store.firmware_state()
            assert state is not None and state.status == "Scheduled"
        await cs.wait_disconnected(CP_ID)
        async with _rig(cs, tmp_path, installer, clock=clock) as rig:
            mark = cs.mark()
            await rig.run(119)
            assert srv.requests == 0  # not before retrieveDate
            await rig.run(2)
            await _status(cs, "Installed", mark)
    assert installer.installed == [WHEEL]


async def test_status_in_progress_is_what_trigger_would_report(
    cs: CentralSystem, tmp_path: Path
) -> None:
    with http_server() as srv:
        srv.fail_next = 1
        srv.files["/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, RecordingInstaller()) as rig:
            fw = rig.ocpp.ctx.firmware
            assert fw is not None and fw.current_status() == "Idle"
            mark = cs.mark()
            await _update(rig, srv.url("/evsed-9.9.9-py3-none-any.whl"), retries=1)
            await rig.event("firmware_retry_wait")
            assert fw.current_status() == "Downloading"
            await rig.clock.advance(60)
            await _status(cs, "Installed", mark)
            assert fw.current_status() == "Idle"


async def test_trigger_message_reports_the_update_in_progress(
    cs: CentralSystem, tmp_path: Path
) -> None:
    with http_server() as srv:
        srv.fail_next = 1
        srv.files["/evsed-9.9.9-py3-none-any.whl"] = WHEEL
        async with _rig(cs, tmp_path, RecordingInstaller()) as rig:
            mark = cs.mark()
            trigger = call.TriggerMessage(requested_message="FirmwareStatusNotification")
            assert (await rig.command(trigger)).status == "Accepted"
            await _status(cs, "Idle", mark)
            await _update(rig, srv.url("/evsed-9.9.9-py3-none-any.whl"), retries=1)
            await rig.event("firmware_retry_wait")
            again = cs.mark()
            assert (await rig.command(trigger)).status == "Accepted"
            await _status(cs, "Downloading", again)
