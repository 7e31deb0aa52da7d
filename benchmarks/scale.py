"""Scale: many agents on one machine, and the parameter server's memory as N grows.

``train()`` on CartPole-v1 with N agents (fractional CPUs, small batch, hetero none) for N = 8, 32
and 64, every iteration padded to ``--iteration-time`` T so that 64 agents fit on two cores and the
expected rate is exactly N / T. Once every agent has reported (from the ``on_record`` hook, while
the actors are alive) it asks the server actor for its resident memory
(``ParameterServer.memory_rss``) and its state (``export_state``: pickled bytes and the bytes of its
arrays), and reads every agent process's proportional and unique memory from /proc (the agents run
on this machine). Updates per second are over the steady state of progress.csv, after every
agent's first update. The sample budget is ``--startup-per-agent`` * N + ``--steady-seconds``
seconds' worth of updates at N / T: the runner dispatches only once every agent has started
(seconds per agent on two busy cores), so in practice nearly all of it is steady state.

Each agent is a process that imports torch (about 0.2 GiB of its own memory), so a run whose agents
would not fit in the available memory (with ``--margin-gib`` to spare) is skipped and reported as
such instead of pushing a shared machine into the OOM killer.

    python benchmarks/scale.py                       # N = 8, 32, 64; 3 runs each
    python benchmarks/scale.py --quick               # N = 2, 4; one short run each
"""

from __future__ import annotations

import argparse
import csv
import math
import pickle
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from afedpg_ray.cli import OneLineParser, int_list, positive_float, positive_int
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
    """An ``on_record`` hook: notes when every agent has reported, then (N updates later, all agents
    running) measures the server and the agents once."""

    def __init__(self, prefix: str, agents: int) -> None:
        self.prefix, self.agents = prefix, agents
        self.started = time.time()
        self.reported: set[int] = set()
        self.trigger: int | None = None
        self.result: dict[str, Any] = {}

    def __call__(self, record: UpdateRecord) -> None:
        """Note the agent; measure on the N-th record after every agent has reported."""
        if self.trigger is None:
            self.reported.add(record.agent)
            if len(self.reported) == self.agents:
                self.result["seconds_until_every_agent_reported"] = time.time() - self.started
                self.trigger = record.update + self.agents
        if self.trigger is None or record.update < self.trigger or "server_rss_bytes" in self.result:
            return
        import ray

        server = ray.get_actor(f"{self.prefix}-server")
        server_rss, state = ray.get([server.memory_rss.remote(), server.export_state.remote()])
        agent_pids = ray.get([ray.get_actor(f"{self.prefix}-agent-{i}").pid.remote() for i in range(self.agents)])
        agents = [proc_memory(pid) for pid in agent_pids]
        self.result |= {
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
    seconds = args.startup_per_agent * agents + args.steady_seconds
    steps_per_gradient = math.ceil(args.batch / args.num_envs) * args.num_envs
    config = TrainConfig(
        placement_timeout=common.STARTUP_TIMEOUT_S,
        env="CartPole-v1",
        algo="afedpg",
        agents=agents,
        hetero="none",
        iteration_time=args.iteration_time,
        samples=int(seconds * agents / args.iteration_time * steps_per_gradient),
        batch=args.batch,
        num_envs=args.num_envs,
        agent_cpus=args.agent_cpus,
        seed=rep,
        progress=False,
        tensorboard=False,
        out=str(args.out / "runs" / f"n{agents}-{rep}"),
    )
    probe = MemoryProbe(prefix, agents)
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
        "steady_seconds": float(rows[-1]["wall_time"]) - start,
        "updates_per_s": rate,
        "theory_updates_per_s": agents / args.iteration_time,
        "fraction_of_theory": rate * args.iteration_time / agents,
        "mean_delay": result.mean_delay,
        **probe.result,
    }


def fits_in_memory(agents: int, margin_gib: float, patience_s: float = 120.0) -> tuple[bool, float]:
    """Whether ``agents`` agent processes fit in MemAvailable with ``margin_gib`` to spare, waiting up
    to ``patience_s`` for the previous run's processes to exit."""
    deadline = time.time() + patience_s
    while True:
        available = common.machine_facts()["ram_available_gib"]
        if agents * AGENT_MEMORY_GUESS_GIB + margin_gib <= available or time.time() > deadline:
            return agents * AGENT_MEMORY_GUESS_GIB + margin_gib <= available, available
        time.sleep(5.0)


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--agents", type=int_list, default=(8, 32, 64), help="comma-separated N (default 8,32,64)")
    add("--agent-cpus", type=positive_float, default=0.025, help="CPUs each agent requests from Ray")
    add("--batch", type=positive_int, default=64, help="environment steps per gradient")
    add("--num-envs", type=positive_int, default=2, help="environments each agent steps at once")
    add("--iteration-time", type=positive_float, default=2.0, help="T: every iteration lasts T seconds")
    add("--startup-per-agent", type=positive_float, default=3.0, help="start-up seconds budgeted per agent")
    add("--steady-seconds", type=positive_float, default=30.0, help="steady-state seconds budgeted")
    add("--placement-timeout", type=positive_float, default=600.0, help="seconds for all agents to start")
    add("--margin-gib", type=positive_float, default=3.0, help="memory left free for other jobs")
    add("--repeats", type=positive_int, default=3, help="runs per N; the medians are reported")
    add("--out", type=Path, help=f"directory for result.json (default results/{NAME}/, {NAME}-quick/ with --quick)")
    add("--quick", action="store_true", help="N = 2, 4; one short run each")
    args = parser.parse_args()
    args.out = args.out or common.default_out(NAME, args.quick)
    if args.quick:
        args.agents, args.repeats, args.iteration_time = (2, 4), 1, 0.5
        args.startup_per_agent, args.steady_seconds = 1.0, 2.0
    if not args.agents or min(args.agents) < 1:
        parser.error(f"argument --agents: give agent counts of at least 1, e.g. 8,32,64; got {args.agents}")
    return args


def main() -> None:
    """Run every N ``repeats`` times and write ``OUT/result.json``."""
    args = parse_args()
    common.STARTUP_TIMEOUT_S = args.placement_timeout
    common.init_ray()
    sizes: dict[str, Any] = {}
    for agents in args.agents:
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
            "median_fraction_of_theory": common.median(r["fraction_of_theory"] for r in reps),
            "median_server_rss_mib": common.median(r["server_rss_bytes"] for r in reps) / 2**20,
            "median_server_state_pickled_bytes": common.median(r["server_state"]["pickled"] for r in reps),
            "median_agent_uss_mib": common.median(r["agent_uss_bytes_median"] for r in reps) / 2**20,
            "median_seconds_until_every_agent_reported": common.median(
                r.get("seconds_until_every_agent_reported", float("nan")) for r in reps
            ),
        }
        common.print_json(f"N={agents} medians", {k: v for k, v in sizes[str(agents)].items() if k != "repetitions"})
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = common.write_result(args.out, NAME, {"settings": settings, "sizes": sizes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
