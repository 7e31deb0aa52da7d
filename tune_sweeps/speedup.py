"""Wall-clock speedup under heterogeneity: every (algorithm, N, seed) as one Tune trial.

The summary arithmetic is in pure functions (:func:`time_to_target`, :func:`time_ratio`,
:func:`theoretical_ratio`, :func:`default_target`, :func:`sample_rate`, :func:`startup_time`) so it can be
checked against hand-computed numbers.
"""

from __future__ import annotations

import math
import sys
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
RESULTS_CSV = "speedup.csv"
TARGET_FRACTION = 0.8
"""Default target: this fraction of the way from the highest starting to the best final mean return."""
SUMMARY_COLUMNS = [
    "algo",
    "agents",
    "seeds",
    "start_return",
    "final_return",
    "target",
    "time_to_target_s",
    "measured_ratio_fedpg_over_afedpg",
    "theoretical_ratio",
    "budget_time_s",
    "startup_s",
    "budget_ratio_fedpg_over_afedpg",
]


def time_to_target(times: Sequence[float], returns: Sequence[float], target: float) -> float:
    """First time a curve rises to ``target``, interpolated linearly inside the crossing segment.

    NaN if it never does, and NaN if it starts at or above ``target``: it got there before its first
    report, which times start-up and a first update, not learning (with no learning at all, that time
    would still pass for a time to target).
    """
    if len(times) == 0 or returns[0] >= target:
        return math.nan
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
    """80% of the way from the highest starting mean return to the best final mean return.

    Starting from the highest start keeps the target above every curve's first value (a curve that
    starts at the target has no time to target). This equals 80% of the best final return when
    returns start near 0 (Swimmer), and stays reachable when returns are negative (Pendulum).
    Raises ``ValueError`` if no final mean return is above the highest start: nothing improved, so
    there is nothing to time.
    """
    high, best = max(start_returns), max(final_returns)
    if not best > high:
        raise ValueError(
            f"no variant's final mean return (best {best:.2f}) is above the highest starting mean return ({high:.2f})"
        )
    return high + TARGET_FRACTION * (best - high)


def sample_rate(times: Sequence[float], samples: Sequence[float]) -> float:
    """A trial's steady rate in samples per second: the slope from its first report to its last.

    The first report comes at the first update (or the first with a finished episode: the CSVs leave
    out earlier ones), after the agents' start-up, so the slope leaves start-up out. Subtracting the
    first report's time from the last instead would also drop the first iteration, which is the
    slowest agent's for a synchronous round and the fastest's for an asynchronous rule. NaN with
    fewer than two reports or no time or samples between them.
    """
    if len(times) < 2 or not (times[-1] > times[0] and samples[-1] > samples[0]):
        return math.nan
    return float((samples[-1] - samples[0]) / (times[-1] - times[0]))


def startup_time(times: Sequence[float], samples: Sequence[float]) -> float:
    """The wall time the steady rate leaves out: where the line through the first and last report meets
    zero samples (the actors' start-up, plus an asynchronous rule's pipeline fill); NaN without a rate."""
    rate = sample_rate(times, samples)
    return float(times[-1] - samples[-1] / rate) if math.isfinite(rate) else math.nan


def _mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


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
    """Mean over seeds of the sweep's budget over each seed's :func:`sample_rate`: start-up excluded."""
    budget_ratio_fedpg_over_afedpg: float = math.nan
    """FedPG's budget time over AFedPG's at this N: the time-per-sample speedup, whatever the returns."""
    start_return: float = math.nan
    """The mean curve's first value: a target at or below it gives no time to target."""
    startup_s: float = math.nan
    """Mean :func:`startup_time` over seeds: the wall time left out of ``budget_time_s``."""


def summarize(
    rows: Sequence[dict[str, Any]], timing: Timing | str, target: float | None = None
) -> tuple[list[SpeedupRow], str]:
    """The summary table from report rows, and a sentence saying which target it used.

    Times to target are read off each configuration's mean curve over seeds, on which a seed that has
    ended holds its last return until the configuration's last seed ends (seeds end at different wall
    times; a finished run's policy no longer changes), so a target every seed reaches is reported. A
    curve that starts at or above the target gets none (:func:`time_to_target`). Budget times are the
    sweep's budget (the median over trials of the samples at their last report) at each seed's
    :func:`sample_rate`, start-up excluded; the excluded time is ``startup_s``.
    """
    timing = Timing(timing) if isinstance(timing, str) else timing
    groups = group_curves(rows, "wall_time")
    seeds = {key: sorted({int(r["seed"]) for r in rows if (r["algo"], int(r["agents"])) == key}) for key in groups}
    means = {key: mean_curve(curves, hold_last=True) for key, curves in groups.items()}
    means = {key: curve for key, curve in means.items() if len(curve[0])}
    finals = {key: float(mean[-1]) for key, (_, mean, _, _) in means.items()}
    starts = {key: float(mean[0]) for key, (_, mean, _, _) in means.items()}
    if target is None:
        try:
            target = default_target(list(starts.values()), list(finals.values()))
        except ValueError as err:
            target, how = math.nan, f"no target return: {err}; give --target to time one"
        else:
            best = max(finals, key=finals.get)
            how = (
                f"target return {target:.2f}: {TARGET_FRACTION:.0%} of the way from the highest starting mean "
                f"return ({max(starts.values()):.2f}) to the best final mean return ({finals[best]:.2f}, "
                f"{best[0]} N={best[1]})"
            )
    else:
        how = f"target return {target:.2f} (given by --target)"
    times = {key: time_to_target(grid, mean, target) for key, (grid, mean, _, _) in means.items()}
    # rows a sweep writes always count samples; hand-made ones without them just get no budget times
    counted = group_curves([r for r in rows if "samples_total" in r], "wall_time", "samples_total")
    ends = [float(s[-1]) for curves in counted.values() for _, s in curves if len(s)]
    spend = float(np.median(ends)) if ends else math.nan  # the budget, up to the last update's overshoot
    budget = {key: _mean_finite([spend / sample_rate(x, s) for x, s in curves]) for key, curves in counted.items()}
    startup = {key: _mean_finite([startup_time(x, s) for x, s in curves]) for key, curves in counted.items()}
    table = []
    for algo, agents in sorted(means, key=lambda k: (k[1], k[0])):
        measured = time_ratio(times.get(("fedpg", agents), math.nan), times.get(("afedpg", agents), math.nan))
        table.append(
            SpeedupRow(
                algo=algo,
                agents=agents,
                seeds=len(groups[(algo, agents)]),
                start_return=starts[(algo, agents)],
                final_return=finals[(algo, agents)],
                target=target,
                time_to_target_s=times[(algo, agents)],
                measured_ratio_fedpg_over_afedpg=measured,
                theoretical_ratio=timing.ratio(agents, seeds[(algo, agents)]),
                budget_time_s=budget.get((algo, agents), math.nan),
                startup_s=startup.get((algo, agents), math.nan),
                budget_ratio_fedpg_over_afedpg=time_ratio(
                    budget.get(("fedpg", agents), math.nan), budget.get(("afedpg", agents), math.nan)
                ),
            )
        )
    return table, how


