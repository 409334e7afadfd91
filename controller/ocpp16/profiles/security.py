"""The OCPP 1.6 Security Whitepaper (ed. 2) extension: its keys, always on (security profiles
0-3 run in the session), and its actions, declared but not implemented (NotSupported).

Not a feature profile of OCPP 1.6: it never appears in SupportedFeatureProfiles.
"""

from __future__ import annotations

from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key

NAME = "Security"

PROFILE = declare(
    NAME,
    cs_to_cp={
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    },
    cp_to_cs={
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    },
    keys=(
        key("AdditionalRootCertificateCheck", KeyType.BOOL, Access.R, "false"),
        # Basic-auth password: 16..20 bytes, or up to 40 hex digits.
        key("AuthorizationKey", KeyType.STRING, Access.W, None, min=16, max=40),
        key("CertificateSignedMaxChainSize", KeyType.INT, Access.R, "10000"),
        key("CertificateStoreMaxLength", KeyType.INT, Access.R, "10"),
        key("CpoName", KeyType.STRING, Access.RW, None, min=0, max=500),
        key("SecurityProfile", KeyType.INT, Access.RW, "0", min=0, max=3),
    ),
    advertised=False,
)
