"""Velocity anomalies: a profile or an IP suddenly sending far more than it usually does."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Final

import msgspec

__all__ = ["Spike", "Velocity"]

_ALPHA: Final = 0.2
"""Weight of the newest window in the usual rate (an exponential moving average)."""


@dataclass(frozen=True, slots=True)
class Spike:
    """A subject over its threshold in one window (reported once per window)."""

    subject: str
    window: int
    baseline: float
    threshold: int


class _Rate(msgspec.Struct, gc=False):
    """One subject's window. Untracked by the garbage collector: there may be a million,
    and full collections would walk them all on the ingest path."""

    window: int
    count: int
    baseline: float  # 0: none yet
    reported: bool  # this window's spike was reported
    threshold: int


class Velocity:
    """Counts events per subject in fixed windows against the subject's usual rate.

    The usual rate (baseline) is a moving average of the counts of the windows the
    subject was active in, never below ``floor``; a window whose count passes
    ``factor`` times the baseline is a spike, and every event past the threshold is
    over. An anomalous window does not feed the baseline, so a sustained flood stays
    anomalous. At most ``max_subjects`` are remembered (the oldest are forgotten).

    >>> v = Velocity(factor=10, floor=1)
    >>> [v.hit("u1", window=0) for _ in range(3)]
    [0, 0, 0]
    >>> sum(v.hit("u1", window=1) for _ in range(40)) > 0  # 40 > 10 * baseline 3
    True
    >>> v.take_spikes()[0].subject
    'u1'
    """

    def __init__(self, factor: float, floor: float, max_subjects: int = 1_000_000) -> None:
        self._factor = factor
        self._floor = floor
        self._max = max_subjects
        self._state: dict[str, _Rate] = {}
        self._spikes: list[Spike] = []

    def hit(self, subject: str, window: int, n: int = 1) -> int:
        """Count ``n`` events of ``subject`` in ``window``; return how many are over."""
        state = self._state.get(subject)
        if state is None:
            if len(self._state) >= self._max:
                for old in list(islice(self._state, self._max // 10 or 1)):
                    del self._state[old]
            state = self._state[subject] = _Rate(window, 0, 0.0, False, self._threshold(0.0))
        elif state.window != window:
            if not state.reported and state.count:
                usual = state.baseline
                state.baseline = usual + _ALPHA * (state.count - usual) if usual else state.count
                state.threshold = self._threshold(state.baseline)
            state.window, state.count, state.reported = window, 0, False
        before = state.count
        state.count = count = before + n
        threshold = state.threshold
        if count <= threshold:
            return 0
        if not state.reported:
            state.reported = True
            self._spikes.append(Spike(subject, window, max(state.baseline, self._floor), threshold))
        return count - max(before, threshold)

    def _threshold(self, baseline: float) -> int:
        """Whole events: the count a window may reach before events are over."""
        return math.floor(self._factor * max(baseline, self._floor))

    def hit_each(self, subjects: list[str], window: int) -> list[int]:
        """:meth:`hit` for one event of each subject in turn; the positions over."""
        states, hit = self._state, self.hit
        over = []
        for at, subject in enumerate(subjects):
            state = states.get(subject)
            # The common case inline: a subject seen in this window, under its threshold.
            if state is not None and state.window == window and state.count + 1 <= state.threshold:
                state.count += 1
            elif hit(subject, window):
                over.append(at)
        return over

    def take_spikes(self) -> list[Spike]:
        """The spikes found since the last call."""
        spikes, self._spikes = self._spikes, []
        return spikes
