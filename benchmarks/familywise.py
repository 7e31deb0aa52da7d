"""The paper's ordering with the number of comparisons accounted for (a family-wise error rate).

Each ``P(X > Y)`` interval in a ``summary.md`` is a 95% interval on its own. A table of 4 tasks and 3 pairs
makes 12 such claims: if no ordering were real and the claims were independent, 46% of such tables would
show at least one interval that excludes 0.5 by chance. This script recomputes every comparison of the given
``learning.py`` result directories at the Bonferroni level ``1 - alpha / M`` (M: the comparisons in the
family, all of them read here), so that the chance of any false "resolved" in the family stays below
``alpha``.

    python benchmarks/familywise.py benchmarks/results/learning-1m
    python benchmarks/familywise.py --pairs afedpg:vanilla benchmarks/results/theory-schedule \\
        benchmarks/results/theory-schedule-hopper benchmarks/results/theory-schedule-walker2d \\
        benchmarks/results/theory-schedule-halfcheetah

Runs without a return (no finished episode) are left out and counted. Prints a markdown table; ``--out``
also writes it to a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from learning import FEW_SEEDS, read_rows

from afedpg_ray.cli import OneLineParser
from afedpg_ray.seedstats import prob_improvement, prob_improvement_ci

DEFAULT_PAIRS = "afedpg:vanilla,vanilla:a3c,afedpg:a3c"
"""The paper's ordering, afedpg > vanilla > a3c, as its three pairs."""


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``X:Y,X:Y`` -> ``[(X, Y), ...]``."""
    pairs = []
    for item in text.split(","):
        x, sep, y = item.strip().partition(":")
        if not sep or not x or not y or x == y:
            raise ValueError(f"--pairs wants X:Y[,X:Y...] with two different algorithms, got {item.strip()!r}")
        pairs.append((x, y))
    return pairs


Comparison = tuple[str, str, str, list[float], list[float], int]
"""(env, x, y, x's finite returns, y's finite returns, runs left out without a return)."""


def comparisons(directories: list[Path], pairs: list[tuple[str, str]]) -> list[Comparison]:
    """Every (environment, pair) that some directory ran with both algorithms at one N, in the order found."""
    found: list[Comparison] = []
    for directory in directories:
        path = directory / "learning.csv"
        if not path.exists():
            raise ValueError(f"no learning.csv in {directory} (run benchmarks/learning.py there first)")
        rows = list(read_rows(path).values())
        for env in dict.fromkeys(r["env"] for r in rows):
            runs = {
                algo: [r for r in rows if r["env"] == env and r["algo"] == algo]
                for algo in {r["algo"] for r in rows if r["env"] == env}
            }
            for x, y in pairs:
                if x not in runs or y not in runs or runs[x][0]["agents"] != runs[y][0]["agents"]:
                    continue
                xs = [float(r["final_return"]) for r in runs[x]]
                ys = [float(r["final_return"]) for r in runs[y]]
                left_out = sum(1 for v in xs + ys if not np.isfinite(v))
                finite_x, finite_y = [v for v in xs if np.isfinite(v)], [v for v in ys if np.isfinite(v)]
                if finite_x and finite_y:
                    found.append((f"{env} ({directory.name})", x, y, finite_x, finite_y, left_out))
    return found


def table(found: list[Comparison], alpha: float) -> str:
    """Markdown: each comparison's P(X > Y) with its 95% interval and its family-wise (Bonferroni) interval."""
    family = len(found)
    level = 1.0 - alpha / family
    lines = [
        f"{family} comparisons; family-wise level {1 - alpha:.0%}: each interval at {level:.2%} (Bonferroni). "
        f"Resolved: the interval excludes 0.5 and each side has {FEW_SEEDS} seeds or more.",
        "",
        f"| task | X > Y | seeds | P(X > Y) | 95% interval | {level:.2%} interval | resolved (family-wise) |",
        "|---|---|---|---|---|---|---|",
    ]
    for env, x, y, xs, ys, left_out in found:
        p = prob_improvement(xs, ys)
        lo, hi = prob_improvement_ci(xs, ys)
        flo, fhi = prob_improvement_ci(xs, ys, level=level)
        enough = min(len(xs), len(ys)) >= FEW_SEEDS
        verdict = (f"{x} > {y}" if flo > 0.5 else f"{y} > {x}" if fhi < 0.5 else "no") if enough else "too few seeds"
        seeds = f"{len(xs)} / {len(ys)}" + (f" ({left_out} without a return)" if left_out else "")
        lines.append(
            f"| {env} | {x} > {y} | {seeds} | {p:.2f} | [{lo:.2f}, {hi:.2f}] | [{flo:.2f}, {fhi:.2f}] | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--out`` write) the family-wise table of the given result directories."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", type=Path, help="learning.py --out directories (one family)")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"X:Y pairs to compare (default {DEFAULT_PAIRS})")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (default 0.05)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        if not 0.0 < args.alpha < 1.0:
            raise ValueError(f"--alpha must be in (0, 1), got {args.alpha!r}")
        found = comparisons(args.directories, parse_pairs(args.pairs))
        if not found:
            raise ValueError(f"none of the pairs {args.pairs} ran in these directories at one N")
    except ValueError as err:
        parser.error(str(err))
    text = table(found, args.alpha)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
