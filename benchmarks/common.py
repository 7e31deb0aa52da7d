"""Helpers shared by the performance benchmarks: machine facts, medians, steady-state rates, JSON output.

Every benchmark writes one ``result.json`` into ``--out DIR`` holding the machine facts, the exact
command, every repetition's measurements and their medians, so a figure in PERFORMANCE.md can be
traced to the file and the command that produced it.

Import this module before numpy (``import common`` sorts first): it pins BLAS to one thread, as Ray
does for every actor (OMP_NUM_THREADS=1), so in-process timings measure what an agent or the server
actor would do rather than OpenBLAS threads fighting over two shared cores.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if "numpy" in sys.modules:
    warnings.warn("benchmarks.common imported after numpy: BLAS thread count not pinned", stacklevel=1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

REPO = Path(__file__).resolve().parent.parent
"""The repository root (benchmarks/..)."""


def default_out(name: str, quick: bool = False) -> Path:
    """``benchmarks/results/<name>/``; with ``quick``, ``<name>-quick/`` (git-ignored): a check of the script
    must not overwrite the committed full-size results."""
    return REPO / "benchmarks" / "results" / (f"{name}-quick" if quick else name)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gib(key: str) -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def machine_facts() -> dict[str, Any]:
    """CPU count and model, RAM, load average and the versions that matter for these numbers."""
    import gymnasium
    import numpy
    import ray
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    try:
        import mujoco

        mujoco_version = mujoco.__version__
    except ImportError:
        mujoco_version = "not installed"
    return {
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "nproc": usable,
        "cpu_model": _cpu_model(),
        "ram_gib": _meminfo_gib("MemTotal"),
        "ram_available_gib": _meminfo_gib("MemAvailable"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "mujoco": mujoco_version,
        "platform": platform.platform(),
    }


def command_line() -> str:
    """The command that ran this benchmark, as it could be pasted into a shell."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN if there are none)."""
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def write_result(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``out/result.json`` with the machine facts and the command; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": command_line(),
        "machine": machine_facts(),
        **payload,
    }
    path = out / "result.json"
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


STARTUP_TIMEOUT_S = 600.0
"""``placement_timeout`` of the benchmarks' runs: on two shared cores, starting eight agent processes
that each import torch measured about a minute, and 64 take several, which the runtime's default
(meant to catch requests no node can satisfy) would report as unplaceable agents."""


def init_ray(num_cpus: int | None = None) -> None:
    """Start a quiet local Ray instance in the project's namespace (no-op if one is running)."""
    import ray

    from afedpg_ray.address import NAMESPACE

    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            namespace=NAMESPACE,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )


def per_agent_rate(rows: Sequence[dict[str, str]], start: float) -> tuple[float, dict[int, float]]:
    """Accepted updates per second after wall time ``start``, summed over agents.

    Each agent's rate is ``(n - 1) / (last - first)`` over its own arrivals in the window, which is
    exact for a periodic agent and free of the edge effect of counting arrivals in a fixed window
    (one arrival more or less per agent). Agents with fewer than two arrivals count as zero.
    """
    times: dict[int, list[float]] = {}
    for row in rows:
        t = float(row["wall_time"])
        if row["accepted"] == "True" and t >= start:
            times.setdefault(int(row["agent"]), []).append(t)
    rates = {
        agent: (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
        for agent, ts in sorted(times.items())
    }
    return sum(rates.values()), rates


def window_rate(rows: Sequence[dict[str, str]], start: float) -> float:
    """Accepted updates per second between the first and last accepted arrival after ``start``."""
    times = [float(r["wall_time"]) for r in rows if r["accepted"] == "True" and float(r["wall_time"]) >= start]
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def warm_start(rows: Sequence[dict[str, str]], agents: int) -> float:
    """Wall time by which every agent has delivered its first accepted update (start-up excluded)."""
    first: dict[int, float] = {}
    for row in rows:
        if row["accepted"] == "True":
            first.setdefault(int(row["agent"]), float(row["wall_time"]))
    if len(first) < agents:  # too short a run: the rates below will miss the silent agents
        warnings.warn(f"only {len(first)} of {agents} agents delivered an update; run longer", stacklevel=2)
    return max(first.values(), default=0.0)


def print_json(label: str, value: Any) -> None:
    """Print one labelled JSON line (progress output of the benchmarks)."""
    print(f"{label}: {json.dumps(value, default=_jsonable)}", flush=True)


def prune_run(run_dir: str | Path) -> None:
    """Delete a finished run's checkpoint and policy files: the benchmark keeps its CSV/JSON records only."""
    for path in Path(run_dir).glob("*.pt"):
        path.unlink()
