"""The OCPP side of a charger, assembled: store, keys, queue, authoriser, hooks, session.

    app = OcppApp(config, clock, state_dir)
    charger = Charger(config, parts, app.hooks, clock)   # or Stack(..., hooks=app.hooks)
    app.attach(charger)
    await charger.start()
    await app.start()          # recovers open transactions, then connects
    ...
    await app.stop()

With `config.central_system.enabled` false there is no session: the hooks authorise with
the configuration's local tags, then the store's local list and cache (offline rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ocpp.charge_point import snake_to_camel_case
from ocpp.v16 import call

from evsed.controller.clock import Clock
from evsed.controller.config import Config
from evsed.controller.firmware.installer import restore_after_rollback
from evsed.controller.firmware.update import Installer
from evsed.controller.meter_measurands import charger_items, charger_measurands, max_phases
from evsed.controller.ocpp16 import protocol
from evsed.controller.ocpp16.auth import Authorizer
from evsed.controller.ocpp16.bridge import OcppHooks
from evsed.controller.ocpp16.chargepoint import EvsedChargePoint
from evsed.controller.ocpp16.context import OcppContext, SessionControl
from evsed.controller.ocpp16.first_readings import first_readings
from evsed.controller.ocpp16.keys import MEASURAND_KEYS, ConfigurationKeys
from evsed.controller.ocpp16.port import ChargePointPort
from evsed.controller.ocpp16.profiles.core import restore_availability
from evsed.controller.ocpp16.profiles.firmware import build_services
from evsed.controller.ocpp16.profiles.reservation import restore_reservations
from evsed.controller.ocpp16.profiles.smart_charging import SmartChargingService
from evsed.controller.ocpp16.txqueue import TxQueue
from evsed.controller.store import DB_FILENAME, Store, secure_state_dir

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 600.0
#: How long recovery waits for the meters of its open transactions (a start waits as long).
RECOVERY_METER_WAIT_S = 10.0

ChargePointFactory = Callable[[str, Any], EvsedChargePoint]
ResetCallback = Callable[[str], Awaitable[None] | None]


class RunnableSession(SessionControl, Protocol):
    def start(self) -> Any:
        """Begin connecting (may return an awaitable, which is awaited)."""
        ...

    async def stop(self) -> None: ...


#: Builds the session: (ctx, charge point factory, on_reset) -> session.
SessionFactory = Callable[[OcppContext, ChargePointFactory, ResetCallback], RunnableSession]


def default_session_factory(
    ctx: OcppContext, factory: ChargePointFactory, on_reset: ResetCallback
) -> RunnableSession:
    from evsed.controller.ocpp16.session import OcppSession

    session: RunnableSession = OcppSession(ctx, factory, on_reset=on_reset)
    return session


class OcppApp:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        state_dir: Path,
        *,
        on_reset: ResetCallback | None = None,
        session_factory: SessionFactory | None = None,
        store: Store | None = None,
        firmware_installer: Installer | None = None,
        trace_file: Path | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        secure_state_dir(state_dir)  # 0700: the database holds secrets (AuthorizationKey)
        if store is None:
            # Back after a firmware rollback: the database as this version left it at the
            # switch, before the new version migrated it (firmware.installer).
            restore_after_rollback(state_dir)
        # No automatic checkpoints: they would flush inside a commit on the event loop.
        # `_checkpoints` does them from a thread instead.
        self.store = store or Store(
            state_dir / DB_FILENAME, monotonic=clock.monotonic, wal_autocheckpoint_pages=0
        )
        self._checkpointing: asyncio.Task[None] | None = None
        # SupportedFeatureProfiles: derived from the profile declarations (profiles/).
        # The Meter*Data keys take what the configured meters (and connectors) deliver,
        # and their MaxLength keys let a CS select all of it at once.
        measurands = charger_measurands(config)
        phases = max_phases(config)
        items = charger_items(config)
        room = str(max(8, len(items)))
        self.keys = ConfigurationKeys(
            self.store,
            number_of_connectors=len(config.connectors),
            security_profile=config.central_system.security_profile,
            measurands=measurands,
            phases=phases,
            items=items,
            overrides={
                **{f"{k}MaxLength": room for k in MEASURAND_KEYS},
                "ConnectorSwitch3to1PhaseSupported": "true"
                if any(c.phase_switch.enabled for c in config.connectors)
                else "false",
                "ReserveConnectorZeroSupported": "true"
                if config.authorization.reserve_connector_zero
                else "false",
            },
        )
        self.txqueue = TxQueue.from_keys(self.store, self.keys)
        self.ctx = OcppContext(
            config=config, clock=clock, store=self.store, keys=self.keys, txqueue=self.txqueue
        )
        self.ctx.authorizer = Authorizer(
            self.store,
            self.keys,
            clock,
            online=self._online,
            send_authorize=self._send_authorize,
            cache_max_entries=config.authorization.cache_max_entries,
        )
        self._hooks = OcppHooks(self.ctx)
        self.ctx.firmware, self.ctx.diagnostics = build_services(
            self.ctx, state_dir, installer=firmware_installer, trace_file=trace_file
        )
        # What TriggerMessage(Firmware/DiagnosticsStatusNotification) reports.
        self.ctx.firmware_status = self.ctx.firmware.current_status
        self.ctx.diagnostics_status = self.ctx.diagnostics.current_status
        self._on_reset = on_reset
        self._session_factory = session_factory or default_session_factory
        self.session: RunnableSession | None = None
        self.keys.on_change("ConnectionTimeOut", lambda _k, _v: self._apply_keys())
        self.keys.on_change("StopTransactionOnEVSideDisconnect", lambda _k, _v: self._apply_keys())
        self.keys.on_change("UnlockConnectorOnEVSideDisconnect", lambda _k, _v: self._apply_keys())

    # ------------------------------------------------------------ wiring

    @property
    def hooks(self) -> OcppHooks:
        """Give these to the Charger: `Charger(config, parts, app.hooks, clock)`."""
        return self._hooks

    def attach(self, charger: ChargePointPort) -> None:
        """The charger built with `hooks`: restore what the CS set before the restart."""
        self.ctx.charger = charger
        restore_availability(self.ctx)
        restore_reservations(self.ctx)  # after availability: an Inoperative one takes none
        # Before the charger runs: a new firmware not yet confirmed starts nothing.
        assert self.ctx.firmware is not None
        self.ctx.firmware.hold_starts_if_unconfirmed()
        self._apply_keys()
        # The profiles the CS installed before the restart limit the connectors from now.
        service = SmartChargingService(self.ctx)
        self.ctx.smart_charging = service
        service.start(charger)

    def _apply_keys(self) -> None:
        """Keys the connector itself honours (its Settings are read at each use)."""
        if self.ctx.charger is None:
            return
        self.ctx.charger.apply_session_settings(
            connection_timeout_s=float(self.keys.int("ConnectionTimeOut")),
            stop_on_ev_disconnect=self.keys.bool("StopTransactionOnEVSideDisconnect"),
            unlock_on_ev_disconnect=self.keys.bool("UnlockConnectorOnEVSideDisconnect"),
        )

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        # The charger has only started its meter pollers: the open transactions' meters
        # still hold the energy that flowed after the last stored reading, read it first.
        # Only the transactions left open now: the connectors already run during the wait,
        # and a session a card starts meanwhile is not the last run's.
        stale = self.store.open_transactions()
        live: dict[int, float] = {}
        if stale and self.ctx.charger is not None:
            open_on = {tx.connector_id for tx in stale}
            live = await first_readings(
                self.ctx.charger, open_on, self.clock, RECOVERY_METER_WAIT_S
            )
        self._hooks.recover_open_transactions(live, only={tx.local_id for tx in stale})
        # Stopped and delivered transactions are history: keep the last hundred, not all.
        self.store.prune_transactions()
        self._hooks.start()
        assert self.ctx.firmware is not None
        self.ctx.firmware.resume()
        self._checkpointing = asyncio.get_running_loop().create_task(
            self._checkpoints(), name="wal-checkpoint"
        )
        if not self.config.central_system.enabled:
            log.info("no Central System configured: local authorisation only")
            return
        self.session = self._session_factory(self.ctx, self._make_charge_point, self._reset)
        self.ctx.session = self.session
        started = self.session.start()
        if inspect.isawaitable(started):
            await started

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.stop()
        await self._hooks.stop()
        for service in (self.ctx.firmware, self.ctx.diagnostics):
            if service is not None:
                await service.stop()
        if self.ctx.smart_charging is not None:
            await self.ctx.smart_charging.stop()
        if self.ctx.reservation_timers is not None:
            await self.ctx.reservation_timers.close()
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointing
            self._checkpointing = None
        # The big-frame worker process (started by a first big frame) ends with the app.
        await protocol.FRAME_WORKERS.aclose()

    async def _checkpoints(self) -> None:
        # Every 10 min: the WAL stays small (tens of KiB at a 10 s sample interval) and the
        # few hot pages are written back a handful of times an hour, not once per commit.
        while True:
            await self.clock.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except Exception:
                log.exception("WAL checkpoint failed; the next one will try again")

    def close(self) -> None:
        """Close the database (after `stop()` and after the charger stopped)."""
        self.store.close()

    def _make_charge_point(self, cp_id: str, connection: Any) -> EvsedChargePoint:
        return EvsedChargePoint(
            cp_id,
            connection,
            self.ctx,
            max_frame_bytes=self.config.central_system.max_frame_bytes,
        )

    async def _reset(self, kind: str) -> None:
        if self._on_reset is None:
            log.warning("Reset %s accepted but no restart handler is configured", kind)
            return
        result = self._on_reset(kind)
        if inspect.isawaitable(result):
            await result

    # ------------------------------------------------------------ CP -> CS DataTransfer

    async def data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> tuple[str, str | None] | None:
        """Send a vendor DataTransfer to the CS: (status, data), or None when offline or
        unanswered (a DataTransfer is not a transaction message: it is not queued)."""
        if self.ctx.session is None:
            return None
        result = await self.ctx.session.call(
            call.DataTransfer(vendor_id=vendor_id, message_id=message_id, data=data)
        )
        if result is None:
            return None
        return str(result.status), getattr(result, "data", None)

    # ------------------------------------------------------------ for the authoriser

    def _online(self) -> bool:
        return self.ctx.session is not None and self.ctx.session.online

    async def _send_authorize(self, id_tag: str) -> dict[str, Any] | None:
        if self.ctx.session is None:
            return None
        result = await self.ctx.session.call(call.Authorize(id_tag=id_tag))
        info = getattr(result, "id_tag_info", None)
        # The library hands nested types over as snake_case dicts; the authoriser (and the
        # store) keep the wire's camelCase.
        return snake_to_camel_case(info) if isinstance(info, dict) else None
