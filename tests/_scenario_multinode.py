"""Subprocess entry point for tests/test_multinode.py and tests/test_metrics.py: one real cluster.

Usage: ``python tests/_scenario_multinode.py OUT_DIR PLACEMENT_TIMEOUT_S``.

A private ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs, one worker advertising
``fast_node: 4`` and one advertising ``slow_node: 4`` (one CPU each). Every node exports Prometheus
metrics on a known port, reported every second. Both test modules read this one run, which saves a
second cluster start on a 2-core machine.

1. ``train()`` with agents 0-1 requesting ``fast_node`` and 2-3 ``slow_node``. Whenever an agent
   delivers for the first time, an ``on_record`` callback asks the server actor for its ``status()``,
   whose per-agent ``node_id`` the agent itself reported (``ray.get_runtime_context().get_node_id()``).
2. A separate ``ParameterServer`` actor receives a NaN gradient and rejects it (``non_finite``).
3. Background threads scrape every node's ``/metrics`` during and after 1-2.
4. ``afedpg train`` (``cli.main``, in this process, with a short ``--placement-timeout``)
   against the same cluster, with agent 0 requesting ``gpu_node``, which no node has.
5. ``train()`` again with agents 2-3 on ``slow_node``, which is removed (raylet killed) at update 20.

The last stdout line is JSON: node ids by resource, the agents' node ids, the run's summary, every
``ray_afedpg_*`` series (``name{tags}`` -> latest value) per node, the unplaceable run's exit code,
stderr and duration, and the node-death run's summary, progress rows and events.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import ray
from _scenario_util import agent_ports, free_ports
from ray.cluster_utils import Cluster

from afedpg_ray.address import NAMESPACE
from afedpg_ray.cli import main as cli_main
from afedpg_ray.config import AgentResources, TrainConfig
from afedpg_ray.messages import GradientMeta, UpdateRecord
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.server import ParameterServer
from afedpg_ray.train import train

PREFIX = "placement"
AGENTS = 4
EXPECTED = (
    "ray_afedpg_server_version",
    "ray_afedpg_updates_total",
    "ray_afedpg_update_delay_bucket",
    "ray_afedpg_agent_iteration_seconds_bucket",
    "ray_afedpg_return_mean",
    "ray_afedpg_rejected_updates_total",
)
"""Names as exported (counters gain ``_total``, histograms ``_bucket``/``_sum``/``_count``)."""


class Scraper(threading.Thread):
    """Polls one node's metrics endpoint; keeps the latest value of every ``ray_afedpg_`` series."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.series: dict[str, float] = {}
        self.stop = threading.Event()
        self.errors = 0

    def scrape(self) -> None:
        """One scrape; failures are counted, not raised."""
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            self.errors += 1
            return
        for line in text.splitlines():
            if line.startswith("ray_afedpg_"):
                series, _, value = line.rpartition(" ")
                self.series[series] = float(value)

    def run(self) -> None:
        """Scrape every half second until stopped."""
        while not self.stop.is_set():
            self.scrape()
            self.stop.wait(0.5)


def metrics_complete(scrapers: dict[str, Scraper]) -> bool:
    """Every expected name seen somewhere, and every agent's iteration histogram."""
    series = [s for scraper in scrapers.values() for s in scraper.series]
    names = {s.split("{", 1)[0] for s in series}
    iterations = [s for s in series if s.startswith("ray_afedpg_agent_iteration_seconds_count")]
    agents_seen = all(any(f'agent="{i}"' in s for s in iterations) for i in range(AGENTS))
    return agents_seen and all(name in names for name in EXPECTED)


def start_cluster() -> tuple[Cluster, dict[str, int]]:
    """Head (0 CPUs) + a fast and a slow worker; returns the cluster and each node's metrics port."""
    (dashboard_port,) = free_ports(1)
    head_ports, fast_ports, slow_ports = agent_ports(), agent_ports(), agent_ports()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "dashboard_port": dashboard_port,
            "_system_config": {"metrics_report_interval_ms": 1000},
            **head_ports,
        },
    )
    cluster.add_node(num_cpus=1, resources={"fast_node": 4}, **fast_ports)
    cluster.add_node(num_cpus=1, resources={"slow_node": 4}, **slow_ports)
    metrics_ports = {
        "head": head_ports["metrics_export_port"],
        "fast_node": fast_ports["metrics_export_port"],
        "slow_node": slow_ports["metrics_export_port"],
    }
    return cluster, metrics_ports


def nodes_by_resource() -> dict[str, str]:
    """Node id of the node advertising each custom resource."""
    found = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        for resource in ("fast_node", "slow_node"):
            if resource in node["Resources"]:
                found[resource] = node["NodeID"]
    return found


def pinned_config(out_dir: str, **overrides: Any) -> TrainConfig:
    """CartPole with agents 0-1 asking for ``fast_node`` and 2-3 for ``slow_node``."""
    agent_resources = (
        AgentResources(0, 1, num_cpus=0.25, resources={"fast_node": 1}),
        AgentResources(2, 3, num_cpus=0.25, resources={"slow_node": 1}),
    )
    base = dict(env="CartPole-v1", agents=AGENTS, hetero="none", batch=64, num_envs=2, agent_resources=agent_resources)
    return TrainConfig(**base, progress=False, tensorboard=False, out=out_dir, **overrides)


