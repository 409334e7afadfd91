"""What a feature profile declares: its actions (both directions), its configuration keys and
the handler object that answers its CS->CP actions (None: not implemented yet).

Everything the rest of evsed knows about profiles is derived from these declarations
(`evsed.controller.ocpp16.profiles`): SupportedFeatureProfiles, which CALLs are routed and
which answer NotSupported, and the configuration key registry with each key's profile tag.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext


class KeyType(StrEnum):
    BOOL = "bool"
    INT = "int"
    CSL = "CSL"
    STRING = "string"


class Access(StrEnum):
    R = "R"
    RW = "RW"
    W = "W"  # write-only: never reported


class TooManyKeys(ValueError):
    """GetConfiguration asked for more keys than GetConfigurationMaxKeys."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    type: KeyType
    access: Access
    default: str | None  # None: no value until set
    profile: str = ""  # the declaring profile's name, filled in by `declare`
    min: int | None = None  # INT range, inclusive; STRING length
    max: int | None = None
    allowed: frozenset[str] | None = None  # CSL items (or None: any / custom check)
    max_items_key: str | None = None  # the *MaxLength key bounding a CSL
    reboot_required: bool = False
    supported: bool = True  # False: a key for hardware evsed does not drive


def key(name: str, type_: KeyType, access: Access, default: str | None, **kw: object) -> KeySpec:
    return KeySpec(name, type_, access, default, **kw)  # type: ignore[arg-type]


#: Builds a profile's handler object for one websocket connection.
HandlerFactory = Callable[["OcppContext"], object]


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    name: str  # the SupportedFeatureProfiles spelling ("Core", "SmartCharging")
    cs_to_cp: frozenset[str]  # actions the Central System may send
    cp_to_cs: frozenset[str]  # actions the charge point sends
    keys: tuple[KeySpec, ...]
    # None: declared only; its CS->CP actions answer NotSupported.
    handlers: HandlerFactory | None = None
    # False: not a SupportedFeatureProfiles entry (the Security Whitepaper extension): its
    # keys are always on, whatever SupportedFeatureProfiles says.
    advertised: bool = True

    @property
    def implemented(self) -> builtins.bool:
        return self.handlers is not None

    @property
    def actions(self) -> frozenset[str]:
        return self.cs_to_cp | self.cp_to_cs


def declare(
    name: str,
    *,
    cs_to_cp: Iterable[str],
    cp_to_cs: Iterable[str] = (),
    keys: Iterable[KeySpec] = (),
    handlers: HandlerFactory | None = None,
    advertised: bool = True,
) -> FeatureProfile:
    """A profile whose keys carry its name as their profile tag."""
    return FeatureProfile(
        name,
        frozenset(cs_to_cp),
        frozenset(cp_to_cs),
        tuple(replace(k, profile=name) for k in keys),
        handlers,
        advertised,
    )
