"""Proof of learning on real Ray: 4 heterogeneous agents take CartPole from ~20 to 200+ within 50k samples."""

from __future__ import annotations

import pytest

from afedpg_ray.config import TrainConfig
from afedpg_ray.train import train

RETURN_THRESHOLD = 200.0
"""CartPole-v1 returns start near 20 (a random policy); 500 is the cap. At this budget (eta0 0.01) seeds 0-4
measured 274-425 over several sessions; the asynchronous arrival order makes a run vary, so the threshold
keeps a margin below the lowest while still being 10x the random policy."""
SAMPLE_BUDGET = 50_000


@pytest.mark.usefixtures("ray_session")
def test_afedpg_four_heterogeneous_agents_learn_cartpole(tmp_path):
    config = TrainConfig(
        env="CartPole-v1",
        algo="afedpg",
        agents=4,
        hetero="linear:4",
        samples=SAMPLE_BUDGET,
        batch=500,
        eta0=0.01,  # the per-environment table's value for CartPole-v1 (afedpg_ray/envs.py)
        seed=0,
        progress=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    result = train(config)
    assert result.samples_total >= SAMPLE_BUDGET
    assert result.mean_delay > 0  # genuinely asynchronous
    assert result.return_mean >= RETURN_THRESHOLD, result
