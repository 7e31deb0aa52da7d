"""Sample efficiency over N: one Tune trial per (N, seed), each with the same samples per agent.

The paper's claim is a linear speedup in N: with N agents, a given return needs about 1/N of the
samples *per agent* that one agent needs. N = 1 runs the single-agent rule ``pg`` by default.
"""

from __future__ import annotations

import math
import sys
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
    "start_return",
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
    whole budget); if that is not above its starting mean return (no learning), there is no target and
    nothing is timed. On each N's mean curve a seed that has ended holds its last return until that N's
    last seed ends (seeds stop up to an update past the budget, at different sample counts). The ideal
    (linear speedup) ratio at N is base/N; NaN where a curve never reaches the target or starts at or
    above it (:func:`~tune_sweeps.speedup.time_to_target`).
    """
    means = {}
    for (algo, agents), curves in group_curves(rows, "samples_per_agent").items():
        grid, mean, _, _ = mean_curve(curves, hold_last=True)
        if len(grid):
            means[(algo, agents)] = (grid, mean)
    if not means:
        return []
    smallest = min(means, key=lambda key: key[1])
    start, final = float(means[smallest][1][0]), float(means[smallest][1][-1])
    goal = target if target is not None else final if final > start else math.nan
    base = time_to_target(*means[smallest], goal)
    table = []
    for (algo, agents), (grid, mean) in sorted(means.items(), key=lambda item: item[0][1]):
        needed = time_to_target(grid, mean, goal)
        table.append(
            {
                "algo": algo,
                "agents": agents,
                "start_return": round(float(mean[0]), 2),
                "final_return": round(float(mean[-1]), 2),
                "target": round(goal, 2),
                "samples_per_agent_to_target": round(needed, 1),
                "base_agents": smallest[1],
                "ratio_to_base": round(needed / base, 3),
            }
        )
    return table


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path, target: float | None = None) -> tuple[Path, Path]:
    """Write ``results.csv``, ``sample_efficiency_summary.csv`` and ``sample_efficiency.png`` into ``out_dir``
    (``target``: the return to count samples to; default the smallest N's final return)."""
    csv_path = out_dir / RESULTS_CSV
    write_rows(csv_path, rows, ROW_COLUMNS)
    return csv_path, write_summary(rows, out_dir, target)


def target_warning(table: Sequence[dict[str, Any]]) -> str:
    """One line naming the N whose curves get no samples to target because it is not above their start ("" if none)."""
    if not table:
        return ""
    if not math.isfinite(table[0]["target"]):
        base = table[0]
        return (
            f"no target return: N={base['agents']}'s final mean return ({base['final_return']:.2f}) is not above its "
            f"starting mean return ({base['start_return']:.2f}), so no samples to target or ratio is reported; "
            "give --target to count one"
        )
    low = [
        row
        for row in table
        if math.isnan(row["samples_per_agent_to_target"]) and not row["start_return"] < row["target"]
    ]
    if not low:
        return ""
    names = ", ".join(f"N={row['agents']} ({row['start_return']:.2f})" for row in low)
    return (
        f"target return {table[0]['target']:.2f} is not above the starting mean return of {names}: "
        f"no samples to target for {'it' if len(low) == 1 else 'them'}; give a higher --target"
    )


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value}"


def write_summary(rows: Sequence[dict[str, Any]], out_dir: Path, target: float | None = None) -> Path:
    """Write ``sample_efficiency_summary.csv`` and the figure from the rows; print the summary; return the figure."""
    table = speedup_summary(rows, target)
    write_rows(out_dir / SUMMARY_CSV, table, SUMMARY_COLUMNS)
    warning = target_warning(table)
    if warning:
        print(f"afedpg: warning: {warning}", file=sys.stderr)
    for row in table:
        counted = (
            f"samples/agent to {row['target']:.1f}: {_shown(row['samples_per_agent_to_target']):>10}  "
            f"ratio to N={row['base_agents']}: {_shown(row['ratio_to_base'])}"
            if math.isfinite(row["target"])
            else "no target return to count samples to (give --target)"  # "to nan: n/a" read like a bug
        )
        print(f"N={row['agents']:<3} {row['algo']:8s} final {row['final_return']:8.2f}  {counted}")
    return plot_sample_efficiency(rows, out_dir / FIGURE)


def redraw(out_dir: Path) -> Path:
    """Redraw ``sample_efficiency.png`` from ``results.csv`` (which stays as it is).

    The summary the sweep wrote stays too: its target may be the sweep's ``--target``, which a recount
    with the default would silently replace (and a recount with the CSV's rounded default could miss the
    smallest N's final return it rounds up). Only a sweep without one gets it, with the default target.
    """
    rows = read_rows(out_dir / RESULTS_CSV)
    if not (out_dir / SUMMARY_CSV).is_file():
        return write_summary(rows, out_dir)
    return plot_sample_efficiency(rows, out_dir / FIGURE)
