"""Learning benchmark: final return per environment and algorithm over seeds, with learning curves.

Each (env, algo, seed) is one ``afedpg_ray.train.train`` run on one local Ray instance. Writes
``OUT/learning.csv`` (one row per run), ``OUT/curves.csv`` (return vs samples, every run),
``OUT/learning_<env>.png`` (mean and min/max band over seeds per algorithm) and ``OUT/eval.csv``
(each final policy run deterministically, ``--eval-episodes`` episodes), and ``OUT/summary.md`` (the
tables for benchmarks/RESULTS.md). A rerun with the same
``--out`` skips the runs ``learning.csv`` already has, so a long grid can be resumed or extended.

    python benchmarks/learning.py --envs Hopper-v5 --algos afedpg,vanilla,a3c,fedpg --seeds 0,1 \
        --samples 300000 --agents 4 --hetero linear:4 --out benchmarks/results/learning-hopper
    python benchmarks/learning.py --quick   # CartPole, tiny budget: checks the script runs
    python benchmarks/learning.py --report --eval-episodes 0 --out DIR   # tables and plots only
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np

from afedpg_ray.cli import OneLineParser, build_parser, config_from_args, non_negative_int, positive_int
from afedpg_ray.config import ConfigError, TrainConfig
from afedpg_ray.errors import RunError
from afedpg_ray.runlog import read_progress
from afedpg_ray.seedstats import bootstrap_mean_ci, paired_comparison, prob_improvement, prob_improvement_ci
from afedpg_ray.train import train
from tune_sweeps.plots import short_step_labels

EVAL_SEED = 10_000
"""Seed of the first evaluation episode (training used other seeds)."""


OWNED_OPTIONS = ("--env", "--algo", "--agents", "--seed", "--samples", "--hetero", "--out", "--resume")
"""Train options this script sets per run; --train-args may not set them (rows would be mislabelled)."""


GRID_OPTIONS = {"--env": "--envs", "--algo": "--algos", "--seed": "--seeds"}
"""Train options whose values this script takes from a list option of its own."""


class GridError(ValueError):
    """A grid or option this script cannot run, with the message to print."""


def train_config(env: str, algo: str, seed: int, args: argparse.Namespace, out: Path) -> TrainConfig:
    """The validated train config of one (env, algo, seed) run; raises :class:`GridError` if it is bad."""
    agents = 1 if algo == "pg" else args.agents
    argv = ["train", "--env", env, "--algo", algo, "--agents", str(agents), "--seed", str(seed)]
    argv += ["--samples", str(args.samples), "--hetero", args.hetero if agents > 1 else "none"]
    try:
        extra = shlex.split(args.train_args)  # quoted values (JSON of --agent-resources) stay one argument
    except ValueError as err:
        raise GridError(f"--train-args: cannot split {args.train_args!r} into options ({err})") from None
    owned = [a for a in extra if a.split("=")[0] in OWNED_OPTIONS]
    if owned:
        raise GridError(f"--train-args: {owned[0]} is set by this script; use its own option instead")
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):  # the train parser prints its error; ours is one line
            parsed, unknown = build_parser().parse_known_args(argv + extra)
    except SystemExit:
        why = complaint.getvalue().strip().rpartition("error: ")[2] or "not valid afedpg train options"
        raise GridError(f"--train-args: {why}") from None
    if unknown:
        raise GridError(f"--train-args: {' '.join(unknown)!r} is not an afedpg train option (see afedpg train --help)")
    wanted = {"env": env, "algo": algo, "agents": agents, "seed": seed, "samples": args.samples}
    changed = [name for name, value in wanted.items() if getattr(parsed, name) != value]
    if changed:  # an abbreviated option (argparse accepts --alg for --algo) slipped past the check above
        raise GridError(f"--train-args: it sets --{changed[0]}, which this script sets; use its own option")
    run_dir = out / "runs" / f"{env}-{algo}-n{agents}-s{seed}"
    try:
        return config_from_args(parsed, {"out": str(run_dir), "progress": False, "tensorboard": False})
    except ConfigError as err:  # name this script's option, not the train option it sets
        message = str(err).removeprefix(f"{err.option}: ")
        raise GridError(f"{GRID_OPTIONS.get(err.option, err.option)}: {message}") from None


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as integers; empty entries, non-integers or repeats are a :class:`GridError`."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise GridError(f"--seeds: expected comma-separated integers like 0,1,2, got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise GridError(f"--seeds: seeds must be non-negative, got {text!r}")
    if len(set(seeds)) != len(seeds):  # a repeat would run once and be counted as fewer seeds than asked
        raise GridError(f"--seeds: each seed may be listed once, got {text!r}")
    return seeds


def parse_names(option: str, text: str) -> list[str]:
    """``--envs`` / ``--algos`` as a list; empty entries or repeats are a :class:`GridError`."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise GridError(f"{option}: expected comma-separated names like {EXAMPLES[option]}, got {text!r}")
    if len(set(names)) != len(names):
        raise GridError(f"{option}: each name may be listed once, got {text!r}")
    return names


