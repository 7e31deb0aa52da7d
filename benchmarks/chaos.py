"""Scripted chaos run: agent kills, a server kill, a driver SIGKILL and resume - against an undisturbed twin.

Both runs use the same config and seed on one local Ray instance that this script starts. The chaos
run's driver is a separate ``afedpg train`` process; the script SIGKILLs actor processes (found by
their Ray names) and the driver itself at fixed update counts, then resumes with
``afedpg train --resume``. Writes ``OUT/chaos.json`` and both run directories.

    python benchmarks/chaos.py --out benchmarks/results/chaos
    python benchmarks/chaos.py --quick --out /tmp/chaos
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

from afedpg_ray.address import NAMESPACE
from afedpg_ray.cli import OneLineParser, positive_float, positive_int
from afedpg_ray.config import ConfigError, config_from_dict

KILLS = 10
"""The run's updates are cut into this many slices; the kills land at the end of slices 1 to 5."""


def rows(run_dir: Path) -> int:
    """Updates logged so far in a run directory."""
    path = run_dir / "progress.csv"
    if not path.exists():
        return 0
    with path.open() as handle:
        return max(0, sum(1 for _ in handle) - 1)


def kill_actor(name: str, timeout: float = 60) -> int:
    """SIGKILL the process of the named actor (waiting for it to exist); returns its pid."""
    deadline = time.time() + timeout
    while True:
        try:
            pid = ray.get(ray.get_actor(name, namespace=NAMESPACE).pid.remote())
            break
        except ValueError:  # not created yet
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_event(run_dir: Path, kind: str, count: int = 1, timeout: float = 120) -> None:
    """Block until ``events.csv`` records ``count`` events of ``kind`` (each fault is recovered first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "events.csv"
        if path.exists() and path.read_text().count(f",{kind},") >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"fewer than {count} {kind} events within {timeout:.0f}s")


def wait_rows(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Block until the run has logged ``count`` updates (or its driver exited)."""
    deadline = time.time() + timeout
    while rows(run_dir) < count and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)


def train_cmd(args: argparse.Namespace, out: Path, address: str) -> list[str]:
    """The ``afedpg train`` command both runs share."""
    return [
        sys.executable,
        "-m",
        "afedpg_ray.cli",
        "train",
        "--env",
        args.env,
        "--agents",
        str(args.agents),
        "--hetero",
        "linear:4",
        "--samples",
        str(args.samples),
        "--batch",
        str(args.batch),
        "--seed",
        str(args.seed),
        "--iteration-time",
        str(args.iteration_time),
        "--checkpoint-every",
        "10",
        "--no-progress",
        "--no-tensorboard",
        "--out",
        str(out),
        "--address",
        address,
    ]


def final_return(run_dir: Path) -> float:
    """Mean of the last 10 logged returns of a run."""
    with (run_dir / "progress.csv").open() as handle:
        values = [float(r["return_mean"]) for r in csv.DictReader(handle) if r["accepted"] == "True"]
    tail = values[-10:]
    return sum(tail) / len(tail)


def check_args(args: argparse.Namespace) -> None:
    """Exit with one line unless both runs' config is valid and long enough to kill into (before Ray starts)."""
    options = {"env": args.env, "agents": args.agents, "hetero": "linear:4", "samples": args.samples}
    options |= {"batch": args.batch, "seed": args.seed, "iteration_time": args.iteration_time}
    try:
        config_from_dict({**options, "checkpoint_every": 10})
    except ConfigError as err:
        sys.exit(f"error: {err}")
    if args.agents < 3:
        sys.exit(f"error: --agents: the script kills agents 0, 1 and 2, so it needs at least 3, got {args.agents}")
    if args.samples // args.batch < KILLS:
        sys.exit(f"error: --samples: need at least {KILLS} x --batch ({KILLS * args.batch}) to kill mid-run")


def main() -> None:
    """Run the undisturbed twin, then the chaos run, and compare them."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--env", default="CartPole-v1", help="gymnasium id both runs train on (default CartPole-v1)")
    add("--agents", type=positive_int, default=4, help="agents per run, at least 3: agents 0-2 are killed")
    add("--samples", type=positive_int, default=200_000, help="environment steps per run, over all agents")
    add("--batch", type=positive_int, default=500, help="environment steps per gradient")
    add("--seed", type=int, default=0, help="seed of both runs (default 0)")
    add("--out", default="benchmarks/results/chaos", help="directory for chaos.json and both run directories")
    add("--iteration-time", type=positive_float, default=0.2, help="paces the runs so kills land mid-run")
    add("--quick", action="store_true", help="tiny budget, kills early")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.batch = 60_000, 200
    check_args(args)
    scale = args.samples // args.batch // KILLS  # kills at 10%..50% of the run's updates: half of it remains
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ray.init(namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    calm, chaos = out / "undisturbed", out / "chaos"
    for old in (calm, chaos):
        shutil.rmtree(old, ignore_errors=True)
    subprocess.run(train_cmd(args, calm, address), check=True, stdout=subprocess.DEVNULL)

    log: list[dict] = []
    proc = subprocess.Popen(train_cmd(args, chaos, address), stdout=subprocess.DEVNULL)
    faults = (
        (1 * scale, "afedpg-agent-1", "agent_rejoined", 1),
        (2 * scale, "afedpg-agent-2", "agent_rejoined", 2),
        (3 * scale, "afedpg-server", "server_restored", 1),
    )
    for at, name, recovered, count in faults:
        wait_rows(chaos, at, proc)
        log.append({"update": rows(chaos), "killed": name, "pid": kill_actor(name)})
        wait_event(chaos, recovered, count)
    wait_rows(chaos, 4 * scale, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.append({"update": rows(chaos), "killed": "driver"})
    time.sleep(2)  # Ray reclaims the dead driver's actors
    resume = [
        sys.executable,
        "-m",
        "afedpg_ray.cli",
        "train",
        "--resume",
        str(chaos),
        "--address",
        address,
        "--no-progress",
        "--no-tensorboard",
    ]
    proc = subprocess.Popen(resume, stdout=subprocess.DEVNULL)
    wait_event(chaos, "resumed")  # progress.csv has been cut back to the checkpoint by now
    wait_rows(chaos, 5 * scale, proc)
    log.append({"update": rows(chaos), "killed": "afedpg-agent-0", "pid": kill_actor("afedpg-agent-0")})
    if proc.wait() != 0:
        raise SystemExit("the resumed run failed")
    with (chaos / "events.csv").open() as handle:
        events = [e["kind"] for e in csv.DictReader(handle)]
    result = {
        "env": args.env,
        "agents": args.agents,
        "samples": args.samples,
        "kills": log,
        "events": {kind: events.count(kind) for kind in sorted(set(events))},
        "undisturbed_return": final_return(calm),
        "chaos_return": final_return(chaos),
        "undisturbed_summary": json.loads((calm / "summary.json").read_text()),
        "chaos_summary": json.loads((chaos / "summary.json").read_text()),
    }
    (out / "chaos.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("kills", "events", "undisturbed_return", "chaos_return")}, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
