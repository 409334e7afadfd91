"""Configuration keys: GetConfiguration / ChangeConfiguration answers, validation, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsed.controller.ocpp16.keys import (
    REGISTRY,
    SPECS,
    Access,
    ConfigurationKeys,
    KeyType,
    TooManyKeys,
)
from evsed.controller.store import Store

ALL_PROFILES = [
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
]

# The 43 keys of spec §9 (REFERENCE §5.2) plus the Whitepaper's and SupportedFileTransferProtocols.
SPEC_KEYS = {
    "AllowOfflineTxForUnknownId": ("RW", "bool"),
    "AuthorizationCacheEnabled": ("RW", "bool"),
    "AuthorizeRemoteTxRequests": ("RW", "bool"),
    "BlinkRepeat": ("RW", "int"),
    "ClockAlignedDataInterval": ("RW", "int"),
    "ConnectionTimeOut": ("RW", "int"),
    "ConnectorPhaseRotation": ("RW", "CSL"),
    "ConnectorPhaseRotationMaxLength": ("R", "int"),
    "GetConfigurationMaxKeys": ("R", "int"),
    "HeartbeatInterval": ("RW", "int"),
    "LightIntensity": ("RW", "int"),
    "LocalAuthorizeOffline": ("RW", "bool"),
    "LocalPreAuthorize": ("RW", "bool"),
    "MaxEnergyOnInvalidId": ("RW", "int"),
    "MeterValuesAlignedData": ("RW", "CSL"),
    "MeterValuesAlignedDataMaxLength": ("R", "int"),
    "MeterValuesSampledData": ("RW", "CSL"),
    "MeterValuesSampledDataMaxLength": ("R", "int"),
    "MeterValueSampleInterval": ("RW", "int"),
    "MinimumStatusDuration": ("RW", "int"),
    "NumberOfConnectors": ("R", "int"),
    "ResetRetries": ("RW", "int"),
    "StopTransactionOnEVSideDisconnect": ("RW", "bool"),
    "StopTransactionOnInvalidId": ("RW", "bool"),
    "StopTxnAlignedData": ("RW", "CSL"),
    "StopTxnAlignedDataMaxLength": ("R", "int"),
    "StopTxnSampledData": ("RW", "CSL"),
    "StopTxnSampledDataMaxLength": ("R", "int"),
    "SupportedFeatureProfiles": ("R", "CSL"),
    "SupportedFeatureProfilesMaxLength": ("R", "int"),
    "TransactionMessageAttempts": ("RW", "int"),
    "TransactionMessageRetryInterval": ("RW", "int"),
    "UnlockConnectorOnEVSideDisconnect": ("RW", "bool"),
    "WebSocketPingInterval": ("RW", "int"),
    "LocalAuthListEnabled": ("RW", "bool"),
    "LocalAuthListMaxLength": ("R", "int"),
    "SendLocalListMaxLength": ("R", "int"),
    "ReserveConnectorZeroSupported": ("R", "bool"),
    "ChargeProfileMaxStackLevel": ("R", "int"),
    "ChargingScheduleAllowedChargingRateUnit": ("R", "CSL"),
    "ChargingScheduleMaxPeriods": ("R", "int"),
    "ConnectorSwitch3to1PhaseSupported": ("R", "bool"),
    "MaxChargingProfilesInstalled": ("R", "int"),
    "SupportedFileTransferProtocols": ("R", "CSL"),
    "AdditionalRootCertificateCheck": ("R", "bool"),
    "AuthorizationKey": ("W", "string"),
    "CertificateSignedMaxChainSize": ("R", "int"),
    "CertificateStoreMaxLength": ("R", "int"),
    "CpoName": ("RW", "string"),
    "SecurityProfile": ("RW", "int"),
}

# key: (accepted value, wrong type, out of range / not allowed)
RW_CASES: dict[str, tuple[str, str | None, str | None]] = {
    "AllowOfflineTxForUnknownId": ("TRUE", "yes", None),
    "AuthorizationCacheEnabled": ("False", "0", None),
    "AuthorizeRemoteTxRequests": ("false", "1", None),
    "ClockAlignedDataInterval": ("900", "15m", "-1"),
    "ConnectionTimeOut": ("120", "1.5", "0"),
    "ConnectorPhaseRotation": ("0.RST,1.RTS", "RST", "3.RST"),
    "HeartbeatInterval": ("60", "sixty", "86401"),
    "LocalAuthorizeOffline": ("false", "on", None),
    "LocalPreAuthorize": ("true", "", None),
    "MaxEnergyOnInvalidId": ("5000", "5kWh", "-5"),
    "MeterValuesAlignedData": ("Energy.Active.Import.Register,Voltage", "Energy,", "SoC"),
    "MeterValuesSampledData": ("Power.Active.Import", "Power.Active.Import,,Voltage", "RPM"),
    "MeterValueSampleInterval": ("10", "10s", "-10"),
    "MinimumStatusDuration": ("5", "x", "3601"),
    "ResetRetries": ("2", "two", "11"),
    "StopTransactionOnEVSideDisconnect": ("false", "no", None),
    "StopTransactionOnInvalidId": ("false", "nope", None),
    "StopTxnAlignedData": ("Energy.Active.Import.Register", ",", "RPM"),
    "StopTxnSampledData": ("Voltage, Frequency", ",,", "Current.Export"),
    "TransactionMessageAttempts": ("5", "5.0", "0"),
    "TransactionMessageRetryInterval": ("30", "0x1e", "0"),
    "UnlockConnectorOnEVSideDisconnect": ("false", "t", None),
    "WebSocketPingInterval": ("0", "off", "3601"),
    "LocalAuthListEnabled": ("false", "null", None),
    "AuthorizationKey": ("0123456789abcdef0123", None, "short"),
    "CpoName": ("Example CPO", None, "x" * 501),
    "SecurityProfile": ("0", "one", "4"),
}


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "evsed.db")
    yield s
    s.close()


@pytest.fixture
def keys(store: Store) -> ConfigurationKeys:
    return ConfigurationKeys(store, number_of_connectors=2, supported_feature_profiles=ALL_PROFILES)


def test_registry_matches_the_spec_table() -> None:
    assert {s.name: (s.access.value, s.type.value) for s in REGISTRY} == SPEC_KEYS


def test_every_writable_key_has_cases() -> None:
    writable = {s.name for s in REGISTRY if s.access is not Access.R and s.supported}
    assert writable == set(RW_CASES)


def test_defaults_are_valid(keys: ConfigurationKeys) -> None:
    configured, unknown = keys.get()
    assert unknown == []
    for kv in configured:
        spec = SPECS[kv.key]
        if kv.value is None:
            continue
        if spec.type is KeyType.INT:
            keys.int(kv.key)
        elif spec.type is KeyType.BOOL:
            keys.bool(kv.key)
    assert keys.int("NumberOfConnectors") == 2
    assert keys.int("ConnectorPhaseRotationMaxLength") == 3
    assert keys.csl("SupportedFeatureProfiles") == ALL_PROFILES


@pytest.mark.parametrize("key", sorted(RW_CASES))
def test_good_value_accepted_and_persisted(key: str, store: Store) -> None:
    keys = ConfigurationKeys(store, number_of_connectors=2, supported_feature_profiles=ALL_PROFILES)
    good = RW_CASES[key][0]
    if key == "SecurityProfile":
        good = "1"
        assert keys.change("AuthorizationKey", "0123456789abcdef0123").value == "Accepted"
    seen: list[tuple[str, str]] = []
    keys.on_change(key, lambda k, v: seen.append((k, v)))
    assert keys.change(key, good).value == "Accepted"
    # Stored and reported in canonical form.
    good = {"TRUE": "true", "False": "false", "Voltage, Frequency": "Voltage,Frequency"}.get(
        good, good
    )
    assert seen == [(key, good)]
    assert store.config_values()[key] == good  # committed before the answer
    again = ConfigurationKeys(
        store, number_of_connectors=2, supported_feature_profiles=ALL_PROFILES
    )
    assert again.value(key) == good


@pytest.mark.parametrize("key", sorted(k for k, c in RW_CASES.items() if c[1] is not None))
def test_wrong_type_rejected(key: str, keys: ConfigurationKeys, store: Store) -> None:
    before = keys.value(key)
    assert keys.change(key, RW_CASES[key][1] or "").value == "Rejected"
    assert keys.value(key) == before
    assert key not in store.config_values()


@pytest.mark.parametrize("key", sorted(k for k, c in RW_CASES.items() if c[2] is not None))
def test_out_of_range_rejected(key: str, keys: ConfigurationKeys) -> None:
    before = keys.value(key)
    assert keys.change(key, RW_CASES[key][2] or "").value == "Rejected"
    assert keys.value(key) == before


@pytest.mark.parametrize("key", sorted(k for k, (acc, _) in SPEC_KEYS.items() if acc == "R"))
def test_read_only_rejected(key: str, keys: ConfigurationKeys) -> None:
    before = keys.value(key)
    assert keys.change(key, before or "1").value == "Rejected"
    assert keys.value(key) == before


@pytest.mark.parametrize("key", ["NoSuchKey", "BlinkRepeat", "LightIntensity", ""])
def test_unknown_or_unsupported_not_supported(key: str, keys: ConfigurationKeys) -> None:
    assert keys.change(key, "1").value == "NotSupported"
    assert keys.get([key or "x"])[1] == [key or "x"]


def test_profile_keys_follow_supported_feature_profiles(store: Store) -> None:
    keys = ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"])
    names = {kv.key for kv in keys.get()[0]}
    assert "HeartbeatInterval" in names and "SecurityProfile" in names
    assert not names & {"LocalAuthListEnabled", "ChargeProfileMaxStackLevel"}
    assert keys.change("LocalAuthListEnabled", "true").value == "NotSupported"
    assert keys.get(["ReserveConnectorZeroSupported"]) == ([], ["ReserveConnectorZeroSupported"])


def test_keys_are_case_insensitive_and_answered_in_spec_spelling(keys: ConfigurationKeys) -> None:
    assert keys.change("heartbeatINTERVAL", "42").value == "Accepted"
    [kv], unknown = keys.get(["HEARTBEATINTERVAL"])
    assert (kv.key, kv.readonly, kv.value, unknown) == ("HeartbeatInterval", False, "42", [])
    assert keys.int("heartbeatinterval") == 42


def test_authorization_key_is_write_only(keys: ConfigurationKeys, caplog) -> None:
    secret = "s3cr3t-s3cr3t-s3cr3t"
    caplog.set_level("DEBUG")
    assert keys.change("AuthorizationKey", secret).value == "Accepted"
    configured, _ = keys.get()
    assert "AuthorizationKey" not in {kv.key for kv in configured}
    assert all(kv.value != secret for kv in configured)
    assert keys.get(["AuthorizationKey"]) == ([], ["AuthorizationKey"])
    assert secret not in caplog.text
    assert keys.str("AuthorizationKey") == secret  # for the session's Basic auth


def test_security_profile_only_goes_up_with_prerequisites(store: Store) -> None:
    ready: set[int] = set()
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        security_profile_ready=lambda level: level in ready,
    )
    assert keys.change("SecurityProfile", "1").value == "Rejected"  # no AuthorizationKey
    keys.change("AuthorizationKey", "0123456789abcdef")
    assert keys.change("SecurityProfile", "2").value == "Rejected"  # no certificates
    ready.add(2)
    assert keys.change("SecurityProfile", "2").value == "Accepted"
    assert keys.change("SecurityProfile", "1").value == "Rejected"  # never down
    assert keys.change("SecurityProfile", "2").value == "Accepted"


def test_get_configuration_max_keys(store: Store) -> None:
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        overrides={"GetConfigurationMaxKeys": "2"},
    )
    assert len(keys.get(["HeartbeatInterval", "NoSuchKey"])[0]) == 1
    with pytest.raises(TooManyKeys):
        keys.get(["HeartbeatInterval", "ResetRetries", "NumberOfConnectors"])
    assert len(keys.get([])[0]) > 2  # the limit is on requested keys, not on "all"


def test_csl_length_limited_by_max_length_key(store: Store) -> None:
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        overrides={"MeterValuesSampledDataMaxLength": "2"},
    )
    assert keys.change("MeterValuesSampledData", "Voltage,Frequency").value == "Accepted"
    assert keys.csl("MeterValuesSampledData") == ["Voltage", "Frequency"]
    assert keys.change("MeterValuesSampledData", "Voltage,Frequency,Current.Import").value == (
        "Rejected"
    )


def test_measurands_limited_to_what_the_meter_delivers(store: Store) -> None:
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        measurands={"Energy.Active.Import.Register"},
        overrides={"MeterValuesSampledData": "Energy.Active.Import.Register"},
    )
    assert keys.change("MeterValuesSampledData", "Voltage").value == "Rejected"
    assert keys.change("MeterValuesSampledData", "NotAMeasurand").value == "Rejected"


def test_stored_value_beats_override_and_unchanged_value_writes_nothing(store: Store) -> None:
    ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Core"]).change(
        "HeartbeatInterval", "77"
    )
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        overrides={"HeartbeatInterval": "30", "ResetRetries": "1"},
    )
    assert keys.int("HeartbeatInterval") == 77 and keys.int("ResetRetries") == 1
    calls: list[str] = []
    keys.on_change("ResetRetries", lambda k, v: calls.append(v))
    assert keys.change("ResetRetries", "1").value == "Accepted"
    assert calls == [] and "ResetRetries" not in store.config_values()


def test_reboot_required_and_listener_failure(store: Store) -> None:
    keys = ConfigurationKeys(
        store,
        number_of_connectors=1,
        supported_feature_profiles=["Core"],
        reboot_required=["WebSocketPingInterval"],
    )

    def broken(key: str, value: str) -> None:
        raise RuntimeError("bug")

    keys.on_change("WebSocketPingInterval", broken)
    assert keys.change("WebSocketPingInterval", "60").value == "RebootRequired"
    assert keys.int("WebSocketPingInterval") == 60


def test_bad_construction_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="Core"):
        ConfigurationKeys(store, number_of_connectors=1, supported_feature_profiles=["Reservation"])
    with pytest.raises(ValueError, match="HeartbeatInterval"):
        ConfigurationKeys(
            store,
            number_of_connectors=1,
            supported_feature_profiles=["Core"],
            overrides={"HeartbeatInterval": "often"},
        )
    with pytest.raises(KeyError):
        ConfigurationKeys(
            store,
            number_of_connectors=1,
            supported_feature_profiles=["Core"],
            overrides={"NoSuchKey": "1"},
        )


def test_measurand_keys_accept_a_single_phase_item(tmp_path) -> None:
    from evsed.controller.ocpp16.keys import ConfigurationKeys
    from evsed.controller.store import Store

    keys = ConfigurationKeys(
        Store(tmp_path / "k.db"), number_of_connectors=1, supported_feature_profiles=["Core"]
    )
    assert keys.change("MeterValuesSampledData", "Voltage.L1,Current.Import.L2") == "Accepted"
    assert keys.change("MeterValuesSampledData", "Voltage.L7") == "Rejected"
