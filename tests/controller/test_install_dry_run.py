"""`evsed install --dry-run` / `evsed uninstall --dry-run [--purge]` change nothing: the
root (a temporary directory standing for /) is byte for byte as it was, every file change
is a "would …" line, and no root privileges are asked for. A real run into --root still
writes (the commands there are only printed, as before)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from evsed.controller import install

GROUPS = "root:x:0:\ngpio:x:997:\nspi:x:999:\ndialout:x:20:\n"
PASSWD = "root:x:0:0::/root:/bin/sh\nevsed:x:998:998::/var/lib/evsed:/usr/sbin/nologin\n"


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under root: its kind, its mode and its content (or link target)."""
    seen: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", st.st_mode, os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir", st.st_mode, b"")
            else:
                seen[rel] = ("file", st.st_mode, path.read_bytes())
    return seen


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text(GROUPS)
    (root / "etc/passwd").write_text(PASSWD)
    return root


def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "evsed-1.2.3-py3-none-any.whl"
    path.write_bytes(b"PK")  # only its name matters: pip is never run here
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evsed.controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_install_into_an_empty_root_writes_nothing(tmp_path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    ran = _cli("install", "--root", str(root), "--package", str(wheel(tmp_path)), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert snapshot(root) == before
    out = ran.stdout
    assert f"would write {root}/etc/systemd/system/evsed.service (mode 644)" in out
    assert f"would write {root}/etc/udev/rules.d/99-evsed-pwm.rules" in out
    assert f"would write {root}/etc/evsed/evsed.toml (mode 640)" in out
    assert f"would create {root}/var/lib/evsed/ (mode 700)" in out
    assert f"would link {root}/usr/local/bin/evsed -> /usr/local/lib/evsed/admin/bin/evsed" in out
    assert f"would link {root}/usr/local/lib/evsed/admin -> admin.a" in out
    assert f"would link {root}/opt/evsed/current -> venvs/1.2.3" in out
    assert "would run: useradd" not in out  # the user exists: usermod
    assert "would run: usermod --append --groups gpio,spi,dialout evsed" in out


def test_a_dry_install_prints_the_links_the_real_install_makes(tmp_path) -> None:
    """Fails without the change: the dry run said "current -> <root>/opt/evsed/venvs/1.2.3"
    (absolute) while the real run links "venvs/1.2.3" (relative, Layout.switch)."""
    root = make_root(tmp_path)
    package = str(wheel(tmp_path))
    dry = _cli("install", "--root", str(root), "--package", package, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    said = {}
    for line in dry.stdout.splitlines():
        words = line.split()
        if words[:2] == ["would", "link"] and words[3] == "->":
            said[words[2]] = words[4]
    real = _cli("install", "--root", str(root), "--package", package)
    assert real.returncode == 0, real.stderr
    for name in ("current", "previous"):
        link = root / "opt/evsed" / name
        assert said[str(link)] == os.readlink(link), name


def test_dry_uninstall_purge_of_an_installed_root_removes_nothing(tmp_path) -> None:
    root = make_root(tmp_path)
    # A real run into the root first: it still writes (the commands are only printed).
    ran = _cli("install", "--root", str(root), "--package", str(wheel(tmp_path)))
    assert ran.returncode == 0, ran.stderr
    assert (root / "etc/systemd/system/evsed.service").is_file()
    assert os.readlink(root / "usr/local/bin/evsed") == "/usr/local/lib/evsed/admin/bin/evsed"
    store = root / "var/lib/evsed/evsed.sqlite3"
    store.write_bytes(b"transactions")
    before = snapshot(root)
    assert {"etc/evsed/evsed.toml", "opt/evsed/current", "var/lib/evsed/evsed.sqlite3"} <= set(
        before
    )

    for args in (("--dry-run",), ("--dry-run", "--purge")):
        ran = _cli("uninstall", "--root", str(root), *args)
        assert ran.returncode == 0, ran.stderr
        assert snapshot(root) == before, args
        assert f"would remove {root}/etc/systemd/system/evsed.service" in ran.stdout
        assert f"would remove {root}/opt/evsed and everything in it" in ran.stdout
        assert "removed /" not in ran.stdout  # nothing claims to be done
    assert f"would remove {root}/var/lib/evsed and everything in it" in ran.stdout
    assert f"would remove {root}/etc/evsed and everything in it" in ran.stdout
    assert "would run: userdel evsed" in ran.stdout

    # The dry install over the installed root changes nothing either.
    ran = _cli("install", "--root", str(root), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert snapshot(root) == before

    # And the real uninstall still removes.
    ran = _cli("uninstall", "--root", str(root), "--purge")
    assert ran.returncode == 0, ran.stderr
    assert not store.exists() and not (root / "opt/evsed").exists()
    assert not (root / "usr/local/bin/evsed").is_symlink()


def test_a_dry_run_on_slash_needs_no_root_and_runs_nothing(monkeypatch) -> None:
    """On `/` without sudo: a dry run reads the system, prints, asks for no privileges."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines: list[str] = []
    # /etc/systemd/system/evsed.service is absent on the test machine or not: either way
    # every command goes to the printing runner, not to subprocess.
    monkeypatch.setattr(
        install, "run_commands", lambda argv: (_ for _ in ()).throw(AssertionError(argv))
    )
    assert install.uninstall(Path("/"), purge=True, out=lines.append, dry=True) == 0
    assert any("would run: systemctl daemon-reload" in ln for ln in lines)


# -- what the output says (a new user's report): each path once, and true ------------------


def _would_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("  would ") and "would run:" not in ln]


def test_a_dry_run_says_each_path_once(tmp_path) -> None:
    """Fails without the change: /opt/evsed/venvs/ and /usr/local/lib/evsed/ each had two
    "would create" lines, and summary lines ("state: ... owned by evsed") repeated the
    paths as if done."""
    root = make_root(tmp_path)
    ran = _cli("install", "--root", str(root), "--package", str(wheel(tmp_path)), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    lines = _would_lines(ran.stdout)
    assert len(lines) == len(set(lines)), sorted(ln for ln in lines if lines.count(ln) > 1)
    paths = [ln.split()[2] for ln in lines]  # "would create|write|link PATH ..."
    assert len(paths) == len(set(paths))
    assert lines.count(f"  would create {root}/opt/evsed/venvs/") == 1
    assert lines.count(f"  would create {root}/usr/local/lib/evsed/ (mode 755)") == 1
    # Nothing claims to be so: the would lines say it.
    assert "owned by evsed" not in ran.stdout
    assert "\nunit: " not in ran.stdout and "\nstate: " not in ran.stdout


def test_a_staging_root_says_what_is_not_there_and_whose_it_is_not(tmp_path) -> None:
    """`evsed install --root DIR` writes the files and only prints the commands: the venvs
    are never built, so on the next run the links to them are broken, and were reported
    "(kept)"; the state directory was "owned by evsed" though its chown was only printed.
    Fails without the change."""
    root = make_root(tmp_path)
    ran = _cli("install", "--root", str(root), "--package", str(wheel(tmp_path)))
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    assert "state: /var/lib/evsed (mode 0700, not owned by evsed: its chown is only printed)" in out
    assert "versions: /opt/evsed/venvs/1.2.3 (not built: its python -m venv and pip" in out
    assert "admin copy: /usr/local/lib/evsed/admin -> admin.a (" in out
    assert "not built: its python -m venv and pip are only printed" in out.split("admin copy")[1]

    again = _cli("install", "--root", str(root))
    assert again.returncode == 0, again.stderr
    out = again.stdout
    assert "(kept" not in out
    assert "warning: /usr/local/lib/evsed/admin -> admin.a is broken: admin.a is not there" in out
    assert "warning: /opt/evsed/current -> venvs/1.2.3 is broken" in out
    assert "a --root run only prints the commands that build it" in out
    assert "owned by evsed)" not in out


def test_a_dry_run_over_an_installed_root_does_not_relink_what_points_there(tmp_path) -> None:
    """Fails without the change: "current -> venvs/1.2.3 (kept)" and then "would link
    .../current -> .../venvs/1.2.3"."""
    root = make_root(tmp_path)
    assert _cli("install", "--root", str(root), "--package", str(wheel(tmp_path))).returncode == 0
    (root / "opt/evsed/venvs/1.2.3").mkdir()  # as if its commands had run
    (root / "usr/local/lib/evsed/admin.a").mkdir()
    ran = _cli("install", "--root", str(root), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert "versions: /opt/evsed/current -> venvs/1.2.3 (kept)" in ran.stdout
    assert "admin copy: /usr/local/lib/evsed/admin (kept; --package rebuilds it)" in ran.stdout
    assert "would link" not in ran.stdout
    assert "warning" not in ran.stdout
