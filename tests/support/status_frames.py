"""The status notifications a charge point sent to the embedded Central System."""

from __future__ import annotations

from evsed.hwmocks.central_system import CentralSystem, Direction, Frame
from tests.support.ocpp_rig import CP_ID


def statuses(cs: CentralSystem, action: str, since: int = 0) -> list[str]:
    """The `status` of every `action` CALL (FirmwareStatusNotification, ...) since `since`."""
    return [
        f.payload["status"]
        for f in cs.frames_of(CP_ID, since=since)
        if f.is_call and f.direction is Direction.CP_TO_CS and f.action == action
    ]


async def wait_status(
    cs: CentralSystem, action: str, status: str, since: int, timeout: float = 5
) -> Frame:
    return await cs.wait_for(
        lambda f: (
            f.is_call
            and f.direction is Direction.CP_TO_CS
            and f.action == action
            and f.payload.get("status") == status
        ),
        timeout,
        since=since,
    )
