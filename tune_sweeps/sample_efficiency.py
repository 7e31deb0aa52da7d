"""Sample efficiency over N: one Tune trial per (N, seed), each with the same samples per agent.

The paper's claim is a linear speedup in N: with N agents, a given return needs about 1/N of the
samples *per agent* that one agent needs. N = 1 runs the single-agent rule ``pg`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tune_sweeps.plots import group_curves, mean_curve, plot_sample_efficiency, read_rows, write_rows
from tune_sweeps.speedup import time_to_target
from tune_sweeps.trainable import ROW_COLUMNS, variant_label

NAME = "sample_efficiency"
"""Tune experiment name (its directory under the storage path)."""
RESULTS_CSV = "results.csv"
FIGURE = "sample_efficiency.png"
SUMMARY_CSV = "sample_efficiency_summary.csv"
SUMMARY_COLUMNS = [
    "algo",
    "agents",
    "final_return",
    "target",
    "samples_per_agent_to_target",
    "base_agents",
    "ratio_to_base",
]


def algo_for(agents: int, algo: str | None) -> str:
    """The rule a trial with ``agents`` agents runs: ``algo`` if given, else pg for N = 1 and afedpg otherwise."""
    if algo:
        return algo
    return "pg" if agents == 1 else "afedpg"


def variants(agent_counts: Sequence[int], samples_per_agent: int, algo: str | None) -> dict[str, dict[str, Any]]:
    """Overrides per N (by label): its agent count, rule and total budget (``samples_per_agent * N``)."""
    overrides = [{"agents": n, "algo": algo_for(n, algo), "samples": n * samples_per_agent} for n in agent_counts]
    return {variant_label(o): o for o in overrides}


def speedup_summary(rows: Sequence[dict[str, Any]], target: float | None = None) -> list[dict[str, Any]]:
    """Samples per agent each N needs to reach ``target`` on its seed-mean curve, and its ratio to the
    smallest N's (``base_agents``: 1 when the sweep ran N = 1).

    The default target is the smallest N's final mean return (what the fewest agents reach with the
    whole budget). The ideal (linear speedup) ratio at N is base/N; NaN where a curve never reaches it.
    """
    means = {}
    for (algo, agents), curves in group_curves(rows, "samples_per_agent").items():
        grid, mean, _, _ = mean_curve(curves)
        if len(grid):
            means[(algo, agents)] = (grid, mean)
    if not means:
        return []
    smallest = min(means, key=lambda key: key[1])
    goal = float(means[smallest][1][-1]) if target is None else target
    base = time_to_target(*means[smallest], goal)
    table = []
    for (algo, agents), (grid, mean) in sorted(means.items(), key=lambda item: item[0][1]):
        needed = time_to_target(grid, mean, goal)
        table.append(
            {
                "algo": algo,
                "agents": agents,
                "final_return": round(float(mean[-1]), 2),
                "target": round(goal, 2),
                "samples_per_agent_to_target": round(needed, 1),
                "base_agents": smallest[1],
                "ratio_to_base": round(needed / base, 3),
            }
        )
    return table


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv``, ``sample_efficiency_summary.csv`` and ``sample_efficiency.png`` into ``out_dir``."""
    csv_path = out_dir / RESULTS_CSV
    write_rows(csv_path, rows, ROW_COLUMNS)
    return csv_path, write_summary(rows, out_dir)


def write_summary(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``sample_efficiency_summary.csv`` and the figure from the rows; print the summary; return the figure."""
    table = speedup_summary(rows)
    write_rows(out_dir / SUMMARY_CSV, table, SUMMARY_COLUMNS)
    for row in table:
        print(
            f"N={row['agents']:<3} {row['algo']:8s} final {row['final_return']:8.2f}  samples/agent to "
            f"{row['target']:.1f}: {row['samples_per_agent_to_target']:>10}  "
            f"ratio to N={row['base_agents']}: {row['ratio_to_base']}"
        )
    return plot_sample_efficiency(rows, out_dir / FIGURE)


def redraw(out_dir: Path) -> Path:
    """Redraw ``sample_efficiency.png`` and its summary from ``results.csv`` (which stays as it is)."""
    return write_summary(read_rows(out_dir / RESULTS_CSV), out_dir)
