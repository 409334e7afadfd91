"""Firmware Management (OCPP 1.6 §3.11, §5.7, §5.19, §4.4, §4.5): UpdateFirmware and
GetDiagnostics, and the two status notifications.

The handlers only translate: the update's state machine is `evsed.controller.firmware.update`
(its progress stored, resumed after a restart), the install step
`evsed.controller.firmware.installer`, the archive and upload `evsed.controller.diagnostics`.
Both services outlive a connection: `build_services` makes them once per process (OcppApp),
the handler object of each connection only hands requests over.

Choices where the spec is silent:
- UpdateFirmware.conf has no status: a location we refuse (not http/https/ftp, a local path)
  is accepted on the wire and reported as Downloading -> DownloadFailed at once, so the CS
  sees the failure in the notifications it already follows.
- A second UpdateFirmware replaces the one in progress (the latest wish wins); a second
  GetDiagnostics replaces the running upload.
- GetDiagnostics always names a file: the configuration alone is worth sending.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING

from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evsed.controller.config import redacted
from evsed.controller.connector.status import ChargePointStatus
from evsed.controller.diagnostics.collect import Sources, journal_reader, log_files_in_use
from evsed.controller.diagnostics.upload import DiagnosticsUploader
from evsed.controller.firmware.installer import VenvInstaller
from evsed.controller.firmware.transfer import Limits
from evsed.controller.firmware.update import FirmwareUpdater, Installer
from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key
from evsed.controller.ocpp16.redaction import FILTER
from evsed.controller.tomlout import dumps
from evsed.controller.trace import FrameTrace

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext

log = logging.getLogger(__name__)
log.addFilter(FILTER)

NAME = "FirmwareManagement"
_MB = 1024 * 1024


# ---------------------------------------------------------------- the services


def _busy(ctx: OcppContext) -> bool:
    charger = ctx.charger
    if charger is None:
        return False
    return any(
        charger.transaction(cid) is not None
        or charger.status(cid).status == ChargePointStatus.CHARGING
        for cid in charger.connector_ids
    )


def _maintenance(ctx: OcppContext, reason: str | None) -> None:
    if ctx.charger is not None:
        ctx.charger.set_maintenance(reason)


def _online(ctx: OcppContext) -> bool:
    return ctx.session is not None and ctx.session.online


async def _send_firmware_status(ctx: OcppContext, status: str) -> bool:
    ctx.emit("firmware_status", status=status)
    if ctx.session is None:
        return True  # no Central System configured: nobody to tell
    return await ctx.session.call(call.FirmwareStatusNotification(status=status)) is not None


async def _send_diagnostics_status(ctx: OcppContext, status: str) -> bool:
    ctx.emit("diagnostics_status", status=status)
    if ctx.session is None:
        return True
    return await ctx.session.call(call.DiagnosticsStatusNotification(status=status)) is not None


def _secrets(ctx: OcppContext) -> list[str]:
    cs = ctx.config.central_system
    found = [
        cs.authorization_key.get_secret_value(),
        cs.client_key_password.get_secret_value(),
        ctx.keys.value("AuthorizationKey") or "",
        *FILTER.secrets,
    ]
    return [s for s in found if s]


def _keys_text(ctx: OcppContext) -> str:
    found, _ = ctx.keys.get(None)
    # AuthorizationKey is write-only: `get` leaves it out (and scrubbing would catch it).
    lines = [f"{kv.key} = {kv.value!r}{' (R)' if kv.readonly else ''}" for kv in found]
    return "\n".join(lines) + "\n"


def _trace_in_use(ctx: OcppContext) -> Path | None:
    """The file `evsed run --trace FILE` writes the frames to, if it does."""
    for observer in ctx.observers:
        if isinstance(observer, MethodType) and isinstance(observer.__self__, FrameTrace):
            return observer.__self__.path
    return None


def build_services(
    ctx: OcppContext,
    state_dir: Path,
    *,
    installer: Installer | None = None,
    trace_file: Path | None = None,
) -> tuple[FirmwareUpdater, DiagnosticsUploader]:
    fw = ctx.config.firmware
    limits_down = Limits(max_bytes=fw.max_download_mb * _MB, timeout_s=fw.transfer_timeout_s)
    limits_up = Limits(max_bytes=fw.max_upload_mb * _MB, timeout_s=fw.transfer_timeout_s)
    updater = FirmwareUpdater(
        store=ctx.store,
        clock=ctx.clock,
        download_dir=state_dir / "firmware",
        send=lambda status: _send_firmware_status(ctx, status),
        busy=lambda: _busy(ctx),
        maintenance=lambda reason: _maintenance(ctx, reason),
        online=lambda: _online(ctx) or not ctx.config.central_system.enabled,
        emit=ctx.emit,
        installer=installer
        or VenvInstaller(
            root=fw.install_root,
            state_dir=state_dir,
            confirm_timeout_s=fw.confirm_timeout_s,
            service=fw.service,
        ),
        limits=limits_down,
    )

    # Called as the session goes online, before the delivery loop's first step: the new
    # version confirms before any queued message leaves (FirmwareUpdater.on_online).
    ctx.observers.append(lambda event, _fields: updater.on_online() if event == "online" else None)

    def sources() -> Sources:
        return Sources(
            journal=journal_reader(fw.service),
            log_files=log_files_in_use(),
            trace_file=trace_file or _trace_in_use(ctx),
            extra={
                "config.toml": dumps(redacted(ctx.config)),
                "configuration-keys.txt": _keys_text(ctx),
            },
        )

    uploader = DiagnosticsUploader(
        clock=ctx.clock,
        work_dir=state_dir / "diagnostics",
        send=lambda status: _send_diagnostics_status(ctx, status),
        sources=sources,
        secrets=lambda: _secrets(ctx),
        name_prefix=ctx.config.central_system.charge_point_id or "evsed",
        emit=ctx.emit,
        limits=limits_up,
    )
    return updater, uploader


# ---------------------------------------------------------------- the handlers


class FirmwareHandlers:
    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx

    @on(Action.update_firmware)
    def on_update_firmware(
        self,
        location: str,
        retrieve_date: str,
        retries: int | None = None,
        retry_interval: int | None = None,
    ) -> call_result.UpdateFirmware:
        updater = self.ctx.firmware
        if updater is not None:
            # Stored (synced) before the answer: an accepted update survives a power cut.
            updater.schedule(
                location,
                datetime.fromisoformat(retrieve_date.replace("Z", "+00:00")),
                retries if retries is not None else 0,
                retry_interval if retry_interval is not None else 60,
            )
        return call_result.UpdateFirmware()

    @on(Action.get_diagnostics)
    def on_get_diagnostics(
        self,
        location: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        start_time: str | None = None,
        stop_time: str | None = None,
    ) -> call_result.GetDiagnostics:
        uploader = self.ctx.diagnostics
        if uploader is None:
            return call_result.GetDiagnostics()
        name = uploader.file_name()
        uploader.start(
            location,
            name,
            retries=retries if retries is not None else 0,
            retry_interval_s=retry_interval if retry_interval is not None else 60,
            start=_when(start_time),
            stop=_when(stop_time),
        )
        return call_result.GetDiagnostics(file_name=name)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


PROFILE = declare(
    NAME,
    cs_to_cp={"GetDiagnostics", "UpdateFirmware"},
    cp_to_cs={"DiagnosticsStatusNotification", "FirmwareStatusNotification"},
    keys=(
        # Only mentioned in §8, no §9 entry.
        key(
            "SupportedFileTransferProtocols",
            KeyType.CSL,
            Access.R,
            "FTP,FTPS,HTTP,HTTPS",
            allowed=frozenset({"FTP", "FTPS", "HTTP", "HTTPS"}),
        ),
    ),
    handlers=FirmwareHandlers,
)
