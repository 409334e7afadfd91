"""Remote Trigger (OCPP 1.6 §5.17 TriggerMessage): declared, not implemented.

Its action answers NotSupported and it is not in SupportedFeatureProfiles until a handler
class lands here; the handler will ask the session's "send now" of boot, heartbeat,
status, meter values and the firmware/diagnostics notifications.
"""

from __future__ import annotations

from evsed.controller.ocpp16.profiles.base import declare

NAME = "RemoteTrigger"

PROFILE = declare(NAME, cs_to_cp={"TriggerMessage"})
