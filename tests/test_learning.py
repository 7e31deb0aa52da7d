"""Proof of learning on real Ray: 4 heterogeneous agents solve most of CartPole within 50k samples."""

from __future__ import annotations

import pytest

from afedpg_ray.config import TrainConfig
from afedpg_ray.train import train

RETURN_THRESHOLD = 150.0
"""CartPole-v1 returns start near 20; 500 is the cap. Seeds 0-4 measured 343-425 at this budget (eta0 0.01)."""
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
