"""One rollout agent: receives a point, samples there, returns a gradient. Plain class; ``runtime.py``
wraps it as a Ray actor."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from afedpg_ray.byzantine import corrupt, parse_attack
from afedpg_ray.config import TrainConfig
from afedpg_ray.heterogeneity import padding_seconds, wait
from afedpg_ray.messages import Dispatch, GradientMeta
from afedpg_ray.metrics import AgentMetrics
from afedpg_ray.rollout import Sampler


def agent_seed(run_seed: int, agent_id: int, incarnation: int) -> int:
    """Seed of one agent, hashed from the run's seed, the agent and its incarnation: agents of one run, of
    runs with nearby seeds, and a restarted agent (``incarnation`` > 0, which must not replay its old
    episodes) all draw unrelated streams. (An offset such as ``run_seed + 1000 * (agent_id + 1)`` made run
    1000's agent 0 replay run 0's agent 1.)"""
    return int(np.random.SeedSequence([run_seed, agent_id, incarnation]).generate_state(1, np.uint64)[0])


class RolloutAgent:
    """Agent ``agent_id``: a :class:`Sampler` plus its modelled slowdown and communication delay."""

    def __init__(
        self, agent_id: int, config: TrainConfig, slowdown: float = 1.0, comm_delay: float = 0.0, incarnation: int = 0
    ) -> None:
        torch.set_num_threads(1)  # many agents share few cores: one thread each avoids oversubscription
        self.agent_id = agent_id
        self.config = config
        self.slowdown = slowdown
        self.comm_delay = comm_delay
        self.metrics = AgentMetrics(agent_id)
        attack = parse_attack(config.byzantine, config.agents)
        self.attack = attack if attack is not None and attack.applies_to(agent_id) else None
        # its own stream: the sampler's generator is seeded with agent_seed alone
        self.attack_rng = np.random.default_rng([agent_seed(config.seed, agent_id, incarnation), 1])
        self.node = self.node_id()
        self.sampler = Sampler(
            config.env, config.num_envs, agent_seed(config.seed, agent_id, incarnation), config.hidden, config.estimator
        )

    def step(self, dispatch: Dispatch) -> tuple[GradientMeta, np.ndarray]:
        """One iteration: sample ``batch`` steps at the dispatched point and estimate the gradient."""
        start = time.perf_counter()
        self.sampler.set_policy(dispatch.params, dispatch.obs_stats, dispatch.return_stats)
        estimate = self.sampler.sample_gradient(self.config.batch)
        grad = estimate.grad if self.attack is None else corrupt(estimate.grad, self.attack, self.attack_rng)
        compute = time.perf_counter() - start
        pause = padding_seconds(self.slowdown, compute, self.config.iteration_time) + self.comm_delay
        wait(pause)
        meta = GradientMeta(
            agent_id=self.agent_id,
            version=dispatch.version,
            samples=estimate.samples,
            episode_returns=estimate.episode_returns,
            episode_lengths=estimate.episode_lengths,
            obs_delta=estimate.obs_delta,
            compute_seconds=compute,
            wait_seconds=pause,
            grad_norm=float(np.linalg.norm(grad)),
            node_id=self.node,
            return_delta=estimate.return_delta,
            sent_at=time.time(),
        )
        self.metrics.observe_iteration(compute + pause)
        return meta, grad

    def pid(self) -> int:
        """Process id of this agent (chaos tests kill it)."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this agent runs on (empty outside Ray)."""
        import ray

        # get_runtime_context() would start a local Ray instance (~20 s) when called outside Ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
