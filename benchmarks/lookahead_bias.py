"""How much momentum lag the lookahead removes, under asynchronous delays: a simulation with the real rules.

The momentum ``d`` averages gradients taken at earlier points, so it describes the objective at the
weighted mean of those points, ``x_bar = sum_j w_j x_j`` (exactly so on a quadratic, whose gradient is
linear). Moving at one normalised step ``eta`` per update, that mean trails ``theta_k`` by

    vanilla:  (1 - a) / a + mean delay   steps        AFedPG:  mean delay   steps

because AFedPG samples each gradient ``(1 - a) / a`` steps ahead, which is exactly the momentum's own
lag (the Hessian-cancellation identity); staleness (other agents' updates applied while a gradient
was being computed, about N - 1 of them) it does not remove. So the lookahead's share of the lag
shrinks as N grows: at alpha 0.2 it removes 4 steps of 4 with one agent but 4 of about 11 with eight.

This script runs the project's own update rules (``afedpg_ray.rules.make_rule``) on a noisy
ill-conditioned quadratic with simulated asynchronous arrivals (agent ``i`` takes ``s_i`` time units
per gradient under a heterogeneity profile, with log-normal jitter), and measures per update
(a) the lag ``||x_bar - theta_k|| / eta`` in steps, against the formula, and (b) the cosine between
``d`` and the true gradient at ``theta_k``: how well the step direction points uphill.

    python benchmarks/lookahead_bias.py                 # N 1,2,4,8 x alpha 0.05..0.5 x 3 noise levels, 5 seeds (~2 min)
    python benchmarks/lookahead_bias.py --quick         # a small grid, for the test
    python benchmarks/lookahead_bias.py --anneal        # fixed vs annealed alpha (--alpha-end) as noise grows
    python benchmarks/lookahead_bias.py --delay-compensation   # extend the lookahead over the delay too?
    python benchmarks/lookahead_bias.py --staleness     # FedAsync weighting, with and without the lookahead
"""

from __future__ import annotations

import csv
import heapq
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afedpg_ray.cli import OneLineParser, positive_int
from afedpg_ray.heterogeneity import parse_profile
from afedpg_ray.rules import RuleState, make_rule

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Quadratic:
    """``J(x) = -1/2 (x - x*)^T H (x - x*)`` with diagonal ``H`` (ascent: the gradient points at x*)."""

    curvature: np.ndarray
    optimum: np.ndarray

    def value(self, x: np.ndarray) -> float:
        """``J(x)`` (0 at the optimum, negative elsewhere)."""
        return float(-0.5 * np.sum(self.curvature * (x - self.optimum) ** 2))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """``-H (x - x*)``."""
        return -self.curvature * (x - self.optimum)

    @classmethod
    def make(cls, dim: int, condition: float, rng: np.random.Generator) -> Quadratic:
        """Curvatures log-spaced over ``condition``; the optimum at distance ~``dim`` from the start (0)."""
        curvature = np.logspace(0.0, np.log10(condition), dim) / condition
        return cls(curvature=curvature, optimum=rng.normal(0.0, 1.0, dim) * np.sqrt(dim))


def predicted_lag(alpha: float, mean_delay: float, lookahead: bool) -> float:
    """Steps by which the momentum's effective point trails theta at constant velocity."""
    return mean_delay + (0.0 if lookahead else (1.0 - alpha) / alpha)


