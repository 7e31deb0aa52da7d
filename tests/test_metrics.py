"""Ray metrics of a real run, scraped from each node's Prometheus endpoint (``/metrics``).

The run is tests/_scenario_multinode.py (shared with tests/test_multinode.py): a private three-node
cluster in a subprocess, with a 1 s metrics report interval and known export ports, so it never touches
the session's in-process Ray instance. The names asserted here are the ones
cluster/grafana-dashboard.json queries.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from _scenario_util import cluster_scenario

SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<tags>.*)\})?$")
TAG = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
DASHBOARD = Path(__file__).resolve().parent.parent / "cluster" / "grafana-dashboard.json"
Row = tuple[str, str, dict[str, str], float]  # node, name, tags, value


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    """Every scraped series of the shared cluster run, parsed."""
    parsed = []
    for node, series in cluster_scenario()["metrics"].items():
        for key, value in series.items():
            match = SERIES.match(key)
            assert match, key
            parsed.append((node, match["name"], dict(TAG.findall(match["tags"] or "")), value))
    return parsed


def values(rows: list[Row], name: str, node: str | None = None, **tags: str) -> list[float]:
    return [
        v
        for n, nm, t, v in rows
        if nm == name and (node is None or n == node) and all(t.get(k) == want for k, want in tags.items())
    ]


def test_server_metrics(rows):
    updates = cluster_scenario()["placed"]["updates"]
    version = values(rows, "ray_afedpg_server_version")
    assert version and 0 < max(version) <= updates
    returns = values(rows, "ray_afedpg_return_mean")
    assert returns and all(math.isfinite(r) and r > 0 for r in returns)
    delivered = 0.0
    for agent in ("0", "1", "2", "3"):
        counts = values(rows, "ray_afedpg_updates_total", agent=agent)
        assert counts and max(counts) > 0, agent
        delivered += max(counts)
        assert values(rows, "ray_afedpg_update_delay_bucket", agent=agent, le="+Inf"), agent
        assert values(rows, "ray_afedpg_update_delay_count", agent=agent), agent
        assert values(rows, "ray_afedpg_update_delay_sum", agent=agent), agent
    assert delivered <= updates


def test_rejections_are_counted_by_reason(rows):
    assert values(rows, "ray_afedpg_rejected_updates_total", reason="non_finite") == [1.0]
    # that server was an actor named metrics-reject-server: its run is metrics-reject, not the training's
    assert values(rows, "ray_afedpg_rejected_updates_total", reason="non_finite", run="metrics-reject") == [1.0]


def test_every_series_names_its_run(rows):
    """Concurrent sweep trials are told apart by the run tag (the actors' name prefix), not summed."""
    runs = {tags.get("run") for _, name, tags, _ in rows if name.startswith("ray_afedpg_")}
    assert {"placement", "metrics-reject"} <= runs and None not in runs and "" not in runs, runs
    assert values(rows, "ray_afedpg_server_version", run="placement")  # train(name_prefix="placement")
    assert values(rows, "ray_afedpg_agent_iteration_seconds_count", run="placement", agent="0")


def test_agent_iteration_seconds_come_from_the_agents_nodes(rows):
    for agent, node in (("0", "fast_node"), ("1", "fast_node"), ("2", "slow_node"), ("3", "slow_node")):
        count = values(rows, "ray_afedpg_agent_iteration_seconds_count", node=node, agent=agent)
        total = values(rows, "ray_afedpg_agent_iteration_seconds_sum", node=node, agent=agent)
        assert count and total and max(count) > 0, (agent, node)
        assert max(total) / max(count) >= 0.14, (agent, total, count)  # padded to iteration_time 0.15 s
        assert values(rows, "ray_afedpg_agent_iteration_seconds_bucket", node=node, agent=agent, le="+Inf")
        other = "slow_node" if node == "fast_node" else "fast_node"
        assert not values(rows, "ray_afedpg_agent_iteration_seconds_count", node=other, agent=agent)


def test_grafana_dashboard_queries_only_exported_names(rows):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queried = set(re.findall(r"\bray_afedpg_[a-z_]+", " ".join(exprs)))
    exported = {name for _, name, _, _ in rows}
    assert queried and queried <= exported, queried - exported
    for base in ("server_version", "updates", "update_delay", "agent_iteration_seconds", "return_mean", "rejected"):
        assert any(name.startswith(f"ray_afedpg_{base}") for name in queried), base
    assert all('SessionName=~"$SessionName", run=~"$run"' in expr for expr in exprs)
