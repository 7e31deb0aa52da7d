"""Placement on a real multi-node cluster (three raylets on this machine), in a subprocess.

tests/_scenario_multinode.py starts a private ``ray.cluster_utils.Cluster`` (head with 0 CPUs, a
``fast_node`` worker and a ``slow_node`` worker), trains with agents pinned by ``agent_resources`` and
then runs ``afedpg train`` with a request no node can satisfy. Running it in a subprocess keeps it
apart from the session's in-process Ray instance (tests/conftest.py). tests/test_metrics.py reads the
same run.
"""

from __future__ import annotations

import pytest
from _scenario_util import PLACEMENT_TIMEOUT_S, cluster_scenario

AGENTS = 4


@pytest.fixture(scope="module")
def scenario() -> dict:
    """The shared cluster run."""
    return cluster_scenario()


def test_each_agent_runs_on_the_node_its_request_names(scenario):
    nodes = scenario["nodes"]
    assert set(nodes) == {"fast_node", "slow_node"}
    assert len({nodes["fast_node"], nodes["slow_node"], scenario["head"]}) == 3
    assert scenario["placed"]["agent_nodes"] == {
        "0": nodes["fast_node"],
        "1": nodes["fast_node"],
        "2": nodes["slow_node"],
        "3": nodes["slow_node"],
    }


def test_pinned_training_completes(scenario):
    placed = scenario["placed"]
    assert placed["samples_total"] >= 64 * 32
    assert placed["updates"] >= 32
    assert placed["dropped"] == []


def test_unplaceable_request_is_one_line_naming_agent_and_resource(scenario):
    run = scenario["unplaceable"]
    assert run["code"] == 1
    lines = run["stderr"].strip().splitlines()
    assert len(lines) == 1, run["stderr"]
    message = lines[0]
    assert message.startswith("afedpg: error: agent 0 ")
    assert "gpu_node" in message
    assert f"within {PLACEMENT_TIMEOUT_S:g}s (--placement-timeout)" in message
    # reported once the timeout has passed, not long after (actor creation included)
    assert PLACEMENT_TIMEOUT_S <= run["seconds"] < PLACEMENT_TIMEOUT_S + 30


def test_a_dead_node_costs_its_agents_and_the_run_finishes_on_the_others(scenario):
    run = scenario["node_death"]
    killed_at = run["killed_at"]
    assert killed_at is not None and run["samples_total"] >= 64 * 2000
    # the server runs on the driver's node, so losing a worker node costs agents only: no restore
    assert run["server_node"] == run["driver_node"] == scenario["head"]
    assert run["server_restores"] == 0
    # the agents on the lost node failed; their restarts asked for a resource no live node has
    assert set(run["restarts"]) == {"2", "3"} and set(run["dropped"]) <= {2, 3}
    unplaced = {agent for kind, agent, message in run["events"] if "not placed within 30s" in message}
    assert unplaced == {"2", "3"}, run["events"]
    # a worker process outlives its raylet briefly and may still deliver; after that only 0 and 1 do
    late = {agent for _, agent, wall_time in run["rows"] if wall_time > killed_at + 10}
    assert late == {0, 1}
    updates = [update for update, _, _ in run["rows"]]
    assert updates == list(range(1, len(updates) + 1))  # nothing applied twice, nothing skipped
