"""Footprint of `evsed run` on the simulated bench: CPU while idle and while charging, RSS.

Starts `python -m evsed.controller.cli run --config <tmp toml>` (the bench defaults, ephemeral
control and meter ports, state in a temporary directory, no Central System), waits for
"evsed running", then samples /proc/PID/stat (utime + stime over wall time) and
/proc/PID/status (VmRSS) once a second: `--idle-s` seconds with nothing plugged, then
`--charging-s` seconds after plugging an EV and tapping a card through the bench's control
channel. Finally SIGTERM: the process must exit 0 within 10 s.

Note that the bench runs inside the measured process (as with `evsed run` on the default
configuration): its simulated meter, ADC and reader threads are part of the figures.

Targets: idle CPU <= 1 % of one core, RSS <= 60 MB.

    python benchmarks/footprint.py [--idle-s 60] [--charging-s 60]

The last line of the output is one JSON object with idle_cpu_percent,
charging_cpu_percent and rss_mb (the largest VmRSS seen).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evsed.hwmocks.control import BenchClient

REPO = Path(__file__).resolve().parents[1]
CARD = "AABBCCDDEE"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
state_dir = "{state_dir}"

[central_system]
enabled = false

[bench]
control_port = 0

[[connectors]]
[connectors.meter]
port = 0

[authorization]
local_tags = ["{card}"]

[logging]
level = "WARNING"
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may contain spaces: split after its closing paren.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class Window:
    cpu_percent: float
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float


def watch(pid: int, seconds: float, label: str) -> Window:
    rss = [rss_mb(pid)]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        time.sleep(min(1.0, end - now))
        rss.append(rss_mb(pid))
        elapsed = time.monotonic() - t0
        print(
            f"  {label} {elapsed:5.1f} s: cpu {(cpu_seconds(pid) - cpu0) / elapsed * 100:5.2f} %"
            f", rss {rss[-1]:.1f} MB",
            flush=True,
        )
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100.0
    return Window(round(cpu, 3), round(rss[0], 1), round(rss[-1], 1), round(max(rss), 1))


def read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> list[str]:
    """Lines of the child's stdout up to and including the one starting with `marker`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    # Raw reads from the descriptor: a buffered readline could hold the marker line in
    # its buffer while select() waits for more bytes that never come.
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                lines.append(raw.decode(errors="replace"))
                if lines[-1].startswith(marker):
                    return lines
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"evsed did not print {marker!r} in {timeout:g} s; got {lines!r}")


def run(idle_s: float, charging_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="evsed-footprint-") as tmp:
        config = Path(tmp) / "evsed.toml"
        config.write_text(CONFIG.format(state_dir=Path(tmp) / "state", card=CARD))
        argv = ["run", "--config", str(config)]
        command = [sys.executable, "-m", "evsed.controller.cli", *argv]
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            lines = read_until(proc, "evsed running", 30.0)
            port = next(int(x.split()[-1]) for x in lines if x.startswith("bench control port"))
            print(f"evsed pid {proc.pid}, bench control port {port}", flush=True)
            time.sleep(1.0)  # start-up work (imports, RCD self-test) is not idling
            idle = watch(proc.pid, idle_s, "idle")
            with BenchClient("127.0.0.1", port) as bench:
                bench.request("plug", connector=1)
                bench.request("present_card", uid=CARD)
                deadline = time.monotonic() + 10.0
                while not bench.request("status", connector=1)["relay"]["energized"]:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the contactor did not close after plug and card")
                    time.sleep(0.1)
                charging = watch(proc.pid, charging_s, "charging")
                status = bench.request("status", connector=1)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10.0)
            shutdown_s = time.monotonic() - t_term
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "idle_cpu_percent": idle.cpu_percent,
        "charging_cpu_percent": charging.cpu_percent,
        "rss_mb": max(idle.rss_max_mb, charging.rss_max_mb),
        "rss_idle_start_mb": idle.rss_start_mb,
        "rss_idle_end_mb": idle.rss_end_mb,
        "rss_charging_end_mb": charging.rss_end_mb,
        "charging_power_w": status["meter"].get("power_total_w"),
        "energy_wh": status["meter"].get("energy_wh"),
        "exit_code": code,
        "shutdown_s": round(shutdown_s, 2),
        "idle_s": idle_s,
        "charging_s": charging_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle-s", type=float, default=60.0)
    p.add_argument("--charging-s", type=float, default=60.0)
    args = p.parse_args(argv)
    result = run(args.idle_s, args.charging_s)
    print(json.dumps(result), flush=True)
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
