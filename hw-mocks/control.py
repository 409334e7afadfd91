"""The bench's loopback control channel: JSON lines over TCP on 127.0.0.1.

Each request is one JSON object on one line, `{"id": <any, optional>, "cmd": "<name>", ...args}`,
and gets exactly one reply line: `{"id": ..., "ok": true, ...result}` or
`{"id": ..., "ok": false, "error": "<message>"}`. Blank lines are ignored. Bad JSON, unknown
commands, bad arguments and errors raised by the bench all become `ok: false` replies and
the connection stays open. Commands and replies are documented in hw-mocks/README.md.

Limits, so that a local user or a runaway script cannot take the process down: at most
`max_clients` connections at once (one more gets an error line and is closed), request
lines of at most `max_line_bytes`, JSON nested at most MAX_DEPTH deep (deeper gets an
error reply, not a RecursionError). When accept() fails (EMFILE at the descriptor limit),
the server backs off and logs at most one line per ACCEPT_LOG_INTERVAL_S.

The server only parses, validates and dispatches; the bench behind it implements
`BenchControl`. `BenchClient` is a small blocking client for scripts and other processes,
and `python -m evsed.hwmocks.control --port N <cmd> [key=value ...]` is its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import errno
import inspect
import itertools
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

__all__ = [
    "COMMANDS",
    "DEFAULT_PORT",
    "EV_FIELDS",
    "FAULT_NAMES",
    "MAX_CLIENTS",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "READERS",
    "BenchClient",
    "BenchControl",
    "BenchError",
    "ControlServer",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765  # the configuration's default bench.control_port
MAX_LINE_BYTES = 64 * 1024
MAX_CLIENTS = 16  # tests and scripts hold a few connections; a person one or two
MAX_DEPTH = 16  # a request is one flat object; nothing legitimate nests this deep
ACCEPT_LOG_INTERVAL_S = 10.0
# accept() back-off while the process has no descriptor (or memory) to spare.
ACCEPT_RETRY_S = (0.05, 1.0)
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

FAULT_NAMES = (
    "meter_silent",
    "meter_garbage",
    "contactor_welded",
    "contactor_fails_to_close",
    "rcd_trip",
    "over_temperature",
    "pilot_short",
    "diode_missing",
    "reader_unplugged",
    "pilot_negative_lost",
    "pp_short",
    "lock_jammed",
    "adc_dead",
    "reader_silent",
    "reader_garbage",
)
READERS = ("rdm6300", "pn532")

Result = Mapping[str, Any] | None


class BenchControl(Protocol):
    """What the control channel needs from the bench. Methods may be sync or async.

    Methods return promptly: anything that lasts (a card held for `hold_s`) is scheduled by
    the bench, not awaited. Arguments arrive already validated (types, ranges, connector
    ids, fault and reader names). A method may still raise ValueError/TypeError/LookupError:
    the message becomes the `error` of the reply. The returned mapping (if any) is merged
    into the reply, so it must not use the keys `id`, `ok` or `error`.
    """

    @property
    def connector_ids(self) -> Sequence[int]:
        """Connector numbers this bench has, e.g. [1] or [1, 2]."""
        ...

    async def plug(self, connector: int) -> Result: ...

    async def unplug(self, connector: int) -> Result: ...

    async def set_ev(self, connector: int, **fields: Any) -> Result:
        """`fields` is a non-empty subset of EV_FIELDS (e.g. soc=80.0, paused=True)."""
        ...

    async def present_card(
        self, uid: str, reader: str = "rdm6300", hold_s: float | None = None
    ) -> Result:
        """Hold a card on `reader` for `hold_s` seconds (None: the bench's default tap)."""
        ...

    async def inject_fault(self, name: str, connector: int, on: bool) -> Result:
        """`name` is one of FAULT_NAMES; bench-wide faults ignore `connector`."""
        ...

    async def status(self, connector: int | None = None) -> Mapping[str, Any]:
        """One connector's status, or every connector's when None (shape: README)."""
        ...


# ------------------------------------------------------------------ command table


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: type  # int, float, bool or str
    required: bool = True
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low bound excluded
    help: str = ""

    def describe(self) -> str:
        text = {int: "integer", float: "number", bool: "boolean", str: "string"}[self.kind]
        if self.nullable:
            text += " or null"
        if self.choices:
            text += f", one of {', '.join(map(str, self.choices))}"
        if self.low is not None or self.high is not None:
            lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = "" if self.high is None else f"<= {self.high:g}"
            text += ", " + " and ".join(x for x in (lo, hi) if x)
        text += ", required" if self.required else f", default {json.dumps(self.default)}"
        return f"{text}; {self.help}" if self.help else text


Handler = Callable[[Any, dict[str, Any]], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    args: tuple[Arg, ...]
    call: Handler
    # Present on set_ev only: optional fields beyond `args`, at least one required.
    fields: tuple[Arg, ...] = ()


_CONNECTOR = Arg("connector", int, help="connector number")

EV_FIELDS: tuple[Arg, ...] = (
    Arg("wants_energy", bool, required=False, help="the car wants to charge"),
    Arg("max_current_a", float, required=False, low=0, high=80, help="car limit per phase"),
    Arg("phases", int, required=False, choices=(1, 3), help="phases the car charges on"),
    Arg("needs_ventilation", bool, required=False, help="state D instead of C"),
    Arg("soc", float, required=False, low=0, high=100, help="state of charge, percent"),
    Arg("target_soc", float, required=False, low=0, high=100, help="stops charging here"),
    Arg("capacity_kwh", float, required=False, low=0, low_open=True, high=1000),
    Arg("paused", bool, required=False, help="the driver paused charging (S2 open)"),
)


def _help(_bench: Any, args: dict[str, Any]) -> dict[str, Any]:
    wanted = args["command"]
    if wanted is not None and wanted not in COMMANDS:
        raise ValueError(f"unknown command {wanted!r}; known: {', '.join(COMMANDS)}")
    names = [wanted] if wanted is not None else list(COMMANDS)
    out: dict[str, Any] = {}
    for name in names:
        cmd = COMMANDS[name]
        entry: dict[str, Any] = {
            "help": cmd.help,
            "args": {a.name: a.describe() for a in cmd.args},
        }
        if cmd.fields:
            entry["fields"] = {a.name: a.describe() for a in cmd.fields}
        out[name] = entry
    return {"commands": out}


def _fields_of(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "connector"}


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("ping", "Check that the bench answers.", (), lambda _b, _a: {"pong": True}),
        Command(
            "help",
            "List the commands and their arguments.",
            (Arg("command", str, required=False, nullable=True, help="only this command"),),
            _help,
        ),
        Command(
            "plug",
            "Plug the EV into the connector (state A -> B).",
            (_CONNECTOR,),
            lambda b, a: b.plug(a["connector"]),
        ),
        Command(
            "unplug",
            "Unplug the EV (-> A).",
            (_CONNECTOR,),
            lambda b, a: b.unplug(a["connector"]),
        ),
        Command(
            "set_ev",
            "Change the EV on a connector; give at least one field.",
            (_CONNECTOR,),
            lambda b, a: b.set_ev(a["connector"], **_fields_of(a)),
            fields=EV_FIELDS,
        ),
        Command(
            "present_card",
            "Hold a card on an RFID reader.",
            (
                Arg("uid", str, help="card id as the reader reports it (hex or number)"),
                Arg("reader", str, required=False, default="rdm6300", choices=READERS),
                Arg(
                    "hold_s",
                    float,
                    required=False,
                    nullable=True,
                    low=0,
                    low_open=True,
                    high=3600,
                    help="seconds in the field; null = a short tap",
                ),
            ),
            lambda b, a: b.present_card(a["uid"], reader=a["reader"], hold_s=a["hold_s"]),
        ),
        Command(
            "inject_fault",
            "Switch a fault on or off.",
            (
                Arg("name", str, choices=FAULT_NAMES),
                Arg(
                    "connector",
                    int,
                    required=False,
                    default=1,
                    help="connector number (ignored by bench-wide faults)",
                ),
                Arg("on", bool, required=False, default=True),
            ),
            lambda b, a: b.inject_fault(a["name"], a["connector"], a["on"]),
        ),
        Command(
            "status",
            "Read pilot, relay, lock, meter, EV and faults.",
            (
                Arg(
                    "connector",
                    int,
                    required=False,
                    nullable=True,
                    help="one connector; null = all",
                ),
            ),
            lambda b, a: b.status(a["connector"]),
        ),
    )
}