EXAMPLES = {"--envs": "Hopper-v5,Swimmer-v5", "--algos": "afedpg,vanilla"}


def run_one(env: str, algo: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Train one configuration; returns its result row."""
    config = train_config(env, algo, seed, args, out)
    agents, run_dir = config.agents, Path(config.out)
    result = train(config)
    rows = read_progress(run_dir / "progress.csv")
    returns = [float(r["return_mean"]) for r in rows if r["accepted"] == "True"]
    tail = [x for x in returns[-max(1, len(returns) // 20) :] if np.isfinite(x)]
    return {
        "env": env,
        "algo": algo,
        "agents": agents,
        "seed": seed,
        "samples": result.samples_total,
        "final_return": float(np.mean(tail)) if tail else float("nan"),
        "wall_time": round(result.wall_time, 1),
        "updates": result.updates,
        "mean_delay": round(result.mean_delay, 2),
        "run_dir": str(run_dir),
    }


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file (empty if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


LEARNING_COLUMNS = ("env", "algo", "agents", "seed", "samples", "final_return", "run_dir")
"""Columns of ``learning.csv`` that the summary, the plots and compare_variants.py read."""


GRID_FILE = "grid.json"
"""The settings every run in an ``--out`` directory shares beyond its budget (agents, profile, train
options), so that a later invocation cannot pool runs of another setting under the same rows."""


def grid_settings(args: argparse.Namespace) -> dict:
    """What this invocation trains with, besides the budget (checked separately) and the grid itself."""
    return {"agents": args.agents, "hetero": args.hetero, "train_args": shlex.split(args.train_args)}


def check_settings(out: Path, settings: dict, results: dict[tuple[str, str, str], dict]) -> None:
    """Refuse to add runs of other settings to ``out`` (a :class:`GridError` naming the difference); record
    the settings on first use. Directories from before the file existed are checked by their rows' agents."""
    path = out / GRID_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
    else:
        agents = {int(r["agents"]) for r in results.values() if r["algo"] != "pg"}
        saved = {**settings, "agents": agents.pop()} if len(agents) == 1 else settings
    differ = [key for key in settings if saved.get(key) != settings[key]]
    if differ:

        def flag(key: str) -> str:
            return "--" + key.replace("_", "-")

        held = ", ".join(f"{flag(k)} {saved.get(k)!r}" for k in differ)
        asked = ", ".join(f"{flag(k)} {settings[k]!r}" for k in differ)
        raise GridError(f"{out} holds runs made with {held}, not {asked}; one setting per --out directory")
    if not path.is_file():
        path.write_text(json.dumps(settings, indent=2) + "\n")


def read_rows(path: Path) -> dict[tuple[str, str, str], dict]:
    """Rows of an earlier ``learning.csv`` keyed by (env, algo, seed); empty if there is none.

    A file this script did not write (a missing column, a non-number) is a :class:`GridError`.
    """
    rows = read_csv(path)
    missing = [c for c in LEARNING_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise GridError(f"{path}: no {missing[0]!r} column; is it a learning.csv written by benchmarks/learning.py?")
    for line, row in enumerate(rows, start=2):
        try:
            row["final_return"] = float(row["final_return"])
            row["agents"] = int(row["agents"])
            int(row["samples"]), int(row["seed"])
        except (TypeError, ValueError):  # TypeError: a short row's missing cells are None
            raise GridError(f"{path}, line {line}: agents, seed, samples or final_return is not a number") from None
    return {(r["env"], r["algo"], r["seed"]): r for r in rows}


def check_run_dirs(path: Path, rows: list[dict]) -> None:
    """Every row needs its curve: its run directory's ``progress.csv``, or (a run directory that is not on
    this machine: they are not committed) its curve in the ``curves.csv`` beside that directory's ``runs/``.

    Checked before anything trains or is written, so a moved run cannot fail a long grid at its end.
    """
    for row in rows:
        run_dir = Path(row["run_dir"])
        if own_curve(run_dir) is None and not (run_dir / "progress.csv").is_file() and saved_curve(run_dir) is None:
            raise GridError(
                f"{path}: run {row['env']} {row['algo']} seed {row['seed']} has no {run_dir}/progress.csv "
                f"and no curve in {run_dir.parent.parent}/curves.csv; restore its run directory or delete its row"
            )


OWN_CURVES: dict[str, tuple[np.ndarray, np.ndarray]] = {}
"""The curves in the ``curves.csv`` of the results directory being written, by run name (loaded by
:func:`main`; a run trained again drops out): a run it holds is read from there first. It is this
report's own record: a run pooled from another directory whose run directory was later rerun in place
(Walker2d's PG, session 7) must keep the curve its ``learning.csv`` row describes, on the training
machine as in a fresh checkout."""


def own_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``run_dir``'s curve in :data:`OWN_CURVES`, or None."""
    return OWN_CURVES.get(run_dir.name)


def saved_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's return against samples as the ``curves.csv`` of its results directory saved it, or None.

    Run directories stay on the machine that trained them (``runs/`` is not committed), so in a fresh
    checkout ``--report`` and the comparisons read the curves instead. They are on a grid of 1% of the
    budget, the grid every sample-indexed number is read on (:data:`CURVE_POINTS`), so both give the same.
    """
    return _saved_curves(run_dir.parent.parent / "curves.csv").get(run_dir.name)


@functools.cache
def _saved_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every curve in one ``curves.csv``, by run directory name (``{env}-{algo}-n{agents}-s{seed}``)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for row in read_csv(path):
        name = f"{row['env']}-{row['algo']}-n{row['agents']}-s{row['seed']}"
        points.setdefault(name, []).append((float(row["samples"]), float(row["return_mean"])))
    return {name: (np.array([x for x, _ in xy]), np.array([y for _, y in xy])) for name, xy in points.items()}


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (rewritten after every run)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def curve(run_dir: Path, grid: np.ndarray) -> np.ndarray:
    """Return-vs-samples of one run interpolated onto ``grid`` (from :func:`saved_curve` if its run
    directory is not on this machine), unless this report's own ``curves.csv`` already holds it."""
    own = own_curve(run_dir)
    if own is not None:
        x, y = own
        x, y = x[np.isfinite(y)], y[np.isfinite(y)]
    elif (run_dir / "progress.csv").is_file():
        progress = read_progress(run_dir / "progress.csv")
        rows = [r for r in progress if r["accepted"] == "True" and r["return_mean"] != "nan"]
        x = np.array([float(r["samples_total"]) for r in rows])
        y = np.array([float(r["return_mean"]) for r in rows])
    else:
        saved = saved_curve(run_dir)
        if saved is None:
            raise GridError(f"{run_dir}: no progress.csv and no saved curve beside it")
        x, y = saved
        x, y = x[np.isfinite(y)], y[np.isfinite(y)]  # the points before the first finished episode
    return np.interp(grid, x, y, left=np.nan) if len(x) else np.full(len(grid), np.nan)


CURVE_POINTS = 100
"""Points per run in ``curves.csv`` (every 1% of the budget): the saved curves, and the grid every
sample-indexed statistic reads, so a fresh checkout (curves only) and the training machine (full
``progress.csv``) compute the same numbers."""


def write_curves(path: Path, rows: list[dict], samples: int, points: int = CURVE_POINTS) -> None:
    """Every run's return vs samples on a common grid of ``points`` (the data behind the plots)."""
    grid = np.linspace(0, samples, points + 1)[1:]
    table = []
    for row in rows:
        values = curve(Path(row["run_dir"]), grid)
        table += [
            {
                "env": row["env"],
                "algo": row["algo"],
                "agents": row["agents"],
                "seed": row["seed"],
                "samples": int(x),
                "return_mean": round(float(y), 2),
            }
            for x, y in zip(grid, values, strict=True)
        ]
    if table:
        write_rows(path, table)


def forget_evaluations(path: Path, retrained: set[tuple[str, str, str]]) -> None:
    """Drop ``path``'s evaluations of runs trained again in this invocation (their row was deleted from
    learning.csv): asynchronous training is not bitwise reproducible, so the old numbers were another policy's."""
    rows = read_csv(path)
    kept = [r for r in rows if (r["env"], r["algo"], r["seed"]) not in retrained]
    if len(kept) == len(rows):
        return
    if kept:
        write_rows(path, kept)
    else:
        path.unlink()


def write_evaluations(path: Path, rows: list[dict], episodes: int) -> None:
    """Each run's final policy, run deterministically for ``episodes`` episodes (``afedpg eval``).

    Runs that ``path`` already holds with the same episode count are kept, not re-run: evaluation is
    deterministic with fixed seeds, so it would give the same numbers.
    """
    from afedpg_ray.rollout import evaluate
    from afedpg_ray.train import load_policy

    done = {(r["env"], r["algo"], r["seed"]): r for r in read_csv(path) if int(r["episodes"]) == episodes}
    table = []
    for row in rows:
        key = (row["env"], row["algo"], str(row["seed"]))
        if key in done:
            table.append(done[key])
            continue
        run_dir = Path(row["run_dir"])
        if not (run_dir / "policy.pt").exists():
            continue
        policy, stats, env = load_policy(run_dir)
        returns = evaluate(policy, stats, env, episodes, seed=EVAL_SEED, deterministic=True)
        table.append(
            {
                "env": row["env"],
                "algo": row["algo"],
                "agents": row["agents"],
                "seed": row["seed"],
                "episodes": episodes,
                "eval_return": round(float(np.mean(returns)), 1),
                "eval_min": round(min(returns), 1),
                "eval_max": round(max(returns), 1),
            }
        )
    if table:
        write_rows(path, table)


TARGETS = {"Swimmer-v5": 100.0, "Hopper-v5": 1000.0, "Walker2d-v5": 1000.0, "HalfCheetah-v5": 1500.0}
"""The issue's target returns (mean over 3 seeds at 1M steps, AFedPG with N = 8), for summary.md."""


def seed_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over seeds (rows) of ``curves``; NaN where no seed has a point yet."""
    with warnings.catch_warnings():  # grid points before any run's first episode are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(curves, axis=0), np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)


def samples_per_agent_to(rows: list[dict], threshold: float, samples: int) -> tuple[float, float, int]:
    """Samples per agent until ``threshold`` is reached, two ways: where the seed-mean training curve
    of ``rows`` first reaches it, and the median over seeds of where each seed's own curve first does
    (with how many seeds reached; see :func:`median_reach`). NaN where it is never reached.

    Read on the saved curves' 1% grid: a finer grid read from ``progress.csv`` found brief crossings
    that a fresh checkout's curves cannot show, so the two disagreed (by up to a seed reaching or not).
    """
    grid = np.linspace(0, samples, CURVE_POINTS + 1)[1:]
    per_agent = grid / int(rows[0]["agents"])
    curves = np.array([curve(Path(r["run_dir"]), grid) for r in rows])
    mean_reach = first_crossing(seed_band(curves)[0], per_agent, threshold)
    return (mean_reach, *median_reach([first_crossing(c, per_agent, threshold) for c in curves]))


def first_crossing(values: np.ndarray, grid: np.ndarray, threshold: float) -> float:
    """The first ``grid`` point where ``values`` reaches ``threshold`` (NaN if it never does)."""
    hit = np.flatnonzero(values >= threshold)
    return float(grid[hit[0]]) if len(hit) else float("nan")


def median_reach(reach: list[float]) -> tuple[float, int]:
    """Median of per-seed reach times (NaN: never reached) and the number of seeds that reached.

    Unlike the seed-mean curve, one seed that finds a much better optimum early cannot carry it. Seeds
    that never reach count as infinitely slow, so the median is NaN when half or more never do.
    """
    reached = int(np.isfinite(reach).sum())
    median = float(np.median([x if np.isfinite(x) else np.inf for x in reach]))
    return (median if np.isfinite(median) else float("nan")), reached


PAPER_ORDER = ("afedpg", "vanilla", "a3c")
"""The paper's ranking at equal budget; summary.md reports ``P(X > Y)`` for each pair of it."""

ORDER_PAIRS = [(a, b) for i, a in enumerate(PAPER_ORDER) for b in PAPER_ORDER[i + 1 :]] + [("pg", "vanilla")]
"""Pairs summary.md compares when both ran with the same N. ``pg`` is AFedPG's rule with one agent, so
pg against vanilla with ``--agents 1`` isolates the lookahead from staleness."""

ORDERING_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
"""Fractions of the budget at which summary.md also compares the rules (the lookahead's advantage is
expected early, while gradients are least noisy: benchmarks/gradient_noise.py)."""

REACH_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
"""Fractions of the target at which summary.md gives each rule's samples per agent to reach that return:
the paper's per-agent claim is about reaching *a* return, and one level can hide the rest of the curve."""

PROTOCOL_SEEDS = 3
"""The issue's targets are means over the first three seeds; summary.md also reports that mean."""


def seed_summary(values: list[float]) -> str:
    """``mean [95% CI] | median | (per seed)`` cells for one algorithm's returns; a run that finished no
    episode has no return (NaN): it shows as ``n/a`` and is left out of the statistics."""
    per_seed = ", ".join(f"{x:.1f}" if np.isfinite(x) else "n/a" for x in values)
    finite = [x for x in values if np.isfinite(x)]
    if not finite:
        return f"n/a | n/a | {per_seed}"
    lo, hi = bootstrap_mean_ci(finite)
    return f"{np.mean(finite):.1f} [{lo:.1f}, {hi:.1f}] | {np.median(finite):.1f} | {per_seed}"


FEW_SEEDS = 5
"""Below this many seeds on a side an ordering is not called resolved: a percentile bootstrap cannot reach
past the seeds' own range (3 seeds ordered 3:0 give P = 1.00 [1.00, 1.00], where an exact Mann-Whitney
test of 3 against 3 gives p = 0.10)."""


def improvement_text(x: list[float], y: list[float]) -> str:
    """``P(X > Y)`` with its 95% bootstrap interval, e.g. ``0.60 [0.41, 0.78]``: the ordering is resolved
    only when the interval excludes 0.5 and both sides have ``FEW_SEEDS`` seeds or more (else marked)."""
    left_out = sum(1 for v in (*x, *y) if not np.isfinite(v))  # runs that finished no episode: no return
    x, y = [v for v in x if np.isfinite(v)], [v for v in y if np.isfinite(v)]
    note = f" ({left_out} run{'s' * (left_out > 1)} without a return left out)" if left_out else ""
    if not x or not y:
        return "n/a" + note
    lo, hi = prob_improvement_ci(x, y)
    few = " (too few seeds to resolve)" if min(len(x), len(y)) < FEW_SEEDS else ""
    return f"{prob_improvement(x, y):.2f} [{lo:.2f}, {hi:.2f}]{few}{note}"


def write_summary(path: Path, rows: list[dict], evals: dict[tuple[str, str, str], dict], samples: int) -> None:
    """A markdown table per environment: returns per algorithm over seeds, and the paper's ordering."""
    lines = [
        f"Returns after {samples:,} environment steps over seeds: mean [95% bootstrap CI of the mean], median",
        "and each seed (in seed order). P(X > Y): chance that a random seed of X ends above one of Y,",
        "with its 95% bootstrap interval (the ordering is resolved only where the interval excludes 0.5).",
        f"Below {FEW_SEEDS} seeds a side a percentile bootstrap cannot reach past the seeds' own range and",
        "understates the uncertainty: such intervals are descriptive, and orderings are marked as unresolved.",
        "",
    ]
    for env in dict.fromkeys(r["env"] for r in rows):
        target = TARGETS.get(env)
        lines += [f"### {env}" + (f" (target {target:g})" if target else ""), ""]
        lines += [
            "| algo | N | seeds | training return | median | per seed | deterministic eval return | median "
            "| per seed | samples/agent to target: seed-mean curve | median seed (seeds reaching) |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|---|---|"]
        finals = {}
        for algo in dict.fromkeys(r["algo"] for r in rows if r["env"] == env):
            runs = sorted((r for r in rows if r["env"] == env and r["algo"] == algo), key=lambda r: int(r["seed"]))
            finals[algo] = [float(r["final_return"]) for r in runs]
            keys = [(env, algo, str(r["seed"])) for r in runs]
            ev = [float(evals[k]["eval_return"]) for k in keys if k in evals]
            ev_text = seed_summary(ev) if ev else "- | - | -"
            reach_text = median_text = "-"
            if target:
                reach, median, reached = samples_per_agent_to(runs, target, samples)
                reach_text = f"{reach:,.0f}" if np.isfinite(reach) else "not reached"
                median_text = (f"{median:,.0f}" if np.isfinite(median) else "not reached") + f" ({reached}/{len(runs)})"
            train_text = seed_summary(finals[algo])
            cells = [algo, runs[0]["agents"], len(runs), train_text, ev_text, reach_text, median_text]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
        agents = {r["algo"]: int(r["agents"]) for r in rows if r["env"] == env}
        pairs = [(a, b) for a, b in ORDER_PAIRS if a in finals and b in finals and agents[a] == agents[b]]
        if pairs:
            lines.append(
                "- Ordering (training return): "
                + "; ".join(f"P({a} > {b}) = {improvement_text(finals[a], finals[b])}" for a, b in pairs)
            )
            paired = [paired_text(rows, env, a, b) for a, b in pairs]
            if any(paired):
                lines.append("- Same seeds, pair by pair (training return): " + "; ".join(t for t in paired if t))
            lines.append(ordering_along_run(rows, env, pairs, samples))
            lines.append(ordering_by_run_average(rows, env, pairs, samples))
        if target:
            lines += ["", *reach_table(rows, env, target, samples)]
        if target and "afedpg" in finals and len(finals["afedpg"]) > PROTOCOL_SEEDS:
            first = finals["afedpg"][:PROTOCOL_SEEDS]
            lines.append(f"- AFedPG, first {PROTOCOL_SEEDS} seeds (the targets' protocol): mean {np.mean(first):.1f}")
        lines.append("")
    path.write_text("\n".join(lines))


def reach_table(rows: list[dict], env: str, target: float, samples: int) -> list[str]:
    """Markdown rows: samples per agent for the median seed to reach each of ``REACH_FRACTIONS`` of
    ``target``, per algorithm (seeds reaching in brackets), and how many times fewer AFedPG needs than
    the single agent (pg) where both reach."""
    algos = list(dict.fromkeys(r["algo"] for r in rows if r["env"] == env))
    runs = {a: [r for r in rows if r["env"] == env and r["algo"] == a] for a in algos}
    ratio = "afedpg" in runs and "pg" in runs
    header = [f"{a} (N = {runs[a][0]['agents']})" for a in algos] + (["pg / afedpg"] if ratio else [])
    lines = ["| samples/agent to return (median seed) | " + " | ".join(header) + " |"]
    lines.append("|---" * (len(header) + 1) + "|")
    for fraction in REACH_FRACTIONS:
        threshold = fraction * target
        reach = {a: samples_per_agent_to(runs[a], threshold, samples)[1:] for a in algos}
        cells = [f"{threshold:g}"]
        cells += [
            (f"{m:,.0f}" if np.isfinite(m) else "not reached") + f" ({n}/{len(runs[a])})" for a, (m, n) in reach.items()
        ]
        if ratio:
            pg, fed = reach["pg"][0], reach["afedpg"][0]
            cells.append(f"{pg / fed:.1f}x" if np.isfinite(pg) and np.isfinite(fed) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_text(rows: list[dict], env: str, a: str, b: str) -> str:
    """``a`` against ``b`` on the seeds both ran (same initial policy and environment seeds): wins, the
    sign test and the mean difference with its paired bootstrap interval; empty below two shared seeds.
    Seeds compare as text: rows read from learning.csv hold them as text, rows trained in this call as ints."""
    final = {
        algo: {str(r["seed"]): float(r["final_return"]) for r in rows if r["env"] == env and r["algo"] == algo}
        for algo in (a, b)
    }
    shared = sorted(set(final[a]) & set(final[b]), key=int)
    seeds = [s for s in shared if np.isfinite(final[a][s]) and np.isfinite(final[b][s])]
    if len(seeds) < 2:
        return ""
    result = paired_comparison([final[a][s] for s in seeds], [final[b][s] for s in seeds])
    ties = f", {result.ties} tied" if result.ties else ""
    if len(seeds) < len(shared):
        ties += f", {len(shared) - len(seeds)} without a return left out"
    lo, hi = result.ci
    return (
        f"{a} above {b} in {result.wins} of {result.pairs} pairs{ties} (sign test p = {result.sign_test_p:.2g}), "
        f"mean difference {result.mean_difference:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    )


def improvement_cells(x: np.ndarray, y: np.ndarray) -> str:
    """``P(X > Y)`` per column of two (seeds x points) arrays, ``-`` where either side has no value yet."""
    cells = []
    for j in range(x.shape[1]):
        a, b = x[:, j], y[:, j]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        cells.append(f"{prob_improvement(list(a), list(b)):.2f}" if len(a) and len(b) else "-")
    return " / ".join(cells)


def ordering_along_run(rows: list[dict], env: str, pairs: list[tuple[str, str]], samples: int) -> str:
    """One line: ``P(X > Y)`` of the training return at each of ``ORDERING_FRACTIONS`` of the budget."""
    grid = np.array(ORDERING_FRACTIONS) * samples
    values = {
        algo: np.array([curve(Path(r["run_dir"]), grid) for r in rows if r["env"] == env and r["algo"] == algo])
        for algo in {name for pair in pairs for name in pair}
    }
    cells = [f"P({a} > {b}) " + improvement_cells(values[a], values[b]) for a, b in pairs]
    fractions = "/".join(f"{f:.0%}" for f in ORDERING_FRACTIONS)
    return f"- Ordering along the run (at {fractions} of the budget): " + "; ".join(cells)


def run_averages(rows: list[dict], env: str, algo: str, samples: int, points: int = CURVE_POINTS) -> list[float]:
    """Each seed's training return averaged over the whole run (area under its curve / budget), on the
    same ``points``-point grid as curves.csv; the stretch before its first finished episode is skipped."""
    grid = np.linspace(0, samples, points + 1)[1:]
    runs = sorted((r for r in rows if r["env"] == env and r["algo"] == algo), key=lambda r: int(r["seed"]))
    averages = []
    for run in runs:
        values = curve(Path(run["run_dir"]), grid)
        if np.isfinite(values).any():
            averages.append(float(np.nanmean(values)))
    return averages


def ordering_by_run_average(rows: list[dict], env: str, pairs: list[tuple[str, str]], samples: int) -> str:
    """One line: each rule's mean of :func:`run_averages` and ``P(X > Y)`` of those averages."""
    averages = {algo: run_averages(rows, env, algo, samples) for algo in {name for pair in pairs for name in pair}}
    means = ", ".join(f"{a} {np.mean(v):.1f}" for a, v in sorted(averages.items()) if v)
    cells = [
        f"P({a} > {b}) = {improvement_text(averages[a], averages[b])}" for a, b in pairs if averages[a] and averages[b]
    ]
    return f"- Return averaged over the whole run (area under the curve / budget): means {means}; " + "; ".join(cells)


def plot(rows: list[dict], env: str, samples: int, path: Path) -> None:
    """Mean and min/max band over seeds of return, one curve per algorithm, against total samples (left)
    and against samples per agent (right: the paper's axis, on which N agents' speedup shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, samples, 100)
    fig, (total_ax, agent_ax) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for algo in dict.fromkeys(r["algo"] for r in rows if r["env"] == env):
        runs = [r for r in rows if r["env"] == env and r["algo"] == algo]
        curves = np.array([curve(Path(r["run_dir"]), grid) for r in runs])
        n = int(runs[0]["agents"])
        mean, low, high = seed_band(curves)
        for ax, x in ((total_ax, grid), (agent_ax, grid / n)):
            ax.plot(x, mean, label=f"{algo} (N={n}, {len(curves)} seeds)")
            ax.fill_between(x, low, high, alpha=0.2)
    total_ax.set_xlabel("environment steps (all agents)")
    short_step_labels(total_ax)
    agent_ax.set_xscale("log")  # N = 1 and N = 8 budgets per agent differ by 8x: both stay readable
    agent_ax.set_xlabel("environment steps per agent (log scale)")
    total_ax.set_ylabel("training return (last 20 episodes)")
    target = TARGETS.get(env)
    for ax in (total_ax, agent_ax):
        if target:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_title(env)
    total_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Parser(OneLineParser):
    """One-line errors; a ``--train-args`` value starting with ``-`` gets a hint on how to pass it."""

    def error(self, message: str) -> NoReturn:
        """Print ``learning.py: error: ...`` and exit 2."""
        if message.startswith("argument --train-args: expected one argument"):
            message += "; join options that start with '-' with '=', e.g. --train-args='--no-tensorboard'"
        super().error(message)


def main() -> None:
    """Run the benchmark grid and write the CSVs and plots."""
    parser = Parser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--envs", default="Swimmer-v5,Hopper-v5,Walker2d-v5,HalfCheetah-v5", help="comma-separated gymnasium ids")
    add("--algos", default="afedpg,vanilla,a3c", help="comma-separated update rules (pg runs with one agent)")
    add("--seeds", default="0,1,2", help="comma-separated seeds; one run per env, algo and seed")
    add("--samples", type=positive_int, default=1_000_000, help="environment steps per run, over all agents")
    add("--agents", type=positive_int, default=8, help="agents per run (pg always uses 1)")
    add("--hetero", default="linear:4", help="agents' slowdown profile, as afedpg train --hetero")
    add("--train-args", default="", help="extra afedpg train options, e.g. --train-args='--batch 2000'")
    add(
        "--out",
        help="directory for learning.csv, runs/, plots, summary.md (default benchmarks/results/learning/; "
        "learning-quick/ with --quick, so that a check never mixes into a real grid's directory)",
    )
    add("--quick", action="store_true", help="CartPole, 2 algorithms, 1 seed, tiny budget")
    add("--report", action="store_true", help="train nothing: rebuild curves, plots, eval, summary from learning.csv")
    add(
        "--eval-episodes",
        type=non_negative_int,
        default=10,
        help="deterministic episodes per final policy for eval.csv (0: none)",
    )
    args = parser.parse_args()
    try:
        run_grid(args)
    except (GridError, ConfigError, RunError) as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        sys.exit(f"error: {err.filename or args.out}: {err.strerror}")


def run_grid(args: argparse.Namespace) -> None:
    """Train the grid's missing runs, then write curves, evaluations, plots and the summary."""
    if args.quick:
        args.envs, args.algos, args.seeds, args.samples, args.agents = "CartPole-v1", "afedpg,a3c", "0", 4000, 2
        args.train_args = args.train_args or "--batch 500 --num-envs 2"
        args.eval_episodes = min(args.eval_episodes, 2)
    if args.out is None:
        args.out = "benchmarks/results/learning-quick" if args.quick else "benchmarks/results/learning"
    if not args.out.strip():  # Path("") is the working directory
        raise GridError("--out: give a directory for learning.csv and the runs")
    out = Path(args.out)
    OWN_CURVES.clear()
    if (out / "curves.csv").is_file():
        OWN_CURVES.update(_saved_curves(out / "curves.csv"))
    if args.report and not (out / "learning.csv").is_file():  # before mkdir: a mistyped --out stays uncreated
        raise GridError(f"--report: no learning.csv in {out}; give the --out of an earlier learning.py run")
    envs, algos = parse_names("--envs", args.envs), parse_names("--algos", args.algos)
    out.mkdir(parents=True, exist_ok=True)
    results = read_rows(out / "learning.csv")  # earlier invocations' runs are kept and skipped
    start = time.time()
    budgets = {int(r["samples"]) for r in results.values()}
    if args.report and len(budgets) == 1:
        args.samples = budgets.pop()  # summary, curves and the ordering fractions refer to the runs' budget
    elif budgets - {args.samples}:
        sys.exit(f"error: {out}/learning.csv holds runs of {sorted(budgets)} samples; one budget per --out directory")
    check_run_dirs(out / "learning.csv", list(results.values()))
    if args.report:  # every environment, algorithm and seed the grid already holds
        if not results:
            raise GridError(f"--report: {out}/learning.csv holds no runs yet; train some first")
        envs = list(dict.fromkeys(r["env"] for r in results.values()))
        algos = list(dict.fromkeys(r["algo"] for r in results.values()))
        args.seeds = ",".join(dict.fromkeys(str(r["seed"]) for r in results.values()))
    seeds = parse_seeds(args.seeds)
    if not args.report:  # the whole grid is checked before the first run trains
        for env in envs:
            for algo in algos:
                train_config(env, algo, seeds[0], args, out)
        check_settings(out, grid_settings(args), results)
    for env in envs:
        for algo in algos:
            for seed in seeds:
                if args.report or (env, algo, str(seed)) in results:  # long grids survive interruption
                    continue
                row = run_one(env, algo, seed, args, out)
                OWN_CURVES.pop(Path(row["run_dir"]).name, None)  # a rerun of a deleted row: its new curve
                results[(env, algo, str(seed))] = row
                forget_evaluations(out / "eval.csv", {(env, algo, str(seed))})
                print(json.dumps(row), flush=True)
                write_rows(out / "learning.csv", list(results.values()))
        plot(list(results.values()), env, args.samples, out / f"learning_{env}.png")
    rows = list(results.values())  # learning.csv was rewritten after every run: nothing to add
    write_curves(out / "curves.csv", rows, args.samples)
    if args.eval_episodes > 0:
        write_evaluations(out / "eval.csv", rows, args.eval_episodes)
    evals = {(r["env"], r["algo"], str(r["seed"])): r for r in read_csv(out / "eval.csv")}
    write_summary(out / "summary.md", rows, evals, args.samples)
    print(f"wrote {out}/learning.csv and plots in {time.time() - start:.0f}s")
    for env in envs:
        for algo in algos:
            finals = [r["final_return"] for r in rows if r["env"] == env and r["algo"] == algo]
            if not finals:
                continue
            print(f"{env:16s} {algo:8s} mean {np.mean(finals):8.1f}  seeds {[round(f, 1) for f in finals]}")


if __name__ == "__main__":
    main()
