"""The GetDiagnostics run: archive, then upload with retries (OCPP 1.6 §5.7, §4.4).

    Uploading --ok--> Uploaded
    Uploading --fail, retries left--> (retryInterval) Uploading
    Uploading --fail, none left--> UploadFailed

http(s) uploads PUT the archive to the location (with the file name appended when the
location ends in "/"), and fall back to a form POST when the server answers 405; ftp and
ftps STOR it. The archive is deleted afterwards: it is a copy, and the SD card is small.

The location's own secrets (its password, a token, a signature in its query) are scrubbed
from the archive and held in `evsed.controller.masking.SECRETS` for the whole run: the
GetDiagnostics frame that brought them was logged before the archive was built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

from evsed.controller.clock import Clock
from evsed.controller.diagnostics.collect import Sources, Window, build_archive
from evsed.controller.firmware.transfer import (
    DEFAULT_LIMITS,
    FTP_SCHEMES,
    Limits,
    TransferFailed,
    upload,
)
from evsed.controller.firmware.urls import UrlRejected, check_url, redact_url
from evsed.controller.masking import SECRETS

log = logging.getLogger(__name__)

Sender = Callable[[str], Awaitable[bool]]


class DiagnosticsUploader:
    def __init__(
        self,
        *,
        clock: Clock,
        work_dir: Path,
        send: Sender,
        sources: Callable[[], Sources],
        secrets: Callable[[], Sequence[str]],
        name_prefix: str,
        emit: Callable[..., None] = lambda event, **fields: None,
        limits: Limits = DEFAULT_LIMITS,
        resend_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._dir = work_dir
        self._send = send
        self._sources = sources
        self._secrets = secrets
        self._prefix = name_prefix
        self._emit = emit
        self._limits = limits
        self._resend_s = resend_s
        self._task: asyncio.Task[None] | None = None

    def current_status(self) -> str:
        """For TriggerMessage(DiagnosticsStatusNotification): Uploading while one runs."""
        return "Uploading" if self._task is not None and not self._task.done() else "Idle"

    def file_name(self) -> str:
        stamp = self._clock.now().strftime("%Y%m%dT%H%M%SZ")
        return f"{self._prefix}-diagnostics-{stamp}.tar.gz"

    def start(
        self,
        location: str,
        file_name: str,
        *,
        retries: int,
        retry_interval_s: int,
        start: datetime | None,
        stop: datetime | None,
    ) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(
            self._run(location, file_name, max(0, retries), max(0, retry_interval_s), start, stop),
            name="diagnostics-upload",
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _notify(self, status: str) -> None:
        while not await self._send(status):
            await self._clock.sleep(self._resend_s)

    async def _run(
        self,
        location: str,
        file_name: str,
        retries: int,
        retry_interval_s: int,
        start: datetime | None,
        stop: datetime | None,
    ) -> None:
        archive = self._dir / file_name
        try:
            own = check_url(location).secrets
        except UrlRejected:
            own = ()  # refused in _upload, and said so
        try:
            with SECRETS.holding(own):
                secrets = [*self._secrets(), *own]
                await asyncio.to_thread(
                    build_archive, archive, self._sources(), Window(start, stop), secrets
                )
                await self._upload(location, archive, retries, retry_interval_s)
        except Exception:
            log.exception("diagnostics failed")
            await self._notify("UploadFailed")
        finally:
            archive.unlink(missing_ok=True)

    async def _upload(self, location: str, archive: Path, retries: int, interval: int) -> None:
        while True:
            await self._notify("Uploading")
            try:
                scheme = check_url(location).scheme
                if scheme in FTP_SCHEMES:
                    await asyncio.to_thread(upload, archive, location, limits=self._limits)
                else:
                    try:
                        await asyncio.to_thread(
                            upload, archive, location, method="PUT", limits=self._limits
                        )
                    except TransferFailed as e:
                        if e.status != 405:
                            raise
                        await asyncio.to_thread(
                            upload, archive, location, method="POST", limits=self._limits
                        )
            except (TransferFailed, UrlRejected) as e:
                log.warning("diagnostics upload failed (%d retries left): %s", retries, e)
                if retries <= 0 or isinstance(e, UrlRejected):
                    await self._notify("UploadFailed")
                    return
                retries -= 1
                self._emit("diagnostics_retry_wait", seconds=interval, retries_left=retries)
                await self._clock.sleep(interval)
                continue
            log.info("diagnostics %s uploaded to %s", archive.name, redact_url(location))
            await self._notify("Uploaded")
            return
