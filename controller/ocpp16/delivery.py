"""Transaction messages (OCPP 1.6 §3.7): delivered from ``ctx.txqueue`` oldest first, never
two in flight. The queue (txqueue.py) holds the policy: what is due, attempts, retry
intervals, parking; this module only sends and reports what happened. A CALLERROR counts
as a failed attempt, a timeout or a dropped link does not.

`run(link)` returns only when the link is gone; the session watches it, and should it end
any other way (raise, return) brings the link down so that the reconnect restarts it: the
session is never online with no delivery running.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ocpp.v16
from ocpp.charge_point import camel_to_snake_case, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from evsed.controller.ocpp16.context import OcppContext
from evsed.controller.ocpp16.link import Channel, Link, LinkLost, Wake, sleep_or
from evsed.controller.ocpp16.protocol import CallErrorReply, validate_payload
from evsed.controller.ocpp16.txqueue import START, STOP, QueuedMessage, UnresolvedTransaction

log = logging.getLogger(__name__)


def as_camel(result: Any) -> dict[str, Any]:
    """A call_result object (nested dicts in snake_case) as the wire's camelCase dict."""
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return snake_to_camel_case(dict(result))
    return snake_to_camel_case(
        {k: v for k, v in serialize_as_dict(result).items() if v is not None}
    )


def _schema_property_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names.update(value)
            names |= _schema_property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _schema_property_names(value)
    return names


@functools.cache
def _nested_names_survive(action: str) -> bool:
    """True if the library's snake->camel conversion leaves every property name of the
    action's request schema as it is (no "_", no "soc"/"csms"/"url" it would rewrite)."""
    path = Path(ocpp.v16.__file__).parent / "schemas" / f"{action}.json"
    schema = json.loads(path.read_text(encoding="utf-8-sig"))
    names = _schema_property_names(schema)
    return all(snake_to_camel_case({n: None}) == {n: None} for n in names)


def request_for(action: str, payload: dict[str, Any]) -> Any:
    """The `ocpp.v16.call` object for a queued camelCase payload.

    Only the top-level names need snake_case (they are the dataclass fields); nested
    objects stay camelCase when the library's way back to camelCase leaves them unchanged,
    which saves a deep camel->snake walk per message (checked once per action)."""
    cls = getattr(call, action)
    if _nested_names_survive(action):
        snake_names = camel_to_snake_case(dict.fromkeys(payload))  # keys only, same order
        return cls(**dict(zip(snake_names, payload.values(), strict=True)))
    return cls(**camel_to_snake_case(payload))


class TxDelivery:
    def __init__(self, ctx: OcppContext, channel: Channel) -> None:
        self._ctx = ctx
        self._channel = channel
        self._wake = Wake()

    def send_now(self) -> None:
        """A message was queued: deliver what is due now, if the link is up."""
        self._wake.set()

    async def run(self, link: Link) -> None:
        """Deliver on ``link`` until it is gone."""
        queue = self._ctx.txqueue
        clock = self._ctx.clock
        while True:
            self._wake.clear()
            msg = queue.next_due(clock.monotonic())
            if msg is None:
                await sleep_or(clock, self._wake, queue.due_in(clock.monotonic()))
                continue
            if not await self._deliver(link, msg):
                return  # the link is gone; the next connection starts a new loop

    async def _deliver(self, link: Link, msg: QueuedMessage) -> bool:
        queue = self._ctx.txqueue
        clock = self._ctx.clock
        try:
            payload = queue.resolve_payload(msg)
            # Validated here, in the loop, against the cached 1.6 schema: the library would
            # do it in a worker thread, and two thread hops per message were most of the
            # replay time after an outage. The answer is validated below the same way.
            validate_payload(msg.action, payload)
            request = request_for(msg.action, payload)
        except (UnresolvedTransaction, CallErrorReply, TypeError) as e:
            queue.mark_attempt(msg.id, clock.monotonic(), f"cannot send: {e}")
            self._report(msg, "invalid", str(e))
            return True
        try:
            result = await self._channel.exchange(link, request, validated=True)
            answer = as_camel(result)
            validate_payload(msg.action, answer, response=True)
        except (OCPPError, CallErrorReply) as e:
            error = f"CALLERROR {e.code}: {e.description}"
            if isinstance(e, CallErrorReply):
                error = f"invalid CALLRESULT ({e.code}): {e.description}"
            retry = queue.mark_attempt(msg.id, clock.monotonic(), error)
            self._report(msg, "callerror" if retry else "given_up", error)
            return True
        except TimeoutError:
            queue.mark_attempt(msg.id, clock.monotonic(), "timeout", failed_to_process=False)
            self._report(msg, "timeout")
            return True
        except LinkLost:
            # Not the CS's failure, and not a reason to wait after reconnecting: the message
            # stays at the head, due as soon as the link is back.
            self._report(msg, "link_lost")
            return False
        except Exception as e:  # e.g. a CALLRESULT with properties the library cannot take
            log.exception("session: %s %d failed", msg.action, msg.id)
            retry = queue.mark_attempt(msg.id, clock.monotonic(), f"failed: {e!r}")
            self._report(msg, "callerror" if retry else "given_up", repr(e))
            return True
        queue.ack(msg.id, answer)
        self._after_ack(msg, payload, answer)
        self._report(msg, "confirmed")
        return True

    def _report(self, msg: QueuedMessage, outcome: str, error: str | None = None) -> None:
        if self._ctx.observers:
            self._ctx.emit("tx_message", id=msg.id, action=msg.action, outcome=outcome, error=error)

    def _after_ack(
        self, msg: QueuedMessage, payload: dict[str, Any], answer: dict[str, Any]
    ) -> None:
        info = answer.get("idTagInfo")
        id_tag = payload.get("idTag")
        authorizer = self._ctx.authorizer
        if msg.action in (START, STOP) and isinstance(info, dict) and id_tag:
            if authorizer is not None:
                try:
                    authorizer.update_from(id_tag, info)
                except Exception:
                    log.exception("session: authorisation cache update failed")
        if msg.action == START:
            reactions = self._ctx.reactions
            if reactions is not None:
                try:
                    reactions.start_transaction_result(
                        msg.tx_local_id, info if isinstance(info, dict) else {}
                    )
                except Exception:  # never the end of the delivery loop
                    log.exception("session: reacting to a StartTransaction answer failed")
            self._ctx.emit(
                "start_transaction_result",
                local_id=msg.tx_local_id,
                transaction_id=answer.get("transactionId"),
                id_tag=id_tag,
                id_tag_info=info if isinstance(info, dict) else {},
            )
