"""Pure maths of the supporting pieces: GAE, merged statistics, heterogeneity profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from afedpg_ray.config import ConfigError
from afedpg_ray.heterogeneity import padding_seconds, parse_profile, theoretical_speedup
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.rate import RecentRate
from afedpg_ray.rollout import gae
from afedpg_ray.seedstats import (
    bootstrap_mean_ci,
    paired_comparison,
    prob_improvement,
    prob_improvement_ci,
    sign_test_p,
)


def test_gae_by_hand():
    rewards = np.array([[1.0], [1.0], [1.0]])
    values = np.array([[0.5], [0.5], [0.5]])
    next_values = np.array([[0.5], [0.5], [0.0]])
    dones = np.array([[0.0], [0.0], [1.0]])
    adv = gae(rewards, values, next_values, dones, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.5
    d1 = 1.0 + 0.9 * 0.5 - 0.5
    d0 = d1
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert np.allclose(adv[:, 0], [a0, a1, a2])


def test_gae_cuts_at_episode_end():
    rewards = np.ones((2, 1))
    values = np.zeros((2, 1))
    adv = gae(rewards, values, np.zeros((2, 1)), np.array([[1.0], [0.0]]), 0.99, 1.0)
    assert np.allclose(adv[:, 0], [1.0, 1.0])


def test_gae_lambda_one_is_discounted_reward_to_go():
    rewards = np.array([[1.0], [2.0], [3.0]])
    adv = gae(rewards, np.zeros((3, 1)), np.zeros((3, 1)), np.array([[0.0], [0.0], [1.0]]), 0.5, 1.0)
    assert np.allclose(adv[:, 0], [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def test_running_stats_merge_equals_whole_batch():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 3)), rng.normal(3.0, 2.0, size=(11, 3))
    merged = RunningStats.of(a).merge(RunningStats.of(b))
    whole = RunningStats.of(np.concatenate([a, b]))
    assert merged.count == 18
    assert np.allclose(merged.mean, whole.mean) and np.allclose(merged.var, whole.var)
    assert np.allclose(RunningStats.empty(3).merge(merged).mean, merged.mean)


def test_profiles():
    assert parse_profile("none", 3) == [1.0, 1.0, 1.0]
    assert parse_profile("linear:4", 4) == [1.0, 2.0, 3.0, 4.0]
    assert parse_profile("sqrt", 4) == pytest.approx([1.0, math.sqrt(2), math.sqrt(3), 2.0])
    assert parse_profile("straggler:10", 3) == [1.0, 1.0, 10.0]
    lognormal = parse_profile("lognormal:0.5", 5, seed=3)
    assert lognormal == parse_profile("lognormal:0.5", 5, seed=3)  # seeded: reproducible
    assert lognormal != parse_profile("lognormal:0.5", 5, seed=4)  # and the seed is used
    assert parse_profile("lognormal:0", 3) == [1.0, 1.0, 1.0]  # exp(|N(0, 0)|)
    # log-slowdowns are |N(0, 0.5^2)|: mean 0.5 * sqrt(2 / pi) = 0.399 (standard error here ~0.003)
    many = np.log(parse_profile("lognormal:0.5", 10_000, seed=0))
    assert np.mean(many) == pytest.approx(0.5 * math.sqrt(2 / math.pi), abs=0.015) and many.min() >= 0
    assert parse_profile("linear:4", 1) == [1.0]
    assert parse_profile("straggler:1000", 2) == [1.0, 1000.0]  # the cap itself is allowed


@pytest.mark.parametrize(
    "spec",
    [
        "linear",
        "linear:0.5",
        "fast",
        "sqrt:2",
        "straggler:x",
        "lognormal:-1",
        "linear:nan",
        "linear:1e300",
        "straggler:1001",
        "lognormal:50",
    ],
)
def test_bad_profiles_name_the_option(spec):
    with pytest.raises(ConfigError, match="--hetero"):
        parse_profile(spec, 4)


def test_theoretical_speedup():
    # t = 1, 2, 3, 4: (4 / 4) * (1 + 1/2 + 1/3 + 1/4) = 25/12
    assert theoretical_speedup([1.0, 2.0, 3.0, 4.0]) == pytest.approx(25 / 12)
    assert theoretical_speedup([2.0, 2.0]) == pytest.approx(1.0)
    # one straggler 10x slower among 3: (10 / 3) * (1 + 1 + 1/10) = 7
    assert theoretical_speedup([1.0, 1.0, 10.0]) == pytest.approx(7.0)


def test_padding():
    assert padding_seconds(3.0, 0.2, 1.0) == pytest.approx(2.8)
    assert padding_seconds(1.0, 1.5, 1.0) == 0.0
    assert padding_seconds(4.0, 0.5, None) == pytest.approx(1.5)


def test_placement_problem_names_the_missing_resource():
    from afedpg_ray.placement import placement_problem

    nodes = [{"CPU": 2.0, "fast_node": 1.0}, {"CPU": 1.0}]
    asked, problem = placement_problem({"num_cpus": 0.5, "resources": {"gpu_node": 1}}, nodes)
    assert asked == "CPU=0.5, gpu_node=1" and problem == "no node has 'gpu_node'"
    assert placement_problem({"num_cpus": 4}, nodes)[1] == (
        "no single node has that much of it all (the most a node has: CPU=2)"
    )
    # each resource's most, even when no node has the most of everything
    assert placement_problem({"num_cpus": 2, "resources": {"fast_node": 2}}, nodes)[1].endswith(
        "(the most a node has: CPU=2, fast_node=1)"
    )
    assert "busy" in placement_problem({"num_cpus": 1, "resources": {"fast_node": 1}}, nodes)[1]


def test_bundles_pack_one_whole_bundle_per_node():
    from afedpg_ray.placement import bundles_fit, packable_share, unplaceable_reason

    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    # 0.1 + 8 * 0.48 = 3.94 <= 4 CPUs in all, but 4 agents fill a node to 1.92 and no node has 0.1 left
    assert not bundles_fit([{"CPU": 0.1}] + [{"CPU": 0.48}] * 8, two_nodes)
    assert bundles_fit([{"CPU": 0.1}] + [{"CPU": 0.47}] * 8, two_nodes)  # 0.1 + 4 * 0.47 = 1.98; 1.88
    assert bundles_fit([{"CPU": 0.1}] + [{"CPU": 0.3}] * 3, [{"CPU": 1.0}])  # exactly full
    assert not bundles_fit([{"CPU": 0.5, "fast": 1.0}], [{"CPU": 4.0}])
    assert packable_share(8, [2.0, 2.0], 0.1) == 0.47
    assert packable_share(8, [2.0], 0.1) == 0.23  # one node: floor(100 * 1.9 / 8) / 100
    assert packable_share(1, [64.0], 0.1) == 1.0  # at most one CPU each
    assert packable_share(4, [0.0], 0.1) is None  # a head with no CPUs and no workers yet
    reason = unplaceable_reason([{"CPU": 0.1}, {"CPU": 1.0, "fast": 1.0}], [{"CPU": 2.0, "memory": 1e9}])
    assert reason == "a trial asks for CPU=1.1, fast=1 in 2 bundles (no node has 'fast'; node 0: CPU=2)"
    assert unplaceable_reason([{"CPU": 0.1}], [{"CPU": 2.0}]) is None


def test_watch_hint_names_the_dashboard_and_a_status_command_that_works():
    from afedpg_ray.connection import watch_hint

    local = watch_hint("10.0.0.5:6379", "127.0.0.1:8265", "afedpg", token_auth=True)
    assert local == (
        "watch: Ray dashboard http://127.0.0.1:8265 (it asks for the token that `ray get-auth-token` prints); "
        "straggler table: afedpg status --address 10.0.0.5:6379"  # status sends this machine's token itself
    )
    # no dashboard, no token auth, a run under another actor prefix
    other = watch_hint("ray://head:10001", None, "trial-3", token_auth=False)
    assert other == "watch: straggler table: afedpg status --address ray://head:10001 --prefix trial-3"


def test_return_scaler_shares_statistics():
    from afedpg_ray.rollout import ReturnScaler

    fresh, veteran = ReturnScaler(2, 0.9), ReturnScaler(2, 0.9)
    for _ in range(50):
        veteran(np.array([1.0, 2.0]), np.array([False, False]))
    shared = veteran.take_delta()
    assert shared.count == 100 and veteran.count == 0
    fresh.shared = shared
    assert fresh.var == pytest.approx(float(shared.var[0]))  # a restarted agent scales as the others do
    fresh(np.array([1.0, 2.0]), np.array([True, True]))
    merged = shared.merge(RunningStats(2.0, np.array([1.5]), np.array([0.5])))
    assert fresh.var == pytest.approx(float(merged.var[0]))


def test_prob_improvement_by_hand():
    # pairs with x > y: 3>1, 3>2, 5>1, 5>2, 5>4 -> 5 of 9; in the third case 3 = 3 counts one half
    assert prob_improvement([3.0, 5.0, 0.0], [1.0, 2.0, 4.0]) == pytest.approx((2 + 3 + 0) / 9)
    assert prob_improvement([3.0], [3.0]) == 0.5
    assert prob_improvement([3.0, 5.0], [1.0, 3.0, 4.0]) == pytest.approx((1 + 0.5 + 3) / 6)
    with pytest.raises(ValueError):
        prob_improvement([], [1.0])


def test_bootstrap_mean_ci():
    assert bootstrap_mean_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)
    lo, hi = bootstrap_mean_ci([0.0, 10.0])
    # resampled means of two values are 0, 5 or 10 with odds 1:2:1: the 95% interval spans both ends
    assert (lo, hi) == (0.0, 10.0)
    lo, hi = bootstrap_mean_ci([1.0, 2.0, 3.0, 40.0])
    assert 1.0 <= lo < np.mean([1.0, 2.0, 3.0, 40.0]) < hi <= 40.0
    assert bootstrap_mean_ci([1.0, 2.0, 3.0, 40.0]) == (lo, hi)  # fixed seed: reproducible
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


def test_prob_improvement_ci():
    # every x above every y in any resample: P is 1 in all of them
    assert prob_improvement_ci([5.0, 6.0], [1.0, 2.0, 3.0]) == (1.0, 1.0)
    # x resamples {1,1}, {1,3}, {3,1}, {3,3} against y = 2 give P = 0, 0.5, 0.5, 1 (odds 1:2:1)
    assert prob_improvement_ci([1.0, 3.0], [2.0]) == (0.0, 1.0)
    x, y = np.arange(10) + 0.5, np.arange(10.0)
    lo, hi = prob_improvement_ci(x, y)
    assert prob_improvement(x, y) == pytest.approx(0.55)
    assert 0.0 < lo < 0.55 < hi < 1.0
    assert prob_improvement_ci(x, y) == (lo, hi)  # fixed seed: reproducible
    # four times the seeds of each, same spread: the interval narrows (about by half)
    lo4, hi4 = prob_improvement_ci(np.repeat(x, 4), np.repeat(y, 4))
    assert hi4 - lo4 < 0.65 * (hi - lo)
    with pytest.raises(ValueError):
        prob_improvement_ci([1.0], [])


@pytest.mark.parametrize(
    "call",
    [
        lambda: prob_improvement([1.0, 2.0, float("nan")], [0.0, 0.0, 0.0]),  # NaN compared false: P 0.67, not 1
        lambda: prob_improvement([0.0], [1.0, float("inf")]),
        lambda: prob_improvement_ci([1.0, float("nan")], [0.0, 0.0]),
        lambda: bootstrap_mean_ci([1.0, 2.0, float("nan")]),
    ],
)
def test_seed_statistics_refuse_a_run_without_a_return(call):
    # a run that finished no episode has a NaN return: it must be left out by the caller, not counted a loss
    with pytest.raises(ValueError, match="finite returns"):
        call()


def test_sign_test_by_hand():
    # 18 wins of 20: P(K <= 2) = (1 + 20 + 190) / 2^20, doubled
    assert sign_test_p(18, 2) == pytest.approx(2 * 211 / 2**20)
    assert sign_test_p(2, 18) == sign_test_p(18, 2)
    assert sign_test_p(3, 3) == 1.0  # 2 * P(K <= 3) of Binomial(6, 1/2) = 2 * 42/64 exceeds 1
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p(0, 0) == 1.0
    with pytest.raises(ValueError):
        sign_test_p(-1, 3)


def test_paired_comparison_by_hand():
    result = paired_comparison([10.0, 5.0, 7.0, 3.0], [8.0, 5.0, 4.0, 4.0])
    # differences 2, 0, 3, -1: two wins, one tie, one loss
    assert (result.pairs, result.wins, result.ties) == (4, 2, 1)
    assert result.mean_difference == pytest.approx(1.0)
    assert result.sign_test_p == sign_test_p(2, 1) == 1.0
    lo, hi = result.ci
    assert -1.0 <= lo < 1.0 < hi <= 3.0
    # a constant difference has a point interval whatever the resample
    assert paired_comparison([3.0, 4.0, 5.0], [1.0, 2.0, 3.0]).ci == (2.0, 2.0)
    # the pairs are resampled together: unpaired, these sets overlap; paired, X is always 1 ahead
    x, y = [1.0, 11.0, 21.0, 31.0], [0.0, 10.0, 20.0, 30.0]
    assert paired_comparison(x, y).ci == (1.0, 1.0) and prob_improvement(x, y) < 0.7
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([1.0, float("nan")], [0.0, 0.0])
    # ties are neither wins nor losses: 6 wins, 0 losses, 2 ties is a sign test on 6, p = 2 / 2^6
    six = paired_comparison([1.0] * 6 + [0.0, 0.0], [0.0] * 8)
    assert (six.wins, six.ties) == (6, 2) and six.sign_test_p == pytest.approx(2 / 64)


def test_numpy_mlp_matches_the_torch_network_forward_and_backward():
    """Agents act through the numpy copy while the policy gradient comes from torch: they must agree."""
    import torch

    from afedpg_ray.policy import mlp
    from afedpg_ray.rollout import NumpyMLP

    torch.manual_seed(0)
    net = mlp([5, 16, 8, 3], out_gain=0.5)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.normal_()  # the initialisation zeroes biases: make their gradients non-trivial
    copy = NumpyMLP(net)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    weights = rng.normal(size=(7, 3)).astype(np.float32)  # loss = sum(weights * output)
    outputs = copy.activations(x)
    x_t = torch.as_tensor(x)
    out_t = net(x_t)
    assert np.allclose(outputs[-1], out_t.detach().numpy(), atol=1e-5)
    (out_t * torch.as_tensor(weights)).sum().backward()
    expected = []
    for layer in (m for m in net if isinstance(m, torch.nn.Linear)):
        expected += [layer.weight.grad.numpy().T.ravel(), layer.bias.grad.numpy().ravel()]
    assert np.allclose(copy.backward(outputs, weights.copy()), np.concatenate(expected), atol=1e-4)


def test_numpy_adam_matches_torch_adam():
    import torch

    from afedpg_ray.rollout import Adam

    rng = np.random.default_rng(2)
    start = rng.normal(size=6).astype(np.float32)
    ours = Adam(start.copy(), lr=0.01)
    theirs = torch.nn.Parameter(torch.as_tensor(start.copy()))
    optimiser = torch.optim.Adam([theirs], lr=0.01)
    for _ in range(5):
        grad = rng.normal(size=6).astype(np.float32)
        ours.step(grad)
        theirs.grad = torch.as_tensor(grad)
        optimiser.step()
    assert np.allclose(ours.params, theirs.detach().numpy(), atol=1e-6)


def test_the_samplers_normaliser_is_the_one_evaluation_uses():
    """Agents normalise with a fast in-place copy; evaluation (afedpg eval) with RunningStats.normalize."""
    from afedpg_ray.config import EstimatorConfig
    from afedpg_ray.normalizer import RunningStats
    from afedpg_ray.rollout import OBS_CLIP, Sampler

    rng = np.random.default_rng(3)
    stats = RunningStats.of(rng.normal(2.0, 0.5, size=(50, 4)))
    sampler = Sampler("CartPole-v1", num_envs=2, seed=0, hidden=(8,), est=EstimatorConfig())
    sampler.set_normalizer(stats)
    obs = rng.normal(2.0, 3.0, size=(6, 4))
    obs[0, 0] = 1e6  # far out: clipped to OBS_CLIP by both
    assert np.allclose(sampler._normalize(obs), stats.normalize(obs, clip=OBS_CLIP), atol=1e-5)
    assert sampler._normalize(obs)[0, 0] == OBS_CLIP


def test_the_samplers_actions_follow_the_policys_distribution():
    """The numpy draws agents act with have the distribution whose log-probability the gradient uses."""
    import torch

    from afedpg_ray.config import EstimatorConfig
    from afedpg_ray.rollout import Sampler

    est = EstimatorConfig(log_std_init=-0.7)
    # categorical (CartPole): one observation repeated; frequencies against softmax(logits)
    sampler = Sampler("CartPole-v1", num_envs=1, seed=0, hidden=(8,), est=est)
    with torch.no_grad():
        sampler.policy.net[-1].bias.copy_(torch.tensor([0.3, -0.5]))  # logits away from 50/50
    sampler.actor.load(sampler.policy.net)
    obs = np.full((20_000, 4), 0.1, dtype=np.float32)
    probs = torch.softmax(sampler.policy.net(torch.as_tensor(obs[:1])), -1).detach().numpy()[0]
    counts = np.bincount(sampler._act(obs), minlength=2) / len(obs)
    assert np.allclose(counts, probs, atol=0.015)  # binomial std at 20k draws is below 0.004
    # Gaussian (Pendulum): mean from the network, std exp(log_std)
    sampler = Sampler("Pendulum-v1", num_envs=1, seed=0, hidden=(8,), est=est)
    obs = np.full((20_000, 3), 0.2, dtype=np.float32)
    mean = sampler.policy.net(torch.as_tensor(obs[:1])).detach().numpy()[0]
    actions = sampler._act(obs)
    assert np.allclose(actions.mean(axis=0), mean, atol=0.02)
    assert np.allclose(actions.std(axis=0), np.exp(-0.7), rtol=0.03)


def test_policy_entropy_is_the_joint_entropy_of_its_action_dimensions():
    import gymnasium as gym
    import torch

    from afedpg_ray.policy import Policy

    box = Policy(4, gym.spaces.Box(-1.0, 1.0, (3,)), hidden=(8,), log_std_init=0.5)
    dist = box.distribution(torch.zeros(2, 4))
    # each Gaussian dimension has 0.5 * log(2 pi e) + log sigma; independent dimensions add up
    per_dim = 0.5 * math.log(2 * math.pi * math.e) + 0.5
    assert box.entropy(dist).tolist() == pytest.approx([3 * per_dim] * 2, rel=1e-6)

    categorical = Policy(4, gym.spaces.Discrete(4), hidden=(8,))
    uniform = torch.distributions.Categorical(logits=torch.zeros(1, 4))
    assert categorical.entropy(uniform).tolist() == pytest.approx([math.log(4)])


def test_evaluation_cuts_episodes_of_an_environment_without_a_time_limit(monkeypatch):
    import gymnasium as gym

    from afedpg_ray import rollout
    from afedpg_ray.policy import build_policy

    class NeverEnds(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
        action_space = gym.spaces.Discrete(2)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):
            return np.zeros(2, dtype=np.float32), 1.0, False, False, {}

    gym.register("AfedpgNeverEnds-v0", entry_point=NeverEnds)
    try:
        monkeypatch.setattr(rollout, "EVAL_MAX_STEPS", 50)
        policy, _ = build_policy("AfedpgNeverEnds-v0", (8,), 0.0)
        assert rollout.evaluate(policy, None, "AfedpgNeverEnds-v0", episodes=2, seed=0) == [50.0, 50.0]
    finally:
        gym.registry.pop("AfedpgNeverEnds-v0")


def test_rays_token_auth_notice_is_dropped_but_its_auth_disabled_warning_is_not():
    import logging

    from afedpg_ray.address import TOKEN_NOTICE_LOGGER, quiet_token_auth_notice

    quiet_token_auth_notice()
    quiet_token_auth_notice()  # idempotent: one filter
    logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    assert len(logger.filters) == 1

    def passes(message: str) -> bool:
        return logger.filter(logging.LogRecord(TOKEN_NOTICE_LOGGER, logging.WARNING, __file__, 1, message, (), None))

    assert not passes("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    assert passes("Token authentication is disabled for this Ray cluster. Anyone with network access ...")


def test_the_entropy_bonus_adds_its_weight_to_each_log_std_gradient():
    """d/d log_std_i of the joint Gaussian entropy is 1 for every dimension (a mean over dimensions gave 1/A)."""
    from afedpg_ray.config import EstimatorConfig
    from afedpg_ray.rollout import Sampler

    def gradient(entropy_coef: float) -> tuple[np.ndarray, slice]:
        sampler = Sampler("Hopper-v5", num_envs=2, seed=3, hidden=(8,), est=EstimatorConfig(entropy_coef=entropy_coef))
        offset, where = 0, None
        for name, parameter in sampler.policy.named_parameters():
            if name == "log_std":
                where = slice(offset, offset + parameter.numel())
            offset += parameter.numel()
        return sampler.sample_gradient(64).grad, where

    plain, where = gradient(0.0)
    bonus, _ = gradient(0.5)  # same seed: the same batch, so only the bonus differs
    difference = bonus - plain
    assert np.allclose(difference[where], 0.5, atol=1e-5) and where.stop - where.start == 3
    assert np.allclose(np.delete(difference, np.arange(where.start, where.stop)), 0.0, atol=1e-6)


def test_the_token_notice_filter_sits_on_the_logger_ray_announces_through():
    import importlib

    from afedpg_ray.address import TOKEN_NOTICE_LOGGER

    module = importlib.import_module("ray._private.authentication.authentication_token_setup")
    assert module.logger.name == TOKEN_NOTICE_LOGGER


def test_nearby_runs_agents_and_restarts_draw_unrelated_environment_seeds():
    from afedpg_ray.agent import agent_seed
    from afedpg_ray.rollout import env_seeds

    # runs 0-1999 x 8 agents x 2 restarts, 4 environments each: no two environments share a seed
    # (the old offsets gave run s's environment j the seed of run s + j's environment 0)
    seeds = [
        env_seed
        for run in range(2000)
        for agent in range(8)
        for restarts in range(2)
        for env_seed in env_seeds(agent_seed(run, agent, restarts), 4)
    ]
    assert len(set(seeds)) == len(seeds)
    # sessions resumed at nearby updates, with restarts: a session resumed at 101 does not replay the agent
    # restarted once in the session that started at 100 (a single start + restarts count gave both 101)
    resumed = [agent_seed(0, 0, restarts, start) for start in (0, 100, 101, 102) for restarts in range(3)]
    assert len(set(resumed)) == len(resumed)
    assert agent_seed(5, 2, 1) == agent_seed(5, 2, 1, 0)  # a fresh session keeps the seeds it always had
    assert agent_seed(3, 1, 0) == agent_seed(3, 1, 0) and env_seeds(7, 3) == env_seeds(7, 3)  # reproducible


def test_samplers_seeded_one_apart_start_their_environments_in_different_states():
    from afedpg_ray.config import EstimatorConfig
    from afedpg_ray.rollout import Sampler

    first = Sampler("CartPole-v1", num_envs=2, seed=40, hidden=(8,), est=EstimatorConfig())
    second = Sampler("CartPole-v1", num_envs=2, seed=41, hidden=(8,), est=EstimatorConfig())
    # reset(seed=40) would seed the second environment 41, replaying the next sampler's first
    assert not np.array_equal(first.obs[1], second.obs[0])


def test_run_tag_is_the_actor_name_prefix():
    from afedpg_ray.metrics import run_tag

    assert run_tag("afedpg-server") == "afedpg"
    assert run_tag("afedpg-server-r2") == "afedpg"  # a restored server keeps its run
    assert run_tag("afedpg-3f2a1_00001-agent-7-r1") == "afedpg-3f2a1_00001"  # a sweep trial's restarted agent
    assert run_tag("") == ""


def test_recent_rate_by_hand():
    rate = RecentRate(window=10.0)
    assert rate.rate(100.0) == 0.0  # no update yet
    rate.observe(100.0, 1)  # the first update starts the clock; it is not counted
    assert rate.rate(100.0) == 0.0
    for t, version in ((101.0, 2), (102.0, 3), (104.0, 4)):
        rate.observe(t, version)
    rate.observe(104.5, 4)  # a rejection: same version, not an update
    assert rate.rate(104.0) == pytest.approx(3 / 4)  # window not yet filled: over the 4 s since the first
    assert rate.rate(111.5) == pytest.approx(2 / 10)  # 101.0 fell out of [101.5, 111.5]
    assert rate.rate(200.0) == 0.0  # a stall empties the window


def test_recent_rate_refuses_a_window_that_is_not_positive():
    with pytest.raises(ValueError, match="window must be positive"):
        RecentRate(window=0.0)
