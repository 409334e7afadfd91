"""What evsed does once the reader of its stdout is gone."""

from __future__ import annotations

import contextlib
import os
import sys


def point_at_devnull() -> None:
    """Python's recipe for a closed stdout: what is still buffered, and every later print,
    goes to /dev/null, or the flush at exit raises again ("Exception ignored ...
    BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
