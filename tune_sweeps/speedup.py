"""Wall-clock speedup under heterogeneity: every (algorithm, N, seed) as one Tune trial.

The summary arithmetic is in pure functions (:func:`time_to_target`, :func:`time_ratio`,
:func:`theoretical_ratio`, :func:`default_target`) so it can be checked against hand-computed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afedpg_ray.heterogeneity import parse_profile, theoretical_speedup
from tune_sweeps.plots import group_curves, mean_curve, plot_speedup, read_rows, write_rows
from tune_sweeps.trainable import ROW_COLUMNS, variant_label

NAME = "speedup"
"""Tune experiment name (its directory under the storage path)."""
TARGET_FRACTION = 0.8
"""Default target: this fraction of the way from the lowest starting to the best final mean return."""
SUMMARY_COLUMNS = [
    "algo",
    "agents",
    "seeds",
    "final_return",
    "target",
    "time_to_target_s",
    "measured_ratio_fedpg_over_afedpg",
    "theoretical_ratio",
    "budget_time_s",
    "budget_ratio_fedpg_over_afedpg",
]


def time_to_target(times: Sequence[float], returns: Sequence[float], target: float) -> float:
    """First time a curve reaches ``target``, interpolated linearly inside the crossing segment; NaN if never."""
    if len(times) == 0:
        return math.nan
    if returns[0] >= target:
        return float(times[0])
    for i in range(1, len(times)):
        if returns[i] >= target:
            t0, t1, r0, r1 = times[i - 1], times[i], returns[i - 1], returns[i]
            return float(t0 + (target - r0) / (r1 - r0) * (t1 - t0))
    return math.nan


def time_ratio(slow: float, fast: float) -> float:
    """``slow / fast`` (e.g. FedPG's time to target over AFedPG's); NaN if either is missing or ``fast <= 0``."""
    if not (math.isfinite(slow) and math.isfinite(fast)) or fast <= 0:
        return math.nan
    return slow / fast


def theoretical_ratio(
    hetero: str,
    agents: int,
    seed: int = 0,
    iteration_time: float | None = None,
    comm_delay: Sequence[float] = (),
) -> float:
    """The predicted FedPG/AFedPG time ratio ``(t_max / N) * sum(1 / t_i)`` of one trial's agents.

    ``t_i`` is agent i's iteration time: ``s_i * T + d_i`` with ``--iteration-time T`` and
    ``--comm-delay d``; without ``T`` the compute time is unknown, so the slowdowns ``s_i`` stand in for
    ``t_i`` and communication delays are left out. ``seed`` matters for ``lognormal`` profiles.
    """
    slowdowns = parse_profile(hetero, agents, seed)
    if iteration_time is None or not comm_delay:
        return theoretical_speedup(slowdowns)
    delays = list(comm_delay) * agents if len(comm_delay) == 1 else list(comm_delay)
    return theoretical_speedup([s * iteration_time + d for s, d in zip(slowdowns, delays, strict=True)])


@dataclass(frozen=True)
class Timing:
    """What sets the sweep's iteration times: the profile and its padding, as the trials ran them."""

    hetero: str
    iteration_time: float | None = None
    comm_delay: tuple[float, ...] = ()

    def ratio(self, agents: int, seeds: Sequence[int]) -> float:
        """:func:`theoretical_ratio` averaged over the seeds that ran (a ``lognormal`` profile differs per seed)."""
        ratios = [theoretical_ratio(self.hetero, agents, seed, self.iteration_time, self.comm_delay) for seed in seeds]
        return float(np.mean(ratios))


def default_target(start_returns: Sequence[float], final_returns: Sequence[float]) -> float:
    """80% of the way from the lowest starting mean return to the best final mean return.

    This equals 80% of the best final return when returns start near 0 (Swimmer), and stays
    reachable when returns are negative (Pendulum).
    """
    low, best = min(start_returns), max(final_returns)
    return low + TARGET_FRACTION * (best - low)


@dataclass(frozen=True)
class SpeedupRow:
    """One (algorithm, N) line of the summary table."""

    algo: str
    agents: int
    seeds: int
    final_return: float
    target: float
    time_to_target_s: float
    measured_ratio_fedpg_over_afedpg: float
    theoretical_ratio: float
    budget_time_s: float = math.nan
    """Mean wall time to spend the whole sample budget (last report), over seeds."""
    budget_ratio_fedpg_over_afedpg: float = math.nan
    """FedPG's budget time over AFedPG's at this N: the time-per-sample speedup, whatever the returns."""