def simulate(
    algo: str,
    agents: int,
    alpha: float,
    noise: float,
    seed: int,
    updates: int = 600,
    eta: float = 0.05,
    dim: int = 20,
    condition: float = 100.0,
    profile: str = "linear:4",
    jitter: float = 0.1,
    noise_end: float | None = None,
    schedule: str = "constant",
    alpha_end: float | None = None,
    delay_lookahead: float = 0.0,
    staleness_power: float = 0.0,
) -> dict[str, float]:
    """Run ``updates`` asynchronous arrivals of ``algo``; return the mean lag, cosine and delay,
    ``gap``: the objective still to gain at the end as a fraction of the start's, ``J(theta)/J(0)``,
    and ``last_alpha``: the momentum weight the rule gave the final arrival.

    ``noise`` is the norm of the gradient noise relative to the true gradient's norm at the point
    (isotropic), so one gradient's cosine with the truth is about ``1 / sqrt(1 + noise^2)``. With
    ``noise_end`` it rises linearly to that over the run (as measured in RL: gradient_noise.py).
    ``schedule``, ``alpha_end``, ``delay_lookahead`` and ``staleness_power`` are the rules' own (their
    horizon is ``updates``).
    Statistics skip the first ``1/alpha + 4 N`` updates (the momentum's and the pipeline's warm-up)
    and stop once theta is within ``20 eta`` of the optimum, where normalised steps oscillate and
    "direction of travel" loses its meaning.
    """
    rng = np.random.default_rng(seed)
    objective = Quadratic.make(dim, condition, rng)
    rule = make_rule(
        algo,
        schedule=schedule,
        eta0=eta,
        alpha0=alpha,
        horizon=updates,
        alpha_end=alpha_end,
        delay_lookahead=delay_lookahead,
        staleness_power=staleness_power,
    )
    state = RuleState.initial(np.zeros(dim))
    slowdowns = parse_profile(profile, agents) if agents > 1 else [1.0]

    def duration(i: int) -> float:
        return slowdowns[i] * float(np.exp(jitter * rng.normal()))

    # (finish time, agent, point it works on, version the point was issued at)
    pending = [(duration(i), i, state.theta.copy(), 0) for i in range(agents)]
    heapq.heapify(pending)
    x_bar: np.ndarray | None = None
    lags, cosines, delays = [], [], []
    warmup = int(1.0 / alpha) + 4 * agents
    for u in range(updates):
        now, i, point, issued = heapq.heappop(pending)
        exact = objective.gradient(point)
        level = noise if noise_end is None else noise + (noise_end - noise) * u / updates
        g = exact + level * float(np.linalg.norm(exact)) / np.sqrt(dim) * rng.normal(size=dim)
        theta_from = state.theta.copy()
        delay = state.version - issued
        next_point, info = rule.apply(state, [g], [issued])
        x_bar = point.copy() if x_bar is None else (1.0 - info.alpha) * x_bar + info.alpha * point
        true_g = objective.gradient(theta_from)
        far = np.linalg.norm(theta_from - objective.optimum) > 20 * eta
        if state.version > warmup and far:
            lags.append(float(np.linalg.norm(x_bar - theta_from)) / eta)
            d = state.momentum
            cosines.append(float(d @ true_g / (np.linalg.norm(d) * np.linalg.norm(true_g))))
            delays.append(delay)
        heapq.heappush(pending, (now + duration(i), i, next_point, state.version))
    if not lags:
        raise ValueError("no update was measured: raise --updates or lower eta")
    return {
        "gap": objective.value(state.theta) / objective.value(np.zeros(dim)),
        "lag": statistics.fmean(lags),
        "cosine": statistics.fmean(cosines),
        "delay": statistics.fmean(delays),
        "measured": len(lags),
        "last_alpha": info.alpha,
    }


FIELDS = ["algo", "agents", "alpha", "noise", "seed", "delay", "lag", "predicted_lag", "cosine", "gap", "measured"]

ANNEAL_ALPHA_ENDS = (None, 0.1, 0.05)
"""The anneal study's settings: alpha fixed at 0.2, or annealed from 0.2 to each of these."""


def anneal_study(seeds: int, agents: int = 8, updates: int = 1000, noise: float = 1.0, noise_end: float = 6.0) -> str:
    """Markdown: fixed vs annealed alpha for both rules when gradient noise grows over the run.

    The setting mirrors the RL runs: N = 8 under ``linear:4``, eta annealed linearly (``linear``),
    alpha0 0.2, noise rising from about the signal to six times it (gradient_noise.py measured 0.7-1
    at the start and 3-10 late on Swimmer, Hopper and Walker2d).
    """
    lines = [
        f"N = {agents}, linear:4, {updates} updates, eta 0.05 annealed linearly, alpha0 0.2, gradient noise "
        f"rising {noise:g} -> {noise_end:g} x signal; means over {seeds} seeds. gap: objective left at the end "
        "as a fraction of the start's (lower is better); cos: direction quality over the measured updates.",
        "",
        "| alpha | gap: vanilla | gap: afedpg | cos: vanilla | cos: afedpg |",
        "|---|---|---|---|---|",
    ]
    for alpha_end in ANNEAL_ALPHA_ENDS:
        result = {}
        for algo in ("vanilla", "afedpg"):
            runs = [
                simulate(
                    algo, agents, 0.2, noise, seed, updates, noise_end=noise_end, schedule="linear", alpha_end=alpha_end
                )
                for seed in range(seeds)
            ]
            result[algo] = (statistics.fmean(r["gap"] for r in runs), statistics.fmean(r["cosine"] for r in runs))
        label = "0.2 fixed" if alpha_end is None else f"0.2 -> {alpha_end:g}"
        lines.append(
            f"| {label} | {result['vanilla'][0]:.4f} | {result['afedpg'][0]:.4f} "
            f"| {result['vanilla'][1]:.3f} | {result['afedpg'][1]:.3f} |"
        )
    return "\n".join(lines) + "\n"


