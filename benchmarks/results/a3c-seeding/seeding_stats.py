"""Statistics of the a3c-seeding experiment (see PREDICTION.md next to this file).

Run from the repository root: ``python benchmarks/results/a3c-seeding/seeding_stats.py``. Reads the three
arms' ``learning.csv`` (Swimmer-v5 A3C, seeds 400-413) and, for the unplanned pool at the end,
``ordering-a3c-more``'s Swimmer rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from afedpg_ray.seedstats import paired_comparison, prob_improvement, prob_improvement_ci

HERE = Path("benchmarks/results/a3c-seeding")
ARMS = ("offset", "hashed", "head")


def finals(path: Path, env: str = "Swimmer-v5", algo: str = "a3c") -> dict[int, float]:
    """Final training return per seed of one algorithm on one environment in a ``learning.csv``."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["seed"]): float(r["final_return"]) for r in rows if r["env"] == env and r["algo"] == algo}


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties in these returns)."""
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def main() -> None:
    """Print every statistic PREDICTION.md's outcome quotes."""
    by_arm = {arm: finals(HERE / arm / "learning.csv") for arm in ARMS}
    seeds = sorted(by_arm["offset"])
    returns = {arm: [by_arm[arm][s] for s in seeds] for arm in ARMS}
    for x, y in (("hashed", "offset"), ("head", "hashed"), ("head", "offset")):
        p, (lo, hi) = prob_improvement(returns[x], returns[y]), prob_improvement_ci(returns[x], returns[y])
        pair = paired_comparison(returns[x], returns[y])
        print(
            f"P({x} > {y}) = {p:.2f} [{lo:.2f}, {hi:.2f}]; seed by seed {pair.wins}/{pair.pairs} "
            f"(sign test p = {pair.sign_test_p:.2f}); Spearman r = {spearman(returns[x], returns[y]):.2f}"
        )
    for arm in ARMS:
        values = returns[arm]
        below, above = sum(v < 60 for v in values), sum(v > 250 for v in values)
        print(f"{arm}: median {np.median(values):.1f}, {below} of {len(values)} below 60, {above} above 250")
    # Unplanned: every A3C Swimmer run at the defaults pooled against vanilla's and AFedPG's 42 seeds.
    earlier = HERE.parent / "ordering-a3c-more" / "learning.csv"
    a3c = list(finals(earlier).values()) + returns["offset"] + returns["hashed"]
    for algo in ("vanilla", "afedpg"):
        other = list(finals(earlier, algo=algo).values())
        p, (lo, hi) = prob_improvement(other, a3c), prob_improvement_ci(other, a3c)
        print(f"pooled: P({algo} > a3c) = {p:.2f} [{lo:.2f}, {hi:.2f}] ({len(other)} vs {len(a3c)} seeds)")


if __name__ == "__main__":
    main()
