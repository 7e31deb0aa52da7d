"""Predictions 1 and 2 of this experiment (PREDICTION.md next to this file): A3C with the plain step
(stage 2's seeds) against A3C with Adam's step, vanilla and AFedPG on HalfCheetah-v5 at 1M steps, from
``ordering-a3c-halfcheetah``'s rows. Run from the repository root:
``python benchmarks/results/a3c-sgd-halfcheetah/compare.py``; ``--env``, ``--here`` and ``--pool`` run the
same comparison for another task (``a3c-sgd-swimmer``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from afedpg_ray.seedstats import prob_improvement, prob_improvement_ci

HERE = Path("benchmarks/results/a3c-sgd-halfcheetah")
POOL = Path("benchmarks/results/ordering-a3c-halfcheetah/learning.csv")


def final_returns(path: Path, env: str, algo: str) -> list[float]:
    """``env``'s final training returns of ``algo`` in a learning.csv."""
    with path.open() as handle:
        rows = csv.DictReader(handle)
        return [float(r["final_return"]) for r in rows if r["env"] == env and r["algo"] == algo]


def main() -> None:
    """Print each comparison's P(X > Y), its interval and the groups' medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5", help="the task")
    parser.add_argument("--here", type=Path, default=HERE, help="results dir of the plain-step A3C runs")
    parser.add_argument("--pool", type=Path, default=POOL, help="learning.csv of the rules to compare with")
    args = parser.parse_args()
    sgd = final_returns(args.here / "learning.csv", args.env, "a3c")
    names = (("a3c-adam", "a3c"), ("vanilla", "vanilla"), ("afedpg", "afedpg"))
    pool = {name: final_returns(args.pool, args.env, algo) for name, algo in names}
    print(f"a3c-sgd: {len(sgd)} seeds, mean {np.mean(sgd):.0f}, median {np.median(sgd):.0f}")
    for name, other in pool.items():
        p, (lo, hi) = prob_improvement(other, sgd), prob_improvement_ci(other, sgd)
        print(f"P({name} > a3c-sgd) = {p:.2f} [{lo:.2f}, {hi:.2f}] ({len(other)} seeds, median {np.median(other):.0f})")


if __name__ == "__main__":
    main()
