"""How long the event loop stalls while the Central System sends big frames.

A SendLocalList of 10,000 entries (about 1.4 MiB) is sent by a websocket server on
loopback to a `StrictChargePoint` reading through the session's `FrameTap` (with one
observer, as in the app, so every frame is redacted for the "frame" event), with logging
at INFO to /dev/null as `evsed run` configures it. A ticker task sleeps 1 ms at a time and
records how late it wakes: the worst lateness is the loop stall.

Modes, each with the same frames:
- ``legacy``: the code before issue 10's work: everything on the loop, the library's
  camel->snake conversion, jsonschema alone, the three redaction patterns always run, the
  whole frame in the INFO log line;
- ``inline``: today's functions (key names converted once, jsonschema-rs when installed,
  redaction skipped when nothing can match, a short log line) but still on the loop;
- ``offload-thread``: issue 10's code: frames above OFFLOAD_FRAME_BYTES parsed, checked and
  redacted in a worker thread (json.loads still holds this process's GIL throughout);
- ``offload``: today's code: parsed, checked and converted in the frame worker process
  (issue 12), redacted in a thread;
- ``offload-jsonschema``: the same without jsonschema-rs (an installation without
  ``evsed[fast]``).

A second ticker, a thread sleeping 1 ms at a time as the safety core does between ticks,
records how late it wakes (``max_thread_stall_ms``): what the GIL costs the core. The
first frame of ``offload`` also starts the worker process (``first_frame_ms``); its peak
RSS is ``worker_peak_rss_kb``.

Run from the repository root: ``python -m benchmarks.frame_stall``. Last line: JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from evsed.controller.ocpp16 import link as link_module
from evsed.controller.ocpp16 import protocol
from evsed.controller.ocpp16.link import FrameTap
from evsed.controller.ocpp16.protocol import StrictChargePoint, websocket_options
from evsed.controller.ocpp16.redaction import _SECRET_PATTERNS

ENTRIES = 10_000
FRAMES = 10
MODES = ("legacy", "inline", "offload-thread", "offload", "offload-jsonschema")
MAX_FRAME = 4 * 1024 * 1024


class ListCP(StrictChargePoint):
    @on(Action.send_local_list)
    def on_send_local_list(self, **_: Any) -> call_result.SendLocalList:
        return call_result.SendLocalList(status="Accepted")


class Ctx:
    """What FrameTap needs of the OcppContext: observers and emit."""

    def __init__(self) -> None:
        self.observers = [lambda _event, _fields: None]

    def emit(self, event: str, **fields: Any) -> None:
        for observer in self.observers:
            observer(event, fields)


def big_frame(n: int) -> str:
    entries = [
        {
            "idTag": f"TAG-{i:016d}",
            "idTagInfo": {
                "status": "Accepted",
                "expiryDate": "2027-01-01T00:00:00Z",
                "parentIdTag": "PARENT-GROUP-000001",
            },
        }
        for i in range(n)
    ]
    payload = {"listVersion": 7, "localAuthorizationList": entries, "updateType": "Full"}
    return json.dumps([2, "uid-0", "SendLocalList", payload])


def _always_redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
    text = _SECRET_PATTERNS[2].sub(r"\1***", text)
    for secret in secrets:
        text = text.replace(secret, "***") if secret else text
    return text


_TODAY = (protocol.to_snake_case, protocol._jsonschema_rs, link_module.redact)


def _set_mode(mode: str) -> None:
    protocol.FRAME_WORKERS.processes = mode not in ("legacy", "inline", "offload-thread")
    inline = mode in ("legacy", "inline")
    ListCP.offload_frame_bytes = 1 << 40 if inline else protocol.OFFLOAD_FRAME_BYTES
    link_module.OFFLOAD_FRAME_BYTES = ListCP.offload_frame_bytes
    if mode == "legacy":
        protocol.to_snake_case = camel_to_snake_case
        protocol._jsonschema_rs = None
        link_module.redact = _always_redact
    else:
        protocol.to_snake_case, protocol._jsonschema_rs, link_module.redact = _TODAY
    if mode == "offload-jsonschema":
        protocol._jsonschema_rs = None


async def measure(mode: str, frame: str) -> dict[str, Any]:
    _set_mode(mode)
    answers: asyncio.Queue[float] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        async for _reply in ws:
            answers.put_nowait(time.perf_counter())

    lags: list[float] = []
    thread_lags: list[float] = []
    stop = asyncio.Event()
    stop_thread = threading.Event()

    def thread_ticker() -> None:
        while not stop_thread.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            thread_lags.append(time.perf_counter() - t - 0.001)

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    async with serve(handler, "127.0.0.1", 0, max_size=MAX_FRAME) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP", **websocket_options(MAX_FRAME)) as ws:
            cp = ListCP("CP", FrameTap(ws, Ctx()), max_frame_bytes=MAX_FRAME)  # type: ignore[arg-type]
            reader = asyncio.ensure_future(cp.start())
            peer = next(iter(server.connections))
            tick = asyncio.ensure_future(ticker())
            core = threading.Thread(target=thread_ticker, name="core-like")
            core.start()
            await asyncio.sleep(0.05)
            handling: list[float] = []
            for _ in range(FRAMES):
                sent = time.perf_counter()
                await peer.send(frame)
                handling.append(await answers.get() - sent)
            await asyncio.sleep(0.05)
            stop.set()
            stop_thread.set()
            await tick
            core.join()
            reader.cancel()
    rss = _worker_peak_rss_kb()
    await protocol.FRAME_WORKERS.aclose()
    lags.sort()
    thread_lags.sort()
    return {
        "mode": mode,
        "max_stall_ms": round(lags[-1] * 1000, 1),
        "p99_stall_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1),
        "max_thread_stall_ms": round(thread_lags[-1] * 1000, 1),
        "p99_thread_stall_ms": round(thread_lags[int(len(thread_lags) * 0.99)] * 1000, 1),
        "first_frame_ms": round(handling[0] * 1000, 1),
        "frame_handling_ms_median": round(statistics.median(handling) * 1000, 1),
        "worker_peak_rss_kb": rss,
    }


def _worker_peak_rss_kb() -> int | None:
    """VmHWM of the frame worker process (Linux), None when none runs."""
    pool = protocol.FRAME_WORKERS._pool
    if pool is None:
        return None
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
    return None


async def main() -> dict[str, Any]:
    frame = big_frame(ENTRIES)
    results = [await measure(mode, frame) for mode in MODES]
    return {
        "frame_bytes": len(frame.encode()),
        "frames": FRAMES,
        "jsonschema_rs": _TODAY[1] is not None,
        "results": results,
    }


if __name__ == "__main__":
    with open(os.devnull, "w") as devnull:
        logging.basicConfig(
            level=logging.INFO,
            stream=devnull,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        out = asyncio.run(main())
    for r in out["results"]:
        print(r, file=sys.stderr)
    print(json.dumps(out))
