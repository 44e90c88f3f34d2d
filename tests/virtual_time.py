"""Virtual time for retry loops: waits are recorded and a fake clock moves, nothing sleeps."""

from __future__ import annotations

from airflow_bettertoken.protocol.retry import Timing

#: The wall clock the loops see, fixed, so that ``Retry-After`` dates are exact.
NOW = 1_800_000_000.0


class VirtualTime:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def timing(self, sleep=None) -> Timing:
        return Timing(sleep=sleep or self.sleep, clock=lambda: self.now, wall_clock=lambda: NOW)
