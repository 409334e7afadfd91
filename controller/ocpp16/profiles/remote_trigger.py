"""Remote Trigger (OCPP 1.6 §5.17 TriggerMessage, §7.43): the Central System asks for a
message now, and gets it after our answer.

Accepted, then (in `@after`, so that the CS has our answer first, §5.17 "the Charge Point
SHALL first send the TriggerMessage response, before sending the requested message") the
message goes out through the session's own "send now" of each reporter: a BootNotification
(whose answer counts like any other), a Heartbeat (the heartbeat timer starts again), the
current StatusNotification of the connector or of every connector (connector 0 first),
MeterValues with context Trigger (inside a running transaction as one of its messages, in
order), and the Firmware / Diagnostics status ("Idle" when nothing goes on).

Choices where the spec is silent:
- A connectorId that does not exist: Rejected. connectorId 0 for StatusNotification is the
  charge point's own status; for MeterValues it means every connector, like no connectorId
  (there is no main meter of its own).
- A requestedMessage outside OCPP 1.6's six (a Security Whitepaper value such as
  LogStatusNotification, which belongs to ExtendedTriggerMessage): NotImplemented.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evsed.controller.ocpp16.profiles.base import declare
from evsed.controller.ocpp16.protocol import validate_payload

if TYPE_CHECKING:
    from evsed.controller.ocpp16.context import OcppContext

log = logging.getLogger(__name__)

NAME = "RemoteTrigger"

#: TriggerMessage.req requestedMessage values of OCPP 1.6 (MessageTrigger, §7.37).
MESSAGES = frozenset(
    {
        "BootNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StatusNotification",
    }
)


class RemoteTriggerHandlers:
    def __init__(self, ctx: OcppContext) -> None:
        self.ctx = ctx

    def _known_connector(self, connector_id: int | None) -> bool:
        if connector_id is None or connector_id == 0:
            return True
        charger = self.ctx.charger
        return charger is not None and connector_id in charger.connector_ids

    # Validated here, not by the router: the schema's enum would turn an unknown
    # requestedMessage into a CALLERROR where §7.43 answers NotImplemented.
    @on(Action.trigger_message, skip_schema_validation=True)
    def on_trigger_message(self, **kwargs: Any) -> call_result.TriggerMessage:
        payload = snake_to_camel_case(kwargs)
        requested_message = payload.get("requestedMessage")
        known = requested_message in MESSAGES
        probe = (
            payload
            if known or not isinstance(requested_message, str)
            else {
                **payload,
                "requestedMessage": "Heartbeat",  # any valid value: check the rest of the frame
            }
        )
        validate_payload("TriggerMessage", probe)  # CallErrorReply with the 1.6 code
        connector_id = payload.get("connectorId")
        if not known:
            return call_result.TriggerMessage(status="NotImplemented")
        if not self._known_connector(connector_id):
            return call_result.TriggerMessage(status="Rejected")
        self.ctx.emit("trigger", message=requested_message, connector_id=connector_id)
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)
    async def after_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> None:
        if requested_message not in MESSAGES or not self._known_connector(connector_id):
            return
        try:
            await self._send(requested_message, connector_id)
        except Exception:  # the receive loop must go on whatever one trigger does
            log.exception("TriggerMessage(%s) could not be sent", requested_message)

    async def _send(self, message: str, connector_id: int | None) -> None:
        session = self.ctx.session
        if session is None:
            return
        match message:
            case "BootNotification":
                await session.send_boot_now()
            case "Heartbeat":
                await session.send_heartbeat_now()
            case "StatusNotification":
                await session.send_status_now(connector_id)
            case "MeterValues":
                if self.ctx.reactions is not None:
                    await self.ctx.reactions.send_meter_values_now(connector_id or None)
            case "FirmwareStatusNotification":
                status = self.ctx.firmware_status()
                await session.call(call.FirmwareStatusNotification(status=status))
            case "DiagnosticsStatusNotification":
                status = self.ctx.diagnostics_status()
                await session.call(call.DiagnosticsStatusNotification(status=status))


PROFILE = declare(NAME, cs_to_cp={"TriggerMessage"}, handlers=RemoteTriggerHandlers)
