"""Taking a charge point's link down in a test and knowing it stays down.

The session rig reconnects after 10-80 ms (`session_rig.fast_backoff`): a test that
closes the link and then awaits ``wait_offline`` can find the charge point offline and
already back again before it looks, and the wait times out for an outage that is over.
`cut_and_hold` keeps the Central System refusing handshakes until the test lets the
charge point back with ``cs.refuse_handshakes(False)``.
"""

from __future__ import annotations

from typing import Any

from evsed.hwmocks.central_system import CentralSystem
from tests.support.session_rig import CP


async def cut_and_hold(
    cs: CentralSystem, r: Any, *, abrupt: bool = False, cp_id: str = CP, timeout: float = 5.0
) -> None:
    """Close ``cp_id``'s link (cleanly, or as a cut cable with ``abrupt``) and keep the CP
    offline until the test calls ``cs.refuse_handshakes(False)``. ``r`` is a rig with a
    ``session``. Returns only after the CP has tried to come back and was refused (503),
    so every run is the worst case: the retry has come and gone before the test looks."""
    handshakes = len(cs.handshakes)
    cs.refuse_handshakes(True)
    await cs.disconnect(cp_id, abrupt=abrupt)
    await cs.wait_handshakes(handshakes + 1, timeout)
    await r.session.wait_offline(timeout)
    refused = [h for h in cs.handshakes[handshakes:] if h.cp_id == cp_id]
    assert refused and all(h.status == 503 for h in refused), refused
