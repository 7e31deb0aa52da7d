"""Scale: many agents on one machine, and the parameter server's memory as N grows.

``train()`` on CartPole-v1 with N agents (fractional CPUs, small batch, hetero none) for N = 8, 32
and 64. Midway through each run (from the ``on_record`` hook, while the actors are alive) it asks
the server actor for its resident memory (``ParameterServer.memory_rss``) and its state
(``export_state``: pickled bytes and the bytes of its arrays), and reads every agent process's
proportional and unique memory from /proc (the agents run on this machine). Updates per second are
over the steady state of progress.csv (after every agent's first update).

Each agent is a process that imports torch (about 0.25 GiB unique memory), so N = 64 needs tens of
GiB less what the machine can spare: a run whose agents would not fit in the available memory (with
``--margin-gib`` to spare) is skipped and reported as such instead of pushing a shared machine into
the OOM killer.

    python benchmarks/scale.py                       # N = 8, 32, 64; 3 runs each
    python benchmarks/scale.py --quick               # N = 2, 4; one short run each
"""

from __future__ import annotations

import argparse
import csv
import pickle
from pathlib import Path
from typing import Any

import common
import numpy as np

from afedpg_ray.config import TrainConfig
from afedpg_ray.messages import UpdateRecord

NAME = "scale"
AGENT_MEMORY_GUESS_GIB = 0.22
"""Memory of one agent process (Ray worker + torch + gymnasium; ~0.19 GiB PSS measured), for the pre-flight check."""


def proc_memory(pid: int) -> dict[str, int]:
    """Resident, proportional and unique (private) bytes of process ``pid`` (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return {
        "rss": fields.get("Rss", 0),
        "pss": fields.get("Pss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def state_bytes(state: dict[str, Any]) -> dict[str, int]:
    """Size of the server's exported state: pickled, and the bytes held in its numpy arrays."""
    arrays = 0
    for value in state["rule_state"].values():
        if isinstance(value, np.ndarray):
            arrays += value.nbytes
        elif isinstance(value, dict):
            arrays += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return {"pickled": len(pickle.dumps(state)), "arrays": arrays, "agent_versions": len(state["agent_versions"])}


class MemoryProbe:
    """An ``on_record`` hook that measures the server and agents once, when half the budget is spent."""

    def __init__(self, prefix: str, agents: int, samples: int) -> None:
        self.prefix, self.agents, self.trigger = prefix, agents, samples // 2
        self.result: dict[str, Any] = {}

    def __call__(self, record: UpdateRecord) -> None:
        """Measure on the first record past the trigger."""
        if self.result or record.samples_total < self.trigger:
            return
        import ray

        server = ray.get_actor(f"{self.prefix}-server")
        server_rss, state = ray.get([server.memory_rss.remote(), server.export_state.remote()])
        agent_pids = ray.get([ray.get_actor(f"{self.prefix}-agent-{i}").pid.remote() for i in range(self.agents)])
        agents = [proc_memory(pid) for pid in agent_pids]
        self.result = {
            "at_update": record.update,
            "server_rss_bytes": server_rss,
            "server_state": state_bytes(state),
            "agents_pss_bytes_total": sum(a["pss"] for a in agents),
            "agent_uss_bytes_median": common.median(a["uss"] for a in agents),
            "agent_rss_bytes_median": common.median(a["rss"] for a in agents),
        }


def run_scale(args: argparse.Namespace, agents: int, rep: int) -> dict[str, Any]:
    """One ``train()`` run with ``agents`` agents; its steady-state rate and memory readings."""
    from afedpg_ray.train import train

    prefix = f"bench-scale-n{agents}-r{rep}"
    samples = args.updates_per_agent * agents * args.batch
    config = TrainConfig(
        env="CartPole-v1",
        algo="afedpg",
        agents=agents,
        hetero="none",
        samples=samples,
        batch=args.batch,
        num_envs=args.num_envs,
        agent_cpus=args.agent_cpus,
        seed=rep,
        progress=False,
        tensorboard=False,
        out=str(args.out / "runs" / f"n{agents}-{rep}"),
    )
    probe = MemoryProbe(prefix, agents, samples)
    result = train(config, name_prefix=prefix, on_record=probe)
    common.prune_run(result.out_dir)
    with (Path(result.out_dir) / "progress.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    start = common.warm_start(rows, agents)
    rate, _ = common.per_agent_rate(rows, start)
    return {
        "agents": agents,
        "updates": result.updates,
        "wall_time": result.wall_time,
        "startup_seconds": start,
        "updates_per_s": rate,
        "mean_delay": result.mean_delay,
        **probe.result,
    }


def fits_in_memory(agents: int, margin_gib: float) -> tuple[bool, float]:
    """Whether ``agents`` more agent processes fit in MemAvailable with ``margin_gib`` to spare."""
    available = common.machine_facts()["ram_available_gib"]
    return agents * AGENT_MEMORY_GUESS_GIB + margin_gib <= available, available


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="8,32,64", help="comma-separated N")
    parser.add_argument("--agent-cpus", type=float, default=0.025)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--updates-per-agent", type=int, default=12, help="sample budget = this * N * batch")
    parser.add_argument("--placement-timeout", type=float, default=600.0, help="seconds for all agents to start")
    parser.add_argument("--margin-gib", type=float, default=3.0, help="memory left free for other jobs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=common.default_out(NAME))
    parser.add_argument("--quick", action="store_true", help="N = 2, 4; one short run each")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.updates_per_agent, args.repeats = "2,4", 4, 1
    return args


def main() -> None:
    """Run every N ``repeats`` times and write ``OUT/result.json``."""
    args = parse_args()
    common.STARTUP_TIMEOUT_S = args.placement_timeout
    common.init_ray()
    sizes: dict[str, Any] = {}
    for agents in (int(n) for n in args.agents.split(",")):
        fits, available = fits_in_memory(agents, args.margin_gib)
        if not fits:
            reason = f"skipped: {agents} agents x ~{AGENT_MEMORY_GUESS_GIB} GiB + {args.margin_gib} GiB margin"
            sizes[str(agents)] = {"skipped": f"{reason} > {available} GiB available"}
            common.print_json(f"N={agents}", sizes[str(agents)])
            continue
        reps = []
        for rep in range(args.repeats):
            reps.append(run_scale(args, agents, rep))
            common.print_json(f"N={agents} repetition {rep}", reps[-1])
        sizes[str(agents)] = {
            "repetitions": reps,
            "median_updates_per_s": common.median(r["updates_per_s"] for r in reps),
            "median_server_rss_mib": common.median(r["server_rss_bytes"] for r in reps) / 2**20,
            "median_server_state_pickled_bytes": common.median(r["server_state"]["pickled"] for r in reps),
            "median_agent_uss_mib": common.median(r["agent_uss_bytes_median"] for r in reps) / 2**20,
            "median_startup_seconds": common.median(r["startup_seconds"] for r in reps),
        }
        common.print_json(f"N={agents} medians", {k: v for k, v in sizes[str(agents)].items() if k != "repetitions"})
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = common.write_result(args.out, NAME, {"settings": settings, "sizes": sizes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