class _BadRequest(Exception):
    """A request the server refuses before it reaches the bench."""


_NOUNS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(arg: Arg, value: Any) -> Any:
    if value is None:
        if arg.nullable:
            return None
        raise _BadRequest(f"{arg.name} must not be null")
    kind = arg.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise _BadRequest(f"{arg.name} must be a finite number, got {value!r}")
    else:
        ok = isinstance(value, str)
    if not ok:
        noun = _NOUNS[kind] + (" or null" if arg.nullable else "")
        raise _BadRequest(
            f"{arg.name} must be {noun}, got {json.dumps(value)} ({_type_name(value)})"
        )
    if kind is float:
        value = float(value)
    if arg.choices is not None and value not in arg.choices:
        raise _BadRequest(
            f"unknown {arg.name} {value!r}; expected one of {', '.join(map(str, arg.choices))}"
        )
    if arg.low is not None and (value <= arg.low if arg.low_open else value < arg.low):
        raise _BadRequest(f"{arg.name} must be {'>' if arg.low_open else '>='} {arg.low:g}")
    if arg.high is not None and value > arg.high:
        raise _BadRequest(f"{arg.name} must be <= {arg.high:g}, got {value!r}")
    if kind is str and arg.required and not value:
        raise _BadRequest(f"{arg.name} must not be empty")
    return value


