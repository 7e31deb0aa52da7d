"""Running mean/variance statistics that merge exactly (Chan et al.'s parallel algorithm).

The policy is shared, so its observation normaliser is shared too: each agent counts the
observations it saw since its last report, the server merges those deltas into the global
statistics and ships them with theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of a stream of vectors."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> RunningStats:
        """No observations yet."""
        return cls(0.0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, batch: np.ndarray) -> RunningStats:
        """Statistics of a batch of shape (n, dim)."""
        batch = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        mean = batch.mean(axis=0)
        return cls(float(len(batch)), mean, ((batch - mean) ** 2).sum(axis=0))

    def merge(self, other: RunningStats) -> RunningStats:
        """Statistics of the union of both streams."""
        if other.count == 0:
            return RunningStats(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningStats(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    @property
    def var(self) -> np.ndarray:
        """Population variance (ones before any observation, so normalising is the identity)."""
        if self.count < 2:
            return np.ones_like(self.mean)
        return self.m2 / self.count

    def normalize(self, x: np.ndarray, clip: float = 10.0) -> np.ndarray:
        """``clip((x - mean) / sqrt(var + 1e-8))``."""
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip)

    def is_finite(self) -> bool:
        """Whether every statistic is finite (the server refuses non-finite deltas)."""
        return bool(np.isfinite(self.count) and np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.m2)))
