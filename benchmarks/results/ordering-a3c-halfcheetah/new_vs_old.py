"""Prediction 2 of this experiment (PREDICTION.md next to this file): do the fresh A3C seeds (440 on) end
level with the first 14 (0-6, 10-16)? Run from the repository root:
``python benchmarks/results/ordering-a3c-halfcheetah/new_vs_old.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from afedpg_ray.seedstats import prob_improvement, prob_improvement_ci

FIRST_NEW_SEED = 440


def main() -> None:
    """Print P(new > old) with its interval and both groups' medians."""
    path = Path("benchmarks/results/ordering-a3c-halfcheetah/learning.csv")
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["env"] == "HalfCheetah-v5" and r["algo"] == "a3c"]
    new = [float(r["final_return"]) for r in rows if int(r["seed"]) >= FIRST_NEW_SEED]
    old = [float(r["final_return"]) for r in rows if int(r["seed"]) < FIRST_NEW_SEED]
    p, (lo, hi) = prob_improvement(new, old), prob_improvement_ci(new, old)
    print(f"P(new > old) = {p:.2f} [{lo:.2f}, {hi:.2f}] ({len(new)} new, {len(old)} old seeds)")
    print(f"medians: new {np.median(new):.0f}, old {np.median(old):.0f}")


if __name__ == "__main__":
    main()
