"""Update rate against theory: AFedPG's updates per second and FedPG's rounds per second.

With a fixed ``--iteration-time`` T every agent's iteration is padded to exactly t_i = s_i * T, so
on a cheap environment (CartPole-v1, small batch) the padding dominates and theory is exact:
AFedPG applies ``sum_i 1/t_i`` updates per second, a FedPG round takes ``max_i t_i``, and AFedPG's
time per update beats FedPG's round time / N by ``(t_max / N) * sum_i 1/t_i``
(``heterogeneity.theoretical_speedup``). Rates are measured over the steady state of progress.csv:
AFedPG after every agent's first update (each agent's rate from its own inter-arrival times,
summed), FedPG between the first and last completed round. Target: >= 0.95 of theory for each.

    python benchmarks/update_rate.py                    # N=8, linear:4, sqrt, straggler:10; 3 runs
    python benchmarks/update_rate.py --quick            # N=2, linear:4 only, short runs
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import common

from afedpg_ray.cli import OneLineParser, positive_float, positive_int
from afedpg_ray.config import ConfigError, TrainConfig
from afedpg_ray.heterogeneity import parse_profile, theoretical_speedup

NAME = "update_rate"


def run_config(args: argparse.Namespace, profile: str, algo: str, rep: int) -> TrainConfig:
    """One run: ``algo`` under ``profile``, with a sample budget that lasts about ``args.seconds``."""
    times = [s * args.iteration_time for s in parse_profile(profile, args.agents)]
    per_second = sum(1 / t for t in times) if algo != "fedpg" else args.agents / max(times)
    steps_per_gradient = math.ceil(args.batch / args.num_envs) * args.num_envs
    seconds = max(args.seconds, args.min_periods * max(times)) + max(times)  # plus one slowest period of start-up
    return TrainConfig(
        placement_timeout=common.STARTUP_TIMEOUT_S,
        env="CartPole-v1",
        algo=algo,
        agents=args.agents,
        hetero=profile,
        iteration_time=args.iteration_time,
        samples=int(seconds * per_second * steps_per_gradient),
        batch=args.batch,
        num_envs=args.num_envs,
        agent_cpus=args.agent_cpus,
        seed=rep,
        progress=False,
        tensorboard=False,
        out=str(args.out / "runs" / f"{profile.replace(':', '')}-{algo}-{rep}"),
    )


def read_rows(run_dir: str) -> list[dict[str, str]]:
    """progress.csv of a run."""
    with (Path(run_dir) / "progress.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def async_rate(rows: list[dict[str, str]], agents: int) -> dict[str, Any]:
    """AFedPG updates per second after every agent's first update."""
    start = common.warm_start(rows, agents)
    total, per_agent = common.per_agent_rate(rows, start)
    return {"updates_per_s": total, "window_count_rate": common.window_rate(rows, start), "per_agent": per_agent}


def round_rate(rows: list[dict[str, str]]) -> dict[str, Any]:
    """FedPG rounds per second between the first and the last completed round."""
    finished: dict[int, float] = {}
    for row in rows:
        if row["accepted"] == "True":
            finished.setdefault(int(row["update"]), float(row["wall_time"]))
    times = sorted(finished.values())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {"rounds_per_s": rate, "rounds": len(times)}


def measure_profile(args: argparse.Namespace, profile: str, rep: int) -> dict[str, Any]:
    """One AFedPG and one FedPG run under ``profile``; measured rates next to theory."""
    from afedpg_ray.train import train

    times = [s * args.iteration_time for s in parse_profile(profile, args.agents)]
    afedpg = train(run_config(args, profile, "afedpg", rep), name_prefix=f"bench-rate-a{rep}")
    fedpg = train(run_config(args, profile, "fedpg", rep), name_prefix=f"bench-rate-f{rep}")
    common.prune_run(afedpg.out_dir)
    common.prune_run(fedpg.out_dir)
    measured_async = async_rate(read_rows(afedpg.out_dir), args.agents)
    measured_sync = round_rate(read_rows(fedpg.out_dir))
    theory_async, theory_rounds = sum(1 / t for t in times), 1 / max(times)
    speedup = measured_async["updates_per_s"] / (args.agents * measured_sync["rounds_per_s"])
    return {
        "iteration_times": times,
        "afedpg": measured_async,
        "fedpg": measured_sync,
        "theory_updates_per_s": theory_async,
        "theory_rounds_per_s": theory_rounds,
        "theory_speedup": theoretical_speedup(times),
        "speedup": speedup,
        "afedpg_fraction_of_theory": measured_async["updates_per_s"] / theory_async,
        "fedpg_fraction_of_theory": measured_sync["rounds_per_s"] / theory_rounds,
        "speedup_fraction_of_theory": speedup / theoretical_speedup(times),
    }


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--profiles", default="linear:4,sqrt,straggler:10", help="comma-separated --hetero profiles to measure")
    add("--agents", type=positive_int, default=8, help="agents per run")
    add("--iteration-time", type=positive_float, default=0.5, help="T: agent i's iteration lasts s_i * T")
    add("--batch", type=positive_int, default=64, help="environment steps per gradient")
    add("--num-envs", type=positive_int, default=2, help="environments each agent steps at once")
    add("--agent-cpus", type=positive_float, default=0.2, help="CPUs each agent requests from Ray")
    add("--seconds", type=positive_float, default=25.0, help="steady-state length of each run")
    add("--min-periods", type=positive_int, default=5, help="...and at least this many slowest periods")
    add("--repeats", type=positive_int, default=3, help="runs per profile; the medians are reported")
    add("--out", type=Path, help=f"directory for result.json (default results/{NAME}/, {NAME}-quick/ with --quick)")
    add("--quick", action="store_true", help="N=2, linear:4 only, one short run")
    args = parser.parse_args()
    args.out = args.out or common.default_out(NAME, args.quick)
    if args.quick:
        args.profiles, args.agents, args.repeats = "linear:4", 2, 1
        args.iteration_time, args.seconds, args.min_periods = 0.2, 2.0, 3
    for profile in args.profiles.split(","):  # before Ray starts, not at the second profile
        try:
            parse_profile(profile, args.agents, 0)
        except ConfigError as err:
            parser.error(f"argument --profiles: {str(err).removeprefix('--hetero: ')}")
    return args


def main() -> None:
    """Measure every profile ``repeats`` times and write ``OUT/result.json``."""
    args = parse_args()
    common.init_ray()
    profiles: dict[str, Any] = {}
    for profile in args.profiles.split(","):
        reps = []
        for rep in range(args.repeats):
            reps.append(measure_profile(args, profile, rep))
            summary = {k: v for k, v in reps[-1].items() if "fraction" in k or k in ("speedup", "theory_speedup")}
            common.print_json(f"{profile} repetition {rep}", summary)
        keys = [k for k in reps[0] if "fraction" in k or k in ("speedup", "theory_speedup")]
        medians = {f"median_{k}": common.median(r[k] for r in reps) for k in keys}
        medians["median_afedpg_updates_per_s"] = common.median(r["afedpg"]["updates_per_s"] for r in reps)
        medians["median_fedpg_rounds_per_s"] = common.median(r["fedpg"]["rounds_per_s"] for r in reps)
        profiles[profile] = {"repetitions": reps, **medians}
        common.print_json(f"{profile} medians", medians)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = common.write_result(args.out, NAME, {"settings": settings, "target_fraction": 0.95, "profiles": profiles})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
