"""`evsed run --trace FILE`: every OCPP frame in full, for troubleshooting a Central System.

The frames are the session's "frame" events, already redacted (AuthorizationKey values,
the Basic-auth password of the connection); card ids are kept, as a trace is asked for on
purpose. The file is created mode 0600 and appended to, one line per frame:
``<UTC time> <cp->cs|cs->cp> <frame>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO

from evsed.controller.clock import Clock


class FrameTrace:
    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: TextIO = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        if event == "frame" and not self._file.closed:
            stamp = self._clock.now().isoformat(timespec="milliseconds")
            self._file.write(f"{stamp} {fields['direction']} {fields['raw']}\n")

    def close(self) -> None:
        self._file.close()