DELAY_LOOKAHEADS = (0.0, 0.25, 0.5, 1.0)
"""Extra lookahead, in steps per update of the arrival's delay (0 is AFedPG as published)."""


def variant_table(
    column: str,
    settings: list[tuple[str, str, dict]],
    seeds: int,
    noises: tuple[float, ...],
    legend: str = "",
    agents: int = 8,
) -> str:
    """Markdown: lag, direction and end gap of each (rule, label, simulate options) at each noise level
    (N = ``agents``, linear:4, alpha 0.2, eta 0.05 constant, 600 updates; seed means)."""
    lines = [
        f"N = {agents}, linear:4, alpha 0.2, eta 0.05 constant, 600 updates; means over {seeds} seeds. {legend}"
        "lag: steps the momentum's effective point trails theta; cos: direction quality; gap: objective "
        "left at the end (lower is better).",
        "",
        f"| noise | rule | {column} | lag | cos(d, true gradient) | gap |",
        "|---|---|---|---|---|---|",
    ]
    for noise in noises:
        for algo, label, options in settings:
            runs = [simulate(algo, agents, 0.2, noise, seed, **options) for seed in range(seeds)]
            lag, cos, gap = (statistics.fmean(r[key] for r in runs) for key in ("lag", "cosine", "gap"))
            lines.append(f"| {noise:g} | {algo} | {label} | {lag:.1f} | {cos:.3f} | {gap:.4f} |")
    return "\n".join(lines) + "\n"


def delay_compensation_study(seeds: int, noises: tuple[float, ...] = (0.0, 1.0, 3.0)) -> str:
    """AFedPG with its lookahead extended by ``c * delay`` steps (c = extra steps per update of delay),
    against vanilla.

    AFedPG's lookahead cancels the momentum's own lag but not staleness (lag = mean delay). Sampling a
    further ``delay`` steps along the last step, where theta is expected to be when the gradient lands
    (as DANA does for asynchronous SGD), should cancel that too - if the path is straight enough for a
    linear extrapolation over ~7 updates.
    """
    settings = [("vanilla", "-", {})] + [("afedpg", f"{c:g}", {"delay_lookahead": c}) for c in DELAY_LOOKAHEADS]
    legend = "c: extra lookahead in steps per update of delay (0 = AFedPG). "
    return variant_table("c", settings, seeds, noises, legend)


def staleness_study(seeds: int, noises: tuple[float, ...] = (0.0, 1.0, 3.0)) -> str:
    """Both rules with and without FedAsync's weight ``(D + 1)^-0.5`` (``--staleness-power``).

    On MuJoCo the weight lifted vanilla to AFedPG's level on Walker2d and Hopper, and combined with
    the lookahead it cost AFedPG on Hopper; this asks whether the model shows either.
    """
    settings = [(a, f"{p:g}", {"staleness_power": p}) for a in ("vanilla", "afedpg") for p in (0.0, 0.5)]
    return variant_table("staleness power", settings, seeds, noises)


def run_grid(algos: list[str], agents: list[int], alphas: list[float], noises: list[float], seeds: int) -> list[dict]:
    """Every combination, one row per seed."""
    rows = []
    for n in agents:
        for alpha in alphas:
            for noise in noises:
                for algo in algos:
                    for seed in range(seeds):
                        r = simulate(algo, n, alpha, noise, seed)
                        lookahead = algo == "afedpg"
                        rows.append(
                            {
                                "algo": algo,
                                "agents": n,
                                "alpha": alpha,
                                "noise": noise,
                                "seed": seed,
                                **r,
                                "predicted_lag": predicted_lag(alpha, r["delay"], lookahead),
                            }
                        )
    return rows


