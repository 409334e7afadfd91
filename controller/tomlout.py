"""A minimal TOML writer for printing resolved configuration (stdlib only reads TOML)."""

from __future__ import annotations

import json
from typing import Any


def dumps(data: dict[str, Any]) -> str:
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: dict[str, Any], path: list[str], lines: list[str], header: bool = True) -> None:
    """`data` as a table at `path`; `header=False` when an [[array]] header already stands."""
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_list(v)}
    if header and path and (scalars or not data):
        lines.append("")
        lines.append(f"[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"# {key} is not set" if value is None else f"{key} = {_value(value)}")
    for key, value in data.items():
        if _is_table(value):
            _table(value, [*path, key], lines)
        elif _is_table_list(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join([*path, key])}]]")
                _table(item, [*path, key], lines, header=False)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
