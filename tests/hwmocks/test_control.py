"""Control channel: JSON lines over loopback TCP, dispatched to a fake bench."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evsed.hwmocks import control
from evsed.hwmocks.control import COMMANDS, FAULT_NAMES, BenchClient, BenchError, ControlServer

TIMEOUT = 2.0


class FakeBench:
    """Records every call; `status` is synchronous on purpose (both kinds must work)."""

    connector_ids = (1, 2)

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.gate: asyncio.Event | None = None
        self.raise_next: Exception | None = None

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc

    async def plug(self, connector: int) -> dict[str, Any]:
        self._record("plug", connector)
        if self.gate is not None:
            await self.gate.wait()
        return {"state": "B"}

    async def unplug(self, connector: int) -> None:
        self._record("unplug", connector)

    async def set_ev(self, connector: int, **fields: Any) -> None:
        self._record("set_ev", connector, **fields)

    async def present_card(
        self, uid: str, reader: str = "rdm6300", hold_s: float | None = None
    ) -> None:
        self._record("present_card", uid, reader=reader, hold_s=hold_s)

    async def inject_fault(self, name: str, connector: int, on: bool) -> None:
        self._record("inject_fault", name, connector, on)

    def status(self, connector: int | None = None) -> dict[str, Any]:
        self._record("status", connector)
        one = {
            "connector": 1,
            "pilot": {"duty": 0.2667, "state": "C"},
            "meter": {"power_total_w": float("nan")},
        }
        return one if connector is not None else {"connectors": [one]}


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.send_raw(json.dumps(request).encode() + b"\n")
        return await self.reply()

    async def ask_raw(self, line: bytes) -> dict[str, Any]:
        await self.send_raw(line + b"\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
def bench() -> FakeBench:
    return FakeBench()


@pytest.fixture
async def server(bench: FakeBench) -> AsyncIterator[ControlServer]:
    srv = ControlServer(bench, port=0, max_line_bytes=1024)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def conn(server: ControlServer) -> AsyncIterator[Conn]:
    c = Conn(*await asyncio.open_connection("127.0.0.1", server.port))
    yield c
    await c.close()


async def test_ping_echoes_id(conn: Conn) -> None:
    assert await conn.ask({"id": "a-1", "cmd": "ping"}) == {"id": "a-1", "ok": True, "pong": True}
    assert await conn.ask({"cmd": "ping"}) == {"id": None, "ok": True, "pong": True}


async def test_help_lists_every_command(conn: Conn) -> None:
    reply = await conn.ask({"id": 1, "cmd": "help"})
    assert reply["ok"]
    assert set(reply["commands"]) == set(COMMANDS)
    assert "connector" in reply["commands"]["plug"]["args"]
    assert "soc" in reply["commands"]["set_ev"]["fields"]
    one = await conn.ask({"id": 2, "cmd": "help", "command": "inject_fault"})
    assert list(one["commands"]) == ["inject_fault"]
    bad = await conn.ask({"id": 3, "cmd": "help", "command": "fly"})
    assert not bad["ok"] and "unknown command 'fly'" in bad["error"]


async def test_plug_and_unplug_reach_the_bench(conn: Conn, bench: FakeBench) -> None:
    assert await conn.ask({"id": 1, "cmd": "plug", "connector": 2}) == {
        "id": 1,
        "ok": True,
        "state": "B",
    }
    assert await conn.ask({"id": 2, "cmd": "unplug", "connector": 1}) == {"id": 2, "ok": True}
    assert bench.calls == [("plug", (2,), {}), ("unplug", (1,), {})]


async def test_set_ev_passes_fields(conn: Conn, bench: FakeBench) -> None:
    reply = await conn.ask(
        {"id": 1, "cmd": "set_ev", "connector": 1, "soc": 80, "paused": True, "phases": 1}
    )
    assert reply == {"id": 1, "ok": True}
    name, args, fields = bench.calls[-1]
    assert (name, args) == ("set_ev", (1,))
    assert fields == {"soc": 80.0, "paused": True, "phases": 1}
    assert isinstance(fields["soc"], float)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"cmd": "set_ev", "connector": 1}, "needs at least one of"),
        ({"cmd": "set_ev", "connector": 1, "soc": "high"}, 'soc must be a number, got "high"'),
        ({"cmd": "set_ev", "connector": 1, "soc": 120}, "soc must be <= 100"),
        ({"cmd": "set_ev", "connector": 1, "phases": 2}, "unknown phases 2"),
        ({"cmd": "set_ev", "connector": 1, "colour": "red"}, "unknown argument(s) colour"),
        ({"cmd": "set_ev", "connector": 1, "paused": 1}, "paused must be true or false"),
        ({"cmd": "plug"}, "plug needs argument 'connector'"),
        ({"cmd": "plug", "connector": 3}, "unknown connector 3; this bench has: 1, 2"),
        ({"cmd": "plug", "connector": "1"}, "connector must be an integer"),
        ({"cmd": "plug", "connector": True}, "connector must be an integer"),
        ({"cmd": "plug", "connector": 1.0}, "connector must be an integer"),
        ({"cmd": "inject_fault", "name": "flat_tyre"}, "unknown name 'flat_tyre'"),
        ({"cmd": "inject_fault", "name": "rcd_trip", "on": "yes"}, "on must be true or false"),
        ({"cmd": "present_card", "uid": ""}, "uid must not be empty"),
        ({"cmd": "present_card", "uid": "AB", "reader": "mifare"}, "unknown reader 'mifare'"),
        ({"cmd": "present_card", "uid": "AB", "hold_s": 0}, "hold_s must be > 0"),
        ({"cmd": "status", "connector": 9}, "unknown connector 9"),
        ({"cmd": "ping", "x": 1}, "expected: no arguments"),
    ],
)
async def test_bad_arguments_get_clear_errors(
    conn: Conn, bench: FakeBench, request_: dict[str, Any], message: str
) -> None:
    reply = await conn.ask({"id": 7, **request_})
    assert reply["id"] == 7
    assert reply["ok"] is False
    assert message in reply["error"]
    assert bench.calls == []  # refused before reaching the bench
    assert (await conn.ask({"id": 8, "cmd": "ping"}))["ok"]


async def test_present_card_defaults_and_options(conn: Conn, bench: FakeBench) -> None:
    assert (await conn.ask({"cmd": "present_card", "uid": "04A1B2C3"}))["ok"]
    assert (
        await conn.ask({"cmd": "present_card", "uid": "0006762840", "reader": "pn532", "hold_s": 2})
    )["ok"]
    assert bench.calls == [
        ("present_card", ("04A1B2C3",), {"reader": "rdm6300", "hold_s": None}),
        ("present_card", ("0006762840",), {"reader": "pn532", "hold_s": 2.0}),
    ]


@pytest.mark.parametrize("name", FAULT_NAMES)
async def test_every_fault_name_is_accepted(conn: Conn, bench: FakeBench, name: str) -> None:
    reply = await conn.ask({"id": 1, "cmd": "inject_fault", "name": name, "connector": 2})
    assert reply == {"id": 1, "ok": True}
    assert bench.calls == [("inject_fault", (name, 2, True), {})]
    await conn.ask({"cmd": "inject_fault", "name": name, "on": False})
    assert bench.calls[-1] == ("inject_fault", (name, 1, False), {})


async def test_status_is_merged_into_the_reply_as_strict_json(conn: Conn, bench: FakeBench) -> None:
    one = await conn.ask({"id": 1, "cmd": "status", "connector": 1})
    assert one["ok"] and one["pilot"] == {"duty": 0.2667, "state": "C"}
    assert one["meter"]["power_total_w"] is None  # NaN is not JSON
    every = await conn.ask({"id": 2, "cmd": "status"})
    assert every["connectors"][0]["connector"] == 1
    assert bench.calls == [("status", (1,), {}), ("status", (None,), {})]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json\n", "bad JSON"),
        (b"[1, 2]\n", "must be a JSON object, got list"),
        (b'{"id": 5}\n', 'missing "cmd"'),
        (b'{"id": 5, "cmd": 42}\n', 'missing "cmd"'),
        (b'{"id": 5, "cmd": "fly"}\n', "unknown command 'fly'; known: ping, help"),
        (b"\xff\xfe\n", "bad JSON"),
    ],
)
async def test_malformed_requests_keep_the_connection(
    conn: Conn, line: bytes, message: str
) -> None:
    await conn.send_raw(line)
    reply = await conn.reply()
    assert reply["ok"] is False
    assert message in reply["error"]
    assert (await conn.ask({"id": 9, "cmd": "ping"}))["ok"]


async def test_blank_lines_are_ignored_and_crlf_accepted(conn: Conn) -> None:
    await conn.send_raw(b'\n\r\n  \n{"id": 1, "cmd": "ping"}\r\n')
    assert await conn.reply() == {"id": 1, "ok": True, "pong": True}


async def test_two_requests_in_one_packet_get_two_replies_in_order(conn: Conn) -> None:
    await conn.send_raw(b'{"id": 1, "cmd": "ping"}\n{"id": 2, "cmd": "plug", "connector": 1}\n')
    assert (await conn.reply())["id"] == 1
    assert (await conn.reply())["id"] == 2


@pytest.mark.parametrize("split", [False, True])
async def test_over_long_line_gets_one_error(conn: Conn, split: bool) -> None:
    payload = b'{"cmd": "ping", "pad": "' + b"x" * 3000 + b'"}\n'
    if split:  # arrives in pieces: the error comes before the newline does
        for i in range(0, len(payload), 500):
            await conn.send_raw(payload[i : i + 500])
    else:
        await conn.send_raw(payload)
    reply = await conn.reply()
    assert reply == {"id": None, "ok": False, "error": "request line longer than 1024 bytes"}
    assert await conn.ask({"id": 2, "cmd": "ping"}) == {"id": 2, "ok": True, "pong": True}


async def test_bench_errors_become_replies(conn: Conn, bench: FakeBench) -> None:
    bench.raise_next = ValueError("connector 1 has no EV plugged")
    reply = await conn.ask({"id": 1, "cmd": "unplug", "connector": 1})
    assert reply == {"id": 1, "ok": False, "error": "unplug: connector 1 has no EV plugged"}
    bench.raise_next = RuntimeError("boom")
    reply = await conn.ask({"id": 2, "cmd": "unplug", "connector": 1})
    assert reply["ok"] is False and "internal error: RuntimeError: boom" in reply["error"]
    assert (await conn.ask({"id": 3, "cmd": "ping"}))["ok"]


async def test_clients_are_served_concurrently(server: ControlServer, bench: FakeBench) -> None:
    bench.gate = asyncio.Event()
    slow = Conn(*await asyncio.open_connection("127.0.0.1", server.port))
    others = [Conn(*await asyncio.open_connection("127.0.0.1", server.port)) for _ in range(5)]
    try:
        await slow.send_raw(b'{"id": "slow", "cmd": "plug", "connector": 1}\n')
        # While the bench is busy with one client, the others are answered.
        replies = await asyncio.gather(
            *(c.ask({"id": i, "cmd": "ping"}) for i, c in enumerate(others))
        )
        assert [r["id"] for r in replies] == list(range(5))
        bench.gate.set()
        assert (await slow.reply())["id"] == "slow"
    finally:
        for c in (slow, *others):
            await c.close()


async def test_close_ends_connected_clients(bench: FakeBench) -> None:
    srv = ControlServer(bench)
    port = await srv.start()
    c = Conn(*await asyncio.open_connection("127.0.0.1", port))
    assert (await c.ask({"cmd": "ping"}))["ok"]
    await srv.close()
    assert await asyncio.wait_for(c.reader.read(), TIMEOUT) == b""
    await c.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_sync_client_request_and_errors(server: ControlServer, bench: FakeBench) -> None:
    def script() -> tuple[dict[str, Any], BenchError]:
        with BenchClient("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            ok = client.request("plug", connector=1)
            try:
                client.request("plug", connector=5)
            except BenchError as exc:
                return ok, exc
        raise AssertionError("no BenchError")

    ok, err = await asyncio.to_thread(script)
    assert ok == {"id": 1, "ok": True, "state": "B"}
    assert "unknown connector 5" in str(err)
    assert err.reply is not None and err.reply["id"] == 2
    assert bench.calls == [("plug", (1,), {})]


async def test_sync_client_reports_a_closed_port() -> None:
    srv = ControlServer(FakeBench())
    port = await srv.start()
    await srv.close()

    def script() -> None:
        BenchClient("127.0.0.1", port, timeout=TIMEOUT).request("ping")

    with pytest.raises(BenchError, match="bench control channel") as raised:
        await asyncio.to_thread(script)
    # Fails without the change: "[Errno 111] Connection refused", nothing about the bench.
    assert str(raised.value) == (
        f"bench control channel 127.0.0.1:{port}: nothing listens there: is the bench "
        "running? `evsed run` (no configuration file, or one with [bench]) or `evsed bench` "
        "starts it and prints its control port; give that port with --port"
    )


async def test_cli_prints_reply_and_sets_exit_status(
    server: ControlServer, bench: FakeBench, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(server.port)
    status = await asyncio.to_thread(
        control.main,
        ["--port", port, "present_card", "uid=12345678", "reader=pn532", "hold_s=1.5"],
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out) == {"id": 1, "ok": True}
    assert bench.calls[-1] == ("present_card", ("12345678",), {"reader": "pn532", "hold_s": 1.5})

    status = await asyncio.to_thread(control.main, ["--port", port, "plug", "connector=x"])
    assert status == 1
    assert "connector must be an integer" in json.loads(capsys.readouterr().out)["error"]


def test_cli_values_follow_the_declared_types() -> None:
    assert control._cli_value("plug", "connector", "2") == 2
    assert control._cli_value("present_card", "uid", "0006762840") == "0006762840"
    assert control._cli_value("present_card", "hold_s", "null") is None
    assert control._cli_value("inject_fault", "on", "off") is False
    assert control._cli_value("set_ev", "soc", "55.5") == 55.5
    assert control._cli_value("nosuch", "x", "[1]") == [1]
    assert control._cli_value("nosuch", "x", "abc") == "abc"


def test_cli_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        control.main(["--port", "1", "plug", "connector"])
    assert exc.value.code == 2


def test_readme_documents_every_command_and_fault() -> None:
    readme = (Path(__file__).resolve().parents[2] / "hw-mocks" / "README.md").read_text()
    for name in (*COMMANDS, *FAULT_NAMES):
        assert f"`{name}`" in readme, name


# ---------------------------------------------------------------- limits


async def test_nested_json_gets_an_error_reply_and_the_connection_stays(
    bench: FakeBench,
) -> None:
    srv = ControlServer(bench, port=0)  # the default 64 KiB line: room for 30,000 levels
    await srv.start()
    c = Conn(*await asyncio.open_connection("127.0.0.1", srv.port))
    try:
        for deep in (b"[" * 30000, b'{"cmd": "ping", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}"):
            reply = await c.ask_raw(deep)
            assert reply == {
                "id": None,
                "ok": False,
                "error": f"bad JSON: nested deeper than {control.MAX_DEPTH} levels",
            }
        # Brackets inside strings are text, not nesting; nesting up to the limit is parsed.
        assert (await c.ask({"id": 1, "cmd": "present_card", "uid": "[" * 100}))["ok"]
        nested: Any = 0
        for _ in range(control.MAX_DEPTH - 1):
            nested = [nested]
        within = await c.ask({"id": 2, "cmd": "ping", "x": nested})
        assert within["error"].startswith("unknown argument(s) x")
        assert (await c.ask({"id": 3, "cmd": "ping"}))["ok"]
    finally:
        await c.close()
        await srv.close()


async def test_deep_json_check_counts_only_real_nesting() -> None:
    assert not control._too_deep('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[["}', 3)
    assert not control._too_deep('{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[["}', 3)
    assert control._too_deep('{"a": [[[1]]]}', 3)
    assert not control._too_deep('{"a": [[1]], "b": [[2]], "c": [[3]]}', 3)


async def test_connections_beyond_the_limit_are_refused_with_a_reply(bench: FakeBench) -> None:
    srv = ControlServer(bench, port=0, max_clients=2)
    await srv.start()
    held = [Conn(*await asyncio.open_connection("127.0.0.1", srv.port)) for _ in range(2)]
    try:
        for c in held:  # both accepted and served
            assert (await c.ask({"cmd": "ping"}))["ok"]
        extra = Conn(*await asyncio.open_connection("127.0.0.1", srv.port))
        assert await extra.reply() == {
            "id": None,
            "ok": False,
            "error": "too many connections (at most 2); try again later",
        }
        assert await asyncio.wait_for(extra.reader.read(), TIMEOUT) == b""
        await extra.close()
        assert srv.refused == 1 and srv.clients == 2
        # The held clients are still served; one leaving makes room for another.
        assert (await held[0].ask({"cmd": "ping"}))["ok"]
        await held.pop().close()
        for _attempt in range(100):
            c = Conn(*await asyncio.open_connection("127.0.0.1", srv.port))
            await c.send_raw(b'{"cmd": "ping"}\n')
            reply = await c.reply()
            if reply["ok"]:
                held.append(c)
                break
            await c.close()  # the server had not seen the other one leave yet
        else:
            raise AssertionError("no room after a client left")
    finally:
        for c in held:
            await c.close()
        await srv.close()


def test_rate_limited_log_bounds_the_lines() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.ratelimit")
    logger.propagate = False
    logger.addHandler(Collect())
    now = [0.0]
    limited = control.RateLimitedLog(logger, interval_s=10.0, clock=lambda: now[0])
    for _ in range(7000):  # a second of accept errors at the rate the issue measured
        limited.warning("cannot accept: %s", "EMFILE")
        now[0] += 1 / 7000
    assert records == ["cannot accept: EMFILE"]
    now[0] = 10.5
    limited.warning("cannot accept: %s", "EMFILE")
    assert records[-1] == "cannot accept: EMFILE (6999 more since the last report)"
    assert limited.total == 7001


EMFILE_SCRIPT = r"""
import asyncio, json, logging, os, resource, socket, sys, time
from evsed.hwmocks.control import ControlServer