def summarise(rows: list[dict]) -> str:
    """Markdown: per (N, alpha, noise), both rules' lag (measured / predicted) and cosine, seed means."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["agents"], r["alpha"], r["noise"]), {}).setdefault(r["algo"], []).append(r)
    lines = [
        "| N | alpha | noise | mean delay | lag, steps: vanilla (formula) | lag: afedpg (formula) "
        "| cos(d, grad): vanilla | cos: afedpg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (n, alpha, noise), by_algo in sorted(groups.items()):
        if {"vanilla", "afedpg"} - by_algo.keys():
            continue

        def mean(algo: str, key: str, by_algo: dict[str, list[dict]] = by_algo) -> float:
            return statistics.fmean(r[key] for r in by_algo[algo])

        lines.append(
            f"| {n} | {alpha:g} | {noise:g} | {mean('afedpg', 'delay'):.1f} "
            f"| {mean('vanilla', 'lag'):.1f} ({mean('vanilla', 'predicted_lag'):.1f}) "
            f"| {mean('afedpg', 'lag'):.1f} ({mean('afedpg', 'predicted_lag'):.1f}) "
            f"| {mean('vanilla', 'cosine'):.3f} | {mean('afedpg', 'cosine'):.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Cosine between d and the true gradient against N, one panel per noise level, a line per alpha/rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({r["noise"] for r in rows})
    fig, axes = plt.subplots(1, len(noises), figsize=(5.5 * len(noises), 4), squeeze=False)
    for ax, noise in zip(axes[0], noises, strict=True):
        for colour, alpha in enumerate(sorted({r["alpha"] for r in rows})):
            for algo, style in (("afedpg", "-"), ("vanilla", "--")):
                pts = {}
                for r in rows:
                    if r["noise"] == noise and r["alpha"] == alpha and r["algo"] == algo:
                        pts.setdefault(r["agents"], []).append(r["cosine"])
                if pts:
                    ns = sorted(pts)
                    means = [statistics.fmean(pts[n]) for n in ns]
                    ax.plot(ns, means, style, color=f"C{colour}", marker="o", label=f"{algo} a={alpha:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("agents N")
        ax.set_ylabel("cos(d, true gradient at theta)")
        ax.set_title(f"gradient noise {noise:g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Parse arguments, run the grid, write lookahead_bias.csv, summary.md and lookahead_bias.png."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,2,4,8", help="comma-separated agent counts N")
    parser.add_argument("--alphas", default="0.05,0.1,0.2,0.5", help="comma-separated momentum weights in (0, 1]")
    parser.add_argument("--noises", default="0,1,3", help="gradient noise norm / true gradient norm")
    parser.add_argument("--seeds", type=positive_int, default=5, help="seeds per grid point")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for the CSV, tables and plot (default results/lookahead-bias/, -quick/ with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="N 1,4 x alpha 0.2, noise 0, 1 seed")
    parser.add_argument(
        "--anneal", action="store_true", help="instead: fixed vs annealed alpha under growing noise (anneal.md)"
    )
    parser.add_argument(
        "--delay-compensation",
        action="store_true",
        help="instead: AFedPG's lookahead extended over the arrival's delay (delay_compensation.md)",
    )
    parser.add_argument(
        "--staleness",
        action="store_true",
        help="instead: both rules with and without FedAsync weighting (staleness.md)",
    )
    args = parser.parse_args()
    args.out = args.out or REPO / "benchmarks" / "results" / ("lookahead-bias" + ("-quick" if args.quick else ""))
    studies = {
        "staleness": (staleness_study, "staleness.md", "FedAsync staleness weighting in the lag model"),
        "delay_compensation": (
            delay_compensation_study,
            "delay_compensation.md",
            "Extending AFedPG's lookahead over the delay (DANA-style), simulated",
        ),
    }
    for flag, (study, filename, title) in studies.items():
        if getattr(args, flag):
            table = study(1 if args.quick else args.seeds, noises=(0.0,) if args.quick else (0.0, 1.0, 3.0))
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / filename).write_text(f"# {title}\n\n" + table)
            print(table)
            return
    if args.anneal:
        table = anneal_study(2 if args.quick else args.seeds * 2)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "anneal.md").write_text("# Fixed vs annealed alpha under growing gradient noise\n\n" + table)
        print(table)
        return
    if args.quick:
        args.agents, args.alphas, args.noises, args.seeds = "1,4", "0.2", "0", 1
    try:
        agents = [int(x) for x in args.agents.split(",")]
        alphas = [float(x) for x in args.alphas.split(",")]
        noises = [float(x) for x in args.noises.split(",")]
    except ValueError as err:
        parser.error(f"--agents, --alphas and --noises take comma-separated numbers ({err})")
    if min(agents) < 1 or not all(0 < a <= 1 for a in alphas) or not all(0 <= x < float("inf") for x in noises):
        parser.error("need --agents >= 1, --alphas in (0, 1] and --noises >= 0 (finite)")
    rows = run_grid(["afedpg", "vanilla"], agents, alphas, noises, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "lookahead_bias.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")  # last_alpha: for tests
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    table = summarise(rows)
    (args.out / "summary.md").write_text(
        "# Momentum lag with and without the lookahead (simulated arrivals, real rules)\n\n"
        f"Seed means over {args.seeds} seed(s); profile linear:4; quadratic, 20 dimensions, condition 100; "
        "eta 0.05; 600 updates.\n\n" + table
    )
    plot(rows, args.out / "lookahead_bias.png")
    print(table)


if __name__ == "__main__":
    main()
