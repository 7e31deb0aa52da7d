"""Each update rule's step against numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from afedpg_ray.rules import A3CRule, RuleState, Schedule, make_rule
from afedpg_ray.rules.base import lookahead_point, momentum_update, normalised_step, staleness_weight


def test_momentum_first_arrival_sets_d_to_g():
    g = np.array([3.0, 4.0])
    assert np.array_equal(momentum_update(None, g, 0.3), g)


def test_momentum_mixes_old_and_new():
    d = momentum_update(np.array([1.0, 0.0]), np.array([0.0, 2.0]), 0.25)
    assert np.allclose(d, [0.75, 0.5])


def test_normalised_step_moves_exactly_eta():
    theta = normalised_step(np.zeros(2), np.array([3.0, 4.0]), 0.5)
    assert np.allclose(theta, [0.3, 0.4])  # 0.5 * (3, 4) / 5
    assert np.allclose(normalised_step(np.ones(2), np.zeros(2), 0.5), np.ones(2))


def test_lookahead_extrapolates_by_one_minus_a_over_a():
    # theta~ = theta_new + ((1 - a) / a) (theta_new - theta_old); a = 0.25 gives factor 3
    point = lookahead_point(np.array([1.0, 1.0]), np.array([0.0, 1.0]), 0.25)
    assert np.allclose(point, [4.0, 1.0])


def test_delay_lookahead_extends_the_extrapolation_by_the_arrivals_delay():
    # a = 0.25 (factor 3), eta 0.5; d = (1, 0) already, so the step is theta + (0.5, 0).
    # The arrival was issued at version 8 and lands at 10: delay 2, c = 0.5 adds 1 step -> factor 4.
    rule = make_rule("afedpg", "constant", eta0=0.5, alpha0=0.25, delay_lookahead=0.5)
    state = RuleState.initial(np.zeros(2))
    state.version, state.momentum = 10, np.array([1.0, 0.0])
    point, _ = rule.apply(state, [np.array([1.0, 0.0])], [8])
    assert np.allclose(state.theta, [0.5, 0.0])
    assert np.allclose(point, [0.5 + 4 * 0.5, 0.0])
    # c = 0 is AFedPG as published: factor 3
    plain = make_rule("afedpg", "constant", eta0=0.5, alpha0=0.25)
    state = RuleState.initial(np.zeros(2))
    state.version, state.momentum = 10, np.array([1.0, 0.0])
    point, _ = plain.apply(state, [np.array([1.0, 0.0])], [8])
    assert np.allclose(point, [0.5 + 3 * 0.5, 0.0])
    for algo, value in (("vanilla", 0.5), ("afedpg", -1.0), ("afedpg", float("nan"))):
        with pytest.raises(ValueError, match="delay_lookahead"):
            make_rule(algo, "constant", delay_lookahead=value)


def test_theory_schedule_values():
    s = Schedule("theory", eta0=0.1, alpha0=1.0)
    assert s.eta(0) == pytest.approx(0.1)
    assert s.eta(2) == pytest.approx(0.05)
    assert s.alpha(0) == 1.0
    assert s.alpha(2) == pytest.approx(0.5**0.8)
    assert Schedule("constant", 0.01, 0.2).alpha(1000) == 0.2


def test_linear_schedule_values():
    s = Schedule("linear", eta0=0.1, alpha0=0.2, horizon=100)
    assert s.eta(0) == pytest.approx(0.1)
    assert s.eta(25) == pytest.approx(0.075)
    assert s.eta(95) == pytest.approx(0.005)  # the floor: 5% of eta0 from 95% of the horizon on
    assert s.eta(500) == pytest.approx(0.005)
    assert s.alpha(0) == s.alpha(99) == 0.2


def test_alpha_end_anneals_alpha_geometrically_over_the_horizon():
    s = Schedule("linear", eta0=0.1, alpha0=0.2, horizon=100, alpha_end=0.05)
    assert s.alpha(0) == pytest.approx(0.2)
    assert s.alpha(50) == pytest.approx(0.1)  # halfway in log space: sqrt(0.2 * 0.05)
    assert s.alpha(100) == s.alpha(400) == pytest.approx(0.05)
    assert s.eta(50) == pytest.approx(0.05)  # eta's schedule is untouched
    assert Schedule("constant", 0.03, 0.2, horizon=100, alpha_end=0.05).alpha(50) == pytest.approx(0.1)


def test_alpha_end_weights_a_stale_gradient_by_its_issue_version():
    # Two gradients arrive at version 100 of a 100-update horizon: one issued at 0, one at 100.
    # The delay-adaptive rule uses alpha(k_i): 0.2 for the stale one, 0.05 for the fresh one.
    for issued, expected in ((0, 0.2), (100, 0.05)):
        rule = make_rule("afedpg", "constant", eta0=0.1, alpha0=0.2, horizon=100, alpha_end=0.05)
        state = RuleState.initial(np.zeros(3))
        state.version = 100
        state.momentum = np.array([1.0, 0.0, 0.0])
        _, info = rule.apply(state, [np.array([0.0, 1.0, 0.0])], [issued])
        assert info.alpha == pytest.approx(expected)
        assert state.momentum == pytest.approx([1.0 - expected, expected, 0.0])


def test_linear_schedule_horizon_comes_from_the_budget():
    from afedpg_ray.config import TrainConfig

    assert TrainConfig(samples=100_000, batch=1000).expected_updates == 100
    assert TrainConfig(algo="fedpg", agents=4, samples=100_000, batch=1000).expected_updates == 25
    # rennala: M = 8 averaged + 7 superseded per step -> 1000 gradients buy 66 steps
    assert TrainConfig(algo="rennala", agents=8, samples=1_000_000, batch=1000).expected_updates == 66
    assert TrainConfig(algo="rennala", agents=8, collect=2, samples=1_000_000, batch=1000).expected_updates == 111
    rule = make_rule("afedpg", "linear", eta0=0.1, alpha0=0.2, horizon=10)
    state = RuleState.initial(np.zeros(2))
    _, info = rule.apply(state, [np.array([3.0, 4.0])], [0])
    assert info.eta == pytest.approx(0.1) and np.allclose(state.theta, [0.06, 0.08])
    _, info = rule.apply(state, [np.array([3.0, 4.0])], [1])
    assert info.eta == pytest.approx(0.09)


def test_a3c_anneals_with_linear_but_not_with_theory():
    g = [np.array([1.0, -2.0])]
    linear = make_rule("a3c", "linear", lr=0.1, horizon=4)
    theory = make_rule("a3c", "theory", lr=0.1, horizon=4)
    s_lin, s_th = RuleState.initial(np.zeros(2)), RuleState.initial(np.zeros(2))
    for _ in range(3):
        _, info_lin = linear.apply(s_lin, g, [s_lin.version])
        _, info_th = theory.apply(s_th, g, [s_th.version])
    assert info_lin.eta == pytest.approx(0.05) and info_th.eta == pytest.approx(0.1)  # 0.1 * (1 - 2/4)


def test_afedpg_two_steps_by_hand():
    rule = make_rule("afedpg", "constant", eta0=0.5, alpha0=0.5)
    state = RuleState.initial(np.zeros(2))
    # step 1: d = g = (3, 4); theta1 = 0.5 * (0.6, 0.8) = (0.3, 0.4); the first step skips the lookahead
    point, info = rule.apply(state, [np.array([3.0, 4.0])], [0])
    assert np.allclose(state.theta, [0.3, 0.4]) and np.allclose(point, [0.3, 0.4])
    assert state.version == 1 and info.alpha == 0.5
    # step 2: d = 0.5 (3, 4) + 0.5 (1, 0) = (2, 2); theta2 = theta1 + 0.5 (2, 2)/sqrt(8)
    point, _ = rule.apply(state, [np.array([1.0, 0.0])], [1])
    step = 0.5 / np.sqrt(2)
    theta2 = np.array([0.3 + step, 0.4 + step])
    assert np.allclose(state.momentum, [2.0, 2.0])
    assert np.allclose(state.theta, theta2)
    assert np.allclose(state.theta_prev, [0.3, 0.4])
    # lookahead with a = 0.5: factor (1 - 0.5) / 0.5 = 1
    assert np.allclose(point, theta2 + (theta2 - np.array([0.3, 0.4])))


def test_afedpg_alpha_is_indexed_by_issue_version_not_current():
    rule = make_rule("afedpg", "theory", eta0=0.1, alpha0=1.0)
    state = RuleState.initial(np.zeros(3))
    for _ in range(5):
        rule.apply(state, [np.ones(3)], [state.version])
    d_before = state.momentum.copy()
    g = np.array([1.0, -1.0, 0.5])
    # a gradient computed at a point issued at version 1 arrives at version 5 (delay 4)
    _, info = rule.apply(state, [g], [1])
    a = (2.0 / 3.0) ** 0.8  # alpha(1), not alpha(5)
    assert info.alpha == pytest.approx(a)
    assert info.eta == pytest.approx(0.1 * 2.0 / 7.0)  # eta is indexed by the current version k = 5
    assert np.allclose(state.momentum, (1 - a) * d_before + a * g)


def test_staleness_weight_values():
    assert staleness_weight(0, 0.5) == 1.0 and staleness_weight(7, 0.0) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)  # (3 + 1) ** -0.5
    assert staleness_weight(7, 2.0) == pytest.approx(1 / 64)


@pytest.mark.parametrize("algo", ["afedpg", "vanilla"])
def test_staleness_power_scales_the_momentum_weight_of_a_stale_arrival(algo):
    rule = make_rule(algo, "constant", eta0=0.5, alpha0=0.5, staleness_power=1.0)
    state = RuleState.initial(np.zeros(2))
    rule.apply(state, [np.array([3.0, 4.0])], [0])  # fresh: d = g
    rule.apply(state, [np.array([1.0, 0.0])], [1])  # fresh: a = 0.5, d = (2, 2)
    theta2 = state.theta.copy()
    g = np.array([0.0, 2.0])
    point, info = rule.apply(state, [g], [0])  # issued at 0, arrives at 2: delay 2, weight 1/3
    assert info.alpha == pytest.approx(0.5 / 3)
    assert np.allclose(state.momentum, (1 - 0.5 / 3) * np.array([2.0, 2.0]) + (0.5 / 3) * g)
    # the lookahead extrapolates with the schedule's a = 0.5 (factor 1), not with the weighted one
    expected = state.theta + (state.theta - theta2) if algo == "afedpg" else state.theta
    assert np.allclose(point, expected)


def test_a3c_staleness_power_weighs_the_arrival_in_adams_first_moment():
    # Moments m = (1, 0, 0), v = (1, 1, 1) after 3 updates; a gradient issued at version 0 arrives (delay 3).
    # With power 0.5 its weight is (3 + 1) ** -0.5 = 1/2: m = 0.9 m + 0.1 * 0.5 g; v takes g unweighted.
    g = np.array([0.0, 2.0, 0.0])
    state = RuleState.initial(np.zeros(3))
    state.version, state.momentum, state.extra = 3, np.array([1.0, 0.0, 0.0]), {"second_moment": np.ones(3)}
    _, info = A3CRule(lr=0.1, staleness_power=0.5).apply(state, [g], [0])
    assert np.allclose(state.momentum, [0.9, 0.1, 0.0])
    assert np.allclose(state.extra["second_moment"], 0.999 + 0.001 * g * g)
    m_hat, v_hat = state.momentum / (1 - 0.9**4), state.extra["second_moment"] / (1 - 0.999**4)
    assert info.alpha == 0.5 and info.eta == 0.1  # the step size is not scaled
    assert np.allclose(state.theta, 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8))
    # a gradient weighted to ~0 leaves no trace for later fresh steps to carry
    state = RuleState.initial(np.zeros(3))
    rule = A3CRule(lr=0.1, staleness_power=10.0)
    rule.apply(state, [np.array([1.0, 0.0, 0.0])], [0])
    state.version = 6
    rule.apply(state, [np.array([0.0, 1.0, 0.0])], [0])  # delay 6: weight 7 ** -10
    assert abs(state.momentum[1]) < 1e-8


def test_vanilla_dispatches_theta_itself():
    rule = make_rule("vanilla", "constant", eta0=0.5, alpha0=0.5)
    state = RuleState.initial(np.zeros(2))
    rule.apply(state, [np.array([3.0, 4.0])], [0])
    point, _ = rule.apply(state, [np.array([1.0, 0.0])], [1])
    assert np.allclose(point, state.theta)


def test_fedpg_averages_then_one_step():
    rule = make_rule("fedpg", "constant", eta0=1.0, alpha0=0.5)
    state = RuleState.initial(np.zeros(2))
    grads = [np.array([2.0, 0.0]), np.array([0.0, 2.0]), np.array([1.0, 1.0])]
    rule.apply(state, grads, [0, 0, 0])
    # mean (1, 1); first arrival d = mean; theta = (1, 1)/sqrt(2)
    assert np.allclose(state.momentum, [1.0, 1.0])
    assert np.allclose(state.theta, [1 / np.sqrt(2), 1 / np.sqrt(2)])
    assert state.version == 1


def test_a3c_first_step_is_lr_times_sign():
    rule = A3CRule(lr=0.1)
    state = RuleState.initial(np.zeros(3))
    rule.apply(state, [np.array([2.0, -0.5, 0.0])], [0])
    # Adam's bias-corrected first step is lr * g / (|g| + eps)
    assert np.allclose(state.theta, [0.1, -0.1, 0.0], atol=1e-6)
    assert state.momentum is not None and state.version == 1


def test_a3c_plain_steps_by_hand():
    """``--a3c-optimizer sgd``: theta + lr * decay(k) * (D + 1)^-P * g, no moment, no normalisation."""
    rule = make_rule("a3c", "linear", lr=0.1, horizon=4, staleness_power=1.0, a3c_optimizer="sgd")
    state = RuleState.initial(np.zeros(2))
    _, info = rule.apply(state, [np.array([1.0, -2.0])], [0])  # fresh: weight 1, lr 0.1
    assert np.allclose(state.theta, [0.1, -0.2]) and info.eta == pytest.approx(0.1) and info.alpha == 1.0
    _, info = rule.apply(state, [np.array([2.0, 2.0])], [0])  # delay 1: weight 1/2; lr 0.1 * (1 - 1/4)
    assert np.allclose(state.theta, [0.1 + 0.075, -0.2 + 0.075]) and info.alpha == 0.5
    assert np.allclose(state.momentum, [1.0, 1.0]) and state.version == 2  # the last step's direction
    with pytest.raises(ValueError, match="optimizer must be adam or sgd"):
        A3CRule(lr=0.1, optimizer="rmsprop")


def test_async_rules_refuse_several_gradients():
    for algo in ("afedpg", "vanilla", "a3c", "pg"):
        with pytest.raises(ValueError, match="applies one gradient at a time, got 2"):
            make_rule(algo).apply(RuleState.initial(np.zeros(2)), [np.ones(2), np.ones(2)], [0, 0])


@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("algo", ["afedpg", "vanilla", "fedpg", "a3c", "a3c-sgd", "pg", "rennala"])
def test_rule_contract(algo, schedule):
    """Every rule: one version per apply, finite outputs of the right shape, ascent on a concave objective."""
    name, _, optimizer = algo.partition("-")
    rule = make_rule(name, schedule, eta0=0.05, alpha0=0.5, lr=0.05, horizon=400, a3c_optimizer=optimizer or "adam")
    assert rule.name == name
    target = np.array([1.0, -2.0, 0.5])
    state = RuleState.initial(np.zeros(3))
    rng = np.random.default_rng(0)
    start = -np.sum((state.theta - target) ** 2)
    point = state.point
    for k in range(200):
        n = 3 if rule.synchronous else 1
        grads = [-2 * (point - target) + 0.01 * rng.normal(size=3) for _ in range(n)]
        point, info = rule.apply(state, grads, [k] * n)
        assert state.version == k + 1
        assert point.shape == (3,) and np.all(np.isfinite(point)) and np.all(np.isfinite(state.theta))
        assert np.isfinite(info.alpha) and np.isfinite(info.eta)
    assert start == pytest.approx(-5.25)
    # at the optimum, not just towards it: steps are at most 0.05 long (a3c's Adam: 0.05 per coordinate,
    # 0.087 in norm) and end up oscillating within about one step of it: loss below 0.087^2 = 0.0075
    assert -np.sum((state.theta - target) ** 2) > -0.01


def _track_quadratic(algo: str, steps: int = 60, a: float = 0.3) -> float:
    """Relative error of d against the true gradient at the point each step is taken from (one agent).

    J(x) = -1/2 x^T H x has a linear gradient, so d = sum_j w_j grad(x_j) = grad(sum_j w_j x_j): d is
    exact when the sampling points' weighted mean is theta itself, which the lookahead arranges.
    """
    curvature = np.array([1.0, 0.1])
    rule = make_rule(algo, schedule="constant", eta0=0.05, alpha0=a)
    state = RuleState.initial(np.array([10.0, 10.0]))
    point, issued, error = state.theta.copy(), 0, 0.0
    for _ in range(steps):
        theta_from = state.theta.copy()
        point, _ = rule.apply(state, [-curvature * point], [issued])
        issued = state.version
        true_g = -curvature * theta_from
        error = float(np.linalg.norm(state.momentum - true_g) / np.linalg.norm(true_g))
    return error


def test_lookahead_cancels_the_hessian_term_on_a_quadratic():
    # Only the skipped first extrapolation leaves an error, and it decays as (1 - a)^k: 0.7^59 ~ 7e-10
    assert _track_quadratic("pg") < 1e-6
    assert _track_quadratic("afedpg") < 1e-6
    # without it the momentum trails theta by (1 - a)/a steps while the gradient's direction turns
    assert _track_quadratic("vanilla") > 1e-3
