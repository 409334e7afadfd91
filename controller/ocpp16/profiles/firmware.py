"""Firmware Management (OCPP 1.6 §3.11, §5.9, §5.19, §4.4, §4.5): declared, not implemented.

Its actions answer NotSupported and it is not in SupportedFeatureProfiles until a handler
class lands here; the download/install state machine goes in a plain module that knows
nothing of the wire, its state in the store (firmware repository), and the two status
notifications are sent through the session.
"""

from __future__ import annotations

from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key

NAME = "FirmwareManagement"

PROFILE = declare(
    NAME,
    cs_to_cp={"GetDiagnostics", "UpdateFirmware"},
    cp_to_cs={"DiagnosticsStatusNotification", "FirmwareStatusNotification"},
    keys=(
        # Only mentioned in §8, no §9 entry.
        key(
            "SupportedFileTransferProtocols",
            KeyType.CSL,
            Access.R,
            "HTTP,HTTPS",
            allowed=frozenset({"FTP", "FTPS", "HTTP", "HTTPS"}),
        ),
    ),
)
