"""The `evsed` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from evsed.controller import __version__, config, stdout, tomlout

EXIT_CONFIG = 2
#: The reader of stdout went away (`evsed demo | head -2`): 128 + SIGPIPE, the status a
#: shell reports for any Unix tool killed by the signal there, so `set -o pipefail` sees
#: evsed as it sees `yes | head`; not 1, which says evsed itself failed.
EXIT_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        stdout.point_at_devnull()
        return EXIT_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    return int(args.func(args) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evsed", description="OCPP 1.6J charge-point controller")
    p.add_argument("--version", action="version", version=f"evsed {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    cfg = sub.add_parser(
        "config",
        help="configuration tools",
        description="Tools for the TOML configuration file: `evsed config check FILE`.",
    )
    cfg_sub = cfg.add_subparsers(metavar="ACTION")
    check = cfg_sub.add_parser(
        "check",
        help="validate a configuration file as `run` would and print it resolved",
        description="Validate the file, then check on this machine what `evsed run` needs "
        "(certificate and key files, meter maps, state directory, PWM chip, 1-wire sensors, "
        "GPIO). Problems: exit status 2, one line each; warnings are printed and pass.",
    )
    check.add_argument("file", nargs="?", type=Path, help="TOML file (default: bench defaults)")
    check.add_argument(
        "--file-only",
        action="store_true",
        help="check the file alone, not this machine (e.g. before copying it to the charger)",
    )
    check.set_defaults(func=_config_check)

    bench = sub.add_parser(
        "bench",
        help="run the simulated bench alone",
        description="The simulated charger hardware (pilot, relay, meter, reader, EV) with "
        "its control channel on loopback, without the controller: for a controller or a "
        "Central System under test elsewhere. Prints the ports it listens on.",
    )
    bench.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    bench.set_defaults(func=_bench)

    run = sub.add_parser(
        "run",
        help="run the controller (with the bench when configured)",
        description="Check the configuration and the machine (as `config check` does), then "
        "drive the charger and talk to the Central System until SIGTERM or Ctrl-C. Exit "
        "status 2: a configuration problem; 1: it could not start (one line says why).",
    )
    run.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    run.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="instead of [logging] level; DEBUG adds every OCPP frame",
    )
    run.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="append every OCPP frame in full to FILE (mode 0600; secrets redacted)",
    )
    run.set_defaults(func=_run)

    st = sub.add_parser(
        "status",
        help="what the running service sees: connectors, limits, Central System, queue",
        description="Ask the running `evsed run` (over its unix socket, status.sock in "
        "/run/evsed or the state directory) for each connector's status, pilot state, "
        "offered and drawn current, power, energy, transaction and binding limit, the link "
        "to the Central System and the number of queued messages. Exit status 1 when no "
        "evsed answers.",
    )
    st.add_argument("-c", "--config", type=Path, help="TOML file (finds the state directory)")
    st.add_argument("--socket", type=Path, help="the status socket (default: see above)")
    st.add_argument("--json", action="store_true", help="the snapshot as JSON")
    st.set_defaults(func=_status)

    stest = sub.add_parser(
        "selftest",
        help="commissioning: check every fitted part, print a pass/fail table",
        description="With the service stopped and nothing plugged in: the pilot at +12 V and "
        "at -12 V during PWM (through the ADC), the proximity pilot, the relay closing and "
        "opening (by its feedback contact), the RCD self-test, the lock, the temperature "
        "sensor, the meter answering with plausible values and the card reader. The relay "
        "is closed only on a good pilot (no vehicle), no cable in the socket (proximity "
        "pilot open), an untripped RCD, and with consent: --close-relay, or a yes to the "
        "question asked on a terminal (without either, the relay rows are skipped). While it "
        "is closed the connector's pins are live. No PWM once a vehicle is seen; the relay "
        "is left open whatever happens. Exit status 1 when a check fails.",
    )
    stest.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    stest.add_argument(
        "--close-relay",
        action="store_true",
        help="close the relay without asking (the connector's pins are live meanwhile)",
    )
    stest.set_defaults(func=_selftest)

    hold = sub.add_parser(
        "clear-hold",
        help="end a crash-loop hold (evsed ended uncleanly too often)",
        description="Clear the crash-loop hold and its count in the state directory (run "
        "as the service user or root); a running evsed lifts the hold within 5 s. A Reset "
        "from the Central System does the same.",
    )
    hold.add_argument("-c", "--config", type=Path, help="TOML file (finds the state directory)")
    hold.set_defaults(func=_clear_hold)

    off = sub.add_parser(
        "safe-off",
        help="relay off and pilot at +12 V (systemd ExecStopPost)",
        description="Drive every relay output off and every pilot to a steady +12 V, and "
        "leave them so. Exit status 1 (one line per output) when an output could not be "
        "driven: the charger may not be safe.",
    )
    off.add_argument("-c", "--config", type=Path, help="TOML file (default: bench defaults)")
    off.set_defaults(func=_safe_off)

    inst = sub.add_parser(
        "install",
        help="set evsed up as a systemd service (user, unit, udev rule, /etc/evsed)",
        description="Put the first version into /opt/evsed/venvs/<version> (current and "
        "previous point at it; an /opt/evsed/venv of earlier releases is migrated), create "
        "the service user (groups gpio, spi, dialout where they exist), write the systemd "
        "units (evsed, the firmware rollback) and the udev rule for the kernel PWM, copy the "
        "Raspberry Pi example to /etc/evsed/evsed.toml unless one is there, reload systemd "
        "and udev, and print the next steps. Enables nothing: edit the configuration first.",
    )
    inst.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="install under ROOT (default /): a temporary root for a trial",
    )
    inst.add_argument("--user", default="evsed", help="service user (default evsed)")
    inst.add_argument(
        "--package",
        type=Path,
        help="wheel or source archive for the first version in /opt/evsed/venvs/<version> "
        "(not needed when this evsed runs from there)",
    )
    inst.add_argument(
        "--dry-run",
        action="store_true",
        help="print every command and file change instead of making it (needs no root)",
    )
    inst.set_defaults(func=_install)

    uninst = sub.add_parser(
        "uninstall",
        help="stop and remove the service (keeps /etc/evsed and /var/lib/evsed)",
        description="Stop and disable the service (its ExecStopPost leaves the outputs "
        "safe), remove the units, the udev rule, the service's versions in /opt/evsed and "
        "root's copy in /usr/local/lib/evsed. --purge also removes the configuration, "
        "the state (transactions, queued messages) and the service user.",
    )
    uninst.add_argument("--root", type=Path, default=Path("/"), help="under ROOT (default /)")
    uninst.add_argument("--user", default="evsed", help="service user (default evsed)")
    uninst.add_argument("--purge", action="store_true", help="also configuration, state, user")
    uninst.add_argument(
        "--dry-run",
        action="store_true",
        help="print every command and file change instead of making it (needs no root)",
    )
    uninst.set_defaults(func=_uninstall)

    demo = sub.add_parser(
        "demo",
        help="play a charging session on the simulated bench",
        description="The bench, the controller and an embedded Central System in one "
        "process: plug in, card, charge, unplug, printed as it happens. Needs no file.",
    )
    demo.add_argument("--json", action="store_true", help="one JSON object per line")
    demo.set_defaults(func=_demo)
    return p


def load_or_exit(path: Path | None) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def checked_or_exit(path: Path | None, *, hardware_only: bool = False) -> config.Config:
    """The configuration `run` uses: the file validated, then the machine checked
    (`preflight`; `hardware_only`: what the parts need, for `selftest`). Problems: one line
    each and exit status 2; warnings: printed."""
    cfg = load_or_exit(path)
    from evsed.controller import preflight

    report = preflight.check(cfg, hardware_only=hardware_only)
    source = "(defaults)" if path is None else str(path)
    for problem in report.problems:
        print(f"{source}: {problem}", file=sys.stderr)
    for warning in report.warnings:
        print(f"{source}: warning: {warning}", file=sys.stderr)
    if report.problems:
        raise SystemExit(EXIT_CONFIG)
    return cfg


def _config_check(args: argparse.Namespace) -> int:
    if args.file_only:
        from evsed.controller import preflight

        cfg = load_or_exit(args.file)
        # What the file alone says (the example's placeholder key, no RCD): the machine's
        # checks are skipped, these are not.
        source = "(defaults)" if args.file is None else str(args.file)
        for warning in preflight.file_warnings(cfg):
            print(f"{source}: warning: {warning}", file=sys.stderr)
    else:
        cfg = checked_or_exit(args.file)
    sys.stdout.write(tomlout.dumps(config.redacted(cfg)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from evsed.controller.run import run_bench

    return run_bench(load_or_exit(args.config))


def _run(args: argparse.Namespace) -> int:
    from evsed.controller.run import run_controller

    if args.trace is not None:
        try:
            _trace_file_ready(args.trace)
        except OSError as exc:
            print(f"evsed run: --trace {args.trace}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
    # The same checks as `config check`, before anything starts; they also load the TLS
    # key material, once, before the event loop runs.
    return run_controller(checked_or_exit(args.config), log_level=args.log_level, trace=args.trace)


def _trace_file_ready(path: Path) -> None:
    """Can the trace file be written? Created as the trace writes it, mode 0600 (it holds
    every frame: card ids, the Central System's data); `open("a")` made it 0644 first, and
    the mode of an existing file is never changed by opening it. One left wider by that is
    narrowed, when it is ours."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _status(args: argparse.Namespace) -> int:
    import json

    from evsed.controller import status

    path = args.socket or status.client_socket_path(load_or_exit(args.config))
    try:
        snap = status.query(path)
    except status.StatusError as exc:
        print(f"evsed status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snap, indent=2) if args.json else status.format_table(snap))
    return 0


def _selftest(args: argparse.Namespace) -> int:
    import asyncio

    from evsed.controller import selftest, status
    from evsed.controller.run import STOP_IT as stop_it

    cfg = checked_or_exit(args.config, hardware_only=True)
    for path in {status.server_socket_path(cfg), status.client_socket_path(cfg)}:
        with contextlib.suppress(status.StatusError):
            status.query(path, timeout_s=1.0)
            print(f"evsed selftest: evsed is running ({path}); {stop_it}", file=sys.stderr)
            return EXIT_CONFIG
    # The socket answers only once a service is up: one still starting (or wedged before
    # its socket) holds the instance lock already, and owns the outputs. Held throughout,
    # so that no `evsed run` starts under the test either.
    lock = status.InstanceLock(cfg.state_dir)
    try:
        lock.acquire()
    except status.AlreadyRunning as exc:
        print(f"evsed selftest: {exc}; {stop_it}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        # The lock file is never removed: none there (and none creatable, e.g. the state
        # directory is not set up yet) means no evsed has run with this state directory.
        if lock.path.exists():
            print(
                f"evsed selftest: cannot tell whether evsed is running ({exc}); "
                "run it as the service user (sudo -u evsed evsed selftest ...)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    close_relay: selftest.CloseRelay = args.close_relay
    if not close_relay and sys.stdin.isatty():
        close_relay = _ask_close_relay
    try:
        rows = asyncio.run(selftest.run_selftest(cfg, close_relay=close_relay))
    finally:
        lock.release()
    print(selftest.format_table(rows))
    return 1 if selftest.failed(rows) else 0


def _ask_close_relay(connector: int) -> bool:
    try:
        answer = input(
            f"Close the relay of connector {connector}? Its connector pins will be LIVE "
            "(mains) until it opens again; nothing may be plugged in. [y/N] "
        )
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _clear_hold(args: argparse.Namespace) -> int:
    from evsed.controller import crashguard

    state_dir = load_or_exit(args.config).state_dir
    try:
        held = crashguard.clear_hold(state_dir)
    except OSError as exc:
        print(f"evsed clear-hold: {state_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print("hold cleared" if held else f"no hold in {state_dir} (its count is cleared)")
    return 0


def _safe_off(args: argparse.Namespace) -> int:
    # The minimal entry point the unit's ExecStopPost runs: it reads the pins leniently (a
    # newer version's configuration too) and leaves through os._exit, without closing the
    # GPIO devices (gpiozero would turn the lines into floating inputs on the way out).
    from evsed.controller import safeoff

    return safeoff.main([] if args.config is None else ["--config", str(args.config)])


def _install(args: argparse.Namespace) -> int:
    from evsed.controller import install

    try:
        return install.install(args.root, package=args.package, user=args.user, dry=args.dry_run)
    except install.InstallError as exc:
        print(f"evsed install: {exc}{_dry_run_hint('install', args)}", file=sys.stderr)
        return EXIT_CONFIG


def _uninstall(args: argparse.Namespace) -> int:
    from evsed.controller import install

    try:
        return install.uninstall(args.root, user=args.user, purge=args.purge, dry=args.dry_run)
    except install.InstallError as exc:
        print(f"evsed uninstall: {exc}{_dry_run_hint('uninstall', args)}", file=sys.stderr)
        return EXIT_CONFIG


def _dry_run_hint(command: str, args: argparse.Namespace) -> str:
    """After a refused (un)install: the --dry-run a new user did not know of, as a command
    line to copy (it changes nothing and needs no sudo); on the same line."""
    from evsed.controller import install

    if args.dry_run:
        return ""
    argv = ["evsed", command, "--dry-run"]
    if args.root != Path("/"):
        argv += ["--root", str(args.root)]
    if args.user != "evsed":
        argv += ["--user", args.user]
    if getattr(args, "package", None) is not None:
        argv += ["--package", str(args.package)]
    elif command == "install" and not install.has_admin_copy(args.root):
        argv += ["--package", "./evsed-<version>-py3-none-any.whl"]  # refused without one
    if getattr(args, "purge", False):
        argv.append("--purge")
    return f" (to see what it would do, changing nothing, with no sudo: {shlex.join(argv)})"


def _demo(args: argparse.Namespace) -> int:
    from evsed.controller.demo import run_demo

    return run_demo(json_lines=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
