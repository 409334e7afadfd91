"""OCPP 1.6 configuration keys: ``ConfigurationKeys``, which answers GetConfiguration /
ChangeConfiguration. The registry (spec §9, Security Whitepaper ed. 2 §7) is not listed
here: each feature profile declares its keys (``profiles/``), and ``REGISTRY`` is their union.

Values are strings on the wire. A key's value is, in order of precedence: the value the CS
set with ChangeConfiguration (persisted in the store), the operator's override given at
construction (evsed's TOML file), the registry default. Keys are case-insensitive on the
wire (CiString50) and answered with the spec's spelling.

Choices where the spec is silent:
- More keys requested than GetConfigurationMaxKeys: ``get`` raises ``TooManyKeys``; the
  handler answers CALLERROR OccurenceConstraintViolation (the spec only defines the key as
  the maximum number of keys in a request).
- AuthorizationKey is write-only: left out of the full list, and named in unknownKey when
  asked for explicitly, so neither its value nor its presence leaks. Never logged.
- Keys of a feature profile not listed in SupportedFeatureProfiles are not supported
  (NotSupported / unknownKey), as are keys for hardware evsed does not drive (BlinkRepeat,
  LightIntensity).
- SecurityProfile may only be raised (Whitepaper §2): to 1 only when an AuthorizationKey is
  set; to 2 or 3 only when ``security_profile_ready(level)`` says the certificates are in
  place (default: never, evsed has no certificate store yet).
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from ocpp.v16.datatypes import KeyValue

from evsed.controller.ocpp16.measurands import REPORTED, SPEC_MEASURANDS, TABLE, PhaseStyle
from evsed.controller.ocpp16.profiles import (
    ALWAYS_ON_KEY_PROFILES,
    CORE_NAME,
    FEATURE_PROFILE_NAMES,
    KEY_REGISTRY,
    SUPPORTED_FEATURE_PROFILES,
)
from evsed.controller.ocpp16.profiles.base import Access, KeySpec, KeyType, TooManyKeys
from evsed.controller.store import Store

log = logging.getLogger(__name__)


class ConfigStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


# The measurands a CS may configure, and the phases an item may name: the one table.
MEASURANDS = frozenset(SPEC_MEASURANDS)
DEFAULT_MEASURANDS = REPORTED
PHASE_ROTATIONS = frozenset({"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"})
#: Every key of every profile (declared in `profiles/`), tagged with its profile.
REGISTRY: tuple[KeySpec, ...] = KEY_REGISTRY

SPECS: dict[str, KeySpec] = {s.name: s for s in REGISTRY}
_BY_LOWER: dict[str, KeySpec] = {s.name.lower(): s for s in REGISTRY}
#: The keys that hold measurand lists (each with its *MaxLength key).
MEASURAND_KEYS = frozenset(
    {"MeterValuesAlignedData", "MeterValuesSampledData", "StopTxnAlignedData", "StopTxnSampledData"}
)
_MEASURAND_KEYS = MEASURAND_KEYS
_INT_RE = re.compile(r"[+-]?\d+")
_MAX_VALUE_LEN = 500  # CiString500

Listener = Callable[[str, str], None]


def parse_bool(value: str) -> bool | None:
    low = value.strip().lower()
    return True if low == "true" else False if low == "false" else None


def parse_int(value: str) -> int | None:
    text = value.strip()
    return int(text) if _INT_RE.fullmatch(text) else None


def parse_csl(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def phase_items(measurand: str, phases: int) -> list[tuple[str, int]]:
    """The phase-narrowed items (§9.1.17, "Voltage.L1") a Meter*Data key may name for
    ``measurand`` on a connector with ``phases`` phases, each with the line it reads: what
    the MeterValue builder reports, as the one measurand table says (Voltage as L1-N..,
    Current.Import as L1.., a total-and-line measurand as L1.. on a multi-phase connector
    only). Nothing for a measurand with one value (energy, frequency, the offered values,
    temperature), and never N or a line-to-line phase: evsed reports none of them, so an
    item naming one would be Accepted and never sent."""
    row = TABLE.get(measurand)
    style = row.phases if row is not None else PhaseStyle.NONE
    lines = range(1, phases + 1)
    if style is PhaseStyle.LINE_NEUTRAL:
        return [(f"{measurand}.L{k}-N", k) for k in lines]
    if style is PhaseStyle.LINE or (style is PhaseStyle.TOTAL_AND_LINE and phases > 1):
        return [(f"{measurand}.L{k}", k) for k in lines]
    return []


class ConfigurationKeys:
    """The charge point's configuration keys. Event-loop thread only (like the Store).

    ``overrides`` set defaults (e.g. from the TOML file), including read-only keys;
    ``supported`` / ``unsupported`` switch optional keys on or off.
    """

    def __init__(
        self,
        store: Store,
        *,
        number_of_connectors: int,
        supported_feature_profiles: Iterable[str] = SUPPORTED_FEATURE_PROFILES,
        overrides: Mapping[str, str] | None = None,
        measurands: Iterable[str] = DEFAULT_MEASURANDS,
        supported: Iterable[str] = (),
        unsupported: Iterable[str] = (),
        reboot_required: Iterable[str] = (),
        security_profile_ready: Callable[[int], bool] = lambda level: False,
        security_profile: builtins.int = 0,
        phases: builtins.int = 3,
        items: Iterable[builtins.str] | None = None,
    ) -> None:
        """``security_profile``: the level the configuration runs at; SecurityProfile reads
        at least that (the profile in effect), so a CS cannot "lower" it to 0 or 1.

        ``items``: the phase-narrowed Meter*Data items the charger delivers (what its meters
        read, `evsed.controller.meter_measurands.charger_items`); None: every one
        `phase_items` gives for ``measurands`` on ``phases`` phases. "Voltage.L1" is taken
        wherever "Voltage.L1-N" is (the builder reports the line as measured)."""
        self._store = store
        profiles = list(supported_feature_profiles)
        bad = [p for p in profiles if p not in FEATURE_PROFILE_NAMES]
        if bad or CORE_NAME not in profiles:
            raise ValueError(f"bad SupportedFeatureProfiles {profiles!r} (Core is mandatory)")
        self._profiles = frozenset(profiles)
        self._measurands = frozenset(measurands)
        if not self._measurands <= MEASURANDS:
            raise ValueError(f"unknown measurands: {sorted(self._measurands - MEASURANDS)}")
        if items is None:
            items = [i for m in sorted(self._measurands) for i, _ in phase_items(m, phases)]
        self._items = frozenset(items)
        self._on = set(supported)
        self._off = set(unsupported)
        self._reboot = set(reboot_required)
        for name in self._on | self._off | self._reboot:
            self._spec(name, strict=True)
        self._security_ready = security_profile_ready
        self._listeners: dict[str, list[Listener]] = {}
        self._defaults: dict[str, str | None] = {s.name: s.default for s in REGISTRY}
        self._defaults["NumberOfConnectors"] = str(number_of_connectors)
        self._defaults["ConnectorPhaseRotationMaxLength"] = str(number_of_connectors + 1)
        self._defaults["SupportedFeatureProfiles"] = ",".join(profiles)
        self._defaults["SecurityProfile"] = builtins.str(security_profile)
        self._number_of_connectors = number_of_connectors
        self._values: dict[str, str] = {}
        given: list[KeySpec] = []
        for name, value in (overrides or {}).items():
            spec = self._spec(name, strict=True)
            assert spec is not None
            self._defaults[spec.name] = value
            given.append(spec)
        for spec in given:  # after all overrides: a CSL is checked against its MaxLength key
            value = self._defaults[spec.name]
            problem = None if value is None else self._validate(spec, value)
            if problem:
                raise ValueError(f"configuration key {spec.name}: {problem}")
        # CS-set values; a stored value the registry no longer knows is ignored.
        for name, value in store.config_values().items():
            spec = _BY_LOWER.get(name.lower())
            if spec is not None and spec.access is not Access.R:
                if spec.name == "SecurityProfile" and (parse_int(value) or 0) < security_profile:
                    continue  # raised out of band since (the configuration): that is in effect
                self._values[spec.name] = value

    # -- lookup -----------------------------------------------------------------------------

    @staticmethod
    def _spec(name: str, *, strict: bool = False) -> KeySpec | None:
        spec = _BY_LOWER.get(name.lower())
        if spec is None and strict:
            raise KeyError(f"unknown configuration key {name!r}")
        return spec

    def is_supported(self, name: str) -> bool:
        spec = self._spec(name)
        if spec is None:
            return False
        if spec.name in self._off:
            return False
        if not spec.supported and spec.name not in self._on:
            return False
        return spec.profile in ALWAYS_ON_KEY_PROFILES or spec.profile in self._profiles

    def spec(self, name: str) -> KeySpec | None:
        """The key's registry entry if it is known and supported here."""
        return self._spec(name) if self.is_supported(name) else None

    def value(self, name: str) -> str | None:
        """Current value (canonical or any-case name). KeyError if not supported."""
        spec = self._spec(name)
        if spec is None or not self.is_supported(name):
            raise KeyError(f"configuration key {name!r} is not supported")
        if spec.name in self._values:
            return self._values[spec.name]
        return self._defaults[spec.name]

    def int(self, name: str) -> builtins.int:
        parsed = parse_int(self.value(name) or "")
        if parsed is None:
            raise ValueError(f"configuration key {name} has no integer value")
        return parsed

    def bool(self, name: str) -> builtins.bool:
        parsed = parse_bool(self.value(name) or "")
        if parsed is None:
            raise ValueError(f"configuration key {name} has no boolean value")
        return parsed

    def csl(self, name: str) -> list[str]:
        return parse_csl(self.value(name) or "")

    def str(self, name: str) -> builtins.str | None:
        return self.value(name)

    def on_change(self, name: str, callback: Listener) -> None:
        """``callback(key, new_value)`` after a ChangeConfiguration was accepted and stored."""
        spec = self._spec(name, strict=True)
        assert spec is not None
        self._listeners.setdefault(spec.name, []).append(callback)

    # -- GetConfiguration -------------------------------------------------------------------

    def get(
        self, keys: list[builtins.str] | None = None
    ) -> tuple[list[KeyValue], list[builtins.str]]:
        """(configurationKey, unknownKey) for GetConfiguration.conf. An empty or missing
        list means every key. TooManyKeys if more than GetConfigurationMaxKeys are asked."""
        if not keys:
            return [self._kv(s) for s in REGISTRY if self._reportable(s)], []
        if len(keys) > self.int("GetConfigurationMaxKeys"):
            raise TooManyKeys(
                f"{len(keys)} keys requested, GetConfigurationMaxKeys is "
                f"{self.int('GetConfigurationMaxKeys')}"
            )
        found: list[KeyValue] = []
        unknown: list[builtins.str] = []
        for name in keys:
            spec = self._spec(name)
            if spec is not None and self._reportable(spec):
                found.append(self._kv(spec))
            else:
                unknown.append(name)
        return found, unknown

    def _reportable(self, spec: KeySpec) -> builtins.bool:
        return spec.access is not Access.W and self.is_supported(spec.name)

    def _kv(self, spec: KeySpec) -> KeyValue:
        return KeyValue(
            key=spec.name, readonly=spec.access is Access.R, value=self.value(spec.name)
        )

    # -- ChangeConfiguration ----------------------------------------------------------------

    def change(self, key: builtins.str, value: builtins.str) -> ConfigStatus:
        """Validate, persist (committed before returning), notify listeners, answer."""
        spec = self._spec(key)
        if spec is None or not self.is_supported(key):
            log.info("ChangeConfiguration %s: NotSupported", key)
            return ConfigStatus.NOT_SUPPORTED
        shown = "<hidden>" if spec.access is Access.W else value
        if spec.access is Access.R:
            log.info("ChangeConfiguration %s=%s: Rejected (read-only)", spec.name, shown)
            return ConfigStatus.REJECTED
        problem = self._validate(spec, value)
        if problem is None and spec.name == "SecurityProfile":
            problem = self._check_security_profile(value)
        if problem is not None:
            log.info("ChangeConfiguration %s=%s: Rejected (%s)", spec.name, shown, problem)
            return ConfigStatus.REJECTED
        value = self._normalise(spec, value)
        status = (
            ConfigStatus.REBOOT_REQUIRED
            if spec.reboot_required or spec.name in self._reboot
            else ConfigStatus.ACCEPTED
        )
        if self._values.get(spec.name, self._defaults[spec.name]) == value:
            return status  # nothing changes: no write, no listener
        self._store.set_config(spec.name, value)
        self._values[spec.name] = value
        log.info("ChangeConfiguration %s=%s: %s", spec.name, shown, status.value)
        for callback in self._listeners.get(spec.name, []):
            try:
                callback(spec.name, value)
            except Exception:
                # The value is stored and the CS gets its answer; a listener bug must not
                # turn into a CALLERROR for a change that did happen.
                log.exception("listener for %s failed", spec.name)
        return status

    @staticmethod
    def _normalise(spec: KeySpec, value: builtins.str) -> builtins.str:
        """Canonical text for a valid value: "true"/"false", plain decimal, tidy CSL."""
        if spec.type is KeyType.BOOL:
            return "true" if parse_bool(value) else "false"
        if spec.type is KeyType.INT:
            return builtins.str(parse_int(value))
        if spec.type is KeyType.CSL:
            return ",".join(parse_csl(value))
        return value

    def _validate(self, spec: KeySpec, value: builtins.str) -> builtins.str | None:
        """None if ``value`` is acceptable for ``spec``, else the reason."""
        if len(value) > _MAX_VALUE_LEN:
            return "longer than 500 characters"
        if spec.type is KeyType.BOOL:
            return None if parse_bool(value) is not None else "not true/false"
        if spec.type is KeyType.INT:
            number = parse_int(value)
            if number is None:
                return "not a decimal integer"
            if spec.min is not None and number < spec.min:
                return f"below {spec.min}"
            if spec.max is not None and number > spec.max:
                return f"above {spec.max}"
            return None
        if spec.type is KeyType.STRING:
            if spec.min is not None and len(value) < spec.min:
                return f"shorter than {spec.min} characters"
            if spec.max is not None and len(value) > spec.max:
                return f"longer than {spec.max} characters"
            if not value.isprintable():
                return "non-printable characters"
            return None
        return self._validate_csl(spec, value)

    def _measurand_item_ok(self, item: builtins.str) -> bool:
        """A measurand, or one narrowed to a phase the charger reports ("Voltage.L1-N",
        spec §9.1.17): a phase its meters cannot read is not supported (Rejected), not
        Accepted and then never sent."""
        if item in self._measurands:
            return True
        return item in self._items or f"{item}-N" in self._items

    def _validate_csl(self, spec: KeySpec, value: builtins.str) -> builtins.str | None:
        raw = value.split(",") if value.strip() else []
        items = [item.strip() for item in raw]
        if any(not item for item in items):
            return "empty list item"
        if spec.max_items_key and self.is_supported(spec.max_items_key):
            limit = self.int(spec.max_items_key)
            if len(items) > limit:
                return f"more than {limit} items"
        if spec.name in _MEASURAND_KEYS:
            bad = [item for item in items if not self._measurand_item_ok(item)]
            return f"unsupported measurand(s) {bad}" if bad else None
        if spec.name == "ConnectorPhaseRotation":
            return self._validate_phase_rotation(items)
        if spec.name == "SupportedFeatureProfiles":
            bad = [item for item in items if item not in FEATURE_PROFILE_NAMES]
            return f"not a feature profile: {bad}" if bad else None
        if spec.allowed is not None:
            bad = [item for item in items if item not in spec.allowed]
            return f"not allowed: {bad}" if bad else None
        return None

    def _validate_phase_rotation(self, items: list[builtins.str]) -> builtins.str | None:
        seen: set[builtins.int] = set()
        for item in items:
            connector, _, rotation = item.partition(".")
            number = parse_int(connector) if connector.isdigit() else None
            if number is None or not 0 <= number <= self._number_of_connectors:
                return f"bad connector in {item!r}"
            if rotation not in PHASE_ROTATIONS:
                return f"bad rotation in {item!r}"
            if number in seen:
                return f"connector {number} given twice"
            seen.add(number)
        return None

    def _check_security_profile(self, value: builtins.str) -> builtins.str | None:
        new = parse_int(value)
        assert new is not None
        current = self.int("SecurityProfile")
        if new < current:
            return "the security profile may only be raised"
        if new == current:
            return None
        if new in (1, 2) and not self.value("AuthorizationKey"):
            return "no AuthorizationKey set"
        if new >= 2 and not self._security_ready(new):
            return f"certificates for security profile {new} are missing"
        return None
