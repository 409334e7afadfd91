"""The firmware update's state machine (UpdateFirmware, OCPP 1.6 §5.19, §4.5), wire-free.

    scheduled --retrieveDate--> Downloading --ok--> Downloaded --idle--> Installing
        Downloading --fail, retries left--> (retryInterval) Downloading
        Downloading --fail, none left--> DownloadFailed (end)
        Installing --> Installed | InstallationFailed (end), possibly across a restart

Every status is stored before it is sent (`FirmwareRepository`), so a restart resumes a
download or a wait, and learns from the installer how an installation across the restart
ended. The row goes away only once the final status reached the Central System.
Installation waits until no transaction runs and no connector charges (`busy`), looked at
every `busy_poll_s` on the injected clock. From the moment it begins (Installing), no new
transaction may start (`maintenance`: the connectors' start gate refuses, idle connectors
read Unavailable): a pip install takes minutes, and the restart at its end must not cut a
session started meanwhile. The installer asks again (`may_switch`) right before it
switches and restarts. The block is lifted when the installation fails; across a restart
the new version keeps it until it is confirmed (a rollback would otherwise restore the
database under a transaction it ran). Downloads run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from evsed.controller.clock import Clock
from evsed.controller.firmware.transfer import DEFAULT_LIMITS, Limits, TransferFailed, download
from evsed.controller.firmware.urls import UrlRejected, check_url, redact_url
from evsed.controller.store.firmware import FirmwareRepository, FirmwareState

log = logging.getLogger(__name__)


class FirmwareStatus(StrEnum):
    """FirmwareStatusNotification.status (OCPP 1.6 §7.25)."""

    IDLE = "Idle"
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    INSTALLING = "Installing"
    INSTALLED = "Installed"
    INSTALLATION_FAILED = "InstallationFailed"


FINAL = frozenset(
    {FirmwareStatus.DOWNLOAD_FAILED, FirmwareStatus.INSTALLED, FirmwareStatus.INSTALLATION_FAILED}
)
#: Stored while waiting for retrieveDate (never sent: Idle means "nothing going on").
SCHEDULED = "Scheduled"


#: Why starts are blocked (the start gate's refusal names it).
INSTALLING_REASON = "firmware installation"
UNCONFIRMED = "firmware not yet confirmed"


class InstallFailed(Exception):
    """The package could not be installed; the running version goes on."""


#: Asked by the installer right before it switches and restarts: True when no transaction
#: runs (waited for, bounded), False when one still does (then it must not switch).
SwitchCheck = Callable[[], Awaitable[bool]]


async def always_may_switch() -> bool:
    return True


class Installer(Protocol):
    """The pluggable step after a download (`evsed.controller.firmware.installer`)."""

    async def install(self, package: Path, may_switch: SwitchCheck = always_may_switch) -> bool:
        """Install ``package``. True: installed and in use now (report Installed). False:
        the process will be restarted into the new version, which reports the outcome
        (`outcome_after_restart`). Before any restart, ``may_switch()`` must say True.
        Raises InstallFailed."""
        ...

    def awaiting_confirmation(self) -> bool:
        """At start-up with an installation stored in progress: is this the new version,
        not yet confirmed (no transaction may start until it is)? Optional, like the
        ``may_switch`` parameter: an installer of the first form (install(package),
        outcome_after_restart, forget) still works (False)."""
        ...

    def outcome_after_restart(self) -> bool:
        """At start-up with an installation stored in progress: did it succeed (the running
        version is the new one, confirmed), or was it rolled back / never switched?"""
        ...

    def forget(self) -> None:
        """The outcome reached the Central System: drop what the installer kept for it."""
        ...


#: Sends one FirmwareStatusNotification; True when the Central System answered.
Sender = Callable[[str], Awaitable[bool]]


class FirmwareUpdater:
    def __init__(
        self,
        *,
        store: FirmwareRepository,
        clock: Clock,
        download_dir: Path,
        send: Sender,
        busy: Callable[[], bool],
        installer: Installer,
        online: Callable[[], bool],
        emit: Callable[..., None] = lambda event, **fields: None,
        limits: Limits = DEFAULT_LIMITS,
        busy_poll_s: float = 10.0,
        resend_s: float = 30.0,
        maintenance: Callable[[str | None], None] = lambda reason: None,
        switch_wait_s: float = 600.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._dir = download_dir
        self._send = send
        self._busy = busy
        self.installer = installer
        self._online = online
        self._emit = emit
        self._limits = limits
        self._busy_poll_s = busy_poll_s
        self._resend_s = resend_s
        self._task: asyncio.Task[None] | None = None
        self._maintenance = maintenance
        self._confirmed: bool | None = None  # asked at the moment the session went online
        self._switch_wait_s = switch_wait_s

    # ------------------------------------------------------------ what others ask

    def current_status(self) -> str:
        """For TriggerMessage(FirmwareStatusNotification): the last status of an update in
        progress, Idle when none is (§5.17: Idle when not busy)."""
        state = self._store.firmware_state()
        if state is None or state.status == SCHEDULED or state.status in FINAL:
            return FirmwareStatus.IDLE.value
        return state.status

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def schedule(
        self, location: str, retrieve_at: datetime, retries: int, retry_interval_s: int
    ) -> None:
        """UpdateFirmware accepted: stored first, then started. A new request replaces the
        one in progress (§5.19 says nothing; the CS's latest wish wins)."""
        self._cancel()
        state = FirmwareState(
            location=location,
            retrieve_at=retrieve_at,
            status=SCHEDULED,
            retries_left=max(0, retries),
            retry_interval_s=max(0, retry_interval_s),
            updated_at=self._clock.now(),
        )
        self._store.set_firmware_state(state)
        log.info(
            "firmware update from %s scheduled for %s (%d retries, %d s apart)",
            redact_url(location),
            retrieve_at.isoformat(),
            state.retries_left,
            state.retry_interval_s,
        )
        self._start(self._run(state))

    def hold_starts_if_unconfirmed(self) -> None:
        """At start-up, as soon as the charger exists and before it runs: the new version
        of an installation not yet confirmed blocks starts from the first moment (an EV
        plugged in during the restart must not start a session before `resume` runs)."""
        state = self._store.firmware_state()
        if state is not None and state.status == FirmwareStatus.INSTALLING:
            if self._awaiting_confirmation():
                self._maintenance(UNCONFIRMED)

    def on_online(self) -> None:
        """The session just went online (BootNotification Accepted), before its queue
        delivers anything: the new version confirms now. Confirmed later, a rollback in
        between would bring back the database of the switch with messages the new version
        had already delivered, and the old one would send them again."""
        state = self._store.firmware_state()
        if self._confirmed is not None or state is None:
            return
        if state.status == FirmwareStatus.INSTALLING and self._awaiting_confirmation():
            self._confirmed = self.installer.outcome_after_restart()

    def resume(self) -> None:
        """At start-up: carry on with an update stored in progress."""
        state = self._store.firmware_state()
        if state is None:
            return
        if state.status == FirmwareStatus.INSTALLING:
            self._start(self._after_restart(state))
        elif state.status in FINAL:
            self._start(self._finish(state, FirmwareStatus(state.status)))
        else:
            self._start(self._run(state))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ the run

    def _start(self, coro: Awaitable[None]) -> None:
        self._task = asyncio.get_running_loop().create_task(coro, name="firmware-update")  # type: ignore[arg-type]
        self._task.add_done_callback(_log_failure)

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def _package_path(self, state: FirmwareState) -> Path:
        try:
            name = Path(check_url(state.location).filename).name
        except UrlRejected:
            name = ""
        # The name keeps its suffix: the installer tells a wheel from a source archive by it.
        return self._dir / (name or "firmware.bin")

    def _set(self, state: FirmwareState, status: str, **changes: int) -> FirmwareState:
        state = replace(state, status=status, updated_at=self._clock.now(), **changes)
        self._store.set_firmware_state(state)
        return state

    async def _notify(self, status: FirmwareStatus) -> None:
        """Send, and while the CS does not answer, keep trying (only the newest status
        matters: a later `_notify` replaces the pending one by running after it)."""
        while not await self._send(status.value):
            await self._clock.sleep(self._resend_s)

    async def _run(self, state: FirmwareState) -> None:
        package = self._package_path(state)
        if state.status != FirmwareStatus.DOWNLOADED or not package.exists():
            wait = (state.retrieve_at - self._clock.now()).total_seconds()
            if wait > 0:
                await self._clock.sleep(wait)
            ok = await self._download(state, package)
            state = self._store.firmware_state() or state
            if not ok:
                await self._finish(state, FirmwareStatus.DOWNLOAD_FAILED)
                return
        await self._block_starts_when_idle()
        try:
            state = self._set(state, FirmwareStatus.INSTALLING)
            await self._notify(FirmwareStatus.INSTALLING)
            done_now = await self._install(package)
        except InstallFailed as e:
            log.error("firmware installation failed: %s", e)
            self._maintenance(None)
            await self._finish(state, FirmwareStatus.INSTALLATION_FAILED)
            return
        except BaseException:
            self._maintenance(None)  # cancelled (a new UpdateFirmware) or a bug: charge on
            raise
        if done_now:
            self._maintenance(None)
            await self._finish(state, FirmwareStatus.INSTALLED)
        # else: the restart into the new version comes; `resume` there reports the outcome.

    async def _install(self, package: Path) -> bool:
        # An installer written for the first form of the protocol, install(package), goes
        # on working: starts are blocked all the same, only the last look is skipped.
        if "may_switch" in inspect.signature(self.installer.install).parameters:
            return await self.installer.install(package, may_switch=self._may_switch)
        return await self.installer.install(package)  # type: ignore[call-arg]

    def _awaiting_confirmation(self) -> bool:
        ask = getattr(self.installer, "awaiting_confirmation", None)
        return bool(ask()) if ask is not None else False

    async def _block_starts_when_idle(self) -> None:
        """Wait until idle, then block new starts. Blocked first and looked at again after:
        a transaction that started between the look and the block is waited for too."""
        while True:
            while self._busy():
                await self._clock.sleep(self._busy_poll_s)
            self._maintenance(INSTALLING_REASON)
            if not self._busy():
                return
            self._maintenance(None)

    async def _may_switch(self) -> bool:
        """The installer's last look before it restarts: starts are blocked, so only a
        transaction that outlived the first look can be there; waited for, bounded."""
        deadline = self._clock.monotonic() + self._switch_wait_s
        while self._busy():
            if self._clock.monotonic() >= deadline:
                log.error("a transaction still runs: the firmware is not switched")
                return False
            await self._clock.sleep(self._busy_poll_s)
        return True

    async def _after_restart(self, state: FirmwareState) -> None:
        # Success means "started and the BootNotification was Accepted": asked only then,
        # so that the installer's confirmation is that of a version that reached the CS.
        # Until then the new version starts no transaction: if it is rolled back, the old
        # version gets the database as it was at the switch (see the installer), and a
        # transaction run here would be lost with it. The old version, back after a
        # rollback, is not blocked: it charges (offline too) while it waits to report.
        unconfirmed = self._awaiting_confirmation()
        if unconfirmed:
            self._maintenance(UNCONFIRMED)
        ok: bool | None = None
        try:
            while not self._online():
                await self._clock.sleep(1.0)
            ok = self._confirmed
            if ok is None:
                ok = self.installer.outcome_after_restart()
        finally:
            if unconfirmed and ok is not False:
                self._maintenance(None)
        if unconfirmed and not ok:
            # Rolled back while this (new) version started: the previous one is being put
            # back and restarted, and it reports InstallationFailed. Reporting (forgetting
            # the marker and the database snapshot) here would leave it a database it
            # cannot read; starting a transaction would have it cut and lost.
            log.error(
                "firmware rolled back before it was confirmed: the previous version takes over"
            )
            return
        final = FirmwareStatus.INSTALLED if ok else FirmwareStatus.INSTALLATION_FAILED
        log.info("firmware installation across the restart: %s", final.value)
        await self._finish(state, final)

    async def _download(self, state: FirmwareState, package: Path) -> bool:
        while True:
            state = self._set(state, FirmwareStatus.DOWNLOADING)
            await self._notify(FirmwareStatus.DOWNLOADING)
            try:
                size = await asyncio.to_thread(
                    download, state.location, package, limits=self._limits
                )
            except (TransferFailed, UrlRejected) as e:
                log.warning("firmware download failed (%d retries left): %s", state.retries_left, e)
                # A refused URL stays refused: retrying it would only wait.
                if state.retries_left <= 0 or isinstance(e, UrlRejected):
                    return False
                state = self._set(
                    state, FirmwareStatus.DOWNLOADING, retries_left=state.retries_left - 1
                )
                self._emit(
                    "firmware_retry_wait",
                    seconds=state.retry_interval_s,
                    retries_left=state.retries_left,
                )
                await self._clock.sleep(state.retry_interval_s)
                continue
            log.info("firmware package %s downloaded (%d bytes)", package.name, size)
            self._set(state, FirmwareStatus.DOWNLOADED)
            await self._notify(FirmwareStatus.DOWNLOADED)
            return True

    async def _finish(self, state: FirmwareState, final: FirmwareStatus) -> None:
        self._set(state, final)
        await self._notify(final)
        self._store.clear_firmware_state()
        self.installer.forget()
        if final is not FirmwareStatus.INSTALLED:
            self._package_path(state).unlink(missing_ok=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("firmware update task failed", exc_info=task.exception())
