"""Sampling throughput: an agent's environment steps per second against raw stepping of the same envs.

Part 1 (one agent, in-process, one torch thread as in an agent actor): ``Sampler.sample_gradient``
(stepping, batched inference, reward scaling, GAE, critic fit, policy gradient) against stepping
identical vector environments (``rollout.make_vec_env``, same ``num_envs``) with pre-drawn random
actions. The two are interleaved gradient by gradient so that load on a shared machine hits both.
Target: ratio >= 0.8 on Hopper-v5.

Part 2 (whole system): ``train()`` with 2 agents on 2 cores, hetero none, samples per second over
the steady state (progress.csv, after every agent's first update), against two references measured
in the same run: twice the in-process single-core raw rate, and two raw-stepping Ray tasks running
side by side (the same process niceness and contention as the agents).

    python benchmarks/sampling.py                 # Hopper-v5, 3 repetitions
    python benchmarks/sampling.py --quick         # fewer gradients and a tiny train() run
    python benchmarks/sampling.py --skip-system --compare-with OLD/rollout.py   # before/after, one run

``--compare-with`` times the ``Sampler`` of another rollout.py (say, the commit before an
optimisation) interleaved with the current one and the raw environments.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from afedpg_ray.cli import OneLineParser, int_list, positive_float, positive_int
from afedpg_ray.config import ConfigError, EstimatorConfig, TrainConfig, config_from_dict
from afedpg_ray.rollout import Sampler, make_vec_env

NAME = "sampling"


def raw_rate(envs: Any, actions: np.ndarray) -> float:
    """Environment steps per second stepping ``envs`` through the pre-drawn ``actions`` (T, n, ...)."""
    start = time.perf_counter()
    step_all(envs, actions)
    return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def step_all(envs: Any, actions: np.ndarray) -> None:
    """Step ``envs`` through the pre-drawn ``actions`` (T, n, ...)."""
    for action in actions:
        envs.step(action)


class Clock:
    """Wall time and this process's CPU time of a block; CPU time is immune to other jobs' preemption."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def random_actions(envs: Any, steps: int, seed: int) -> np.ndarray:
    """``steps`` batches of random actions for ``envs`` (drawn before timing starts)."""
    envs.action_space.seed(seed)
    return np.stack([envs.action_space.sample() for _ in range(steps)])


