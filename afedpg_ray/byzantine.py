"""Byzantine agents (FedPG-BR's attack set) and a robust filter suited to asynchronous arrivals.

Attacks (``--byzantine K:ATTACK``; the first K agents misbehave, which with ``linear:R`` are the
fastest - the worst case, as they deliver the most updates):

- ``sign_flip``: send ``-g``;
- ``scale:X``: send ``X * g``;
- ``random_noise``: send Gaussian noise with the norm of ``g`` (a direction with no information);
- ``nan``: send NaNs (caught by the server's validation in any case).

Robust filter (``--robust filter``). A synchronous robust aggregator (FedPG-BR, Krum, medians)
compares the N gradients of a round; asynchronous arrivals come one at a time, so each is compared
with robust statistics of the recent past instead, in O(N + W) scalars of memory:

- its norm against the median norm of the last W accepted gradients (rejects ``scale`` and noise
  blow-ups): reject if above ``NORM_FACTOR`` times that median;
- its agent's track record: an exponential average of the cosine between the agent's gradients and
  the server's momentum direction. Honest agents agree with the momentum on average; a sign-flipper
  disagrees consistently. An agent whose average is negative while the median agent's is positive
  is rejected (its cosine keeps being measured, so it can earn its way back).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

ATTACKS = ("sign_flip", "scale", "random_noise", "nan")
BYZANTINE_HELP = "K:sign_flip | K:scale:X | K:random_noise | K:nan"
ROBUST_CHOICES = ("none", "filter")


@dataclass(frozen=True)
class Attack:
    """A parsed ``--byzantine`` spec: how many agents, which attack, its parameter."""

    count: int
    kind: str
    scale: float = 1.0

    def applies_to(self, agent_id: int) -> bool:
        """Whether agent ``agent_id`` is Byzantine (the first ``count`` agents are)."""
        return agent_id < self.count


def parse_attack(spec: str, agents: int) -> Attack | None:
    """Parse ``K:ATTACK[:X]``; empty means no attack. Raises ConfigError naming --byzantine."""
    from afedpg_ray.config import ConfigError

    if not spec:
        return None
    parts = spec.split(":")
    try:
        count = int(parts[0])
    except ValueError:
        raise ConfigError("--byzantine", f"{spec!r} must start with a count K; use {BYZANTINE_HELP}") from None
    if not 0 < count < agents:
        raise ConfigError("--byzantine", f"K must be between 1 and agents - 1 ({agents - 1}), got {count}")
    kind = parts[1] if len(parts) > 1 else ""
    if kind not in ATTACKS:
        raise ConfigError("--byzantine", f"unknown attack {kind!r}; use {BYZANTINE_HELP}")
    if kind == "scale":
        try:
            return Attack(count, kind, float(parts[2]))
        except (IndexError, ValueError):
            raise ConfigError("--byzantine", f"{spec!r}: scale needs a factor, e.g. 1:scale:10") from None
    if len(parts) > 2:
        raise ConfigError("--byzantine", f"{spec!r}: {kind} takes no parameter; use {BYZANTINE_HELP}")
    return Attack(count, kind)


def corrupt(grad: np.ndarray, attack: Attack, rng: np.random.Generator) -> np.ndarray:
    """What a Byzantine agent sends instead of its honest gradient ``grad``."""
    if attack.kind == "sign_flip":
        return -grad
    if attack.kind == "scale":
        return attack.scale * grad
    if attack.kind == "random_noise":
        noise = rng.normal(size=grad.shape)
        return noise * (np.linalg.norm(grad) / max(np.linalg.norm(noise), 1e-12))
    return np.full_like(grad, np.nan)


NORM_FACTOR = 4.0
"""Reject a gradient whose norm exceeds this multiple of the recent median."""
WARMUP = 10
"""Arrivals before the filter starts judging (statistics need a few samples)."""
COSINE_EMA = 0.2
"""Weight of the newest cosine in an agent's track record."""


class RobustFilter:
    """Per-arrival outlier rejection from robust statistics of recent arrivals (see module doc)."""

    def __init__(self, window: int) -> None:
        self.norms: deque[float] = deque(maxlen=window)
        self.agreement: dict[int, float] = {}
        self.seen: dict[int, int] = {}
        self.arrivals = 0

    def check(self, agent_id: int, grad: np.ndarray, momentum: np.ndarray | None) -> str:
        """``""`` to accept, else the rejection reason. Updates the agent's track record."""
        self.arrivals += 1
        norm = float(np.linalg.norm(grad))
        if momentum is not None and norm > 0:
            m_norm = float(np.linalg.norm(momentum))
            if m_norm > 0:
                cosine = float(grad @ momentum) / (norm * m_norm)
                previous = self.agreement.get(agent_id, cosine)
                self.agreement[agent_id] = (1 - COSINE_EMA) * previous + COSINE_EMA * cosine
                self.seen[agent_id] = self.seen.get(agent_id, 0) + 1
        if self.arrivals <= WARMUP:
            self.norms.append(norm)
            return ""
        if self.norms and norm > NORM_FACTOR * statistics.median(self.norms):
            return "norm_outlier"
        judged = [score for a, score in self.agreement.items() if self.seen.get(a, 0) >= 3]
        mine = self.agreement.get(agent_id)
        if mine is not None and self.seen.get(agent_id, 0) >= 3 and judged:
            if mine < 0 < statistics.median(judged):
                return "direction_outlier"
        self.norms.append(norm)
        return ""
