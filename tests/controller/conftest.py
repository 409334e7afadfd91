"""Rigs shared by the controller tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from evsed.controller.run import Stack
from tests.support.bench_rig import MakeRig, Rig, bench_config
from tests.support.clock import FakeClock


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    stacks: list[Stack] = []

    async def make(**sections: Any) -> Rig:
        clock = FakeClock()
        stack = Stack(bench_config(**sections), clock=clock, control=False)
        await stack.start()
        stacks.append(stack)
        rig = Rig(stack, clock)
        rig.connector.add_listener(lambda kind, fields: rig.notes.append((kind, fields)))
        return rig

    yield make
    for stack in stacks:
        await stack.stop()