def _validate(cmd: Command, raw: dict[str, Any], connector_ids: Sequence[int]) -> dict[str, Any]:
    by_name = {a.name: a for a in (*cmd.args, *cmd.fields)}
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        expected = ", ".join(by_name) or "no arguments"
        raise _BadRequest(
            f"unknown argument(s) {', '.join(unknown)} for {cmd.name}; expected: {expected}"
        )
    args: dict[str, Any] = {}
    for arg in cmd.args:
        if arg.name in raw:
            args[arg.name] = _check(arg, raw[arg.name])
        elif arg.required:
            raise _BadRequest(f"{cmd.name} needs argument {arg.name!r} ({arg.describe()})")
        else:
            args[arg.name] = arg.default
    if cmd.fields:
        given = [a for a in cmd.fields if a.name in raw]
        if not given:
            names = ", ".join(a.name for a in cmd.fields)
            raise _BadRequest(f"{cmd.name} needs at least one of: {names}")
        for arg in given:
            args[arg.name] = _check(arg, raw[arg.name])
    if args.get("connector") is not None and args["connector"] not in connector_ids:
        known = ", ".join(map(str, connector_ids)) or "none"
        raise _BadRequest(f"unknown connector {args['connector']}; this bench has: {known}")
    return args


# ------------------------------------------------------------------------- server


def _jsonable(value: Any) -> Any:
    """Make a bench result strict-JSON: NaN/inf become null, enums their value, etc."""
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _error(req_id: Any, message: str) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": message}


def _too_deep(text: str, limit: int) -> bool:
    """Whether JSON text nests objects/arrays deeper than `limit` (brackets inside
    strings do not count). Checked before json.loads, which recurses once per level."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, at C speed
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


class RateLimitedLog:
    """Logs the first of a run of errors at once, then at most one line per `interval_s`
    saying how many were left out. The clock is injectable for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = ACCEPT_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._interval, self._clock = logger, interval_s, clock
        self._next = -math.inf
        self.suppressed = 0
        self.total = 0

    def warning(self, message: str, *args: Any) -> None:
        self.total += 1
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" ({self.suppressed} more since the last report)"
            self.suppressed = 0
        self._next = now + self._interval
        self._log.warning(message, *args)


