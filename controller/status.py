"""`evsed status`: what the running service knows, read over a local unix socket.

The service listens on ``status.sock`` in its runtime directory (``$RUNTIME_DIRECTORY``,
``/run/evsed`` under the unit) or else in its state directory. The socket is mode 0660,
owned by the service user and its group: root and members of the group may read it, nobody
else. A client connects, reads one JSON object and the server closes: there is no request,
so there is nothing to parse and nothing to attack.

The snapshot is read on the loop from values the charger already keeps (the same ones the
OCPP layer reads through its port); it never calls hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evsed.controller.config import Config, mask_url
from evsed.controller.connector.faults import RULES, Clear, Fault
from evsed.controller.masking import mask_tag
from evsed.controller.ocpp16.link import central_system_url
from evsed.controller.readings import (
    ENERGY_DIGITS,
    POWER_DIGITS,
    drawn_a,
    reading,
)

log = logging.getLogger(__name__)

SOCKET_NAME = "status.sock"
#: Where the unit's RuntimeDirectory=evsed puts it: `evsed status` typed in a shell has no
#: $RUNTIME_DIRECTORY, so it looks there first.
SERVICE_SOCKET = Path("/run/evsed") / SOCKET_NAME
SOCKET_MODE = 0o660


class StatusError(Exception):
    """The service could not be asked (not running, no permission): one line for people."""


class AlreadyRunning(Exception):
    """Another evsed answers on the status socket."""


def server_socket_path(config: Config, environ: Mapping[str, str] = os.environ) -> Path:
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else Path(config.state_dir)) / SOCKET_NAME


def client_socket_path(config: Config, environ: Mapping[str, str] = os.environ) -> Path:
    """The service's socket if it is there, else the one `evsed run` with this
    configuration would open."""
    if not environ.get("RUNTIME_DIRECTORY") and SERVICE_SOCKET.exists():
        return SERVICE_SOCKET
    return server_socket_path(config, environ)


LOCK_NAME = "evsed.lock"


class InstanceLock:
    """One `evsed run` per state directory, claimed before anything is opened.

    The status socket finds a running evsed only once the second one has started: by then
    it had opened the same store, stopped the first one's open transaction as PowerLoss
    (its start-up recovery) and booted at the Central System under the same identity. An
    exclusive flock on ``evsed.lock`` is taken first instead; the kernel lets go of it
    whatever way the holder ends (kill -9, a crash), so nothing is ever left to clean up.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        # The state holds card ids: a directory made here is the service user's alone.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another evsed uses {self.path.parent}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    # Also async, so that `evsed run` takes it in the same `async with` as its Stack.
    async def __aenter__(self) -> InstanceLock:
        return self.__enter__()

    async def __aexit__(self, *_: object) -> None:
        self.release()


# ---------------------------------------------------------------- what the service knows


class LinkTracker:
    """The link to the Central System as the session's events tell it."""

    def __init__(self, config: Config, clock: Any) -> None:
        self._clock = clock
        # The URL the link dials (the id appended or put in the template), not the template:
        # the one to compare with the server's log when it answers 404.
        self.url = _dialled_url(config) if config.central_system.url else ""
        self.online = False
        self.since: datetime | None = None  # of the current online/offline spell
        self.last_error: str = ""

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        if event == "online":
            self.online = True
            self.since = self._clock.now()
            self.last_error = ""
        elif event == "offline":
            self.online = False
            self.since = self._clock.now()
        elif event == "connect_failed":
            self.url = str(fields.get("url") or self.url)
            if "http_status" in fields:
                self.last_error = f"HTTP {fields['http_status']}"
            else:
                self.last_error = str(fields.get("reason") or fields.get("error") or "failed")
            if self.since is None:
                self.since = self._clock.now()


def _dialled_url(config: Config) -> str:
    cs = config.central_system
    scheme = "wss" if cs.security_profile >= 2 or cs.tls_without_auth else None
    return mask_url(central_system_url(cs.url, cs.charge_point_id, scheme))


#: The fault of a meter that does not answer (evsed.controller.connector.faults.Fault.METER).
METER_FAULT = str(Fault.METER)


def _cs_transaction_id(ocpp: Any, local_id: int) -> int | None:
    """The transactionId the Central System gave this record (one indexed row read)."""
    store = getattr(ocpp, "store", None)
    if store is None or not local_id:
        return None
    stored = store.transaction(local_id)
    return None if stored is None else stored.cs_transaction_id


