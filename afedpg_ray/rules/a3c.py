"""A3C-style asynchronous step: every arrival is applied as it comes, no momentum-lookahead, no
normalisation and (unless ``--staleness-power`` asks for FedAsync's weighting) no staleness handling.
The step is Adam's by default, as A3C implementations use an adaptive optimiser; ``--a3c-optimizer sgd``
takes the plain ``theta + lr * g`` step instead (ALGORITHMS.md allows either)."""

from __future__ import annotations

import numpy as np

from afedpg_ray.rules.base import RuleState, StepInfo, staleness_weight
from afedpg_ray.rules.schedules import Schedule


class A3CRule:
    """``theta <- theta + lr * adam(g)`` (or ``+ lr * g``) per arrival; the agent gets the new theta back."""

    name = "a3c"
    synchronous = False

    def __init__(
        self,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        schedule: Schedule | None = None,
        staleness_power: float = 0.0,
        optimizer: str = "adam",
    ) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {optimizer!r}")
        self.lr = lr
        self.optimizer = optimizer
        self.staleness_power = staleness_power
        """If > 0, an arrival of delay D enters Adam's first moment weighted by ``(D + 1) ** -power``
        (FedAsync). Weighting the moment rather than the step keeps a stale gradient from acting at full
        weight through the moment in later steps, and leaves the fresh gradients already in it alone;
        its magnitude still enters the second moment (Adam's scale stays honest about the noise)."""
        self.schedule = schedule
        """If given, the step is ``lr * schedule.decay(k)`` (annealed like the NIGT rules' ``eta``)."""
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps

    def apply(
        self, state: RuleState, grads: list[np.ndarray], issue_versions: list[int]
    ) -> tuple[np.ndarray, StepInfo]:
        """One ascent step (Adam's, or plain) with the single arriving gradient."""
        if len(grads) != 1:
            raise ValueError(f"a3c applies one gradient at a time, got {len(grads)}")
        g = grads[0]
        if self.optimizer == "sgd":
            return self._plain_step(state, g, issue_versions[0])
        if state.momentum is None:
            state.momentum = np.zeros_like(g)
            state.extra = {"second_moment": np.zeros_like(g)}
        assert state.extra is not None
        v = state.extra["second_moment"]
        t = state.version + 1
        weight = staleness_weight(state.version - issue_versions[0], self.staleness_power)
        state.momentum = self.beta1 * state.momentum + (1 - self.beta1) * weight * g
        state.extra["second_moment"] = v = self.beta2 * v + (1 - self.beta2) * g * g
        m_hat = state.momentum / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        lr = self.lr * (self.schedule.decay(state.version) if self.schedule is not None else 1.0)
        theta_new = state.theta + lr * m_hat / (np.sqrt(v_hat) + self.eps)
        state.theta_prev, state.theta = state.theta, theta_new
        state.version = t
        state.point = theta_new.copy()
        return state.point, StepInfo(alpha=weight, eta=lr)

    def _plain_step(self, state: RuleState, g: np.ndarray, issued: int) -> tuple[np.ndarray, StepInfo]:
        """``theta + lr * w * g``, ``w`` the arrival's staleness weight; ``momentum`` keeps the last step's
        direction (a plain step has no moment; checkpoints and the server's logs expect the entry)."""
        weight = staleness_weight(state.version - issued, self.staleness_power)
        lr = self.lr * (self.schedule.decay(state.version) if self.schedule is not None else 1.0)
        state.momentum = weight * g
        theta_new = state.theta + lr * state.momentum
        state.theta_prev, state.theta = state.theta, theta_new
        state.version += 1
        state.point = theta_new.copy()
        return state.point, StepInfo(alpha=weight, eta=lr)
