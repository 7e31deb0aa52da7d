"""The server's recent update rate, for ``afedpg status``: what a run does now, not since it started."""

from __future__ import annotations

from collections import deque

RATE_WINDOW_S = 30.0
"""Seconds of updates ``afedpg status`` averages over."""


class RecentRate:
    """Updates per second over the last ``window`` seconds.

    Until the window has been filled the rate is taken over the time since the first update, so that
    neither start-up nor the first iteration (no update can arrive before it) dilutes it; after a stall
    it falls toward 0 as the window moves past the last update.
    """

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self._times: deque[float] = deque()
        self._first: float | None = None
        self._version: int | None = None

    def observe(self, now: float, version: int) -> None:
        """Note the server's version at ``now``; only a version past the last one counts as an update."""
        if self._version is not None and version <= self._version:
            return
        if self._version is not None:  # the first version seen is the starting point, not an update
            self._times.append(now)
        else:
            self._first = now
        self._version = version
        self._drop_before(now - self.window)

    def rate(self, now: float) -> float:
        """Updates per second in ``[now - window, now]`` (0.0 before any update)."""
        if self._first is None:
            return 0.0
        self._drop_before(now - self.window)
        span = min(self.window, now - self._first)
        return len(self._times) / span if span > 0 else 0.0

    def _drop_before(self, cutoff: float) -> None:
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
