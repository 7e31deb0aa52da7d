"""The parameter server in-process: arrival bookkeeping, delays, validation, and agent round trips."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from afedpg_ray.agent import RolloutAgent
from afedpg_ray.config import TrainConfig
from afedpg_ray.messages import GradientMeta
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.server import ParameterServer

CONFIG = TrainConfig(env="CartPole-v1", agents=3, batch=64, num_envs=2, samples=1000, progress=False, tensorboard=False)


def meta(agent: int, version: int, samples: int = 10, obs_dim: int = 4) -> GradientMeta:
    stats = RunningStats.of(np.ones((samples, obs_dim)))
    return GradientMeta(agent, version, samples, (1.0,), (5,), stats, 0.01, 0.0, 1.0)


@pytest.fixture
def server() -> ParameterServer:
    s = ParameterServer(CONFIG)
    for i in range(CONFIG.agents):
        s.dispatch(i)
    return s


def test_delays_come_from_versions(server):
    p = server.num_params
    _, r0 = server.apply(meta(0, 0), np.ones(p))
    _, r1 = server.apply(meta(1, 0), np.ones(p))
    d0, r2 = server.apply(meta(0, 1), np.ones(p))
    _, r3 = server.apply(meta(2, 0), np.ones(p))
    assert [r.delay for r in (r0, r1, r2, r3)] == [0, 1, 1, 3]
    assert [r.update for r in (r0, r1, r2, r3)] == [1, 2, 3, 4]
    assert d0.version == 3 and server.agent_versions == {0: 3, 1: 2, 2: 4}
    assert r3.samples_total == 40 and r3.episodes_total == 4


def test_a_gradient_for_a_point_the_agent_no_longer_holds_is_stale(server):
    """The same dispatch answered twice (a retried task, a duplicated message) is applied once."""
    server.apply(meta(0, 0), np.ones(server.num_params))  # agent 0 now holds the point of version 1
    before = server.state.theta.copy()
    _, record = server.apply(meta(0, 0), np.ones(server.num_params))
    assert not record.accepted and record.reason == "stale_version"
    assert np.array_equal(server.state.theta, before) and server.state.version == 1


def test_a_checkpoint_of_another_policy_is_refused_on_restore(server):
    saved = {**server.export_state(), "num_params": server.num_params + 1}
    with pytest.raises(ValueError, match="parameters"):
        ParameterServer(CONFIG).restore(saved)


def masked_nan(values: np.ndarray) -> np.ma.MaskedArray:
    """``values`` with a NaN in entry 0, masked: ``np.isfinite`` skips it, ``np.asarray`` brings it back."""
    hidden = np.ma.masked_array(values.astype(np.float64))
    hidden.data[0] = np.nan
    hidden[0] = np.ma.masked
    return hidden


def masked_obs_delta(sent: GradientMeta) -> GradientMeta:
    """``sent`` with a masked NaN in its normaliser statistics (they would reach every agent)."""
    stats = sent.obs_delta
    return dataclasses.replace(sent, obs_delta=RunningStats(stats.count, masked_nan(stats.mean), stats.m2))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: (meta(0, 0), np.ones(s.num_params + 1)), "wrong_shape"),
        (lambda s: (meta(0, 0), np.array(["1"] * s.num_params)), "wrong_dtype"),
        (lambda s: (meta(0, 0), np.ones(s.num_params, dtype=complex)), "wrong_dtype"),
        (lambda s: (meta(0, 0), np.ones(s.num_params, dtype=np.int64)), "wrong_dtype"),
        (lambda s: (meta(0, 0), np.full(s.num_params, np.nan)), "non_finite"),
        (lambda s: (meta(0, 0), np.full(s.num_params, np.inf)), "non_finite"),
        (lambda s: (meta(0, 0), np.full(s.num_params, 1e9)), "norm_too_large"),
        (lambda s: (meta(0, 7), np.ones(s.num_params)), "future_version"),
        (lambda s: (meta(9, 0), np.ones(s.num_params)), "unknown_agent"),
        (lambda s: (meta(0, 0), masked_nan(np.ones(s.num_params))), "wrong_dtype"),
        (lambda s: (masked_obs_delta(meta(0, 0)), np.ones(s.num_params)), "non_finite"),
    ],
)
def test_bad_gradients_are_rejected_and_counted(server, make, reason):
    before = server.state.theta.copy()
    dispatch, record = server.apply(*make(server))
    assert not record.accepted and record.reason == reason
    assert server.rejected == {reason: 1}
    assert np.array_equal(server.state.theta, before) and server.state.version == 0
    assert np.all(np.isfinite(dispatch.params))


def test_rennala_collects_fresh_gradients_and_supersedes_stale_ones():
    config = dataclasses.replace(CONFIG, algo="rennala", eta0=0.5)
    s = ParameterServer(config)
    p = s.num_params
    theta0 = s.state.theta.copy()
    for i in range(3):
        s.dispatch(i)
    g = [np.zeros(p) for _ in range(3)]
    for i in range(3):
        g[i][i] = 3.0 * (i + 1)  # (3, 0, 0, ...), (0, 6, 0, ...), (0, 0, 9, ...)
    _, r0 = s.apply(meta(0, 0), g[0])
    _, r1 = s.apply(meta(1, 0), g[1])
    # collected, not applied: the version stays, the agents are re-sent the same point
    assert (r0.update, r1.update, r0.accepted, r1.accepted, s.state.version) == (0, 0, True, True, 0)
    assert np.isnan(r0.alpha) and np.array_equal(s.state.theta, theta0)
    # agent 0 was re-sent version 0, so its second gradient is fresh too: the third one steps with the mean
    _, r2 = s.apply(meta(0, 0), g[2])
    mean = (g[0] + g[1] + g[2]) / 3  # (1, 2, 3, 0, ...), norm sqrt(14)
    assert (r2.update, r2.delay, s.state.version) == (1, 0, 1)
    assert np.allclose(s.state.theta, theta0 + 0.5 * mean / np.sqrt(14.0))
    assert s.state.extra is None  # the collection starts afresh
    # agent 2's point (version 0) has been stepped past: superseded, not rejected; its samples count
    _, r3 = s.apply(meta(2, 0), np.ones(p))
    assert (r3.accepted, r3.reason, r3.delay, r3.update) == (False, "superseded", 1, 1)
    assert s.rejected == {} and s.superseded == 1 and r3.samples_total == 40
    assert s.agent_stats[2].superseded == 1 and s.agent_stats[2].rejected == 0
    # superseded work cost the agent an iteration: it is timed (the straggler table ranks by it)
    assert s.agent_stats[2].timed == 1 and s.agent_stats[2].iteration_seconds_sum == pytest.approx(0.01)
    assert s.agent_stats[2].updates == 0 and s.agent_stats[0].timed == 2
    assert np.allclose(s.state.theta, theta0 + 0.5 * mean / np.sqrt(14.0))
    # a half-full collection survives export and restore
    s.apply(meta(2, 1), g[0])
    restored = ParameterServer(config)
    restored.restore(s.export_state())
    assert int(restored.state.extra["collected_count"]) == 1 and restored.superseded == 1
    assert np.array_equal(restored.state.extra["collected_sum"], g[0])


def test_fedpg_round_takes_one_gradient_per_agent():
    cfg = TrainConfig(env="CartPole-v1", algo="fedpg", agents=3, batch=64, num_envs=2)
    s = ParameterServer(cfg)
    for i in range(3):
        s.dispatch(i)
    p = s.num_params
    dispatch, records = s.apply_round([meta(i, 0) for i in range(3)], *[np.ones(p) * (i + 1) for i in range(3)])
    assert s.state.version == 1 and sorted(r.agent for r in records) == [0, 1, 2]
    assert all(r.delay == 0 and r.accepted for r in records)
    assert dispatch.version == 1 and set(s.agent_versions.values()) == {1}
    # a gradient from an agent the server never dispatched to is rejected and does not register it
    _, records = s.apply_round([meta(0, 1), meta(7, 1)], np.ones(p), np.ones(p))
    assert [(r.agent, r.accepted, r.reason) for r in records] == [(7, False, "unknown_agent"), (0, True, "")]
    assert sorted(s.agent_versions) == [0, 1, 2]


def test_agent_gradient_round_trip_in_process():
    import ray

    ray_was_up = ray.is_initialized()
    s = ParameterServer(CONFIG)
    agent = RolloutAgent(0, CONFIG)
    assert ray.is_initialized() == ray_was_up  # an agent used outside Ray must not start Ray
    assert ray_was_up or agent.node == ""
    dispatch = s.dispatch(0)
    for _ in range(3):
        m, g = agent.step(dispatch)
        assert g.shape == (s.num_params,) and m.samples == 64 and m.version == dispatch.version
        dispatch, record = s.apply(m, g)
        assert record.accepted
    assert s.state.version == 3 and s.obs_stats.count == 3 * 64


def test_robust_filter_is_wired_into_the_server():
    cfg = TrainConfig(env="CartPole-v1", agents=4, batch=64, num_envs=2, robust="filter")
    s = ParameterServer(cfg)
    for i in range(4):
        s.dispatch(i)
    rng = np.random.default_rng(0)
    direction = np.ones(s.num_params) / np.sqrt(s.num_params)
    reasons = []
    for step in range(60):
        agent = step % 4
        g = direction + 0.05 * rng.normal(size=s.num_params)
        _, record = s.apply(meta(agent, s.agent_versions[agent]), -g if agent == 0 else g)
        reasons.append((agent, record.reason))
    late = [reason for agent, reason in reasons[20:] if agent == 0]
    assert late and all(reason == "direction_outlier" for reason in late)
    assert all(reason == "" for agent, reason in reasons if agent != 0)


def with_stats(m: GradientMeta, **changes) -> GradientMeta:
    return dataclasses.replace(m, **changes)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(obs_delta=RunningStats.of(np.ones((10, 5)))), "bad_stats"),  # CartPole observations have 4 entries
        (dict(obs_delta=RunningStats(-10.0, np.zeros(4), np.ones(4))), "bad_stats"),
        (dict(obs_delta=RunningStats(10.0, np.zeros(4), -np.ones(4))), "bad_stats"),
        (dict(return_delta=RunningStats.of(np.ones((10, 2)))), "bad_stats"),
        (dict(return_delta=RunningStats(-1.0, np.zeros(1), np.zeros(1))), "bad_stats"),
        (dict(samples=0), "bad_samples"),
        (dict(samples=-64), "bad_samples"),
        (dict(samples=10**9), "bad_samples"),
        (dict(episode_returns=(1.0, 2.0)), "bad_samples"),  # two returns, one length
        (dict(episode_returns=(None,)), "bad_samples"),  # not a number (numpy would read it as NaN)
        (dict(episode_returns=("1.5",)), "bad_samples"),  # numpy would read it as 1.5, _record would fail on it
        (dict(samples=10.0), "bad_samples"),
        (dict(obs_delta=RunningStats.of(np.ones((9, 4)))), "bad_stats"),  # counts 9 observations, reports 10 samples
        (dict(obs_delta=RunningStats(1e15, np.full(4, 50.0), np.ones(4))), "bad_stats"),  # would own the normaliser
        (dict(obs_delta=RunningStats(10.0, np.full(4, 1e200), np.ones(4))), "bad_stats"),  # overflows the next merge
        (dict(return_delta=RunningStats(11.0, np.zeros(1), np.zeros(1))), "bad_stats"),
        (dict(obs_delta=RunningStats(10.0, np.array(["a"] * 4), np.ones(4))), "non_finite"),
        (dict(episode_returns=("ten",)), "bad_samples"),
        (dict(episode_returns=((1.0, 2.0),)), "bad_samples"),
        (dict(episode_lengths=(0,)), "bad_samples"),
        (dict(episode_returns=(float("nan"),)), "non_finite"),
    ],
)
def test_bad_statistics_are_rejected_before_they_reach_the_normaliser(server, change, reason):
    before_theta, before_obs = server.state.theta.copy(), dataclasses.replace(server.obs_stats)
    dispatch, record = server.apply(with_stats(meta(0, 0), **change), np.ones(server.num_params))
    assert not record.accepted and record.reason == reason and server.rejected == {reason: 1}
    assert np.array_equal(server.state.theta, before_theta) and server.samples_total == 0
    assert server.obs_stats.count == before_obs.count and np.array_equal(server.obs_stats.mean, before_obs.mean)
    assert dispatch.obs_stats.is_finite() and np.all(np.isfinite(dispatch.obs_stats.var))
    # the next honest gradient is still merged normally
    _, ok = server.apply(meta(0, 0), np.ones(server.num_params))
    assert ok.accepted and server.obs_stats.count == 10


def test_numpy_integers_from_an_agent_are_stored_as_python_numbers(server):
    """A numpy count in the server's state would make every later checkpoint fail to load."""
    m = dataclasses.replace(meta(0, 0), samples=np.int64(10), episode_returns=(np.float32(2.5),))
    _, record = server.apply(m, np.ones(server.num_params))
    assert record.accepted and type(server.samples_total) is int and type(server.recent_returns[-1]) is float


