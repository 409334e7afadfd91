"""Meter register maps as data: load/validate a TOML map, plan the reads, decode and encode values.

A map names the Modbus function code, and for each quantity of `evsed.hal.types.MeterSample` its
address, data type, word order, scale and unit. Decoding multiplies the raw number by `scale`
and by the unit's factor to SI (kW -> W, kWh -> Wh, kvar -> var), so everything leaves here
in V, A, W, Wh, Hz, var and plain ratios (power factor, unit "1"). The simulated meter uses
`encode`, the exact inverse, so the bench answers from the same data the driver reads with.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DataType = Literal["float32", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
WordOrder = Literal["big", "little"]

# (register count, struct format for the big-endian byte string, signed?)
_TYPES: dict[str, tuple[int, str, bool]] = {
    "int16": (1, ">h", True),
    "uint16": (1, ">H", False),
    "int32": (2, ">i", True),
    "uint32": (2, ">I", False),
    "float32": (2, ">f", True),
    "int64": (4, ">q", True),
    "uint64": (4, ">Q", False),
}

# Quantity name -> (dimension, SI unit). The names are MeterSample fields, per phase where needed.
QUANTITIES: dict[str, str] = {
    "voltage_l1": "V",
    "voltage_l2": "V",
    "voltage_l3": "V",
    "current_l1": "A",
    "current_l2": "A",
    "current_l3": "A",
    "power_l1": "W",
    "power_l2": "W",
    "power_l3": "W",
    "power_total": "W",
    "energy_import": "Wh",
    "frequency": "Hz",
    "energy_export": "Wh",
    "reactive_power_l1": "var",
    "reactive_power_l2": "var",
    "reactive_power_l3": "var",
    "reactive_power_total": "var",
    "power_factor_l1": "1",
    "power_factor_l2": "1",
    "power_factor_l3": "1",
    "power_factor_total": "1",
}

# Accepted units per SI unit and their factor to SI.
_UNITS: dict[str, dict[str, float]] = {
    "V": {"V": 1.0, "kV": 1000.0},
    "A": {"A": 1.0, "mA": 0.001},
    "W": {"W": 1.0, "kW": 1000.0},
    "Wh": {"Wh": 1.0, "kWh": 1000.0},
    "Hz": {"Hz": 1.0},
    "var": {"var": 1.0, "kvar": 1000.0},
    "1": {"1": 1.0},  # a ratio (power factor): no unit
}


class MapError(ValueError):
    """A register map file is missing, unreadable or invalid; the message names the problem."""


class SerialDefaults(BaseModel):
    """Factory settings of the meter's RS-485 port, used when the user gives none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    device_id: int = Field(1, ge=0, le=247)


class Quantity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    type: DataType | None = None  # None: the map's default_type
    word_order: WordOrder | None = None  # None: the map's default_word_order
    scale: float = 1.0
    unit: str | None = None  # None: the SI unit of the quantity

    @model_validator(mode="after")
    def _scale_nonzero(self) -> Quantity:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("scale must be a finite, non-zero number")
        return self


class _MapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    function_code: Literal[3, 4]
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    # Unused registers a request may span to save a request. Some meters reject reads that
    # touch unmapped registers, so each map chooses.
    max_gap: Annotated[int, Field(ge=0, le=124)] = 0
    request_gap_s: Annotated[float, Field(ge=0, le=5)] = 0.0
    default_type: DataType = "float32"
    default_word_order: WordOrder = "big"
    # ABB style: all-ones (unsigned) or max-positive (signed) means "not available".
    nan_markers: bool = False
    serial: SerialDefaults = SerialDefaults()
    quantities: dict[str, Quantity]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One quantity, resolved: defaults applied, unit turned into a factor to SI."""

    name: str
    address: int
    type: str
    word_order: str
    scale: float
    unit: str
    si_factor: float  # raw * scale * si_factor = SI value

    @property
    def count(self) -> int:
        return _TYPES[self.type][0]

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: `count` registers from `address`, carrying `fields`."""

    address: int
    count: int
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    name: str
    description: str
    function_code: int
    max_registers: int
    max_gap: int
    request_gap_s: float
    nan_markers: bool
    serial: SerialDefaults
    fields: tuple[FieldSpec, ...]
    plan: tuple[ReadBlock, ...]

    def field(self, name: str) -> FieldSpec | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def decode_block(self, block: ReadBlock, registers: list[int]) -> dict[str, float | None]:
        """Decode every field of `block` from the registers a read of it returned."""
        out: dict[str, float | None] = {}
        for f in block.fields:
            off = f.address - block.address
            out[f.name] = decode(f, registers[off : off + f.count], nan_markers=self.nan_markers)
        return out

    def with_limits(
        self, *, max_registers: int | None = None, max_gap: int | None = None
    ) -> RegisterMap:
        """The same map with other request limits (and the plan recomputed)."""
        mr = self.max_registers if max_registers is None else max_registers
        mg = self.max_gap if max_gap is None else max_gap
        return dataclasses.replace(
            self, max_registers=mr, max_gap=mg, plan=plan_reads(self.fields, mr, mg)
        )


