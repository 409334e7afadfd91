"""The OCPP 1.6 feature profiles, one module each, and everything derived from them.

| module              | profile                   | state                          |
| ------------------- | ------------------------- | ------------------------------ |
| `core`              | Core                      | implemented (`CoreHandlers`)   |
| `smart_charging`    | SmartCharging             | implemented (`SmartChargingHandlers`) |
| `firmware`          | FirmwareManagement        | implemented (`FirmwareHandlers`) |
| `local_list`        | LocalAuthListManagement   | implemented (`LocalListHandlers`) |
| `reservation`       | Reservation               | implemented (`ReservationHandlers`) |
| `remote_trigger`    | RemoteTrigger             | implemented                    |
| `security`          | (Security Whitepaper)     | keys on, actions declared      |

Derived here, never listed elsewhere:
- `SUPPORTED_FEATURE_PROFILES` (the key's value): advertised profiles with handlers;
- `SUPPORTED_ACTIONS`: the CS->CP actions routed to a handler; every other action in
  `KNOWN_ACTIONS` answers NotSupported, anything else NotImplemented (protocol.py);
- `KEY_REGISTRY`: every profile's keys, each tagged with its profile.

A profile becomes supported by giving its declaration a handler class (`handlers=`): one
object per profile and connection, whose `@on`/`@after` methods the library routes by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evsed.controller.ocpp16.profiles import (
    core,
    firmware,
    local_list,
    remote_trigger,
    reservation,
    security,
    smart_charging,
)
from evsed.controller.ocpp16.profiles.base import FeatureProfile, KeySpec

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext

PROFILES: tuple[FeatureProfile, ...] = (
    core.PROFILE,
    smart_charging.PROFILE,
    firmware.PROFILE,
    local_list.PROFILE,
    reservation.PROFILE,
    remote_trigger.PROFILE,
    security.PROFILE,
)
BY_NAME: dict[str, FeatureProfile] = {p.name: p for p in PROFILES}

#: The values SupportedFeatureProfiles may hold (OCPP 1.6 §9.1.31).
FEATURE_PROFILE_NAMES: frozenset[str] = frozenset(p.name for p in PROFILES if p.advertised)
#: What this build implements: the value of SupportedFeatureProfiles.
SUPPORTED_FEATURE_PROFILES: tuple[str, ...] = tuple(
    p.name for p in PROFILES if p.advertised and p.implemented
)
#: Profiles whose keys are on whatever SupportedFeatureProfiles says.
ALWAYS_ON_KEY_PROFILES: frozenset[str] = frozenset(p.name for p in PROFILES if not p.advertised)
#: Every action OCPP 1.6 (with the security extension) defines, in either direction.
KNOWN_ACTIONS: frozenset[str] = frozenset().union(*(p.actions for p in PROFILES))
#: The CS->CP actions evsed answers; the other known ones get NotSupported.
SUPPORTED_ACTIONS: frozenset[str] = frozenset().union(
    *(p.cs_to_cp for p in PROFILES if p.implemented)
)
#: Every configuration key, tagged with its profile.
KEY_REGISTRY: tuple[KeySpec, ...] = tuple(k for p in PROFILES for k in p.keys)
CORE_NAME = core.NAME


def handler_objects(ctx: OcppContext) -> list[object]:
    """One handler object per implemented profile, for one websocket connection."""
    return [p.handlers(ctx) for p in PROFILES if p.handlers is not None]
