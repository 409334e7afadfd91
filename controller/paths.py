"""Where evsed keeps its state when the configuration does not say: never the current
directory (a service's working directory, or wherever a user happened to type the command).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


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