def plan_reads(
    fields: tuple[FieldSpec, ...], max_registers: int, max_gap: int
) -> tuple[ReadBlock, ...]:
    """Merge the fields' registers into as few requests as `max_registers`/`max_gap` allow.

    Greedy over fields sorted by address: a field joins the open block when the hole before it
    is at most `max_gap` and the grown block stays within `max_registers`. Greedy is optimal
    here because blocks must be contiguous in address order anyway.
    """
    blocks: list[tuple[int, int, list[FieldSpec]]] = []  # start, end (exclusive), fields
    for f in sorted(fields, key=lambda f: (f.address, f.end)):
        if f.count > max_registers:
            raise MapError(f"{f.name}: {f.type} needs {f.count} registers > max_registers")
        if blocks:
            start, end, members = blocks[-1]
            new_end = max(end, f.end)
            if f.address - end <= max_gap and new_end - start <= max_registers:
                blocks[-1] = (start, new_end, [*members, f])
                continue
        blocks.append((f.address, f.end, [f]))
    return tuple(ReadBlock(s, e - s, tuple(m)) for s, e, m in blocks)


def _registers_to_bytes(registers: list[int], word_order: str) -> bytes:
    words = registers if word_order == "big" else list(reversed(registers))
    return b"".join(struct.pack(">H", w & 0xFFFF) for w in words)


def decode(f: FieldSpec, registers: list[int], *, nan_markers: bool = False) -> float | None:
    """One value from exactly its own registers; None when unavailable or not a number.

    Decoding one value at a time sidesteps pymodbus' whole-list word reversal (issue #2675).
    """
    count, fmt, signed = _TYPES[f.type]
    if len(registers) != count or any(not 0 <= r <= 0xFFFF for r in registers):
        return None
    raw = struct.unpack(fmt, _registers_to_bytes(registers, f.word_order))[0]
    if nan_markers and f.type != "float32":
        bits = 16 * count
        marker = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        if raw == marker:
            return None
    value = float(raw) * f.scale * f.si_factor
    return value if math.isfinite(value) else None


def encode(f: FieldSpec, value: float | None, *, nan_markers: bool = False) -> list[int]:
    """Inverse of `decode`: the registers a meter would hold for SI `value` (None: 'n/a')."""
    count, fmt, signed = _TYPES[f.type]
    bits = 16 * count
    if f.type == "float32":
        raw: float | int = math.nan if value is None else value / (f.scale * f.si_factor)
        data = struct.pack(fmt, raw)
    else:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if value is None or not math.isfinite(value):
            # The marker is the type's maximum for both signedness conventions.
            raw = hi if nan_markers else 0
        else:
            raw = min(max(round(value / (f.scale * f.si_factor)), lo), hi)
        data = struct.pack(fmt, raw)
    words = [struct.unpack(">H", data[i : i + 2])[0] for i in range(0, len(data), 2)]
    return words if f.word_order == "big" else list(reversed(words))


def _resolve(model: _MapFile) -> RegisterMap:
    fields: list[FieldSpec] = []
    for name, q in model.quantities.items():
        if name not in QUANTITIES:
            raise MapError(f"quantities.{name}: unknown quantity (known: {', '.join(QUANTITIES)})")
        si = QUANTITIES[name]
        unit = q.unit or si
        factors = _UNITS[si]
        if unit not in factors:
            raise MapError(f"quantities.{name}.unit: {unit!r} is not one of {', '.join(factors)}")
        fields.append(
            FieldSpec(
                name=name,
                address=q.address,
                type=q.type or model.default_type,
                word_order=q.word_order or model.default_word_order,
                scale=q.scale,
                unit=unit,
                si_factor=factors[unit],
            )
        )
    if not fields:
        raise MapError("quantities: a map needs at least one quantity")
    if any(f.end > 0x10000 for f in fields):
        raise MapError("quantities: a value runs past register 0xFFFF")
    fields_t = tuple(fields)
    return RegisterMap(
        name=model.name,
        description=model.description,
        function_code=model.function_code,
        max_registers=model.max_registers,
        max_gap=model.max_gap,
        request_gap_s=model.request_gap_s,
        nan_markers=model.nan_markers,
        serial=model.serial,
        fields=fields_t,
        plan=plan_reads(fields_t, model.max_registers, model.max_gap),
    )


def parse_map(text: str, source: str = "<string>") -> RegisterMap:
    """Validate TOML text as a register map; MapError names the source, key and problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MapError(f"{source}: not valid TOML: {exc}") from None
    try:
        model = _MapFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise MapError(f"{source}: {loc}: {err['msg']}{more}") from None
    try:
        return _resolve(model)
    except MapError as exc:
        raise MapError(f"{source}: {exc}") from None


def builtin_maps() -> list[str]:
    """Names of the maps shipped in hal/meters/maps/."""
    root = resources.files("evsed.hal.meters") / "maps"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_map(name_or_path: str | Path) -> RegisterMap:
    """A shipped map by name ("sdm630") or a user's TOML file by path."""
    text_path = str(name_or_path)
    if isinstance(name_or_path, Path) or text_path.endswith(".toml") or "/" in text_path:
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MapError(f"{path}: cannot read register map: {exc.strerror or exc}") from None
        return parse_map(text, str(path))
    res = resources.files("evsed.hal.meters") / "maps" / f"{text_path}.toml"
    if not res.is_file():
        raise MapError(f"unknown meter model {text_path!r} (built in: {', '.join(builtin_maps())})")
    return parse_map(res.read_text(encoding="utf-8"), f"{text_path}.toml")
