"""Where evsed keeps its state when the configuration does not say: never the current
directory (a service's working directory, or wherever a user happened to type the command);
and a relative path the configuration does say is relative to the configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The service's StateDirectory (systemd sets $STATE_DIRECTORY, a colon-separated list
    when the unit names several: the first is ours), else the per-user state directory of
    the XDG base directory spec ($XDG_STATE_HOME, default ~/.local/state) plus `evsed`."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    xdg = environ.get("XDG_STATE_HOME", "")
    # The spec: a relative XDG_STATE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "evsed"


#: Keys of the configuration file that name files or directories, as (section path, key);
#: "connectors[]" is every [[connectors]] table. A meter `model` is a path only when it
#: names a .toml register map (else a built-in model's name).
PATH_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((), "state_dir"),
    (("central_system",), "ca_file"),
    (("central_system",), "client_cert"),
    (("central_system",), "client_key"),
    (("connectors[]", "meter"), "model"),
    (("grid", "meter"), "model"),
    (("firmware",), "install_root"),
)


def anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The file's data with each relative path made relative to `base` (the directory of
    the configuration file) and a leading ~ expanded, as a user reading the file expects:
    `evsed run --config config/sim.toml` then finds and writes the same files from any
    working directory, and a service (working directory /var/lib/evsed) the same as a
    shell. Values of the wrong type are left for validation to name."""
    for section, key in PATH_KEYS:
        for table in _tables(data, section):
            value = table.get(key)
            if not isinstance(value, str) or not value:
                continue
            if key == "model" and not value.endswith(".toml"):
                continue
            path = Path(value).expanduser()
            table[key] = str(path if path.is_absolute() else base.absolute() / path)
    return data


def _tables(data: dict[str, Any], section: tuple[str, ...]) -> list[dict[str, Any]]:
    nodes: list[Any] = [data]
    for part in section:
        if part.endswith("[]"):
            lists = [n.get(part[:-2]) for n in nodes]
            nodes = [item for seq in lists if isinstance(seq, list) for item in seq]
        else:
            nodes = [n.get(part) for n in nodes]
        nodes = [n for n in nodes if isinstance(n, dict)]
    return nodes
