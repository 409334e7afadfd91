"""A virtual null-modem cable made of two pseudo-terminals, for serial devices on the bench.

Two `os.openpty()` pairs; a thread copies bytes between the two master ends, so whatever is
written to `port_a` can be read from `port_b` and back, as with socat (which is not installed
by default). Open `port_a`/`port_b` with pyserial or pymodbus like real ttys; baud rate and
parity are ignored by ptys.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from types import TracebackType


class SerialPair:
    def __init__(self) -> None:
        self._m1, self._s1 = os.openpty()
        self._m2, self._s2 = os.openpty()
        for fd in (self._m1, self._s1, self._m2, self._s2):
            tty.setraw(fd)
        # We keep the slave fds open for the pair's lifetime: a master whose slave has no open
        # fd reads EIO in a tight loop, which would spin the bridge thread between users.
        self.port_a = os.ttyname(self._s1)
        self.port_b = os.ttyname(self._s2)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> SerialPair:
        if self._thread is None:
            self._thread = threading.Thread(target=self._bridge, name="serialpair", daemon=True)
            self._thread.start()
        return self

    def _bridge(self) -> None:
        peer = {self._m1: self._m2, self._m2: self._m1}
        while True:
            ready, _, _ = select.select([self._m1, self._m2, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(peer[fd], view) :]
                    except OSError:
                        break

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in (self._m1, self._s1, self._m2, self._s2, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> SerialPair:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
