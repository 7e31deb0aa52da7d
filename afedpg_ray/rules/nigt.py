"""Normalised momentum with optional lookahead: AFedPG, its vanilla variant, FedPG, PG and Rennala.

All five are the same N-PG-IGT step; they differ only in (a) whether the next point is the
extrapolated lookahead or theta itself, and (b) whether one arrival, a synchronous round of N, or
M collected gradients (rennala), averaged, drive a step.
"""

from __future__ import annotations

import numpy as np

from afedpg_ray.rules.base import (
    RuleState,
    StepInfo,
    lookahead_point,
    momentum_update,
    normalised_step,
    staleness_weight,
)
from afedpg_ray.rules.schedules import Schedule


class NormalisedMomentumRule:
    """The NIGT step ``d <- (1-a) d + a g; theta <- theta + eta d/||d||`` and its dispatch point.

    ``alpha`` is indexed by the version the (first) gradient's point was issued at, which is what
    makes the AFedPG lookahead delay-adaptive. The very first step skips the extrapolation, as
    N-PG-IGT's code does (there is no previous direction to extrapolate along yet).
    """

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        lookahead: bool,
        synchronous: bool,
        staleness_power: float = 0.0,
        delay_lookahead: float = 0.0,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.lookahead = lookahead
        self.synchronous = synchronous
        self.staleness_power = staleness_power
        """If > 0, an arrival of delay D mixes into the momentum with ``a * (D + 1) ** -power``; the
        lookahead still extrapolates with the schedule's ``a`` (the weight the next fresh arrival gets)."""
        self.delay_lookahead = delay_lookahead
        """If > 0, the lookahead reaches ``delay_lookahead * D`` steps further, D being the delay of the
        arrival just applied: the sender's next gradient will land about D updates later, so it is
        sampled near where theta will be then (DANA-style delay compensation; AFedPG's own lookahead
        cancels the momentum's lag but not staleness)."""

    def apply(
        self, state: RuleState, grads: list[np.ndarray], issue_versions: list[int]
    ) -> tuple[np.ndarray, StepInfo]:
        """One momentum + normalised step; returns the next sampling point."""
        if self.synchronous:
            g = np.mean(grads, axis=0)
        else:
            if len(grads) != 1:
                raise ValueError(f"{self.name} applies one gradient at a time, got {len(grads)}")
            g = grads[0]
        k = state.version
        a = self.schedule.alpha(min(issue_versions))
        mix = a * staleness_weight(k - min(issue_versions), self.staleness_power) if self.staleness_power else a
        eta = self.schedule.eta(k)
        first = state.momentum is None
        state.momentum = momentum_update(state.momentum, g, mix)
        theta_new = normalised_step(state.theta, state.momentum, eta)
        state.theta_prev, state.theta = state.theta, theta_new
        state.version = k + 1
        if self.lookahead and not first and a < 1.0:
            extra = self.delay_lookahead * (k - min(issue_versions))
            point = lookahead_point(theta_new, state.theta_prev, a, extra)
        else:
            point = theta_new.copy()
        state.point = point
        return point, StepInfo(alpha=mix, eta=eta)


def afedpg(schedule: Schedule, staleness_power: float = 0.0, delay_lookahead: float = 0.0) -> NormalisedMomentumRule:
    """AFedPG: asynchronous arrivals, delay-adaptive lookahead (optionally extended over the delay)."""
    return NormalisedMomentumRule(
        "afedpg",
        schedule,
        lookahead=True,
        synchronous=False,
        staleness_power=staleness_power,
        delay_lookahead=delay_lookahead,
    )


def vanilla(schedule: Schedule, staleness_power: float = 0.0) -> NormalisedMomentumRule:
    """Vanilla asynchronous NIGT: AFedPG without the lookahead (agents sample at theta itself)."""
    return NormalisedMomentumRule(
        "vanilla", schedule, lookahead=False, synchronous=False, staleness_power=staleness_power
    )


def fedpg(schedule: Schedule) -> NormalisedMomentumRule:
    """FedPG: all N agents at the same lookahead point, gradients averaged, one step per round."""
    return NormalisedMomentumRule("fedpg", schedule, lookahead=True, synchronous=True)


def rennala(schedule: Schedule) -> NormalisedMomentumRule:
    """Rennala NIGT (Tyurin et al., ICLR 2026): the mean of M gradients, all computed at the current
    lookahead point by whichever agents finish first, drives one step. The server collects them
    (:class:`~afedpg_ray.server.ParameterServer`); the rule only sees the M gradients."""
    return NormalisedMomentumRule("rennala", schedule, lookahead=True, synchronous=True)


def pg(schedule: Schedule) -> NormalisedMomentumRule:
    """PG (N = 1): the single-agent N-PG-IGT rule; identical arithmetic to AFedPG with zero delay."""
    return NormalisedMomentumRule("pg", schedule, lookahead=True, synchronous=False)
