"""How noisy is one agent's policy gradient? The signal-to-noise ratio that decides what the lookahead can win.

benchmarks/lookahead_bias.py shows the lookahead's gain in step direction shrinking as gradient
noise grows. This script places the real tasks on that noise axis. At a fixed policy it draws M
independent gradients ``g_i = mu + e_i`` (each from one batch, with the run's estimator), and
estimates

    ||mu||^2 ~ mean_{i != j} g_i . g_j        E||e||^2 ~ mean_i ||g_i||^2 - ||mu||^2

so ``noise ratio = sqrt(E||e||^2) / ||mu||`` (``noise`` in lookahead_bias.py) and the expected cosine
of one gradient with the true one is about ``1 / sqrt(1 + ratio^2)``. It is measured at the initial
policy and at the final point of each finished run given with ``--trained`` that exists (the
checkpoint's theta with its shared observation and return statistics). The agent's private critic
is not checkpointed: ``--warmup`` batches at the point fit a fresh one first.

    python benchmarks/gradient_noise.py                  # 4 MuJoCo tasks, initial and learning-1m's seed 0
    python benchmarks/gradient_noise.py --quick          # CartPole, initial policy only (for the test)
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import torch

from afedpg_ray.checkpoint import CheckpointError, load_checkpoint
from afedpg_ray.cli import OneLineParser, non_negative_int, positive_int
from afedpg_ray.config import ConfigError, TrainConfig, check_env_id, config_from_dict, load_config
from afedpg_ray.envs import env_defaults
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.policy import get_flat
from afedpg_ray.rollout import Sampler

REPO = Path(__file__).resolve().parent.parent


def noise_ratio(grads: np.ndarray) -> tuple[float, float]:
    """``(noise norm / signal norm, mean pairwise cosine)`` of ``M >= 2`` gradients (rows) of one mean.

    The ratio is ``inf`` when the pairwise products do not show a positive signal.
    """
    m = len(grads)
    if m < 2:
        raise ValueError("need at least two gradients")
    gram = grads @ grads.T
    signal = (gram.sum() - np.trace(gram)) / (m * (m - 1))
    power = float(np.trace(gram)) / m
    norms = np.sqrt(np.diag(gram))
    cosines = [gram[i, j] / (norms[i] * norms[j]) for i, j in itertools.combinations(range(m), 2)]
    ratio = float(np.sqrt((power - signal) / signal)) if signal > 0 else float("inf")
    return ratio, float(np.mean(cosines))


def measure(
    config: TrainConfig,
    theta: np.ndarray | None,
    obs: RunningStats | None,
    ret: RunningStats | None,
    gradients: int,
    warmup: int,
    seed: int,
) -> tuple[float, float]:
    """Noise ratio and mean pairwise cosine of ``gradients`` batch gradients at ``theta``.

    ``theta`` None means the initial policy; its observation and return statistics are then those
    the warm-up batches gather (as the server would merge them), frozen before the measured draws.
    """
    torch.manual_seed(seed)
    sampler = Sampler(config.env, config.num_envs, seed, config.hidden, config.estimator)
    try:
        start = get_flat(sampler.policy) if theta is None else theta
        obs = obs if obs is not None else RunningStats.empty(sampler.obs_dim)
        ret = ret if ret is not None else RunningStats.empty(1)
        sampler.set_policy(start.astype(np.float32), obs, ret)
        for _ in range(warmup):  # fits the private critic (and, at the start, the statistics)
            est = sampler.sample_gradient(config.batch)
            if theta is None:
                obs, ret = obs.merge(est.obs_delta), ret.merge(est.return_delta)
                sampler.set_policy(start.astype(np.float32), obs, ret)
        grads = np.stack([sampler.sample_gradient(config.batch).grad for _ in range(gradients)])
    finally:
        sampler.close()
    return noise_ratio(grads.astype(np.float64))


def trained_point(run_dir: Path) -> tuple[TrainConfig, np.ndarray, RunningStats, RunningStats]:
    """A finished run's config, final theta and shared statistics (raises CheckpointError if absent)."""
    state = load_checkpoint(run_dir)
    config = load_config(run_dir / "config.json")
    return (
        config,
        np.asarray(state["rule_state"]["theta"]),
        saved_stats(state["obs_stats"]),
        saved_stats(state["return_stats"]),
    )