def annealed(samples: int) -> TrainConfig:
    return dataclasses.replace(CONFIG, schedule="linear", alpha_end=0.05, samples=samples)


def test_resume_with_a_bigger_budget_keeps_the_schedule_horizon():
    small = ParameterServer(annealed(1000))
    for i in range(CONFIG.agents):
        small.dispatch(i)
    for _ in range(6):
        small.apply(meta(0, small.agent_versions[0]), np.ones(small.num_params))
    saved = small.export_state()
    assert saved["schedule_horizon"] == annealed(1000).expected_updates
    big = ParameterServer(annealed(100_000))
    assert big.horizon != small.horizon
    big.restore(saved)
    k = small.state.version
    assert big.horizon == small.horizon
    for j in (k, k + 1, 10 * small.horizon):  # also past the horizon: eta at its floor, alpha at alpha_end
        assert big.rule.schedule.eta(j) == small.rule.schedule.eta(j)
        assert big.rule.schedule.alpha(j) == small.rule.schedule.alpha(j)
    _, a = small.apply(meta(1, small.agent_versions[1]), np.ones(small.num_params))
    _, b = big.apply(meta(1, big.agent_versions[1]), np.ones(big.num_params))
    assert (a.eta, a.alpha) == (b.eta, b.alpha) and np.array_equal(small.state.theta, big.state.theta)


