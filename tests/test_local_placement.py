"""A run the local Ray instance afedpg started can never place is refused at once, not after --placement-timeout."""

from __future__ import annotations

import pytest
from _checkpoint_util import no_ray

from afedpg_ray.cli import main
from afedpg_ray.config import AgentResources, TrainConfig
from afedpg_ray.placement import local_shortfall

HAVE = {"CPU": 2.0, "memory": 4 * 2**30, "object_store_memory": 2**30, "node:127.0.0.1": 1.0}
"""What ray.cluster_resources() reports for a 2-CPU machine's local instance."""


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (TrainConfig(agents=2, agent_cpus=8), ("--agent-cpus 8", "2 agents x 8 = 16 CPUs, this machine's Ray")),
        (TrainConfig(agents=2, agent_cpus=1.5), ("--agent-cpus 1.5", "lower --agent-cpus (to at most 1)")),
        (TrainConfig(agents=300), ("--agents 300", "300 agents x 0.01 = 3 CPUs")),  # the least even share
        (
            TrainConfig(agents=4, agent_resources=(AgentResources(0, 1, resources={"fast_node": 1}),)),
            ("--agent-resources", "agents 0-1 ask for resource 'fast_node', which this machine's Ray instance"),
        ),
        (
            TrainConfig(agents=4, agent_resources=(AgentResources(2, 2, resources={"fast_node": 1}),)),
            ("--agent-resources", "agent 2 asks for resource 'fast_node', which this machine's Ray instance"),
        ),
        (
            TrainConfig(agents=4, agent_resources=(AgentResources(0, 1, num_cpus=1.5),)),
            ("--agent-resources", "2 agents x 1.5 + 2 agents x 0.475 = 3.95 CPUs"),
        ),
        (
            TrainConfig(agents=2, agent_resources=(AgentResources(0, 1, memory=3 * 2**30),)),
            ("--agent-resources", "6 GiB of memory in all, but this machine's Ray instance has 4"),
        ),
    ],
)
def test_requests_beyond_the_local_instance_are_named(config, expected):
    option, why = local_shortfall(config, HAVE)
    assert option == expected[0] and expected[1] in why, why
    assert "--address" in why  # a cluster may have them: the other way out


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(agents=2, agent_cpus=1),  # an exact fit
        TrainConfig(agents=4),  # even shares
        TrainConfig(agents=190),
        TrainConfig(agents=2, agent_resources=(AgentResources(0, 1, resources={"fast_node": 0}),)),  # asks none
    ],
)
def test_requests_the_local_instance_holds_pass(config):
    assert local_shortfall(config, HAVE) is None


def started_here(monkeypatch, have):
    """As if ``afedpg train`` had started a local Ray instance holding ``have``."""
    monkeypatch.setattr("afedpg_ray.train.ray.is_initialized", lambda: False)
    monkeypatch.setattr("afedpg_ray.train.connect", lambda address: None)
    monkeypatch.setattr("afedpg_ray.train.own_instance_resources", lambda: have)
    monkeypatch.setattr("afedpg_ray.train.status_address", lambda address: "127.0.0.1:6379")
    monkeypatch.setattr("afedpg_ray.train.RayRunner", no_ray)  # no actor is created


def test_train_refuses_more_cpus_than_its_own_local_instance_before_any_actor(tmp_path, monkeypatch, capsys):
    started_here(monkeypatch, HAVE)
    out = tmp_path / "run"
    argv = ["train", "--agents", "2", "--agent-cpus", "1.5", "--batch", "500", "--samples", "2000"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "afedpg: error: --agent-cpus 1.5: 2 agents x 1.5 = 3 CPUs, this machine's Ray instance has 2; "
        "lower --agent-cpus (to at most 1), or join a cluster with --address"
    )
    assert not out.exists()  # refused before it wrote anything


def test_a_joined_cluster_is_left_to_wait(tmp_path, monkeypatch):
    # an autoscaler may add a node that has the resource: the run waits, as --placement-timeout allows
    started_here(monkeypatch, None)
    argv = ["train", "--agents", "2", "--agent-cpus", "8", "--batch", "500", "--samples", "2000"]
    with pytest.raises(AssertionError, match="passed its checks"):
        main([*argv, "--out", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"])


def test_own_instance_resources_tells_a_started_instance_from_a_joined_one(ray_session, monkeypatch):
    from afedpg_ray import connection

    have = connection.own_instance_resources()  # the session's instance was started by this process
    assert have is not None and have["CPU"] == 2.0
    monkeypatch.setattr(connection.ray._private.worker, "_global_node", None)  # e.g. a Ray client connection
    assert connection.own_instance_resources() is None
