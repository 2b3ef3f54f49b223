"""Injected clocks: every module takes `now=`; tests move these instead of sleeping."""

from __future__ import annotations

import time


class FrozenClock:
    """A fixed time (`t`, unix seconds) that a test sets or moves."""

    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


class OffsetClock:
    """The wall clock plus an `offset` a test moves forward (every part of a core reads it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class SteppingClock:
    """A clock that moves on `step` seconds at every reading, starting at `t`: two readings
    of one operation fall in different seconds when a test needs them to."""

    def __init__(self, t: float, *, step: float) -> None:
        self.t, self.step = t - step, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t
