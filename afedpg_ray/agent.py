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


def agent_seed(run_seed: int, agent_id: int, restarts: int, session_start: int = 0) -> int:
    """Seed of one agent, hashed from the run's seed, the agent, how often it was restarted in this session and
    the update the session started at (0 unless resumed): agents of one run, of runs with nearby seeds, a
    restarted agent and an agent of a resumed session (none must replay another's episodes) all draw
    unrelated streams. (An offset such as ``run_seed + 1000 * (agent_id + 1)`` made run 1000's agent 0 replay
    run 0's agent 1; a single ``session_start + restarts`` made a session resumed at update 101 replay the
    previous session's agent restarted once after starting at 100.) A fresh run's key ends in 0, which
    ``SeedSequence`` pads anyway: its seeds are those of the three-part key used before."""
    key = [run_seed, agent_id, restarts, session_start]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


class RolloutAgent:
    """Agent ``agent_id``: a :class:`Sampler` plus its modelled slowdown and communication delay."""

    def __init__(
        self,
        agent_id: int,
        config: TrainConfig,
        slowdown: float = 1.0,
        comm_delay: float = 0.0,
        restarts: int = 0,
        session_start: int = 0,
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
        seed = agent_seed(config.seed, agent_id, restarts, session_start)
        self.attack_rng = np.random.default_rng([seed, 1])
        self.node = self.node_id()
        self.sampler = Sampler(config.env, config.num_envs, seed, config.hidden, config.estimator)

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