def snapshot(stack: Any, link: LinkTracker) -> dict[str, Any]:
    """The JSON object `evsed status` prints (stable keys: scripts read --json)."""
    charger = stack.charger
    ocpp = stack.ocpp
    connectors: list[dict[str, Any]] = []
    if charger is not None:
        for cid in charger.connector_ids:
            # One reading of the connector: its status, pilot, faults and transaction agree
            # (read one by one they may straddle a step of the safety core's thread).
            view = charger.view(cid)
            status = view.status
            allowance = charger.allowance(cid)
            tx = view.transaction
            sample = view.last_sample
            faults = sorted(str(f) for f, _ in view.faults)
            # A meter that stopped answering leaves its last sample behind: what the EV
            # draws now is unknown, not the amps and watts it drew before the fault.
            drawn = None if METER_FAULT in faults else sample
            transaction = None
            if tx is not None:
                energy = reading(view.last_energy_wh, ENERGY_DIGITS)
                transaction = {
                    # The Central System's transactionId (what its web page and its bills
                    # show); None until StartTransaction.conf. local_id: evsed's record.
                    "transaction_id": _cs_transaction_id(ocpp, tx.local_id),
                    "local_id": tx.local_id,
                    "id_tag": mask_tag(tx.id_tag),
                    "started_at": tx.started_at.isoformat(),
                    "meter_start_wh": tx.meter_start_wh,
                    "energy_wh": None if energy is None else round(energy - tx.meter_start_wh),
                }
            connectors.append(
                {
                    "id": cid,
                    "status": str(status.status),
                    "error_code": str(status.error_code),
                    "info": status.info,
                    "pilot": str(view.pilot_state),
                    "offered_a": round(view.offered_a, 1),
                    "drawn_a": drawn_a(drawn),
                    "power_w": reading(drawn.power_total_w, POWER_DIGITS) if drawn else None,
                    "energy_wh": reading(view.last_energy_wh, ENERGY_DIGITS),
                    "temperature_c": reading(view.temperature_c, 1),
                    "faults": faults,
                    "transaction": transaction,
                    "limit": {
                        "amps": allowance.amps,
                        "suspended": allowance.suspended,
                        "reason": str(allowance.reason),
                    },
                }
            )
    session = getattr(ocpp, "session", None) if ocpp is not None else None
    return {
        "time": stack.clock.now().isoformat(),
        "connectors": connectors,
        "central_system": {
            "url": link.url,
            "configured": bool(link.url),
            "connected": bool(session is not None and session.connected),
            "online": bool(session is not None and session.online),
            "since": None if link.since is None else link.since.isoformat(),
            "last_error": link.last_error,
        },
        "queue_depth": len(ocpp.txqueue) if ocpp is not None else 0,
        # A crash-loop hold (crashguard.py): why, since when, how it ends; None otherwise.
        "hold": _hold(stack),
    }


def _hold(stack: Any) -> dict[str, Any] | None:
    guard = getattr(stack, "crash_guard", None)
    return None if guard is None else guard.snapshot()


# ---------------------------------------------------------------- the server