class ControlServer:
    """Serves one `BenchControl` on a loopback TCP port (0 = ephemeral; see `port`)."""

    def __init__(
        self,
        bench: BenchControl,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_clients: int = MAX_CLIENTS,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self._bench = bench
        self._host = host
        self._port = port
        self._max_line = max_line_bytes
        self._max_clients = max_clients
        self._max_depth = max_depth
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.accept_errors = RateLimitedLog(log)
        self.refused = 0  # connections turned away at max_clients

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._sock is None:
            raise RuntimeError("control server not started")
        return int(self._sock.getsockname()[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> int:
        # Our own accept loop, not asyncio.start_server: on EMFILE asyncio logs every
        # failed accept of a tick (thousands of lines a second) and retries in lockstep.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                # The kernel says only "Address already in use": name the port and its key
                # (`evsed run` adds what to do: controller/run.py first_run_message).
                raise OSError(
                    errno.EADDRINUSE,
                    f"the bench control channel cannot listen on {self._host}:{self._port}"
                    " ([bench] control_port)",
                ) from None
            sock.listen(min(socket.SOMAXCONN, 64))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._acceptor = loop.create_task(self._accept_loop(sock), name="bench-control-accept")
        log.info("bench control channel on %s:%d", self._host, self.port)
        return self.port

    async def close(self) -> None:
        if self._sock is None:
            return
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._sock.close()
        self._sock = None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        delay = ACCEPT_RETRY_S[0]
        while True:
            try:
                conn, _addr = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self.accept_errors.warning(
                        "bench control channel: cannot accept a connection: %s", exc
                    )
                else:
                    self.accept_errors.warning("bench control channel: accept failed: %s", exc)
                # The listening socket stays readable: without a pause this would spin.
                await asyncio.sleep(delay)
                delay = min(delay * 2, ACCEPT_RETRY_S[1])
                continue
            delay = ACCEPT_RETRY_S[0]
            if len(self._clients) >= self._max_clients:
                self._refuse(conn)
                continue
            task = loop.create_task(self._serve_socket(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        message = f"too many connections (at most {self._max_clients}); try again later"
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(self._encode(_error(None, message)))
        conn.close()

    async def _serve_socket(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        await self._serve_client(reader, writer)

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def handle_line(self, line: bytes | str) -> dict[str, Any]:
        """Answer one request line (without its newline). Never raises."""
        try:
            text = line.decode() if isinstance(line, bytes) else line
            if _too_deep(text, self._max_depth):
                return _error(None, f"bad JSON: nested deeper than {self._max_depth} levels")
            request = json.loads(text)
        except RecursionError:  # a max_depth set above what the interpreter can parse
            return _error(None, "bad JSON: nested too deep")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, f"bad JSON: {exc}")
        if not isinstance(request, dict):
            return _error(None, f"a request must be a JSON object, got {_type_name(request)}")
        req_id = request.pop("id", None)
        name = request.pop("cmd", None)
        if not isinstance(name, str):
            return _error(req_id, 'missing "cmd" (a string naming the command; try "help")')
        cmd = COMMANDS.get(name)
        if cmd is None:
            return _error(req_id, f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
        try:
            args = _validate(cmd, request, self._connector_ids())
            result = cmd.call(self._bench, args)
            if inspect.isawaitable(result):
                result = await result
        except _BadRequest as exc:
            return _error(req_id, str(exc))
        except (ValueError, TypeError, LookupError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return _error(req_id, f"{name}: {message}")
        except Exception as exc:
            log.exception("bench failed on %s", name)
            return _error(req_id, f"{name}: internal error: {type(exc).__name__}: {exc}")
        if result is None:
            body: dict[str, Any] = {}
        elif isinstance(result, Mapping):
            body = dict(result)
        else:
            body = {"result": result}
        clash = sorted({"id", "ok", "error"} & set(body))
        if clash:
            return _error(
                req_id, f"{name}: internal error: bench reply uses reserved key(s) {clash}"
            )
        return {"id": req_id, "ok": True, **_jsonable(body)}

    def _connector_ids(self) -> Sequence[int]:
        try:
            return list(self._bench.connector_ids)
        except Exception:
            log.exception("bench.connector_ids failed")
            return []

    def _encode(self, reply: dict[str, Any]) -> bytes:
        try:
            text = json.dumps(reply, allow_nan=False)
        except (TypeError, ValueError) as exc:
            text = json.dumps(_error(_jsonable(reply.get("id")), f"unencodable reply: {exc}"))
        return text.encode() + b"\n"

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        discarding = False  # inside an over-long line that already got its error reply
        too_long = f"request line longer than {self._max_line} bytes"
        try:
            while chunk := await reader.read(65536):
                buf += chunk
                while True:
                    newline = buf.find(b"\n")
                    if newline < 0:
                        if len(buf) > self._max_line:
                            if not discarding:
                                discarding = True
                                await self._send(writer, _error(None, too_long))
                            buf.clear()
                        break
                    line = bytes(buf[:newline])
                    del buf[: newline + 1]
                    if discarding:
                        discarding = False
                        continue
                    if len(line) > self._max_line:
                        await self._send(writer, _error(None, too_long))
                    elif line.strip():
                        await self._send(writer, await self.handle_line(line))
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(self._encode(reply))
        await writer.drain()


# ------------------------------------------------------------------------- client


class BenchError(RuntimeError):
    """The bench answered ok=false (or the channel failed); `reply` holds the answer if any."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class BenchClient:
    """Blocking client for scripts and other processes. Not for use inside the bench's loop.

    >>> with BenchClient("127.0.0.1", 8765) as bench:
    ...     bench.request("plug", connector=1)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, timeout: float = 5.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile: Any = None
        self._ids = itertools.count(1)

    def connect(self) -> None:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except ConnectionRefusedError as exc:
                # A new user got "[Errno 111] Connection refused" and no idea what to start.
                raise BenchError(
                    f"bench control channel {self.host}:{self.port}: nothing listens there: "
                    "is the bench running? `evsed run` (no configuration file, or one with "
                    "[bench]) or `evsed bench` starts it and prints its control port; give "
                    "that port with --port"
                ) from exc
            except OSError as exc:
                raise BenchError(f"bench control channel {self.host}:{self.port}: {exc}") from exc
            self._sock = sock
            self._rfile = sock.makefile("rb")

    def close(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
            self._rfile = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> BenchClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and return the reply as is (ok true or false)."""
        self.connect()
        assert self._sock is not None
        req_id = next(self._ids)
        line = json.dumps({"id": req_id, "cmd": cmd, **args}) + "\n"
        try:
            self._sock.sendall(line.encode())
            raw = self._rfile.readline(MAX_LINE_BYTES * 16)
        except OSError as exc:
            self.close()
            raise BenchError(f"bench control channel {self.host}:{self.port}: {exc}") from exc
        if not raw:
            self.close()
            raise BenchError(f"bench control channel {self.host}:{self.port} closed")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise BenchError(f"bench sent bad JSON: {raw[:200]!r}") from exc
        if not isinstance(reply, dict) or reply.get("id") != req_id:
            raise BenchError(f"bench reply does not match request {req_id}: {reply!r}")
        return reply

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; return the reply, or raise BenchError when ok is false."""
        reply = self.call(cmd, **args)
        if not reply.get("ok"):
            raise BenchError(str(reply.get("error", "request failed")), reply)
        return reply


# ---------------------------------------------------------------------------- CLI

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _cli_value(cmd: str, key: str, text: str) -> Any:
    """Convert `key=value` text using the command's declared type; unknown keys: JSON or text.

    A value that does not convert is sent as a string, so the server names the problem.
    """
    command = COMMANDS.get(cmd)
    arg = None
    if command is not None:
        arg = next((a for a in (*command.args, *command.fields) if a.name == key), None)
    if arg is None:
        try:
            return json.loads(text)
        except ValueError:
            return text
    if arg.nullable and text.lower() in ("null", "none"):
        return None
    try:
        if arg.kind is int:
            return int(text)
        if arg.kind is float:
            return float(text)
    except ValueError:
        return text
    if arg.kind is bool:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else text
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evsed.hwmocks.control",
        description="Send one command to the simulated bench and print the reply JSON.",
        epilog="example: python -m evsed.hwmocks.control --port 8765 plug connector=1",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--pretty", action="store_true", help="indent the reply")
    parser.add_argument("cmd", help="command name, e.g. ping, help, plug, status")
    parser.add_argument("args", nargs="*", metavar="key=value")
    ns = parser.parse_args(argv)

    args: dict[str, Any] = {}
    for item in ns.args:
        key, sep, text = item.partition("=")
        if not sep or not key:
            parser.error(f"argument {item!r} is not key=value")
        if key in ("id", "cmd"):
            parser.error(f"{key!r} is reserved")
        args[key] = _cli_value(ns.cmd, key, text)

    try:
        with BenchClient(ns.host, ns.port, timeout=ns.timeout) as client:
            reply = client.call(ns.cmd, **args)
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2 if ns.pretty else None))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
