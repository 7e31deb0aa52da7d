"""Tune reporting cost: how long ``tune.report`` holds up a sweep trial's driver loop, inline or from a thread.

A sweep trial runs ``train()`` inside a Ray Tune function trainable and reports about every 1% of its
budget. ``tune.report`` returns only once Tune's controller has fetched the result, so called inline
it stalls the arrival-order loop, and every agent whose gradient arrives meanwhile waits for its
next point. ``tune_sweeps.trainable.BackgroundSender`` makes the same calls from a thread of its own.
This runs one Tune sweep whose trials alternate the two ways (same seeds, running side by side, so
they share the machine's load) and records, per trial, the seconds the loop spent inside its report
calls, that time as a fraction of the trial, and the trial's accepted updates per second.

    python benchmarks/tune_report.py                  # 4 trials per way, CartPole-v1, N = 4, 100k samples
    python benchmarks/tune_report.py --quick          # 1 trial per way, short
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from afedpg_ray.cli import OneLineParser, positive_float, positive_int
from afedpg_ray.config import TrainConfig, config_from_dict, last_line

NAME = "tune_report"
WAYS = ("inline", "background")


def timed_trial(trial_config: dict[str, Any]) -> None:
    """Tune function trainable: one ``train()`` run reporting the chosen way; writes its timings as JSON."""
    from ray import tune

    from afedpg_ray.train import train
    from tune_sweeps.trainable import BackgroundSender, ThrottledReporter, merged_train_dict

    trial_id = tune.get_context().get_trial_id()
    raw = merged_train_dict(trial_config)
    raw.update(out=str(Path(trial_config["runs"]) / trial_id), progress=False, address=None)
    config = config_from_dict(raw)
    sender = BackgroundSender(tune.report) if trial_config["way"] == "background" else None
    sink = sender if sender is not None else tune.report
    loop_waits: list[float] = []

    def timed_sink(metrics: dict[str, Any]) -> None:
        started = time.perf_counter()
        sink(metrics)
        loop_waits.append(time.perf_counter() - started)

    result = train(config, name_prefix=f"tr-{trial_id}", on_record=ThrottledReporter(config, timed_sink))
    closing = time.perf_counter()
    if sender is not None:
        sender.close()
    close_s = time.perf_counter() - closing
    record = {
        "way": trial_config["way"],
        "seed": config.seed,
        "reports": len(loop_waits),
        "loop_wait_s": sum(loop_waits),
        "loop_wait_max_s": max(loop_waits, default=0.0),
        "close_s": close_s,
        "train_s": result.wall_time,
        "loop_wait_fraction": sum(loop_waits) / result.wall_time,
        "updates_per_s": result.updates_per_second,
    }
    (Path(trial_config["runs"]) / f"{trial_id}.json").write_text(json.dumps(record))


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks every budget)."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--trials", type=positive_int, default=4, help="trials per way (seeds 0, 1, ...)")
    add("--agents", type=positive_int, default=4, help="agents per trial")
    add("--samples", type=positive_int, default=100_000, help="environment steps per trial")
    add("--agent-cpus", type=positive_float, default=0.2, help="CPUs each agent requests from Ray")
    add("--out", type=Path, help=f"directory for result.json (default results/{NAME}/, {NAME}-quick/ with --quick)")
    add("--quick", action="store_true", help="1 trial per way, 2 agents, 10k samples")
    args = parser.parse_args()
    args.out = args.out or common.default_out(NAME, args.quick)
    if args.quick:
        args.trials, args.agents, args.samples = 1, 2, 10_000
    return args


def main() -> None:
    """Run the sweep, then write ``OUT/result.json`` with every trial's timings and each way's medians."""
    args = parse_args()
    common.init_ray()
    from ray import tune

    from tune_sweeps.trainable import trial_resources

    runs = Path(tempfile.mkdtemp(prefix="tune_report-"))  # trial runs and Tune's files; result.json keeps the numbers
    base = TrainConfig(
        env="CartPole-v1",
        agents=args.agents,
        samples=args.samples,
        agent_cpus=args.agent_cpus,
        placement_timeout=common.STARTUP_TIMEOUT_S,
        tensorboard=False,
    ).to_dict()
    space = {
        "train": base,
        "runs": str(runs),
        "seed": tune.grid_search(list(range(args.trials))),
        "way": tune.grid_search(list(WAYS)),
    }
    tuner = tune.Tuner(
        tune.with_resources(timed_trial, trial_resources),
        param_space=space,
        run_config=tune.RunConfig(name=NAME, storage_path=str(runs / "tune"), verbose=0),
    )
    try:
        grid = tuner.fit()
        failed = [last_line(r.error) for r in grid if r.error is not None]
        if failed:
            raise SystemExit(f"{len(failed)} trial(s) failed: {failed[0]}")
        trials = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
        delivered = {(r.config["way"], r.config["seed"]): len(r.metrics_dataframe) for r in grid}
        for trial in trials:  # every report the loop made reached Tune, the background ones too
            trial["delivered"] = delivered[(trial["way"], trial["seed"])]
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    ways: dict[str, Any] = {}
    for way in WAYS:
        mine = [t for t in trials if t["way"] == way]
        ways[way] = {
            f"median_{key}": common.median(t[key] for t in mine)
            for key in ("loop_wait_s", "loop_wait_fraction", "close_s", "updates_per_s")
        }
        common.print_json(way, ways[way])
    ratio = ways["background"]["median_updates_per_s"] / ways["inline"]["median_updates_per_s"]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"settings": settings, "trials": trials, "ways": ways, "updates_per_s_ratio_background_to_inline": ratio}
    path = common.write_result(args.out, NAME, payload)
    print(f"background / inline updates per second: {ratio:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
