"""How values are kept in SQLite's columns: timestamps as ISO text, objects as JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def dumps(obj: Any) -> str:
    # Compact and key-sorted: stable text lets "unchanged" writes be detected and skipped.
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def loads(text: str) -> Any:
    return json.loads(text)
