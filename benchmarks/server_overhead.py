"""Server overhead: time per update of ``ParameterServer.apply``, and the driver loop's update ceiling.

Part 1: ``ParameterServer.apply`` for policies of about 10k, 100k and 1M parameters (Hopper-v5,
two hidden layers of 92, 309 and 992), with a fake ``GradientMeta`` and a random gradient: once
in-process (no Ray; pure server cost) and once inside a Ray actor (as deployed: Ray metrics on).
Target: at most 1 ms per update at 100k.

Part 2: the most updates per second the real ``RayRunner`` loop sustains when agents cost nothing:
``TrivialAgent`` actors (``RolloutAgent.step``'s signature, replying at once with a precomputed
gradient) plugged into ``RayRunner`` by overriding its agent factory (runtime.py is unchanged), and,
for comparison, real agents through ``train()`` on CartPole-v1 with batch = num_envs = 1. Rates are
over the steady state of progress.csv. Target: at least 300 updates per second.

    python benchmarks/server_overhead.py            # 3 repetitions
    python benchmarks/server_overhead.py --quick
    git show 8d85462:afedpg_ray/runtime.py > /tmp/old_runtime.py
    python benchmarks/server_overhead.py --compare-with /tmp/old_runtime.py   # before/after, interleaved
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from afedpg_ray.cli import OneLineParser, positive_int
from afedpg_ray.config import TrainConfig
from afedpg_ray.messages import Dispatch, GradientMeta
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.server import ParameterServer

NAME = "server_overhead"
SIZES = {"10k": (92, 92), "100k": (309, 309), "1M": (992, 992)}
"""Hidden widths that put a Hopper-v5 policy (11 observations, 3 actions) near each size."""


def fake_meta(agent: int, version: int, obs_dim: int) -> GradientMeta:
    """A valid arrival from ``agent`` computed at ``version`` (1000 samples, two finished episodes)."""
    stats = RunningStats.of(np.random.default_rng(version).normal(size=(1000, obs_dim)))
    return GradientMeta(agent, version, 1000, (10.0, 12.0), (50, 60), stats, 0.1, 0.0, 1.0)


def time_applies(server: ParameterServer, updates: int, seed: int = 0) -> list[float]:
    """Seconds of each of ``updates`` ``apply`` calls from one agent with a fixed random gradient."""
    server.dispatch(0)
    grad = np.random.default_rng(seed).normal(size=server.num_params)
    obs_dim = server.obs_stats.mean.size
    metas = [fake_meta(0, server.state.version + k, obs_dim) for k in range(updates)]
    times = []
    for meta in metas:
        start = time.perf_counter()
        _, record = server.apply(meta, grad)
        times.append(time.perf_counter() - start)
        assert record.accepted, record.reason
    return times


class TimedServer(ParameterServer):
    """The parameter server with one extra method, to time ``apply`` inside a Ray actor."""

    def time_applies(self, updates: int) -> tuple[list[float], int]:
        """:func:`time_applies` on this server, and its number of parameters."""
        return time_applies(self, updates), self.num_params


def server_config(hidden: tuple[int, ...]) -> TrainConfig:
    """AFedPG on Hopper-v5 with the given hidden widths."""
    return TrainConfig(env="Hopper-v5", algo="afedpg", agents=1, hidden=hidden, progress=False, tensorboard=False)


def apply_cost(updates: int, repeats: int, in_ray: bool) -> dict[str, Any]:
    """Median and p90 milliseconds per ``apply`` for every policy size, ``repeats`` fresh servers each."""
    import ray

    results = {}
    for label, hidden in SIZES.items():
        per_rep = []
        for _ in range(repeats):
            if in_ray:
                actor = ray.remote(TimedServer).options(num_cpus=0).remote(server_config(hidden))
                times, params = ray.get(actor.time_applies.remote(updates))
                ray.kill(actor)
            else:
                server = ParameterServer(server_config(hidden))
                times = time_applies(server, updates)
                params = server.num_params
            per_rep.append({"median_ms": 1e3 * common.median(times), "p90_ms": 1e3 * float(np.percentile(times, 90))})
        results[label] = {
            "hidden": list(hidden),
            "params": params,
            "repetitions": per_rep,
            "median_ms": common.median(r["median_ms"] for r in per_rep),
            "p90_ms": common.median(r["p90_ms"] for r in per_rep),
        }
        common.print_json(f"apply {'in a Ray actor' if in_ray else 'in-process'} {label}", results[label])
    return results


class TrivialAgent:
    """An agent that costs nothing: replies to every dispatch with the same precomputed gradient."""

    def __init__(
        self,
        agent_id: int,
        config: TrainConfig,
        slowdown: float = 1.0,
        comm_delay: float = 0.0,
        restarts: int = 0,
        session_start: int = 0,
    ) -> None:
        from afedpg_ray.policy import build_policy, num_params

        policy, obs_dim = build_policy(config.env, config.hidden, config.estimator.log_std_init)
        self.agent_id = agent_id
        self.grad = np.random.default_rng(agent_id).normal(size=num_params(policy))
        self.obs_delta = RunningStats.of(np.random.default_rng(agent_id).normal(size=(1, obs_dim)))

    def step(self, dispatch: Dispatch) -> tuple[GradientMeta, np.ndarray]:
        """One "iteration": one sample, no episodes, the precomputed gradient."""
        meta = GradientMeta(self.agent_id, dispatch.version, 1, (), (), self.obs_delta, 0.0, 0.0, 1.0)
        return meta, self.grad

    def node_id(self) -> str:
        """The Ray node this agent runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        """Process id."""
        import os

        return os.getpid()


