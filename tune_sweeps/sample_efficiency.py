"""Sample efficiency over N: one Tune trial per (N, seed), each with the same samples per agent.

The paper's claim is a linear speedup in N: with N agents, a given return needs about 1/N of the
samples *per agent* that one agent needs. N = 1 runs the single-agent rule ``pg`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tune_sweeps.plots import plot_sample_efficiency, read_rows, write_rows
from tune_sweeps.trainable import ROW_COLUMNS, variant_label

NAME = "sample_efficiency"
"""Tune experiment name (its directory under the storage path)."""
RESULTS_CSV = "results.csv"
FIGURE = "sample_efficiency.png"


def algo_for(agents: int, algo: str | None) -> str:
    """The rule a trial with ``agents`` agents runs: ``algo`` if given, else pg for N = 1 and afedpg otherwise."""
    if algo:
        return algo
    return "pg" if agents == 1 else "afedpg"


def variants(agent_counts: Sequence[int], samples_per_agent: int, algo: str | None) -> dict[str, dict[str, Any]]:
    """Overrides per N (by label): its agent count, rule and total budget (``samples_per_agent * N``)."""
    overrides = [{"agents": n, "algo": algo_for(n, algo), "samples": n * samples_per_agent} for n in agent_counts]
    return {variant_label(o): o for o in overrides}


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``sample_efficiency.png`` into ``out_dir``."""
    csv_path = out_dir / RESULTS_CSV
    write_rows(csv_path, rows, ROW_COLUMNS)
    return csv_path, plot_sample_efficiency(rows, out_dir / FIGURE)


def redraw(out_dir: Path) -> Path:
    """Redraw ``sample_efficiency.png`` from ``results.csv``."""
    return plot_sample_efficiency(read_rows(out_dir / RESULTS_CSV), out_dir / FIGURE)