def _fmt(value: float, digits: int = 2, missing: str = "not reached") -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else missing


def _starts_there(row: SpeedupRow) -> bool:
    """Whether ``row``'s curve has no time to target because it starts at or above the target (or there is none)."""
    return not row.start_return < row.target


def mostly_startup(row: SpeedupRow) -> bool:
    """Whether ``row``'s start-up is longer than the rest of its time to target: the time then compares how fast
    the rules' actors start (measured: fedpg 19.7 s, afedpg 12.5 s, against 3-7 s of training), not how
    fast they learn."""
    return math.isfinite(row.time_to_target_s) and row.startup_s > row.time_to_target_s - row.startup_s


MOSTLY_STARTUP_NOTE = (
    "Mostly start-up: the actors' start-up (last column) is more than half of this time to target, so it "
    "compares start-ups rather than learning; a larger budget (`--samples`) and target make learning count."
)
"""Below the table when a time to target is marked by :func:`mostly_startup`."""


def target_warning(table: Sequence[SpeedupRow]) -> str:
    """One line naming the curves that get no time to target because it is not above their start ("" if none)."""
    if table and not math.isfinite(table[0].target):
        high, best = max(row.start_return for row in table), max(row.final_return for row in table)
        return (
            f"no target return: no variant's final mean return (best {best:.2f}) is above the highest starting "
            f"mean return ({high:.2f}); give --target to time one"
        )
    low = [row for row in table if _starts_there(row)]
    if not low:
        return ""
    names = ", ".join(f"{row.algo} N={row.agents} ({row.start_return:.2f})" for row in low)
    return (
        f"target return {low[0].target:.2f} is not above the starting mean return of {names}: no time to target "
        f"for {'it' if len(low) == 1 else 'them'}; give a higher --target"
    )


def summary_markdown(table: Sequence[SpeedupRow], how: str, hetero: str) -> str:
    """The summary as two Markdown tables: per (algorithm, N), and the ratios per N."""
    lines = [f"Heterogeneity profile `{hetero}`; {how}.", ""]
    lines += [
        "| algo | N | seeds | start return | final return | time to target (s) | time for the budget (s) "
        "| start-up, not in the budget time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        to_target = _fmt(row.time_to_target_s, 1, "n/a" if _starts_there(row) else "not reached")
        to_target += " (mostly start-up)" if mostly_startup(row) else ""
        lines.append(
            f"| {row.algo} | {row.agents} | {row.seeds} | {row.start_return:.2f} | {row.final_return:.2f} "
            f"| {to_target} | {_fmt(row.budget_time_s, 1, 'n/a')} | {_fmt(row.startup_s, 1, 'n/a')} |"
        )
    if any(mostly_startup(row) for row in table):
        lines += ["", MOSTLY_STARTUP_NOTE]
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
    return plot_speedup(read_rows(out_dir / RESULTS_CSV), out_dir / "speedup.png", target)


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: Path, timing: Timing, target: float | None = None) -> str:
    """Write speedup.csv, speedup.png, speedup_summary.csv and speedup_summary.md; return the Markdown."""
    write_rows(out_dir / RESULTS_CSV, rows, ROW_COLUMNS)
    table, how = summarize(rows, timing, target)
    warning = target_warning(table)
    if warning:
        print(f"afedpg: warning: {warning}", file=sys.stderr)
    plot_speedup(rows, out_dir / "speedup.png", table[0].target if table else None)
    write_rows(out_dir / "speedup_summary.csv", [asdict(row) for row in table], SUMMARY_COLUMNS)
    text = summary_markdown(table, how, timing.hetero)
    (out_dir / "speedup_summary.md").write_text(text)
    return text


def variants(algos: Sequence[str], agent_counts: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Overrides per (algorithm, N), by label."""
    return {variant_label({"algo": a, "agents": n}): {"algo": a, "agents": n} for a in algos for n in agent_counts}