def saved_stats(saved: tuple) -> RunningStats:
    """Statistics as the server checkpoints them: ``(count, mean, m2)``."""
    count, mean, m2 = saved
    return RunningStats(float(count), np.asarray(mean), np.asarray(m2))


def main() -> None:
    """Measure every environment at its initial and trained policy; write noise.csv and summary.md."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--envs", default="Swimmer-v5,Hopper-v5,Walker2d-v5,HalfCheetah-v5", help="comma-separated gymnasium ids"
    )
    parser.add_argument(
        "--trained",
        action="append",
        metavar="LABEL=RUN_DIR",
        help="a finished run to measure at, {env} filled in; repeatable "
        "(default: after 1M=benchmarks/results/learning-1m/runs/{env}-afedpg-n8-s0)",
    )
    parser.add_argument("--gradients", type=positive_int, default=16, help="batch gradients per point (at least 2)")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="batches sampled before measuring")
    parser.add_argument("--seed", type=non_negative_int, default=123, help="seed of the sampled batches")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for noise.csv and summary.md (default results/gradient-noise/, -quick/ with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="CartPole, initial policy, 4 gradients")
    args = parser.parse_args()
    args.out = args.out or REPO / "benchmarks" / "results" / ("gradient-noise" + ("-quick" if args.quick else ""))
    if args.quick:
        args.envs, args.gradients, args.warmup = "CartPole-v1", 4, 2
    if args.gradients < 2:
        parser.error("--gradients must be at least 2")
    trained = args.trained or [f"after 1M={REPO}/benchmarks/results/learning-1m/runs/{{env}}-afedpg-n8-s0"]
    if any("=" not in spec for spec in trained):
        parser.error("--trained takes LABEL=RUN_DIR")
    for env in args.envs.split(","):  # every environment before the first one's minutes of sampling
        try:
            check_env_id(env)
        except ConfigError as err:
            parser.error(f"argument --envs: {str(err).removeprefix('--env: ')}")

    rows = []
    for env in args.envs.split(","):
        points: list[tuple[str, TrainConfig, np.ndarray | None, RunningStats | None, RunningStats | None]] = []
        table = env_defaults(env)
        fresh = config_from_dict({**table, "env": env, "estimator": table.get("estimator", {})})
        points.append(("initial", fresh, None, None, None))
        for spec in trained:
            label, pattern = spec.split("=", 1)
            try:
                points.append((label, *trained_point(Path(pattern.format(env=env)))))
            except CheckpointError as err:
                print(f"{env}: point {label!r} skipped: {err}")
        for label, config, theta, obs, ret in points:
            ratio, cosine = measure(config, theta, obs, ret, args.gradients, args.warmup, args.seed)
            rows.append(
                {
                    "env": env,
                    "point": label,
                    "batch": config.batch,
                    "gradients": args.gradients,
                    "noise_ratio": round(ratio, 3),
                    "pairwise_cosine": round(cosine, 4),
                    "cosine_to_truth": round(float(1.0 / np.sqrt(1.0 + ratio**2)), 4),
                }
            )
            print(rows[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "noise.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| env | policy | batch | noise ratio | cos(one gradient, true) | mean pairwise cos |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        detected = np.isfinite(r["noise_ratio"])
        ratio = f"{r['noise_ratio']:.2f}" if detected else f"no signal in {r['gradients']}"
        cosine = f"{r['cosine_to_truth']:.3f}" if detected else "~0"
        lines.append(f"| {r['env']} | {r['point']} | {r['batch']} | {ratio} | {cosine} | {r['pairwise_cosine']:.3f} |")
    (args.out / "summary.md").write_text(
        f"# One batch gradient's noise ({args.gradients} gradients per point, {args.warmup} warm-up batches)\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
