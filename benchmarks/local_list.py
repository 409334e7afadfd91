"""A Full SendLocalList of 10,000 entries through the real session: how long until the
Central System has Accepted, and how long the charge point's event loop stalls meanwhile.

The charge point (the whole stack: bench, safety core, OcppApp and its session, as in
`evsed run` with the simulated bench) runs in a child process, so that the embedded Central
System's own work (it parses and records every frame it sends) is not counted against the
charge point's loop. In the child a ticker sleeps 1 ms at a time and records how late it
wakes, only while the lists are being sent: the worst lateness is `max_loop_stall_ms`.

Each run sends one pre-encoded frame (about 1.4 MiB; listVersion 1, 2, ...) and times it
from the send to the CALLRESULT (CS side, loopback); `seconds` is the median of `--runs`.

Target: seconds <= 1.

    python benchmarks/local_list.py [--runs 5] [--entries 10000]

Last line: one JSON object {"seconds", "runs_s", "max_loop_stall_ms", "entries", "bytes"}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from typing import Any

CP_ID = "CP-LIST-1"


def local_list_frame(unique_id: str, version: int, entries: int) -> str:
    listed = [
        {
            "idTag": f"TAG-{i:016d}",
            "idTagInfo": {
                "status": "Accepted",
                "expiryDate": "2027-01-01T00:00:00Z",
                "parentIdTag": "PARENT-GROUP-000001",
            },
        }
        for i in range(entries)
    ]
    payload = {"listVersion": version, "updateType": "Full", "localAuthorizationList": listed}
    return json.dumps([2, unique_id, "SendLocalList", payload])


# ---------------------------------------------------------------- the charge point (child)


async def charge_point(url: str) -> None:
    """Run the stack until stdin closes; "start"/"stop" lines bound the stall measurement,
    "stop" prints the worst lateness in ms."""
    from evsed.controller.config import parse
    from evsed.controller.run import Stack

    with tempfile.TemporaryDirectory(prefix="evsed-bench-") as state_dir:
        config = parse(
            {
                "bench": {"control_port": 0},
                "connectors": [{"meter": {"port": 0}}],
                "state_dir": state_dir,
                "logging": {"level": "WARNING"},
                "central_system": {"url": url, "charge_point_id": CP_ID},
            }
        )
        async with Stack(config, ocpp=True):
            # As `evsed run` does once started: the start-up objects leave the GC's scans.
            gc.collect()
            gc.freeze()
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            worst = [0.0]
            measuring = asyncio.Event()

            async def ticker() -> None:
                while True:
                    await measuring.wait()
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    if measuring.is_set():
                        worst[0] = max(worst[0], time.perf_counter() - t - 0.001)

            tick = asyncio.ensure_future(ticker())
            print("ready", flush=True)
            while line := (await reader.readline()).decode().strip():
                if line == "start":
                    worst[0] = 0.0
                    measuring.set()
                elif line == "stop":
                    measuring.clear()
                    print(json.dumps({"max_loop_stall_ms": round(worst[0] * 1000, 1)}), flush=True)
            tick.cancel()


# ---------------------------------------------------------------- the Central System (parent)


async def measure(runs: int, entries: int) -> dict[str, Any]:
    from evsed.hwmocks.central_system import CentralSystem

    frames = [local_list_frame(f"list-{v}", v, entries) for v in range(1, runs + 1)]
    async with CentralSystem(max_size=8 * 1024 * 1024, response_timeout=30.0) as cs:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            cs.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            await cs.wait_connected(CP_ID, timeout=30.0)
            await cs.wait_for_call("BootNotification", CP_ID, timeout=30.0)
            while (await child.stdout.readline()).strip() != b"ready":
                pass
            await asyncio.sleep(1.0)  # past the start-up traffic
            child.stdin.write(b"start\n")
            await child.stdin.drain()
            times: list[float] = []
            for frame, version in zip(frames, range(1, runs + 1), strict=True):
                mark = cs.mark()
                started = time.perf_counter()
                await cs.send_raw(CP_ID, frame)
                reply = await cs.wait_for_reply(f"list-{version}", timeout=30.0, since=mark)
                times.append(time.perf_counter() - started)
                if reply.payload != {"status": "Accepted"}:
                    raise RuntimeError(f"SendLocalList answered {reply.raw[:200]}")
            child.stdin.write(b"stop\n")
            await child.stdin.drain()
            stall = json.loads(await child.stdout.readline())
        finally:
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
    return {
        "seconds": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        "max_loop_stall_ms": stall["max_loop_stall_ms"],
        "entries": entries,
        "bytes": len(frames[0]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--entries", type=int, default=10_000)
    p.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.child:
        asyncio.run(charge_point(args.child))
        return 0
    result = asyncio.run(measure(args.runs, args.entries))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
