"""Figures drawn from CSVs only, so ``afedpg plot`` can redraw them without rerunning anything.

Curves of different seeds are interpolated onto a common grid, then averaged; the band is a 95% Student-t
interval over seeds (none with a single seed). The sweeps' figures and summaries let a seed that has ended
hold its last return up to the last seed's end (``hold_last``): seeds end at different times and sample
counts, and a finished run's policy no longer changes.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afedpg_ray.runlog import read_progress

_T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
_T_975 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
NUMERIC = {"agents", "seed", "update", "samples_total", "samples_per_agent", "return_mean", "wall_time"}
"""Columns of the sweep CSVs read back as numbers."""


def t_critical(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom (table to 30, then an approximation)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96 + 2.4 / df


def clean_curve(xs: Iterable[float], ys: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points of a curve, sorted by x."""
    x, y = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def mean_curve(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], hold_last: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean of several curves on a common grid, with a 95% t-interval: ``(grid, mean, low, high)``.

    The grid is every curve's x values from the latest first x to the earliest last x (the range all
    curves cover), so nothing is extrapolated and the mean of piecewise-linear curves is exact between
    grid points. With ``hold_last`` the grid runs on to the latest last x and a curve that has ended
    holds its last y there: a finished run's return stays what it ended at, and the mean is not cut
    off at the seed that ended first. With one curve the band collapses onto the mean; curves that
    share no x range give empty arrays (unless ``hold_last``).
    """
    curves = [c for c in curves if len(c[0])]
    empty = np.array([])
    if not curves:
        return empty, empty, empty, empty
    start = max(float(x[0]) for x, _ in curves)
    stop = (max if hold_last else min)(float(x[-1]) for x, _ in curves)
    if start > stop:  # no x that every curve covers: a mean there would be extrapolated
        return empty, empty, empty, empty
    grid = np.unique(np.concatenate([x[(x >= start) & (x <= stop)] for x, _ in curves] + [[start, stop]]))
    values = np.stack([np.interp(grid, x, y) for x, y in curves])  # past a curve's end: its last y (hold_last)
    mean = values.mean(axis=0)
    if len(curves) < 2:
        return grid, mean, mean.copy(), mean.copy()
    half = t_critical(len(curves) - 1) * values.std(axis=0, ddof=1) / math.sqrt(len(curves))
    return grid, mean, mean - half, mean + half


def write_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` (extra keys ignored) as CSV with ``columns``."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a sweep CSV, with the numeric columns as floats."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in NUMERIC & set(row):
            row[key] = float(row[key]) if row[key] not in ("", None) else math.nan
    return rows


def group_curves(
    rows: Sequence[dict[str, Any]], x: str, y: str = "return_mean"
) -> dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]]:
    """Per ``(algo, agents)``, one ``(x, y)`` curve per seed."""
    points: dict[tuple[str, int, float], list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        points[(row["algo"], int(row["agents"]), row["seed"])].append((row[x], row[y]))
    groups: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for (algo, agents, _seed), pairs in sorted(points.items()):
        groups[(algo, agents)].append(clean_curve([p[0] for p in pairs], [p[1] for p in pairs]))
    return dict(groups)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_step_labels(ax: Any) -> None:
    """Step counts on the x axis as 125k / 1M: plain six-digit labels run into each other."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


BAND_MARGIN = 0.3
"""The y axis spans the mean curves plus this fraction of their range on each side: with two or three
seeds a 95% t-interval is up to 12.7 standard errors wide and would otherwise squash the means flat."""


def _draw_groups(ax: Any, groups: dict[tuple[str, int], list], styles: dict[tuple[str, int], dict]) -> None:
    lowest, highest = math.inf, -math.inf
    for key, curves in groups.items():
        grid, mean, low, high = mean_curve(curves, hold_last=True)  # as the summaries read them
        if not len(grid):
            continue
        algo, agents = key
        label = f"{algo} N={agents}" + (f" ({len(curves)} seeds)" if len(curves) > 1 else "")
        (line,) = ax.plot(grid, mean, label=label, **styles[key])
        if len(curves) > 1:
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        lowest, highest = min(lowest, float(np.min(mean))), max(highest, float(np.max(mean)))
    if math.isfinite(lowest) and highest > lowest:
        pad = BAND_MARGIN * (highest - lowest)
        ax.set_ylim(lowest - pad, highest + pad)


def plot_sample_efficiency(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Return vs samples per agent, one curve (mean and 95% band over seeds) per N."""
    plt = _pyplot()
    groups = group_curves(rows, "samples_per_agent")
    styles = {key: {} for key in groups}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_groups(ax, dict(sorted(groups.items(), key=lambda kv: kv[0][1])), styles)
    ax.set_xlabel("environment steps per agent")
    short_step_labels(ax)
    ax.set_ylabel("mean episode return")
    ax.set_title("Sample efficiency (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedup(rows: Sequence[dict[str, Any]], path: Path, target: float | None = None) -> Path:
    """Return vs wall time, one curve per (algorithm, N): colour by algorithm, line style by N."""
    plt = _pyplot()
    groups = group_curves(rows, "wall_time")
    algos = sorted({algo for algo, _ in groups})
    counts = sorted({agents for _, agents in groups})
    dashes = ["-", "--", ":", "-."]
    styles = {
        (algo, n): {"color": f"C{algos.index(algo)}", "linestyle": dashes[counts.index(n) % len(dashes)]}
        for algo, n in groups
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_groups(ax, groups, styles)
    if target is not None and math.isfinite(target):
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.1f}")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("mean episode return")
    ax.set_title("Return vs wall-clock time under heterogeneity (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(run_dirs: Sequence[Path], path: Path) -> Path:
    """Return vs samples and vs wall time of one or more training runs (their progress.csv), overlaid."""
    plt = _pyplot()
    fig, (by_samples, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for run_dir in run_dirs:
        rows = read_progress(run_dir / "progress.csv")
        returns = [float(r["return_mean"]) for r in rows]
        label = run_dir.resolve().name
        by_samples.plot(*clean_curve([float(r["samples_total"]) for r in rows], returns), label=label)
        by_time.plot(*clean_curve([float(r["wall_time"]) for r in rows], returns), label=label)
    by_samples.set_xlabel("environment steps (all agents)")
    short_step_labels(by_samples)
    by_time.set_xlabel("wall time (s)")
    by_samples.set_ylabel("mean episode return")
    for ax in (by_samples, by_time):
        ax.grid(alpha=0.3)
    by_samples.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