def summarize(
    rows: Sequence[dict[str, Any]], timing: Timing | str, target: float | None = None
) -> tuple[list[SpeedupRow], str]:
    """The summary table from report rows, and a sentence saying which target it used.

    Times to target are read off each configuration's mean curve over seeds (on the wall-time range
    all its seeds cover).
    """
    timing = Timing(timing) if isinstance(timing, str) else timing
    groups = group_curves(rows, "wall_time")
    seeds = {key: sorted({int(r["seed"]) for r in rows if (r["algo"], int(r["agents"])) == key}) for key in groups}
    means = {key: mean_curve(curves) for key, curves in groups.items()}
    finals = {key: float(np.mean([y[-1] for _, y in curves])) for key, curves in groups.items() if curves}
    starts = {key: float(np.mean([y[0] for _, y in curves])) for key, curves in groups.items() if curves}
    if target is None:
        target = default_target(list(starts.values()), list(finals.values()))
        best = max(finals, key=finals.get)
        how = (
            f"target return {target:.2f}: {TARGET_FRACTION:.0%} of the way from the lowest starting mean return "
            f"({min(starts.values()):.2f}) to the best final mean return ({finals[best]:.2f}, {best[0]} N={best[1]})"
        )
    else:
        how = f"target return {target:.2f} (given by --target)"
    times = {key: time_to_target(grid, mean, target) for key, (grid, mean, _, _) in means.items()}
    budget = {key: float(np.mean([x[-1] for x, _ in curves])) for key, curves in groups.items() if curves}
    table = []
    for algo, agents in sorted(groups, key=lambda k: (k[1], k[0])):
        measured = time_ratio(times.get(("fedpg", agents), math.nan), times.get(("afedpg", agents), math.nan))
        table.append(
            SpeedupRow(
                algo=algo,
                agents=agents,
                seeds=len(groups[(algo, agents)]),
                final_return=finals.get((algo, agents), math.nan),
                target=target,
                time_to_target_s=times[(algo, agents)],
                measured_ratio_fedpg_over_afedpg=measured,
                theoretical_ratio=timing.ratio(agents, seeds[(algo, agents)]),
                budget_time_s=budget.get((algo, agents), math.nan),
                budget_ratio_fedpg_over_afedpg=time_ratio(
                    budget.get(("fedpg", agents), math.nan), budget.get(("afedpg", agents), math.nan)
                ),
            )
        )
    return table, how


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "not reached"


def summary_markdown(table: Sequence[SpeedupRow], how: str, hetero: str) -> str:
    """The summary as two Markdown tables: per (algorithm, N), and the ratios per N."""
    lines = [f"Heterogeneity profile `{hetero}`; {how}.", ""]
    lines += [
        "| algo | N | seeds | final return | time to target (s) | time for the budget (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row.algo} | {row.agents} | {row.seeds} | {row.final_return:.2f} | {_fmt(row.time_to_target_s, 1)} "
            f"| {_fmt(row.budget_time_s, 1)} |"
        )
    lines += [
        "",
        "| N | measured FedPG/AFedPG time to target | measured FedPG/AFedPG time for the budget "
        "| theoretical (t_max/N) sum 1/t_i |",
        "|---|---|---|---|",
    ]
    seen: set[int] = set()
    for row in table:
        if row.agents not in seen:
            seen.add(row.agents)
            measured = row.measured_ratio_fedpg_over_afedpg
            shown = f"{measured:.2f}" if math.isfinite(measured) else "n/a"
            budget_ratio = row.budget_ratio_fedpg_over_afedpg
            shown_budget = f"{budget_ratio:.2f}" if math.isfinite(budget_ratio) else "n/a"
            lines.append(f"| {row.agents} | {shown} | {shown_budget} | {row.theoretical_ratio:.2f} |")
    return "\n".join(lines) + "\n"


def redraw(out_dir: Path) -> Path:
    """Redraw ``speedup.png`` from ``speedup.csv`` (with the target line of ``speedup_summary.csv``, if any)."""
    summary = out_dir / "speedup_summary.csv"
    target = float(read_rows(summary)[0]["target"]) if summary.is_file() and read_rows(summary) else None
    return plot_speedup(read_rows(out_dir / "speedup.csv"), out_dir / "speedup.png", target)


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path, timing: Timing, target: float | None = None) -> str:
    """Write speedup.csv, speedup.png, speedup_summary.csv and speedup_summary.md; return the Markdown."""
    write_rows(out_dir / "speedup.csv", rows, ROW_COLUMNS)
    table, how = summarize(rows, timing, target)
    plot_speedup(rows, out_dir / "speedup.png", table[0].target if table else None)
    write_rows(out_dir / "speedup_summary.csv", [asdict(row) for row in table], SUMMARY_COLUMNS)
    text = summary_markdown(table, how, timing.hetero)
    (out_dir / "speedup_summary.md").write_text(text)
    return text


def variants(algos: Sequence[str], agent_counts: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Overrides per (algorithm, N), by label."""
    return {variant_label({"algo": a, "agents": n}): {"algo": a, "agents": n} for a in algos for n in agent_counts}
