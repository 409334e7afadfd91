"""Local Auth List Management (OCPP 1.6 §3.5.3, §5.10, §5.15, §9.2): declared, not
implemented.

Its actions answer NotSupported and it is not in SupportedFeatureProfiles until a handler
class lands here. The list itself is already read by `evsed.controller.ocpp16.auth` (and
kept by the store), so the handlers only have to write versions and entries.
"""

from __future__ import annotations

from evsed.controller.ocpp16.profiles.base import Access, KeyType, declare, key

NAME = "LocalAuthListManagement"

PROFILE = declare(
    NAME,
    cs_to_cp={"GetLocalListVersion", "SendLocalList"},
    keys=(
        key("LocalAuthListEnabled", KeyType.BOOL, Access.RW, "true"),
        key("LocalAuthListMaxLength", KeyType.INT, Access.R, "1000"),
        key("SendLocalListMaxLength", KeyType.INT, Access.R, "100"),
    ),
)
