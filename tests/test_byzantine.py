"""Byzantine attacks and the asynchronous robust filter, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from afedpg_ray.byzantine import Attack, RobustFilter, corrupt, parse_attack
from afedpg_ray.config import ConfigError


def test_parse_attack():
    assert parse_attack("", 4) is None
    assert parse_attack("1:sign_flip", 4) == Attack(1, "sign_flip")
    assert parse_attack("2:scale:10", 4) == Attack(2, "scale", 10.0)
    assert parse_attack("1:sign_flip", 4).applies_to(0) and not parse_attack("1:sign_flip", 4).applies_to(1)


@pytest.mark.parametrize(
    "spec", ["x:sign_flip", "0:sign_flip", "4:sign_flip", "1:bogus", "1:scale", "1:nan:3", "1:scale:nan", "1:scale:inf"]
)
def test_bad_attack_specs(spec):
    with pytest.raises(ConfigError, match="--byzantine"):
        parse_attack(spec, 4)


def test_corrupt():
    g = np.array([3.0, 4.0])
    rng = np.random.default_rng(0)
    assert np.array_equal(corrupt(g, Attack(1, "sign_flip"), rng), -g)
    assert np.array_equal(corrupt(g, Attack(1, "scale", 10.0), rng), 10 * g)
    noise = corrupt(g, Attack(1, "random_noise"), rng)
    assert np.linalg.norm(noise) == pytest.approx(5.0) and not np.allclose(noise, g)
    assert np.all(np.isnan(corrupt(g, Attack(1, "nan"), rng)))


def honest(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    return direction + 0.8 * rng.normal(size=direction.shape)


def test_filter_rejects_a_fast_sign_flipper_and_keeps_honest_agents():
    # the attacker is the fastest agent: half of all arrivals, so it dominates any per-arrival statistic
    rng = np.random.default_rng(0)
    direction = np.ones(20) / np.sqrt(20)
    filt = RobustFilter()
    arrivals = [0, 1, 0, 2, 0, 3] * 40
    verdicts: dict[int, list[str]] = {0: [], 1: [], 2: [], 3: []}
    for agent in arrivals:
        g = honest(rng, direction)
        verdicts[agent].append(filt.check(agent, -g if agent == 0 else g))
    late = {a: v[10:] for a, v in verdicts.items()}
    assert late[0].count("direction_outlier") >= 0.75 * len(late[0])
    for agent in (1, 2, 3):
        assert late[agent].count("") >= 0.9 * len(late[agent])


def test_filter_rejects_scaled_gradients_by_norm():
    rng = np.random.default_rng(1)
    direction = np.ones(10)
    filt = RobustFilter()
    for step in range(40):
        filt.check(step % 3 + 1, honest(rng, direction))
    assert filt.check(0, 10 * honest(rng, direction)) == "norm_outlier"
    assert filt.check(1, honest(rng, direction)) == ""


def test_the_reference_direction_is_recomputed_once_per_n_judged_arrivals(monkeypatch):
    # a median over N x P values per arrival dominated the server's time; the per-agent means move slowly,
    # so it is taken once per N arrivals, and at once when the set of judged agents changes
    from afedpg_ray import byzantine

    medians = []
    median = np.median
    monkeypatch.setattr(byzantine.np, "median", lambda *a, **k: medians.append(1) or median(*a, **k))
    rng = np.random.default_rng(2)
    direction = np.ones(10) / np.sqrt(10)
    filt = RobustFilter()
    for step in range(3 * 4):  # agents 0-3 become judged at their third arrival
        filt.check(step % 4, honest(rng, direction))
    medians.clear()
    for step in range(4 * 5):
        filt.check(step % 4, honest(rng, direction))
    assert len(medians) == 5  # 20 judged arrivals of 4 agents
    for _ in range(3):  # agent 4 joins the judged set at its third arrival: recomputed then
        filt.check(4, honest(rng, direction))
    assert len(medians) == 6
