"""Where agents run: the Ray resource request of each agent, and why a request cannot be placed.

Pure functions on the config and on the nodes' resource dicts (``ray.nodes()``); the driver
(:mod:`afedpg_ray.runtime`) makes the calls to Ray.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from afedpg_ray.config import TrainConfig

SERVER_CPUS = 0.0
"""CPUs the parameter server actor asks for (it runs beside the driver and mostly waits on agents)."""


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


def local_shortfall(config: TrainConfig, have: dict[str, float]) -> tuple[str, str] | None:
    """Why the run's agents can never all be placed on a Ray instance holding ``have`` in all (the local
    instance afedpg started: one node, and no autoscaler can add another), or None if they fit: the option
    to change and what is wrong. The caller refuses the run before creating any actor.
    """
    requests = [agent_options(config, i, have.get("CPU", 0.0)) for i in range(config.agents)]
    cpus = Counter(float(options.get("num_cpus") or 0) for options in requests)
    needed = SERVER_CPUS + sum(amount * count for amount, count in cpus.items())
    if needed > have.get("CPU", 0.0) + 1e-6:  # Ray counts in units of 1e-4: allow an exact fit's rounding
        return _cpu_shortfall(config, cpus, needed, have.get("CPU", 0.0))
    return _other_shortfall(config, requests, have)


def _other_shortfall(
    config: TrainConfig, requests: list[dict[str, Any]], have: dict[str, float]
) -> tuple[str, str] | None:
    """Like :func:`local_shortfall`, for the custom resources and memory of ``--agent-resources`` groups."""
    totals: dict[str, float] = {}
    for options in requests:
        for name, amount in [*(options.get("resources") or {}).items(), ("memory", options.get("memory") or 0)]:
            totals[name] = totals.get(name, 0.0) + float(amount)
    for name, amount in sorted(totals.items()):
        if amount > 0 and have.get(name, 0.0) <= 0:
            who = _holders(config, lambda options, name=name: (options.get("resources") or {}).get(name, 0) > 0)
            return (
                "--agent-resources",
                f"{who} for resource {name!r}, which this machine's Ray instance does not have; "
                "drop it, or join a cluster whose nodes have it with --address",
            )
        if amount > have.get(name, 0.0) + 1e-6:
            scale, what = (2**30, "GiB of memory") if name == "memory" else (1, f"of resource {name!r}")
            return (
                "--agent-resources",
                f"the agents ask for {amount / scale:.4g} {what} in all, but this machine's Ray instance has "
                f"{have.get(name, 0.0) / scale:.4g}; lower the requests, or join a cluster with --address",
            )
    return None


def _cpu_shortfall(config: TrainConfig, cpus: Counter, needed: float, have: float) -> tuple[str, str]:
    """The option and refusal of a run asking for ``needed`` CPUs (``cpus``: agents per CPU amount) of ``have``."""
    parts = " + ".join(f"{count} agent{'s' if count > 1 else ''} x {amount:g}" for amount, count in cpus.items())
    server = f" + the server's {SERVER_CPUS:g}" if SERVER_CPUS else ""
    asked = f"{parts}{server} = {needed:g} CPUs, this machine's Ray instance has {have:g}"
    if any(group.num_cpus is not None for group in config.agent_resources):
        return "--agent-resources", f"{asked}; lower the num_cpus requests, or join a cluster with --address"
    if config.agent_cpus is not None:
        most = int((have - SERVER_CPUS) / config.agents * 1e4) / 1e4  # Ray keeps 4 decimals
        return (
            f"--agent-cpus {config.agent_cpus:g}",
            f"{asked}; lower --agent-cpus (to at most {most:g}), or join a cluster with --address",
        )
    # the even share never goes below 0.01 CPUs an agent: past 95 agents a CPU, the agents are too many
    fix = "use fewer agents or a smaller --agent-cpus, or join a cluster with --address"
    return f"--agents {config.agents}", f"{asked}; {fix}"


def _holders(config: TrainConfig, asks: Any) -> str:
    """``agents 0-3, 6 ask`` (or ``agent 6 asks``): the agents whose request ``asks(options)`` holds for."""
    ids = [i for i in range(config.agents) if asks(agent_options(config, i, 1.0))]
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"agent {ranges} asks" if len(ids) == 1 else f"agents {ranges} ask"


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
        most = ", ".join(f"{k}={max(node.get(k, 0.0) for node in nodes):g}" for k in wanted)
        return asked, f"no single node has that much of it all (the most a node has: {most})"
    return asked, BUSY


def bundles_fit(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """Whether every bundle can be placed, each whole on one node, within the nodes' resources.

    First-fit decreasing (largest CPU request first) - the heuristic a packing placement group follows;
    it may call a tight packing impossible that an exhaustive search would find, never the reverse.
    """
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: -b.get("CPU", 0.0)):
        # Ray compares resources in units of 1e-4; the tolerance keeps 0.1 + 0.3 + ... == 0.4 an exact fit
        node = next((n for n in free if all(n.get(k, 0.0) + 1e-6 >= v for k, v in bundle.items())), None)
        if node is None:
            return False
        for name, amount in bundle.items():
            node[name] = node.get(name, 0.0) - amount
    return True


def packable_share(agents: int, node_cpus: list[float], reserved: float) -> float | None:
    """Largest CPU share per agent (in hundredths, 0.01-1) such that one bundle of ``reserved`` CPUs and
    ``agents`` bundles of the share fit the nodes, each bundle on one node; None if not even 0.01 does.

    Dividing the cluster's total CPUs by N is not enough: with two 2-CPU nodes and 8 agents, 0.48 each
    fills both nodes to 1.92 and leaves no node room for the 0.1-CPU driver bundle.
    """

    def fits(hundredths: int) -> bool:
        bundles = [{"CPU": reserved}] + [{"CPU": hundredths / 100}] * agents
        return bundles_fit(bundles, [{"CPU": cpus} for cpus in node_cpus])

    if not fits(1):
        return None
    low, high = 1, 100  # fits(low) holds; fitting is monotone in the share
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low / 100


def _resources(amounts: dict[str, float]) -> str:
    """``name=amount`` pairs, sorted, zeros left out."""
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(amounts.items()) if amount)


def unplaceable_reason(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> str | None:
    """Why ``bundles`` (one trial's) cannot be placed on ``nodes`` (their total resources), or None if they fit."""
    if bundles_fit(bundles, nodes):
        return None
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    missing = sorted({name for bundle in bundles for name in bundle if not any(name in node for node in nodes)})
    have = "; ".join(  # only what the trial asks for: a node also lists memory in bytes, node ids, ...
        f"node {i}: {_resources({k: node.get(k, 0.0) for k in total}) or 'none of it'}" for i, node in enumerate(nodes)
    )
    why = f"no node has {', '.join(map(repr, missing))}" if missing else "no packing puts each bundle on one node"
    return f"a trial asks for {_resources(total)} in {len(bundles)} bundles ({why}; {have or 'no nodes'})"
