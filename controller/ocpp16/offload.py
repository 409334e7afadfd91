"""Heavy pure work (parsing a 1.4 MiB frame) in a worker process, so that it holds no GIL here.

A worker thread does not help the safety core with work done in C: `json.loads` of a
10,000-entry SendLocalList holds the GIL for its whole run (tens of milliseconds on a PC,
several times that on a Pi), and every other thread of the process, the core's included,
stands still meanwhile. A process has its own GIL.

What it costs, and the choices made for a Pi:
- One worker, started on the first big frame (most chargers never get one; a spawned
  interpreter with the OCPP schemas is ~40 MB RSS, see benchmarks/frame_stall.py), stopped
  again after `IDLE_S` without work, and by the app when it stops.
- "spawn", not "fork": the process has threads (the core, SQLite workers) whose locks a
  forked child would inherit held.
- Start-up (a fresh interpreter importing the schemas) is paid once per idle period, in the
  worker, not in this process: the first big frame waits for it, nothing else does.
- Results come back as a few hundred small pickles (`pack`), unpickled one by one in a
  worker thread (`unpack`): one pickle of a 10,000-entry list would again hold the GIL here
  for ~20 ms while its 10,000 dicts are built.
- Where processes cannot run (no working semaphores, a crashed worker), the same function
  runs in a thread, as before: the same answers, only the GIL cost comes back (logged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds without work after which the worker process exits (its memory goes back).
IDLE_S = 300.0
#: List items per pickle in `pack`: ~50 KB, about 1 ms to unpickle here.
CHUNK_ITEMS = 256


@dataclass(frozen=True, slots=True)
class Chunked:
    """A long list as separately pickled pieces of CHUNK_ITEMS items."""

    pieces: tuple[bytes, ...]


def pack(value: Any) -> Any:
    """`value` with every list longer than CHUNK_ITEMS (outside such lists) made Chunked."""
    if isinstance(value, list):
        if len(value) > CHUNK_ITEMS:
            return Chunked(
                tuple(
                    pickle.dumps(value[i : i + CHUNK_ITEMS], pickle.HIGHEST_PROTOCOL)
                    for i in range(0, len(value), CHUNK_ITEMS)
                )
            )
        return [pack(v) for v in value]
    if isinstance(value, dict):
        return {k: pack(v) for k, v in value.items()}
    return value


def unpack(value: Any) -> Any:
    """The inverse of `pack`; each piece is one short C call, so other threads get the GIL
    between pieces (run it in a worker thread)."""
    if isinstance(value, Chunked):
        out: list[Any] = []
        for piece in value.pieces:
            out.extend(pickle.loads(piece))
        return out
    if isinstance(value, list):
        return [unpack(v) for v in value]
    if isinstance(value, dict):
        return {k: unpack(v) for k, v in value.items()}
    return value


def _worker_init() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the app shuts the worker down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed with SIGKILL never sends the stop, and the worker would wait on its
    # queue for ever (it holds that pipe's other end itself): it leaves with its parent.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os.kill(os.getpid(), signal.SIGTERM)  # the default action: the worker ends at once


class Workers:
    """Runs picklable module-level functions in one lazily started worker process.

    `processes=False` runs them in a thread of this process instead (the behaviour before
    worker processes; kept for comparison in benchmarks and tests, and as the fallback)."""

    def __init__(self, *, idle_s: float = IDLE_S, processes: bool = True) -> None:
        self.idle_s = idle_s
        self.processes = processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._unavailable = False
        self._failures = 0  # worker processes in a row that died before answering
        self._busy = 0
        self._last_used = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ready = False  # the worker has answered once: it is up
        self._warming: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def ready(self) -> bool:
        return self._pool is not None and self._ready

    async def warm_up(self) -> bool:
        """Start the worker and wait until it answers; True when big frames now go to it."""
        pool = self._get_pool()
        if pool is None:
            return False
        self._warm(pool)
        if self._warming is not None:
            await asyncio.shield(self._warming)
        return self.ready

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._get_pool()
        if pool is None:
            return await asyncio.to_thread(fn, *args)
        if not self._ready:
            # "spawn" imports evsed afresh: a second here, several on a Pi. The frames that
            # come meanwhile are parsed in a thread, as before the worker process, rather
            # than hold the receive loop (Heartbeat answers, a RemoteStop) for its start.
            self._warm(pool)
            self._last_used = time.monotonic()
            self._arm_idle_stop()
            return await asyncio.to_thread(fn, *args)
        self._busy += 1
        try:
            # Starting the worker (first use) forks and execs: not on the loop either.
            future = await asyncio.to_thread(pool.submit, fn, *args)
            result = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._discard(pool)
            self._failures += 1
            # Once may be the OOM killer; twice in a row, the worker cannot start here (e.g.
            # a main module without the `if __name__ == "__main__":` guard that "spawn" needs).
            self._unavailable = self._failures >= 2
            log.warning(
                "the frame worker process died; this frame is parsed here instead%s",
                ", and every next one" if self._unavailable else "",
            )
            return await asyncio.to_thread(fn, *args)
        finally:
            self._busy -= 1
            self._last_used = time.monotonic()
            self._arm_idle_stop()
        self._failures = 0
        return result

    def _warm(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._warming is not None or self._ready:
            return

        async def warm() -> None:
            try:
                future = await asyncio.to_thread(pool.submit, os.getpid)
                await asyncio.wrap_future(future)
            except (BrokenProcessPool, RuntimeError, OSError) as exc:
                self._discard(pool)
                self._failures += 1
                self._unavailable = self._failures >= 2
                log.warning("the frame worker process did not start (%s)", exc)
            else:
                if self._pool is pool:
                    self._ready = True
            finally:
                self._warming = None

        self._warming = asyncio.ensure_future(warm())

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if not self.processes or self._unavailable:
            return None
        if self._pool is None:
            try:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                )
            except (OSError, ImportError, NotImplementedError) as exc:
                # e.g. no /dev/shm for the queue's semaphores: threads it is, said once.
                log.warning("no worker process for big frames (%s): parsed in a thread", exc)
                self._unavailable = True
                return None
        return self._pool

    def _arm_idle_stop(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(self.idle_s, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._busy == 0 and time.monotonic() - self._last_used >= self.idle_s * 0.99:
            self.shutdown()

    def _discard(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
            self._ready = False
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop the worker process (it exits once it has read the stop); never blocks."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        pool, self._pool = self._pool, None
        self._ready = False
        if self._warming is not None:
            self._warming.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """Stop the worker process and wait until it is gone (off the loop)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        pool, self._pool = self._pool, None
        self._ready = False
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