lines = []
class Count(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Count())
logging.getLogger().setLevel(logging.INFO)

class Bench:
    connector_ids = (1,)

async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    srv = ControlServer(Bench(), port=0, max_clients=1024)
    await srv.start()
    clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(40)]
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    lines.clear()
    start = time.monotonic()
    await asyncio.sleep(2.0)  # measure a rate: two seconds with no descriptor to spare
    window = time.monotonic() - start
    errors, logged = srv.accept_errors.total, list(lines)
    for fd in filler:
        os.close(fd)
    # With descriptors again, the waiting clients are accepted and served.
    loop = asyncio.get_running_loop()
    c = clients[-1]
    c.setblocking(False)
    await loop.sock_sendall(c, b'{"cmd": "ping"}\n')
    reply = await asyncio.wait_for(loop.sock_recv(c, 4096), 10)
    print(json.dumps({"errors": errors, "logged": logged, "window": window,
                      "reply": json.loads(reply)}))
    for c in clients:
        c.close()
    await srv.close()

asyncio.run(main())
"""


def test_descriptor_exhaustion_logs_a_bounded_rate_and_recovers() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["errors"] >= 3, result  # it kept retrying while out of descriptors ...
    assert len(result["logged"]) == 1, result  # ... and said so once (10 s interval)
    assert "Too many open files" in result["logged"][0]
    assert result["reply"] == {"id": None, "ok": True, "pong": True}


async def test_a_port_in_use_is_named_in_the_error() -> None:
    # A second evsed on the same bench port said only "Address already in use".
    import errno
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        srv = ControlServer(FakeBench(), port=port)
        with pytest.raises(OSError) as raised:
            await srv.start()
    assert raised.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "control_port" in str(raised.value)
