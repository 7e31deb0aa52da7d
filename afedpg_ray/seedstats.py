"""Statistics over training seeds, for comparing algorithms whose returns vary a lot from seed to seed.

Deep-RL returns over a handful of seeds are often bimodal (a seed finds a better gait or does not), so a
mean alone can rank algorithms by one lucky seed. Following Agarwal et al. (NeurIPS 2021, "Deep RL at
the Edge of the Statistical Precipice"), results are reported with a percentile-bootstrap confidence
interval of the mean, the median, and the probability of improvement ``P(X > Y)``: the chance that a
random seed of one algorithm ends above a random seed of the other (the normalised Mann-Whitney U),
with its own bootstrap interval: an ordering is resolved only when that interval excludes 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_mean_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (fixed ``seed``: reproducible)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def prob_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """``P(X > Y)`` over all seed pairs, ties counting one half (the normalised Mann-Whitney U)."""
    a = np.asarray(x, dtype=float)[:, None]
    b = np.asarray(y, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        raise ValueError("prob_improvement needs at least one value on each side")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def prob_improvement_ci(
    x: Sequence[float],
    y: Sequence[float],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``P(X > Y)``.

    The two sets of seeds are independent runs, so each is resampled on its own (a stratified bootstrap,
    as rliable does); a fixed ``seed`` makes the interval reproducible.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("prob_improvement_ci needs at least one value on each side")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    # One (x, y) resample per row; chunked so that the pairwise comparison stays a few MB.
    estimates = []
    for start in range(0, resamples, 1000):
        n = min(1000, resamples - start)
        xa = a[rng.integers(0, a.size, size=(n, a.size))][:, :, None]
        yb = b[rng.integers(0, b.size, size=(n, b.size))][:, None, :]
        estimates.append(np.mean((xa > yb) + 0.5 * (xa == yb), axis=(1, 2)))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(estimates), [tail, 1.0 - tail])
    return float(lo), float(hi)
