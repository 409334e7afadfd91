"""A synchronous manual clock for code that takes `monotonic` and `sleep` callables (the
weld check of `evsed safe-off`): a sleep moves the time on at once, nothing really waits."""

from __future__ import annotations

from collections.abc import Callable


class StepTime:
    """`sleep(s)` adds s to the time; `at(t, action)` runs an action (a feedback pin that
    opens) once the time reaches t. `slept` is the time the code under test has waited."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0
        self.sleeps = 0
        self._actions: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        self.slept += seconds
        self.sleeps += 1
        due = [a for a in self._actions if a[0] <= self.now]
        self._actions = [a for a in self._actions if a[0] > self.now]
        for _, action in due:
            action()

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._actions.append((when, action))