class StatusServer:
    """The unix socket that answers every connection with one snapshot."""

    def __init__(self, stack: Any, link: LinkTracker, path: Path) -> None:
        self._stack = stack
        self._link = link
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.path.exists():
            if _answers(self.path):
                raise AlreadyRunning(f"another evsed answers on {self.path}")
            # Left by a process that did not get to clean up (kill -9, power cut).
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        os.chmod(self.path, SOCKET_MODE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _answer(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = json.dumps(snapshot(self._stack, self._link)).encode() + b"\n"
            writer.write(body)
            await writer.drain()
        except Exception:
            log.exception("status: could not answer a status request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- the client


def query(path: Path, timeout_s: float = 5.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, NotADirectoryError):
            raise StatusError(f"evsed is not running (no {path})") from None
        except ConnectionRefusedError:
            raise StatusError(f"evsed is not running ({path} is left over)") from None
        except PermissionError:
            raise StatusError(
                f"no permission to read {path}: run as root or as a member of the "
                "service's group (sudo usermod -aG evsed $USER, then log in again)"
            ) from None
        except OSError as exc:  # not a socket, a path too long for AF_UNIX, ...
            raise StatusError(f"cannot ask {path}: {exc.strerror or exc}") from None
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    try:
        reply: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusError(f"{path} did not answer with a status") from None
    return reply


def _num(value: Any, unit: str, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f} {unit}"


def _tx_id(tx: dict[str, Any], cs_configured: bool) -> str:
    """The Central System's transactionId; "pending" until its StartTransaction.conf."""
    if tx.get("transaction_id") is not None:
        return f"#{tx['transaction_id']}"
    if cs_configured:
        return "pending"
    return f"local {tx.get('local_id', '?')}"  # no Central System: evsed's own record


def format_table(snap: dict[str, Any]) -> str:
    cs = snap["central_system"]
    lines = []
    if not cs["configured"]:
        lines.append("Central System: none configured (local authorisation only)")
    else:
        state = "online" if cs["online"] else ("connected" if cs["connected"] else "offline")
        since = f" since {readable_since(cs['since'], snap.get('time'))}" if cs["since"] else ""
        error = ""
        if cs["last_error"] and not cs["online"]:
            error = f" (last error: {cs['last_error']})"
        lines.append(f"Central System: {state}{since}{error}")
        lines.append(f"  url: {cs['url']}")
    lines.append(f"Queued messages: {snap['queue_depth']}")
    hold = snap.get("hold")
    if hold:
        lifts = hold.get("lifts_in_s")
        by_itself = "" if lifts is None else f"; lifts by itself in {lifts} s without a crash"
        lines.append(f"HOLD: {hold['reason']}, for {hold['held_for_s']} s: not charging")
        lines.append(f"  {hold['clear']}{by_itself}")
    rows = [("connector", "status", "pilot", "offered", "drawn", "power", "energy", "limit", "tx")]
    for c in snap["connectors"]:
        tx = c["transaction"]
        tx_text = "-"
        if tx is not None:
            tx_text = (
                f"{_tx_id(tx, cs['configured'])} {tx['id_tag']} {_num(tx['energy_wh'], 'Wh', 0)}"
            )
        limit = c["limit"]
        limit_text = "suspended" if limit["suspended"] else _num(limit["amps"], "A")
        limit_text = f"{limit_text} ({limit['reason']})"
        if c["pilot"] == "A" and limit["suspended"] and limit["reason"] == "cable":
            # Nothing plugged: no cable to read a rating from, which is no limit to report.
            limit_text = "no EV"
        if c["status"] == "Faulted":
            # The fault holds the pilot off whatever the limiter allows: nothing is offered.
            limit_text = "- (faulted)"
        status = c["status"] if c["error_code"] == "NoError" else f"{c['status']}/{c['error_code']}"
        rows.append(
            (
                str(c["id"]),
                status,
                c["pilot"],
                _num(c["offered_a"], "A"),
                _num(c["drawn_a"], "A"),
                _num(c["power_w"], "W", 0),
                _num(c["energy_wh"], "Wh", 0),
                limit_text,
                tx_text,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    for c in snap["connectors"]:
        if c["faults"]:
            lines.append(f"connector {c['id']} faults:")
            lines.extend(f"  {fault}: {how_it_clears(fault)}" for fault in c["faults"])
        if METER_FAULT in c["faults"]:
            lines.append("  (drawn and power: - while the meter does not answer: unknown)")
    return "\n".join(lines)


#: How a fault that clears by itself (Clear.RECOVERY) does it, in the words of its part.
_RECOVERS = {
    "meter": "by itself when the meter answers again",
    "over_temperature": "by itself when the socket has cooled down",
    "temperature_sensor": "by itself when the temperature sensor reads again",
    "pilot_short": "by itself when the pilot reads a real state again",
    "pilot_sense": "by itself when the pilot reads a real state again",
    "cable": "by itself when the proximity pilot reads a cable again",
    "rcd_self_test": "by itself when an RCD self-test passes",
    "crash_loop": "by itself after a quiet period without a crash (or evsed clear-hold)",
}


def how_it_clears(name: str) -> str:
    """The clearing rule of a fault (evsed.controller.connector.faults.RULES), for people:
    a user saw "faults: meter, rcd" and waited for them to go away by themselves."""
    try:
        rule = RULES[Fault(name)]
    except (ValueError, KeyError):
        return "no clearing rule known to this evsed"
    ways = []
    if Clear.RECOVERY in rule.clears_on:
        ways.append(_RECOVERS.get(name, "by itself when its cause is gone"))
    if Clear.UNPLUG in rule.clears_on:
        ways.append("when the EV is unplugged")
    if Clear.RESET in rule.clears_on:
        ways.append("by a Reset from the Central System or a restart of evsed")
    if not ways:
        return "no clearing rule known to this evsed"
    only = "only " if len(ways) == 1 and Clear.RECOVERY not in rule.clears_on else ""
    return "clears " + only + ", or ".join(ways)


def readable_since(since: str, now: str | None) -> str:
    """An ISO time as people read it: "2026-12-04 19:24:45 UTC (3 min ago)" (a user read
    "since 2026-12-04T19:24:45.758599+00:00" as noise)."""
    try:
        then = datetime.fromisoformat(since)
    except ValueError:
        return since
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    text = then.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        now_at = datetime.fromisoformat(now) if now else None
    except ValueError:
        now_at = None
    if now_at is None:
        return text
    if now_at.tzinfo is None:
        now_at = now_at.replace(tzinfo=UTC)
    ago = int((now_at - then).total_seconds())
    if ago < 0:
        return text
    return f"{text} ({_duration(ago)} ago)"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"
