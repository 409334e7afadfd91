"""`evsed demo | head -2` and `evsed status | head -2`: a reader that goes away early ends
the command quietly with status 141 (128 + SIGPIPE), not a traceback per event and "demo
failed" (the trial), and the demo stops instead of playing on to no one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EVSED = [sys.executable, "-m", "evsed.controller.cli"]


def test_the_demo_stops_quietly_when_its_reader_goes_away(tmp_path: Path) -> None:
    errors = tmp_path / "stderr"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [*EVSED, "demo"], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(2)]
        proc.stdout.close()  # as `head -2` does once it has its lines
        rc = proc.wait(timeout=60)  # the whole demo plays longer than the 10 s of a step
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = errors.read_text()
    assert all(line.strip() for line in head)
    assert rc == 141, stderr
    assert "Traceback" not in stderr
    assert "demo failed" not in stderr
    assert "BrokenPipeError" not in stderr


def _status_server(path: Path) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b'{"connectors": [], "lines": "' + b"x" * 1000 + b'"}')

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_status_to_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    sock = tmp_path / "status.sock"
    served = _status_server(sock)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before evsed writes: the first write fails
    try:
        proc = subprocess.run(
            [*EVSED, "status", "--socket", str(sock), "--json"],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    served.join(timeout=30)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
