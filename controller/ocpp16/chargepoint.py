"""The charge point one websocket connection talks to: `StrictChargePoint` with the handler
objects of every implemented feature profile (`profiles/`).

What is routed, what answers NotSupported and what NotImplemented all come from the profile
declarations; nothing is listed here.
"""

from __future__ import annotations

from typing import Any

from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.profiles import KNOWN_ACTIONS, SUPPORTED_ACTIONS, handler_objects
from evsed.controller.ocpp16.protocol import StrictChargePoint


class EvsedChargePoint(StrictChargePoint):
    known_actions = KNOWN_ACTIONS
    supported_actions = SUPPORTED_ACTIONS

    def __init__(self, cp_id: str, connection: Any, ctx: OcppContext, **kw: Any) -> None:
        super().__init__(cp_id, connection, **kw)
        self.ctx = ctx
        self.handlers = handler_objects(ctx)
        for handler in self.handlers:
            self.add_handlers(handler)