def placed_run(out_dir: str) -> dict[str, Any]:
    """Train with pinned agents; return the node each agent reported and the run summary."""
    agent_nodes: dict[int, str] = {}
    server = None

    def on_record(record: UpdateRecord) -> None:
        nonlocal server
        if record.agent in agent_nodes:
            return
        server = server or ray.get_actor(f"{PREFIX}-server")
        status = ray.get(server.status.remote(), timeout=30)
        for agent, stats in status["agents"].items():
            if stats["node_id"]:
                agent_nodes[int(agent)] = stats["node_id"]

    config = pinned_config(out_dir, samples=64 * 32, iteration_time=0.15)
    result = train(config, name_prefix=PREFIX, on_record=on_record)
    return {
        "agent_nodes": {str(k): v for k, v in sorted(agent_nodes.items())},
        "updates": result.updates,
        "samples_total": result.samples_total,
        "dropped": result.dropped_agents,
    }


def reject_nan_gradient() -> None:
    """A separate server actor gets a NaN gradient from a registered agent: one ``non_finite``."""
    config = TrainConfig(env="CartPole-v1", agents=1, progress=False, tensorboard=False)
    server = ray.remote(ParameterServer).options(name="metrics-reject-server", num_cpus=0).remote(config)
    dispatch = ray.get(server.dispatch.remote(0))
    meta = GradientMeta(
        agent_id=0,
        version=dispatch.version,
        samples=1,
        episode_returns=(),
        episode_lengths=(),
        obs_delta=RunningStats.empty(dispatch.obs_stats.mean.shape[0]),
        compute_seconds=0.0,
        wait_seconds=0.0,
        grad_norm=float("nan"),
    )
    bad = np.full(dispatch.params.shape, np.nan, dtype=np.float32)
    _, record = ray.get(server.apply.remote(meta, bad))
    assert not record.accepted and record.reason == "non_finite", record


def unplaceable_run(address: str, out_dir: str, timeout: float) -> dict[str, Any]:
    """``afedpg train`` with a request no node can satisfy: exit code, stderr and how long it took."""
    argv = ["train", "--address", address, "--placement-timeout", str(timeout)]
    argv += ["--env", "CartPole-v1", "--agents", "2", "--batch", "64"]
    argv += ["--num-envs", "2", "--samples", "256", "--no-progress", "--no-tensorboard", "--out", out_dir]
    argv += ["--agent-resources", '{"0": {"resources": {"gpu_node": 1}}}']
    stderr = io.StringIO()
    start = time.time()
    code: int | str | None = 0
    with contextlib.redirect_stderr(stderr):
        try:
            code = cli_main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
    return {"code": code, "stderr": stderr.getvalue(), "seconds": time.time() - start}


def node_death_run(cluster: Cluster, node_id: str, out_dir: str) -> dict[str, Any]:
    """Train with agents 2-3 on the node ``node_id`` and remove that node (its raylet killed, as when a spot
    instance is reclaimed) at update 20; what the run reported. Their restarts ask for a resource that is
    gone, so each fails its placement deadline until the agent is dropped."""
    doomed = next(node for node in cluster.worker_nodes if node.node_id == node_id)
    deadline = time.time() + 60  # the earlier runs' actors release their node resources asynchronously
    while time.time() < deadline and any(ray.available_resources().get(r, 0) < 4 for r in ("fast_node", "slow_node")):
        time.sleep(0.2)
    killed_at: list[float] = []
    server_node: list[str] = []

    def on_record(record: UpdateRecord) -> None:
        if not killed_at and record.update >= 20:
            killed_at.append(record.wall_time)  # the run's clock, as in progress.csv
            server_node.append(ray.get(ray.get_actor("node-death-server").status.remote())["node_id"])
            cluster.remove_node(doomed, allow_graceful=False)

    # at most 40 updates/s: the run outlasts the restarts' placement deadline, which a loaded machine needs
    config = pinned_config(out_dir, samples=64 * 2000, iteration_time=0.05, placement_timeout=30.0)
    result = train(config, name_prefix="node-death", on_record=on_record)
    with open(f"{out_dir}/progress.csv") as handle:
        rows = [(int(row["update"]), int(row["agent"]), float(row["wall_time"])) for row in csv.DictReader(handle)]
    with open(f"{out_dir}/events.csv") as handle:
        events = [(row["kind"], row["agent"], row["message"]) for row in csv.DictReader(handle)]
    return {
        "killed_at": killed_at[0] if killed_at else None,
        "server_node": server_node[0] if server_node else None,
        "driver_node": ray.get_runtime_context().get_node_id(),
        "samples_total": result.samples_total,
        "restarts": {str(k): v for k, v in result.restarts.items()},
        "dropped": result.dropped_agents,
        "server_restores": result.server_restores,
        "rows": rows,
        "events": events,
    }


def main() -> None:
    """Run every part and print the JSON summary."""
    out_dir, timeout = sys.argv[1], float(sys.argv[2])
    started = time.time()
    cluster, metrics_ports = start_cluster()
    scrapers = {node: Scraper(port) for node, port in metrics_ports.items()}
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
        nodes = nodes_by_resource()
        cluster_up = time.time() - started
        for scraper in scrapers.values():
            scraper.start()
        placed = placed_run(f"{out_dir}/placed")
        reject_nan_gradient()
        deadline = time.time() + 30
        while time.time() < deadline and not metrics_complete(scrapers):
            time.sleep(0.5)
        for scraper in scrapers.values():
            scraper.stop.set()
            scraper.join()
        unplaceable = unplaceable_run(cluster.address, f"{out_dir}/unplaceable", timeout)
        node_death = node_death_run(cluster, nodes["slow_node"], f"{out_dir}/node-death")  # last: the node is gone
        print(
            json.dumps(
                {
                    "nodes": nodes,
                    "head": cluster.head_node.node_id,
                    "cluster_up_seconds": cluster_up,
                    "placed": placed,
                    "metrics": {node: scraper.series for node, scraper in scrapers.items()},
                    "scrape_errors": {node: scraper.errors for node, scraper in scrapers.items()},
                    "unplaceable": unplaceable,
                    "node_death": node_death,
                    "seconds": time.time() - started,
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