def test_checkpoint_without_a_schedule_horizon_or_robust_state_still_loads():
    saved = ParameterServer(annealed(1000)).export_state()
    del saved["schedule_horizon"], saved["robust"]  # as written before these fields existed
    big = ParameterServer(annealed(100_000))
    big.restore(saved)
    assert big.horizon == annealed(100_000).expected_updates
    # with the robust filter on, an older checkpoint (no filter state) restores to a fresh filter
    filtered = dataclasses.replace(annealed(1000), robust="filter")
    source = ParameterServer(filtered)
    source.dispatch(1)
    source.apply(meta(1, source.agent_versions[1]), np.ones(source.num_params))
    saved = source.export_state()
    assert saved["robust"]["seen"] == {1: 1}
    del saved["robust"]
    restored = ParameterServer(filtered)
    restored.robust.seen[3] = 7  # state that a restore must not keep
    restored.restore(saved)
    assert restored.robust is not None and restored.robust.seen == {}


def test_robust_filter_state_survives_export_and_restore():
    cfg = TrainConfig(env="CartPole-v1", agents=4, batch=64, num_envs=2, robust="filter")
    rng = np.random.default_rng(1)

    def feed(s: ParameterServer, steps: int) -> list[str]:
        reasons = []
        for step in range(steps):
            agent = step % 4
            g = np.ones(s.num_params) + 0.05 * rng.normal(size=s.num_params)
            reasons.append(s.apply(meta(agent, s.agent_versions[agent]), -g if agent == 0 else g)[1].reason)
        return reasons

    warm = ParameterServer(cfg)
    for i in range(4):
        warm.dispatch(i)
    feed(warm, 20)
    restored = ParameterServer(cfg)
    restored.restore(warm.export_state())
    assert restored.robust.seen == warm.robust.seen and restored.robust.norms == warm.robust.norms
    assert all(np.array_equal(restored.robust.directions[a], warm.robust.directions[a]) for a in range(4))
    # the attacker (agent 0) is rejected from its first arrival after the restore, not after a warm-up
    assert feed(restored, 4)[0] == "direction_outlier"


def test_the_run_clock_starts_when_the_driver_says():
    # The driver starts the clock before it creates the actors: an actor's __init__ can run after the
    # agents have started, and the wall times of two algorithms must count the same start-up.
    started = time.time() - 100.0
    assert ParameterServer(CONFIG, start_time=started).status()["elapsed"] >= 100.0
    assert ParameterServer(CONFIG).status()["elapsed"] < 100.0


def test_a_restore_keeps_the_run_clock_it_was_created_with():
    """A server restored mid-run (checkpoint at 100 s, restored at 175 s) logs wall times on the driver's
    clock: the 75 s since the checkpoint stay on it, as they do in events.csv and summary.json."""
    now = time.time()
    first = ParameterServer(CONFIG, start_time=now - 100.0)
    for i in range(CONFIG.agents):
        first.dispatch(i)
    saved = first.export_state()
    assert saved["elapsed"] == pytest.approx(100.0, abs=5.0)
    restored = ParameterServer(CONFIG, start_time=now - 175.0)
    restored.restore(saved)
    _, record = restored.apply(meta(0, restored.agent_versions[0]), np.ones(restored.num_params))
    assert record.wall_time == pytest.approx(175.0, abs=5.0)
