"""`evsed install` / `evsed uninstall`: the service user, the versioned venvs in /opt/evsed,
the systemd units, the udev rule for the kernel PWM and the example configuration, under a
root directory (`/` on the charger, a temporary directory in tests).

The venv layout is the firmware installer's (`evsed.controller.firmware.installer.Layout`):
/opt/evsed/venvs/<version>, `current` (the unit's ExecStart) and `previous` (the way back)
pointing into it. A first install puts the given wheel or source archive into
venvs/<version>, or takes the venv evsed runs from when that is already one of them; an
install with the single /opt/evsed/venv of earlier releases is migrated: the venv is
renamed to venvs/<its evsed version> and `venv` left as a link to it (its scripts name
/opt/evsed/venv/bin/python in their first line).

What root runs is root's (the service user owns /opt/evsed: a firmware update, possibly a
malicious image from a compromised Central System, writes there): `/usr/local/bin/evsed`
links to a copy of its own, /usr/local/lib/evsed/admin (a venv built from the package
given to `evsed install`, rebuilt by every `evsed install --package`, root's and writable
by root only, checked: `untrusted`), never to /opt/evsed/current; the units' privileged
helper scripts live next to it. Root changes owners and modes inside /opt/evsed only with
`chown -h` and never recursively, and refuses a /opt/evsed or venvs that is a link.

Files are written directly under the root through `Files`; what needs the system's own
tools (creating the user, chown, reloading systemd and udev) goes through a `Runner`: the
real one runs the commands, the dry run only prints them (the default for any root other
than `/`, where those tools would act on the host instead), and tests record them.
`--dry-run` makes both print only: every file it would write, link or remove is a "would
…" line and the root is left exactly as it was (a dry `uninstall --purge` on a charger
must not delete its transaction store).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from evsed.controller.firmware.installer import Layout, package_version
from evsed.controller.firmware.update import InstallFailed

#: The groups that own the charger's devices on Raspberry Pi OS: /dev/gpiochip* (and the
#: PWM files, through the udev rule), /dev/spidev*, the serial ports.
DEVICE_GROUPS = ("gpio", "spi", "dialout")
WHY = {
    "gpio": "GPIO (/dev/gpiochip*: relay, RCD, lock) and the kernel PWM of the pilot",
    "spi": "SPI (/dev/spidev*: the ADC that reads the pilot)",
    "dialout": "serial ports (/dev/ttyUSB*, /dev/serial0: RS-485 meter, RFID reader)",
}
UNIT = PurePosixPath("etc/systemd/system/evsed.service")
#: The firmware rollback: the watcher and the path unit that starts it (README: firmware).
ROLLBACK_UNITS = (
    PurePosixPath("etc/systemd/system/evsed-rollback.service"),
    PurePosixPath("etc/systemd/system/evsed-rollback.path"),
)
#: Where the versions live (the unit and the firmware installer say /opt/evsed too).
PREFIX = PurePosixPath("opt/evsed")
#: What root runs, root's own and writable by root only (the service user may write
#: /opt/evsed): the units' privileged helper scripts.
LIBDIR = PurePosixPath("usr/local/lib/evsed")
#: evsed-rollback.service's ExecStopPost=+ (as root): restart evsed after a rollback unless
#: an operator had stopped it.
AFTER_ROLLBACK = LIBDIR / "after-rollback.sh"
#: evsed.service's ExecStopPost: safe-off from current, else root's copy, else previous.
SAFE_OFF = LIBDIR / "safe-off.sh"
RULE = PurePosixPath("etc/udev/rules.d/99-evsed-pwm.rules")
CONFIG = PurePosixPath("etc/evsed/evsed.toml")
STATE = PurePosixPath("var/lib/evsed")
#: The unit's StateDirectoryMode: the store holds card ids and the Central System's replies.
STATE_MODE = 0o700
#: The service's evsed (the version in service): run as the service user, never as root.
EVSED_BIN = "/opt/evsed/current/bin/evsed"
#: The venv root's commands run from, a link to one of two slots (a refresh builds the
#: other one, then switches: the evsed doing it keeps running from the old one).
ADMIN = LIBDIR / "admin"
ADMIN_SLOTS = ("admin.a", "admin.b")
ADMIN_BIN = f"/{ADMIN}/bin/evsed"
#: `evsed status`, `sudo evsed uninstall` as the README says them, after the set-up venv is
#: gone: a link to root's own copy. (It was a link into /opt/evsed/current: root ran code
#: the service user can write. Such a link is ours and replaced.)
LINK = PurePosixPath("usr/local/bin/evsed")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Runner = Callable[[Sequence[str]], None]
Out = Callable[[str], None]


class InstallError(Exception):
    """One line for the user; `evsed install` exits 2 with it."""


def run_commands(argv: Sequence[str]) -> None:
    """The real runner: a failed command raises InstallError with its own message."""
    try:
        # pip installing the [pi] extra on a Pi Zero may build a wheel: minutes, not seconds.
        subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]}: not found on this system") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{shlex.join(argv)}: no result after 30 minutes") from None
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {exc.returncode}"
        raise InstallError(f"{shlex.join(argv)}: {reason}") from None


def dry_run(out: Out) -> Runner:
    def runner(argv: Sequence[str]) -> None:
        out(f"  would run: {shlex.join(argv)}")

    return runner


@dataclass
class Files:
    """Every change install/uninstall makes under the root. ``dry``: print it, do nothing."""

    out: Out = print
    dry: bool = False
    #: What a dry run has said it would create: said once, then taken as there.
    planned: set[Path] = field(default_factory=set)

    def _would(self, what: str) -> bool:
        if self.dry:
            self.out(f"  would {what}")
        return self.dry

    def mkdir(self, path: Path, mode: int | None = None, *, follow: bool = False) -> None:
        """``follow``: a link to a directory is taken (only where no one but root can put
        one: /etc/evsed, which an admin may keep on another partition)."""
        if path.is_symlink() and not follow:
            raise InstallError(
                f"{path} is a symbolic link: root would change what it points to; make it a "
                "directory (or remove it), then run evsed install again"
            )
        if path in self.planned:
            return  # a dry run's "would create" said it already
        exists = path.is_dir()
        if exists and (mode is None or path.stat().st_mode & 0o777 == mode):
            return
        mode_text = f" (mode {mode:o})" if mode is not None else ""
        if self._would(
            f"set the mode of {path}/{mode_text}" if exists else f"create {path}/{mode_text}"
        ):
            self.planned.add(path)
            return
        path.mkdir(parents=True, exist_ok=True)
        if mode is not None:
            chmod_nofollow(path.resolve() if follow else path, mode)

    def write(self, path: Path, text: str, mode: int) -> None:
        if self._would(f"write {path} (mode {mode:o})"):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".evsed-new")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(mode)
        tmp.replace(path)  # never a half-written unit

    def symlink(self, link: Path, target: str | Path) -> None:
        if self._would(f"link {link} -> {target}"):
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def switch(self, layout: Layout, name: str, venv: Path) -> None:
        link = layout.root / name
        if link.is_symlink() and os.path.realpath(link) == os.path.realpath(venv):
            return  # points there already
        if self._would(f"link {link} -> {layout.link_target(venv)}"):  # what switch writes
            return
        layout.switch(name, venv)

    def replace_link(self, link: Path, target: str) -> None:
        """``link`` -> ``target`` atomically (a reader sees the old link or the new one)."""
        if link.is_symlink() and os.readlink(link) == target:
            return  # points there already
        if self._would(f"link {link} -> {target}"):
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)

    def root_only(self, tree: Path) -> None:
        """No file of ``tree`` writable by its group or others (root's umask may be 002).
        Never follows a link; meant for trees only root can write (root's own copy)."""
        if self.dry:
            return
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in (".", *dirnames, *filenames):
                path = Path(dirpath, name)
                st = path.lstat()
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                    chmod_nofollow(path, stat.S_IMODE(st.st_mode) & ~0o022)

    def rename(self, src: Path, dst: Path) -> None:
        if self._would(f"rename {src} to {dst}"):
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        if self._would(f"remove {path}"):
            return
        path.unlink()

    def rmtree(self, path: Path) -> None:
        if self._would(f"remove {path} and everything in it"):
            return
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path)

    def done(self, what: str) -> None:
        """A report line for a change made; nothing in a dry run (its "would" line says it)."""
        if not self.dry:
            self.out(what)


def chmod_nofollow(path: Path, mode: int) -> None:
    """chmod that never follows a link, also not one swapped in after a check: the file is
    opened with O_NOFOLLOW (a link: ELOOP, an InstallError) and changed through its fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InstallError(f"{path}: {exc.strerror} (not changed)") from None
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _check_path(
    path: Path,
    why: str,
    *,
    top: Path,
    owners: frozenset[int],
    forbidden: Sequence[Path],
    seen: set[Path],
    problems: list[str],
) -> None:
    """``path`` as given and as resolved, each with every parent directory (up to ``top``
    for paths under it): outside ``forbidden``, owned by ``owners``, writable by no one
    else. A sticky directory (/tmp) writable by all is no problem: only an entry's owner
    (checked on its own) or root can rename or remove it there."""
    for start in (path, Path(os.path.realpath(path))):
        theirs = next((f for f in forbidden if start.is_relative_to(f)), None)
        if theirs is not None:
            problems.append(f"{start} ({why}): in {theirs}, which the service user writes")
            continue
        inside = start.is_relative_to(top)
        for each in (start, *start.parents):
            if inside and not each.is_relative_to(top):
                break
            if each in seen:
                continue
            seen.add(each)
            try:
                st = each.lstat()
            except FileNotFoundError:
                if each == start:  # (not each missing parent again)
                    problems.append(f"{each} ({why}): missing")
                continue
            sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
            if st.st_uid not in owners:
                problems.append(f"{each} ({why}): owned by uid {st.st_uid}")
            elif not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022 and not sticky_dir:
                problems.append(f"{each} ({why}): writable by its group or others")


def untrusted(
    venv: Path,
    *,
    top: Path = Path("/"),
    owners: frozenset[int] = frozenset({0}),
    forbidden: Sequence[Path] = (Path("/", PREFIX), Path("/", STATE)),
) -> list[str]:
    """What of ``venv`` someone other than ``owners`` could change, so that root running it
    would run their code: the venv, every file in it, and what it runs outside itself (the
    pyvenv.cfg home, each script's interpreter, links out, the paths of .pth files), each
    with every parent directory (up to ``top`` for paths under it; a temporary root in
    tests), and nothing under ``forbidden`` (the service user's trees, whoever owns a file
    there now). One line per problem; empty: root may run it."""
    problems: list[str] = []
    seen: set[Path] = set()

    def check(path: Path, why: str) -> None:
        _check_path(
            path, why, top=top, owners=owners, forbidden=forbidden, seen=seen, problems=problems
        )

    check(venv, "the venv")
    for dirpath, dirnames, filenames in os.walk(venv):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            check(path, "in the venv")
            if path.is_symlink():
                check(Path(os.path.realpath(path)), f"{path.name} links there")
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("home", "executable") and value.strip():
                check(Path(value.strip()), f"pyvenv.cfg {key.strip()}")
    for script in sorted((venv / "bin").glob("*")) if (venv / "bin").is_dir() else ():
        if script.is_file() and not script.is_symlink():
            with script.open("rb") as f:
                first = f.readline(4096)
            if first.startswith(b"#!"):
                words = first[2:].decode(errors="replace").split()
                if words:
                    check(Path(words[0]), f"the interpreter of bin/{script.name}")
    for pth in sorted(venv.glob("lib/python3*/site-packages/*.pth")):
        for line in pth.read_text(errors="replace").splitlines():
            entry = line.strip()
            if entry and not entry.startswith(("#", "import ", "import\t")):
                check(pth.parent / entry, f"a path in {pth.name}")
    return list(dict.fromkeys(problems))


def trusted_owners(
    root: Path, user: str, environ: Mapping[str, str] = os.environ
) -> frozenset[int]:
    """Whose files root installs a package from: root, whoever runs this, and the admin who
    ran sudo (SUDO_UID: they can run anything as root already, so their ~/dist is no new
    way in); never the service user (its uid in the root's etc/passwd)."""
    owners = {0, os.getuid()}
    sudo = environ.get("SUDO_UID", "")
    if sudo.isdigit():
        owners.add(int(sudo))
    service = System.uid(root, user)
    if service is not None and service != 0:
        owners.discard(service)
    return frozenset(owners)


def usable_package(package: Path) -> str:
    """The one rule for ``--package``, whatever is installed already: a regular file (or a
    link to one) named like a wheel or a source archive (`package_version`, the name a
    first install makes venvs/<version> of). Its version; InstallError otherwise, before
    anything is changed: a later install hands the package to root's pip for its own copy
    (`_admin_copy`), and pip would build a directory it is given as a source tree."""
    if not package.exists():
        raise InstallError(f"{package}: no such file")
    if not package.is_file():
        raise InstallError(
            f"{package}: not a file: give the wheel (.whl) or source archive (.tar.gz, .zip) "
            "itself, e.g. sudo evsed install --package ./evsed-<version>-py3-none-any.whl"
        )
    try:
        return package_version(package)
    except InstallFailed as exc:
        raise InstallError(
            f"{exc}: give the wheel (.whl) or source archive (.tar.gz, .zip) as built or "
            "downloaded, e.g. evsed-<version>-py3-none-any.whl"
        ) from None


def package_problems(
    package: Path, *, root: Path, owners: frozenset[int], top: Path = Path("/")
) -> list[str]:
    """What could swap ``package`` between the checks of `evsed install` and pip reading it
    as root (or before: then root would install what the service user put there): a place
    under /opt/evsed or /var/lib/evsed (the service user writes there), or the file or a
    directory on its way (given or resolved) owned by someone not in ``owners`` or writable
    by its group or others. One line per problem; empty: root may install it."""
    problems: list[str] = []
    _check_path(
        Path(os.path.abspath(package)),
        "the package",
        top=top,
        owners=owners,
        forbidden=(root / PREFIX, root / STATE),
        seen=set(),
        problems=problems,
    )
    return list(dict.fromkeys(problems))


def shipped(name: str) -> str:
    """A file of systemd/ as shipped (package data of evsed.systemd)."""
    return resources.files("evsed.systemd").joinpath(name).read_text(encoding="utf-8")


def example_config() -> str:
    return resources.files("evsed.examples").joinpath("raspberry-pi.toml").read_text("utf-8")


@dataclass
class System:
    """What the root directory says about users and groups (its etc/passwd, etc/group)."""

    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, root: Path) -> System:
        def names(path: Path) -> set[str]:
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                return set()
            return {ln.split(":", 1)[0] for ln in lines if ln and not ln.startswith("#")}

        return cls(names(root / "etc/passwd"), names(root / "etc/group"))

    @staticmethod
    def uid(root: Path, user: str) -> int | None:
        """``user``'s uid in the root's etc/passwd; None when it is not there."""
        try:
            lines = (root / "etc/passwd").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in lines.splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == user and fields[2].isdigit():
                return int(fields[2])
        return None


def render_unit(text: str, *, user: str, groups: Sequence[str] = ()) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("SupplementaryGroups="):
            if not groups:
                continue  # systemd refuses to start a unit naming a group that does not exist
            line = "SupplementaryGroups=" + " ".join(groups)
        elif line.startswith(("User=", "Group=")):
            line = line.split("=", 1)[0] + "=" + user
        out.append(line)
    return "\n".join(out) + "\n"


def render_rule(text: str, group: str) -> str:
    return text.replace("chgrp -R gpio ", f"chgrp -R {group} ").replace(
        "writable by the service's GPIO group", f"writable by the group {group}"
    )


def _boot_config_hints(root: Path) -> list[str]:
    """The Pi firmware settings evsed's wiring needs that /boot/firmware/config.txt lacks."""
    for candidate in ("boot/firmware/config.txt", "boot/config.txt"):
        path = root / candidate
        if path.exists():
            break
    else:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    active = {ln.split("#", 1)[0].strip().replace(" ", "") for ln in text.splitlines()}
    wanted = {
        "dtparam=spi=on": "the ADC on SPI0",
        "dtoverlay=pwm-2chan": "hardware PWM for the pilot on GPIO18",
        "enable_uart=1": "the RDM6300 reader on the UART",
    }
    return [
        f"add `{setting}` to /{candidate} ({why}), then reboot"
        for setting, why in wanted.items()
        if setting not in active
    ]


def _dist_version(venv: Path) -> str | None:
    """The version of the evsed installed in ``venv`` (its dist-info), None if none."""
    for info in sorted(venv.glob("lib/python3*/site-packages/evsed-*.dist-info")):
        version = info.name[len("evsed-") : -len(".dist-info")]
        if version:
            return version
    return None


def _fresh_venv(
    layout: Layout,
    package: Path | None,
    python: str,
    running_prefix: Path,
    run: Runner,
    fs: Files,
) -> Path:
    """The first version: the package installed into venvs/<version>, or the venv this
    evsed runs from when it is one of venvs/ already."""
    if package is not None:
        target = layout.venv(usable_package(package))
        if target.exists():
            raise InstallError(f"{target} exists but `current` does not point at it: remove it")
        fs.mkdir(layout.venvs)
        try:
            run([python, "-m", "venv", str(target)])
            # The [pi] extra: the GPIO and SPI backends gpiozero needs on a Pi.
            run([str(target / "bin/python"), "-m", "pip", "install", f"{package.resolve()}[pi]"])
        except BaseException:
            if not fs.dry:
                shutil.rmtree(target, ignore_errors=True)
            raise
        return target
    if running_prefix.resolve().parent == layout.venvs.resolve():
        return running_prefix.resolve()
    raise InstallError(
        f"nothing installed in /{PREFIX}/venvs yet: give the wheel or source archive to put "
        f"there, e.g. sudo evsed install --package ./evsed-<version>-py3-none-any.whl"
    )


def _venv_layout(
    root: Path,
    package: Path | None,
    python: str,
    running_prefix: Path,
    run: Runner,
    out: Out,
    fs: Files,
    printed: bool = False,
) -> Layout:
    """/opt/evsed as the firmware installer wants it: venvs/<version>, current, previous.
    ``printed``: the commands are only printed (a --root staging root), so a new venv is
    not there; its line says so."""
    layout = Layout(root / PREFIX)
    for path in (layout.root, layout.venvs):
        if path.is_symlink():
            # Root gives them to the service user (chown): through a link, what it points to.
            raise InstallError(
                f"/{path.relative_to(root)} is a symbolic link: root would give what it "
                "points to to the service user; make it a directory, then run evsed "
                "install again"
            )
    running = layout.in_service()
    if running is not None and not running.is_dir():
        out(
            f"warning: /{PREFIX}/current -> venvs/{running.name} is broken: venvs/"
            f"{running.name} is not there, so the service cannot start"
            + (
                " (a --root run only prints the commands that build it)"
                if printed
                else "; remove the link, then run evsed install --package <wheel> again"
            )
        )
        if package is not None:
            out(f"  {package.name} not installed: /{PREFIX}/current is left as it is")
    elif running is not None:
        out(f"versions: /{PREFIX}/current -> venvs/{running.name} (kept)")
        if package is not None:
            out(f"  {package.name} not installed: new versions come as firmware updates")
    elif layout.current.exists() or layout.current.is_symlink():
        raise InstallError(
            f"/{PREFIX}/current is not a link into /{PREFIX}/venvs: move it away, then run "
            "evsed install again"
        )
    elif layout.old_venv.is_dir() and not layout.old_venv.is_symlink():
        version = _dist_version(layout.old_venv)
        if version is None:
            raise InstallError(
                f"/{PREFIX}/venv (the layout of earlier releases) holds no evsed: remove it, "
                "then run evsed install --package <wheel>"
            )
        running = layout.venv(version)
        if running.exists():
            raise InstallError(f"cannot migrate /{PREFIX}/venv: {running} exists already")
        fs.rename(layout.old_venv, running)
        # Its scripts start with #!/opt/evsed/venv/bin/python: the old name stays, as a link.
        fs.symlink(layout.old_venv, running.relative_to(layout.root))
        fs.done(
            f"versions: /{PREFIX}/venv migrated to /{PREFIX}/venvs/{version} (/{PREFIX}/venv "
            "stays as a link to it: its scripts name it)"
        )
    else:
        running = _fresh_venv(layout, package, python, running_prefix, run, fs)
        fs.done(
            f"versions: /{PREFIX}/venvs/{running.name}"
            + (" (not built: its python -m venv and pip are only printed)" if printed else "")
        )
    fs.switch(layout, "current", running)
    if not layout.previous.is_symlink():
        fs.switch(layout, "previous", running)  # the rollback watcher's python until an update
    return layout


def _state_dir(
    root: Path, user: str, run: Runner, out: Out, fs: Files, printed: bool = False
) -> None:
    """/var/lib/evsed before the first start. systemd creates it (StateDirectory=) only when
    the unit first starts, but `config check` and `selftest` run as the service user before
    that (README steps 5 and 6) and found nowhere to write; the rollback watcher's path unit
    watches a file in it. Made as systemd makes it: owned by the user, mode 0700."""
    state = root / STATE
    existed = state.is_dir()
    if state.exists() and not existed:
        raise InstallError(
            f"/{STATE} is not a directory: move it away, then run evsed install again"
        )
    fs.mkdir(state, STATE_MODE)  # refuses a link
    run(["chown", "-h", f"{user}:{user}", str(state)])
    owner = f"not owned by {user}: its chown is only printed" if printed else f"owned by {user}"
    fs.done(f"state: /{STATE} ({'exists, ' if existed else ''}mode 0700, {owner})")


def _admin_copy(
    root: Path,
    package: Path | None,
    python: str,
    run: Runner,
    out: Out,
    fs: Files,
    real: bool,
    printed: bool = False,
) -> None:
    """/usr/local/lib/evsed/admin: the venv root's commands run from, built from
    ``package`` (the one `evsed install` installs) into the slot `admin` does not point at,
    then switched; without a package an existing copy is kept."""
    link = root / ADMIN
    if package is None:
        _need_package(root)
        if link.is_symlink() and not link.exists():
            out(
                f"warning: /{ADMIN} -> {os.readlink(link)} is broken: {os.readlink(link)} is "
                "not there, so `sudo evsed` and safe-off's fallback to root's copy cannot run"
                + (" (a --root run only prints the commands that build it)" if printed else "")
                + "; evsed install --package <wheel> builds it"
            )
        else:
            out(f"admin copy: /{ADMIN} (kept; --package rebuilds it)")
        return
    fs.mkdir(root / LIBDIR, 0o755)
    if real:
        run(["chown", "-h", "root:root", str(root / LIBDIR)])
    now = os.readlink(link) if link.is_symlink() else None
    slot = ADMIN_SLOTS[1] if now == ADMIN_SLOTS[0] else ADMIN_SLOTS[0]
    target = root / LIBDIR / slot
    if target.exists() or target.is_symlink():
        fs.rmtree(target)  # root's tree: the copy before the last one
    run([python, "-m", "venv", str(target)])
    run([str(target / "bin/python"), "-m", "pip", "install", f"{package.resolve()}[pi]"])
    if not fs.dry and target.is_dir():
        fs.root_only(target)
        owners = frozenset({0}) if real else frozenset({0, os.getuid()})
        problems = untrusted(
            target,
            top=Path("/") if real else root,
            owners=owners,
            forbidden=(root / PREFIX, root / STATE),
        )
        if problems:
            raise InstallError(
                f"/{LIBDIR / slot} is not root's alone, so root must not run it: "
                + "; ".join(problems[:3])
                + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            )
    fs.replace_link(link, slot)
    fs.done(
        f"admin copy: /{ADMIN} -> {slot} ({package.name}, root's: what root runs"
        + ("; not built: its python -m venv and pip are only printed)" if printed else ")")
    )


def has_admin_copy(root: Path) -> bool:
    """Whether root's own copy is there (else `evsed install` needs --package)."""
    return (root / ADMIN).is_symlink() or (root / ADMIN).exists()


def _need_package(root: Path) -> None:
    """Without a package there must be root's copy already: nothing else is root's to run
    (the versions in /opt/evsed are the service user's)."""
    if not has_admin_copy(root):
        raise InstallError(
            f"no /{ADMIN} yet (root's own copy of evsed, which `sudo evsed` runs): give the "
            "wheel or source archive to build it from, e.g. sudo evsed install --package "
            "./evsed-<version>-py3-none-any.whl"
        )


def _command_link(root: Path, out: Out, fs: Files) -> bool:
    """/usr/local/bin/evsed -> /usr/local/lib/evsed/admin/bin/evsed (root's own copy);
    False when a file that is not this link is in the way (kept: it may be another
    installation's). The link of earlier releases, into /opt/evsed/current, is replaced."""
    link = root / LINK
    target = os.readlink(link) if link.is_symlink() else None
    if target == ADMIN_BIN:
        out(f"command: /{LINK} -> {ADMIN_BIN} (exists)")
        return True
    if target == EVSED_BIN:
        fs.replace_link(link, ADMIN_BIN)
        fs.done(
            f"command: /{LINK} -> {ADMIN_BIN} (was -> {EVSED_BIN}: `sudo evsed` ran code the "
            "service user can change)"
        )
        return True
    if link.exists() or link.is_symlink():
        out(
            f"warning: /{LINK} exists and is not a link to {ADMIN_BIN}: left as it is, so "
            f"`evsed` may run something else; type {ADMIN_BIN} (or remove /{LINK} and run "
            "evsed install again)"
        )
        return False
    fs.symlink(link, ADMIN_BIN)
    fs.done(f"command: /{LINK} -> {ADMIN_BIN} (`evsed status` on the PATH)")
    return True


def next_steps(root: Path, user: str, linked: bool) -> list[str]:
    """In the README's order: configure, check, commission, start, look."""
    evsed = "evsed"
    return [
        *_boot_config_hints(root),
        f"edit /{CONFIG}: [central_system] url, charge_point_id and key; the wiring",
        f"sudo -u {user} {EVSED_BIN} config check /{CONFIG}",
        f"with nothing plugged in and the service stopped: sudo -u {user} {EVSED_BIN} "
        f"selftest --config /{CONFIG}   (every row PASS, or skip for a part not fitted)",
        "sudo systemctl enable --now evsed   (or, already running: sudo systemctl restart evsed)",
        f"{evsed if linked else ADMIN_BIN} status   (as root, or as a member of the {user} group: "
        f"sudo usermod -aG {user} $USER, then log in again)",
        "journalctl -u evsed -f",
    ]


def install(
    root: Path = Path("/"),
    *,
    package: Path | None = None,
    user: str = "evsed",
    run: Runner | None = None,
    out: Out = print,
    python: str = sys.executable,
    running_prefix: Path | None = None,
    dry: bool = False,
) -> int:
    """``dry``: print every command and every file change, make none (no root needed)."""
    root = Path(root)
    real = root == Path("/")
    printed = run is None and not (real and not dry)  # the commands are only printed
    run = run or (run_commands if real and not dry else dry_run(out))
    fs = Files(out, dry)
    if real and not dry and os.geteuid() != 0:
        raise InstallError("evsed install changes /etc and creates a user: run it with sudo")
    if package is not None:
        usable_package(package)  # before anything else: a first install and a later one alike
        problems = package_problems(package, root=root, owners=trusted_owners(root, user))
        if problems:
            raise InstallError(
                f"{package}: root will not install it, someone else could swap it before pip "
                f"reads it: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + "; give the package as you built or downloaded it, from a directory only "
                "root (or you) can write, such as your home or /root"
            )

    system = System.read(root)
    groups = [g for g in DEVICE_GROUPS if g in system.groups]
    # Under --root the groups are DIR/etc/group's (none in an empty trial root), not this
    # machine's: a new user read "no `gpio` group on this system" on a Pi that has one.
    where = "on this system" if real else f"in {root / 'etc/group'}"
    for missing in (g for g in DEVICE_GROUPS if g not in system.groups):
        out(
            f"warning: no `{missing}` group {where}: the service gets no access to "
            f"{WHY[missing]} from it"
            + (
                f"; the udev rule gives the PWM files to the `{user}` group instead"
                if missing == "gpio"
                else ""
            )
        )
    if package is None:
        _need_package(root)  # before anything is changed
    try:
        prefix = running_prefix or Path(sys.prefix)
        layout = _venv_layout(root, package, python, prefix, run, out, fs, printed)
    except InstallFailed as exc:  # a version that cannot be a directory name
        raise InstallError(str(exc)) from None
    if user in system.users:
        out(f"service user {user}: exists")
    else:
        created = "to be created (useradd only printed)" if printed else "creating"
        out(f"service user {user}: {created}")
    if user in system.users:
        if groups:
            run(["usermod", "--append", "--groups", ",".join(groups), user])
    else:
        argv = ["useradd", "--system", "--user-group", "--home-dir", "/" + str(STATE)]
        argv += ["--no-create-home", "--shell", "/usr/sbin/nologin"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        run([*argv, user])
    # A firmware update (run as the service user) adds venvs and switches the links; the
    # venvs made here stay root's, so the service cannot change the version it runs now.
    # -h, not recursive: the service user may have put links there (refused above, but a
    # link swapped in after that check gets the owner itself, not what it points to).
    fs.mkdir(layout.venvs)
    run(["chown", "-h", f"{user}:{user}", str(layout.root), str(layout.venvs)])
    _state_dir(root, user, run, out, fs, printed)
    _admin_copy(root, package, python, run, out, fs, real, printed)
    linked = _command_link(root, out, fs)

    unit = render_unit(shipped("evsed.service"), user=user, groups=groups)
    fs.write(root / UNIT, unit, 0o644)
    fs.done(f"unit: /{UNIT} (ExecStart={EVSED_BIN} run)")
    for path in ROLLBACK_UNITS:
        fs.write(root / path, render_unit(shipped(path.name), user=user), 0o644)
    fs.mkdir(root / LIBDIR, 0o755)
    fs.write(root / AFTER_ROLLBACK, shipped("evsed-after-rollback.sh"), 0o755)
    fs.write(root / SAFE_OFF, shipped("evsed-safe-off.sh"), 0o755)
    fs.done(f"safe-off: /{SAFE_OFF} (ExecStopPost: current, else root's copy, else previous)")
    fs.done(f"firmware rollback: /{ROLLBACK_UNITS[0]}, /{ROLLBACK_UNITS[1]}, /{AFTER_ROLLBACK}")
    pwm_group = "gpio" if "gpio" in groups else user
    fs.write(root / RULE, render_rule(shipped("99-evsed-pwm.rules"), pwm_group), 0o644)
    fs.done(f"udev rule: /{RULE} (kernel PWM writable by the group {pwm_group})")

    config = root / CONFIG
    if config.exists():
        out(f"configuration: /{CONFIG} exists, kept as it is")
    else:
        fs.mkdir(config.parent, 0o750, follow=True)
        fs.write(config, example_config(), 0o640)
        fs.done(f"configuration: /{CONFIG} (the Raspberry Pi example: edit it)")
    # Readable by the service (it holds the Central System's key), by no one else.
    run(["chown", f"root:{user}", str(config.parent), str(config)])
    run(["systemctl", "daemon-reload"])
    run(["udevadm", "control", "--reload-rules"])
    run(["udevadm", "trigger", "--subsystem-match=pwm"])

    steps = next_steps(root, user, linked)
    out("next steps:")
    for n, step in enumerate(steps, 1):
        out(f"  {n}. {step}")
    return EXIT_OK


def uninstall(
    root: Path = Path("/"),
    *,
    user: str = "evsed",
    purge: bool = False,
    run: Runner | None = None,
    out: Out = print,
    dry: bool = False,
) -> int:
    """``dry``: print every command and every removal, make none (no root needed)."""
    root = Path(root)
    real = root == Path("/")
    run = run or (run_commands if real and not dry else dry_run(out))
    fs = Files(out, dry)
    if real and not dry and os.geteuid() != 0:
        raise InstallError("evsed uninstall changes /etc: run it with sudo")
    if (root / UNIT).exists():
        # Stopping runs ExecStopPost: the outputs end safe before the unit goes away.
        run(["systemctl", "disable", "--now", "evsed"])
    if any((root / path).exists() for path in ROLLBACK_UNITS):
        run(["systemctl", "stop", "evsed-rollback.path", "evsed-rollback.service"])
    for path in (UNIT, *ROLLBACK_UNITS, RULE):
        if (root / path).exists():
            fs.unlink(root / path)
            fs.done(f"removed /{path}")
    link = root / LINK
    if link.is_symlink() and os.readlink(link) in (ADMIN_BIN, EVSED_BIN):
        fs.unlink(link)  # only our link: a file of another installation stays
        fs.done(f"removed /{LINK}")
    run(["systemctl", "daemon-reload"])
    run(["udevadm", "control", "--reload-rules"])
    if not purge:
        out(
            f"{'would keep' if dry else 'kept'} /{CONFIG.parent} (configuration), /{STATE} "
            f"(transactions, queued messages) and the user {user}: `evsed uninstall --purge` "
            f"{'would remove' if dry else 'removes'} them"
        )
    else:
        for directory in (CONFIG.parent, STATE):
            if (root / directory).exists():
                fs.rmtree(root / directory)
                fs.done(f"removed /{directory}")
        if user in System.read(root).users:
            run(["userdel", user])
            fs.done(f"removed the user {user}")
    # Last: this evsed may run from there (Linux keeps what it has open; nothing is
    # imported after this).
    if (root / PREFIX).exists() or (root / PREFIX).is_symlink():
        fs.rmtree(root / PREFIX)
        fs.done(f"removed /{PREFIX} (every installed version)")
    if (root / LIBDIR).exists() or (root / LIBDIR).is_symlink():
        fs.rmtree(root / LIBDIR)
        fs.done(f"removed /{LIBDIR} (root's copy of evsed, the units' helpers)")
    return EXIT_OK
