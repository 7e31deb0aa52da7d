"""The one interface every update rule implements, and the pure arithmetic they share.

A rule owns the optimiser state (``theta``, the previous ``theta``, the momentum ``d``, version ``k``)
and turns one arrival (or, for synchronous rules, one round of arrivals) into the next global
parameters and the point the agent(s) should sample at next. Rules know nothing of Ray or gym.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class RuleState:
    """Optimiser state held by the parameter server: O(P) memory, independent of N."""

    theta: np.ndarray
    """Current global parameters theta_k."""
    theta_prev: np.ndarray
    """theta_{k-1} (equal to theta_0 before the first update)."""
    momentum: np.ndarray | None
    """The momentum buffer d (None until the first arrival), or a rule's own optimiser moment."""
    version: int = 0
    """k: the number of updates applied."""
    point: np.ndarray | None = None
    """The point most recently dispatched (theta_0 at start)."""
    extra: dict[str, np.ndarray] | None = None
    """Rule-specific arrays (e.g. Adam's second moment for a3c)."""

    @classmethod
    def initial(cls, theta0: np.ndarray) -> RuleState:
        """State at version 0: theta_0 everywhere, empty momentum."""
        theta0 = np.asarray(theta0, dtype=np.float64)
        return cls(theta=theta0.copy(), theta_prev=theta0.copy(), momentum=None, point=theta0.copy())


@dataclass(frozen=True)
class StepInfo:
    """What one update did: for logging and tests."""

    alpha: float
    eta: float


class UpdateRule(Protocol):
    """One update rule. ``apply`` mutates ``state`` and returns the next sampling point."""

    name: str
    synchronous: bool

    def apply(
        self, state: RuleState, grads: list[np.ndarray], issue_versions: list[int]
    ) -> tuple[np.ndarray, StepInfo]:
        """Apply one update from ``grads`` computed at points issued at ``issue_versions``.

        Asynchronous rules receive exactly one gradient; synchronous rules one per agent. Returns
        the point to dispatch next (to the sender, or to everyone for a synchronous rule).
        """
        ...


def momentum_update(d: np.ndarray | None, g: np.ndarray, a: float) -> np.ndarray:
    """``d <- (1 - a) d + a g``; the first arrival sets ``d <- g``."""
    if d is None:
        return g.copy()
    return (1.0 - a) * d + a * g


def normalised_step(theta: np.ndarray, d: np.ndarray, eta: float) -> np.ndarray:
    """``theta + eta * d / ||d||`` (ascent); a zero ``d`` leaves ``theta`` unchanged."""
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        return theta.copy()
    return theta + (eta / norm) * d


def staleness_weight(delay: int, power: float) -> float:
    """FedAsync's polynomial weight ``(delay + 1) ** -power`` (1 for a fresh gradient or ``power = 0``)."""
    return float((delay + 1) ** -power)


def lookahead_point(theta_new: np.ndarray, theta_old: np.ndarray, a: float, extra_steps: float = 0.0) -> np.ndarray:
    """``theta~ = theta_new + ((1 - a) / a + extra_steps) (theta_new - theta_old)``: where the next gradient
    is sampled. ``extra_steps`` > 0 also extrapolates over the updates expected to land while the agent
    computes (delay compensation, beyond the paper)."""
    return theta_new + ((1.0 - a) / a + extra_steps) * (theta_new - theta_old)
