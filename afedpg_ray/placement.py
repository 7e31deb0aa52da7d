"""Where agents run: the Ray resource request of each agent, and why a request cannot be placed.

Pure functions on the config and on the nodes' resource dicts (``ray.nodes()``); the driver
(:mod:`afedpg_ray.runtime`) makes the calls to Ray.
"""

from __future__ import annotations

from typing import Any

from afedpg_ray.config import TrainConfig


def agent_cpus(config: TrainConfig, cluster_cpus: float) -> float:
    """CPUs an agent outside any ``--agent-resources`` group asks for: ``--agent-cpus``, else 95% of the
    cluster's CPUs shared evenly (at least 0.01, at most 1)."""
    if config.agent_cpus is not None:
        return round(config.agent_cpus, 4)
    return round(min(1.0, max(0.01, 0.95 * cluster_cpus / config.agents)), 4)


def agent_options(config: TrainConfig, agent_id: int, cluster_cpus: float) -> dict[str, Any]:
    """Ray actor options for one agent: its group's request, else an even share of the CPUs."""
    options: dict[str, Any] = {"num_cpus": agent_cpus(config, cluster_cpus), "max_restarts": 0}
    for group in config.agent_resources:
        if group.first <= agent_id <= group.last:
            if group.num_cpus is not None:
                options["num_cpus"] = group.num_cpus
            if group.memory is not None:
                options["memory"] = group.memory
            if group.resources:
                options["resources"] = dict(group.resources)
    return options


BUSY = "the nodes that have it are busy (or still being added by the autoscaler)"
"""The one placement problem that may resolve itself: the request fits a node once its resources free up."""


def placement_problem(options: dict[str, Any], nodes: list[dict[str, float]]) -> tuple[str, str]:
    """What an agent asked for, and why no node in ``nodes`` (their resource dicts) can take it."""
    wanted = {"CPU": float(options.get("num_cpus") or 0)}
    wanted.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    if options.get("memory"):
        wanted["memory"] = float(options["memory"])
    wanted = {k: v for k, v in wanted.items() if v > 0}
    asked = ", ".join(f"{k}={v:g}" for k, v in wanted.items())
    missing = [k for k in wanted if not any(k in node for node in nodes)]
    if missing:
        return asked, f"no node has {', '.join(repr(k) for k in missing)}"
    if not any(all(node.get(k, 0.0) >= v for k, v in wanted.items()) for node in nodes):
        return asked, "no single node has that much of it all"
    return asked, BUSY