def load_sampler_class(path: Path) -> type:
    """``Sampler`` of another version of rollout.py (e.g. ``git show HEAD:afedpg_ray/rollout.py``)."""
    spec = importlib.util.spec_from_file_location("baseline_rollout", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.Sampler


def single_agent(args: argparse.Namespace, seed: int, baseline: type | None = None) -> dict:
    """One repetition of part 1: ``args.gradients`` interleaved raw blocks and ``sample_gradient`` calls
    (and as many of the ``baseline`` Sampler class, if given)."""
    torch.set_num_threads(1)
    samplers = {"agent": Sampler(args.env, args.num_envs, seed, args.hidden, EstimatorConfig())}
    if baseline is not None:
        samplers["baseline"] = baseline(args.env, args.num_envs, seed, args.hidden, EstimatorConfig())
    raw_envs = make_vec_env(args.env, args.num_envs)
    raw_envs.reset(seed=seed)
    actions = random_actions(raw_envs, math.ceil(args.batch / args.num_envs), seed)
    for sampler in samplers.values():
        sampler.sample_gradient(args.batch)  # warm-up: first calls allocate and fill caches
    step_all(raw_envs, actions)
    clocks = {name: Clock() for name in ["raw", *samplers]}
    for _ in range(args.gradients):
        with clocks["raw"]:
            step_all(raw_envs, actions)
        for name, sampler in samplers.items():
            with clocks[name]:
                samples = sampler.sample_gradient(args.batch).samples
    raw_envs.close()
    total = args.gradients * samples
    result = {}
    for name, clock in clocks.items():
        result[f"{name}_steps_per_s"] = total / clock.wall
        result[f"{name}_steps_per_cpu_s"] = total / clock.cpu
    for name in samplers:
        samplers[name].close()
        prefix = "" if name == "agent" else f"{name}_"
        result[f"{prefix}ratio"] = clocks["raw"].wall / clocks[name].wall
        result[f"{prefix}cpu_ratio"] = clocks["raw"].cpu / clocks[name].cpu
    return result


def _raw_task(env: str, num_envs: int, seconds: float, seed: int) -> float:
    """Raw random-action stepping for about ``seconds`` inside a Ray worker; returns steps per second."""
    envs = make_vec_env(env, num_envs)
    envs.reset(seed=seed)
    actions = random_actions(envs, 250, seed)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        raw_rate(envs, actions)
        done += actions.shape[0] * num_envs
    return done / (time.perf_counter() - start)


def parallel_raw(env: str, num_envs: int, seconds: float, workers: int) -> float:
    """Summed raw steps per second of ``workers`` one-CPU Ray tasks stepping side by side."""
    import ray

    task = ray.remote(num_cpus=1)(_raw_task)
    return float(sum(ray.get([task.remote(env, num_envs, seconds, i) for i in range(workers)])))


def whole_system(args: argparse.Namespace, out: Path, rep: int) -> dict:
    """One repetition of part 2: a 2-agent ``train()`` run and its steady-state samples per second."""
    from afedpg_ray.train import train

    config = TrainConfig(
        placement_timeout=common.STARTUP_TIMEOUT_S,
        env=args.env,
        algo="afedpg",
        agents=args.agents,
        hetero="none",
        samples=args.system_samples,
        batch=args.batch,
        num_envs=args.num_envs,
        hidden=args.hidden,
        seed=rep,
        progress=False,
        tensorboard=False,
        out=str(out / "runs" / f"system-{rep}"),
    )
    result = train(config, name_prefix=f"bench-sampling-{rep}")
    common.prune_run(result.out_dir)
    with (Path(result.out_dir) / "progress.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    updates_per_s, per_agent = common.per_agent_rate(rows, common.warm_start(rows, args.agents))
    steps_per_gradient = math.ceil(args.batch / args.num_envs) * args.num_envs
    return {
        "samples_per_s": updates_per_s * steps_per_gradient,
        "per_agent_samples_per_s": {a: r * steps_per_gradient for a, r in per_agent.items()},
        "updates": result.updates,
        "wall_time": result.wall_time,
    }


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5", help="gymnasium id to sample (default Hopper-v5)")
    parser.add_argument("--num-envs", type=positive_int, default=4, help="environments stepped at once")
    parser.add_argument("--batch", type=positive_int, default=1000, help="environment steps per gradient")
    parser.add_argument("--hidden", type=int_list, default=(64, 64), help="policy hidden layer widths, e.g. 64,64")
    parser.add_argument("--gradients", type=positive_int, default=8, help="gradients per repetition of part 1")
    parser.add_argument("--repeats", type=positive_int, default=3, help="repetitions; the medians are reported")
    parser.add_argument("--agents", type=positive_int, default=2, help="agents in part 2")
    parser.add_argument("--system-samples", type=positive_int, default=60_000, help="sample budget of each part-2 run")
    parser.add_argument(
        "--raw-seconds", type=positive_float, default=10.0, help="duration of the parallel raw reference"
    )
    parser.add_argument("--skip-system", action="store_true", help="only part 1 (no Ray)")
    parser.add_argument("--compare-with", type=Path, help="another rollout.py whose Sampler part 1 also times")
    parser.add_argument(
        "--out", type=Path, help=f"directory for result.json (default benchmarks/results/{NAME}/, -quick/ with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a few gradients, one tiny train() run")
    args = parser.parse_args()
    args.out = args.out or common.default_out(NAME, args.quick)
    if args.quick:
        args.gradients, args.repeats, args.system_samples, args.raw_seconds = 2, 1, 4000, 1.0
    options = {"env": args.env, "num_envs": args.num_envs, "batch": args.batch, "hidden": args.hidden}
    try:  # the options part 2's train() takes, checked before part 1 spends minutes
        config_from_dict({**options, "agents": args.agents, "samples": args.system_samples, "hetero": "none"})
    except ConfigError as err:
        parser.error(str(err))
    return args


def main() -> None:
    """Run both parts and write ``OUT/result.json``."""
    args = parse_args()
    baseline = load_sampler_class(args.compare_with) if args.compare_with else None
    single = []
    for rep in range(args.repeats):
        single.append(single_agent(args, seed=rep, baseline=baseline))
        common.print_json(f"single agent, repetition {rep}", single[-1])
    medians = {f"median_{key}": common.median(r[key] for r in single) for key in single[0]}
    payload: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "single_agent": {"repetitions": single, **medians, "target_ratio": 0.8},
    }
    if not args.skip_system:
        common.init_ray()
        system = []
        for rep in range(args.repeats):
            run = whole_system(args, args.out, rep)
            run["parallel_raw_steps_per_s"] = parallel_raw(args.env, args.num_envs, args.raw_seconds, args.agents)
            run["twice_single_raw_steps_per_s"] = args.agents * single[rep]["raw_steps_per_s"]
            run["ratio_vs_parallel_raw"] = run["samples_per_s"] / run["parallel_raw_steps_per_s"]
            run["ratio_vs_twice_single_raw"] = run["samples_per_s"] / run["twice_single_raw_steps_per_s"]
            system.append(run)
            common.print_json(f"whole system, repetition {rep}", run)
        payload["whole_system"] = {
            "repetitions": system,
            "median_samples_per_s": common.median(r["samples_per_s"] for r in system),
            "median_ratio_vs_parallel_raw": common.median(r["ratio_vs_parallel_raw"] for r in system),
            "median_ratio_vs_twice_single_raw": common.median(r["ratio_vs_twice_single_raw"] for r in system),
        }
    path = common.write_result(args.out, NAME, payload)
    for part in ("single_agent", "whole_system"):
        if part in payload:
            common.print_json(f"{part} medians", {k: v for k, v in payload[part].items() if k != "repetitions"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