def load_runtime(path: Path) -> Any:
    """Another version of ``afedpg_ray/runtime.py`` (say, ``git show OLD:afedpg_ray/runtime.py``) as a module."""
    spec = importlib.util.spec_from_file_location("runtime_compared", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def trivial_runner_class(runtime: Any = None) -> type:
    """``RayRunner`` (of ``runtime``, default the current one) whose agents are :class:`TrivialAgent` actors."""
    import ray

    if runtime is None:
        from afedpg_ray import runtime

    class TrivialRunner(runtime.RayRunner):
        def _make_agent(self, slot: Any) -> Any:
            actor_cls = ray.remote(TrivialAgent).options(name=f"{self.prefix}-agent-{slot.agent_id}", **slot.options)
            return actor_cls.remote(slot.agent_id, self.config)

    return TrivialRunner


def loop_config(agents: int, updates: int, out: Path) -> TrainConfig:
    """CartPole-v1, one environment step per gradient, so the sample budget counts updates."""
    return TrainConfig(
        placement_timeout=common.STARTUP_TIMEOUT_S,
        env="CartPole-v1",
        algo="afedpg",
        agents=agents,
        hetero="none",
        samples=updates,
        batch=1,
        num_envs=1,
        agent_cpus=0.25,
        progress=False,
        tensorboard=False,
        out=str(out),
    )


def steady_rate(run_dir: Path, warmup: float) -> float:
    """Accepted updates per second in progress.csv after the first ``warmup`` fraction of updates."""
    with (run_dir / "progress.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    start = float(rows[int(warmup * len(rows))]["wall_time"])
    return common.window_rate(rows, start)


def trivial_loop(agents: int, updates: int, out: Path, prefix: str, runtime: Any = None) -> float:
    """Updates per second of the real driver loop (of ``runtime``) with trivial agents (steady state)."""
    from afedpg_ray.runlog import RunLog

    config = loop_config(agents, updates, out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, config.samples, show_progress=False, tensorboard=False)
    try:
        runner = trivial_runner_class(runtime)(config, log, out, prefix)
        runner.run()
        import ray

        ray.kill(runner.server, no_restart=True)
    finally:
        log.close()
    common.prune_run(out)
    return steady_rate(out, warmup=0.2)


def real_loop(agents: int, updates: int, out: Path, prefix: str) -> float:
    """Updates per second of ``train()`` with real agents doing one environment step per gradient."""
    from afedpg_ray.train import train

    train(loop_config(agents, updates, out), name_prefix=prefix)
    common.prune_run(out)
    return steady_rate(out, warmup=0.2)


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=positive_int, default=300, help="apply calls timed per server")
    parser.add_argument("--repeats", type=positive_int, default=3, help="repetitions; the medians are reported")
    parser.add_argument("--loop-agents", type=positive_int, default=4, help="agents in the driver-loop runs")
    parser.add_argument("--loop-updates", type=positive_int, default=4000, help="updates per driver-loop run")
    parser.add_argument(
        "--out", type=Path, help=f"directory for result.json (default benchmarks/results/{NAME}/, -quick/ with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="few updates, one repetition")
    parser.add_argument(
        "--compare-with", type=Path, help="another runtime.py whose loop is timed too, interleaved with the current one"
    )
    args = parser.parse_args()
    args.out = args.out or common.default_out(NAME, args.quick)
    if args.quick:
        args.updates, args.repeats, args.loop_updates = 30, 1, 300
    return args


def main() -> None:
    """Run both parts and write ``OUT/result.json``."""
    args = parse_args()
    payload: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    payload["apply_in_process"] = apply_cost(args.updates, args.repeats, in_ray=False)
    common.init_ray()
    payload["apply_in_ray_actor"] = apply_cost(args.updates, args.repeats, in_ray=True)
    loops: dict[str, list[float]] = {"trivial_agents": [], "real_agents_batch_1": []}
    compared = load_runtime(args.compare_with) if args.compare_with else None
    if compared is not None:
        loops["trivial_agents_compared_runtime"] = []
    for rep in range(args.repeats):
        if compared is not None:
            run_dir = args.out / "runs" / f"compared-{rep}"
            rate = trivial_loop(args.loop_agents, args.loop_updates, run_dir, f"bench-cmp-{rep}", compared)
            loops["trivial_agents_compared_runtime"].append(rate)
        run_dir = args.out / "runs" / f"trivial-{rep}"
        loops["trivial_agents"].append(trivial_loop(args.loop_agents, args.loop_updates, run_dir, f"bench-triv-{rep}"))
        run_dir = args.out / "runs" / f"batch1-{rep}"
        loops["real_agents_batch_1"].append(real_loop(args.loop_agents, args.loop_updates, run_dir, f"bench-b1-{rep}"))
        common.print_json(f"driver loop updates/s, repetition {rep}", {k: v[-1] for k, v in loops.items()})
    payload["driver_loop"] = {
        "agents": args.loop_agents,
        "config": dataclasses.asdict(loop_config(args.loop_agents, args.loop_updates, Path("."))),
        "updates_per_s": loops,
        "median_updates_per_s": {k: common.median(v) for k, v in loops.items()},
        "target_updates_per_s": 300,
    }
    payload["target_ms_at_100k"] = 1.0
    path = common.write_result(args.out, NAME, payload)
    common.print_json("driver loop medians", payload["driver_loop"]["median_updates_per_s"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
