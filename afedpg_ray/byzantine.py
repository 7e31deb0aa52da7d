"""Byzantine agents (FedPG-BR's attack set) and a robust filter suited to asynchronous arrivals.

Attacks (``--byzantine K:ATTACK``; the first K agents misbehave, which with ``linear:R`` are the
fastest - the worst case, as they deliver the most updates):

- ``sign_flip``: send ``-g``;
- ``scale:X``: send ``X * g``;
- ``random_noise``: send Gaussian noise with the norm of ``g`` (a direction with no information);
- ``nan``: send NaNs (caught by the server's validation in any case).

Robust filter (``--robust filter``). A synchronous robust aggregator (FedPG-BR, Krum, medians)
compares the N gradients of a round; asynchronous arrivals come one at a time, and a fast agent
delivers many more of them than a slow one - so neither the momentum nor statistics over recent
arrivals are a trustworthy reference: a fast attacker dominates both (measured: with the fastest of
4 agents sign-flipping under ``linear:4``, a filter that judged agents by agreement with the
momentum rejected the honest agents). The filter therefore weighs *agents*, not arrivals:

- each agent keeps a running mean of its unit gradient directions (O(N * P) memory, only with
  ``--robust filter``);
- the reference direction is the coordinate-wise median of those per-agent means, so every agent
  counts once whatever its speed (as Malenia-style per-agent averaging does). It is recomputed once per
  N judged arrivals, or when the set of judged agents changes: a median over N x P values per arrival
  cost the server's single thread ~1-5 ms at N = 8 with the default policy, while the per-agent means
  move by at most a fifth of an arrival each;
- an arrival is rejected (``direction_outlier``) when its agent's mean direction points against the
  reference, and (``norm_outlier``) when its norm exceeds ``NORM_FACTOR`` times the median of the
  agents' typical norms (rejects ``scale:X`` and noise blow-ups).

An agent's running mean keeps being updated while it is rejected, so an agent that recovers
earns its way back.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

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
            factor = float(parts[2])
        except (IndexError, ValueError):
            raise ConfigError("--byzantine", f"{spec!r}: scale needs a factor, e.g. 1:scale:10") from None
        if not math.isfinite(factor):  # a non-finite scale is the ``nan`` attack under another name
            raise ConfigError("--byzantine", f"{spec!r}: the factor must be a finite number; for NaNs use K:nan")
        return Attack(count, kind, factor)
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
"""Reject a gradient whose norm exceeds this multiple of the median agent's typical norm."""
MIN_OBSERVATIONS = 3
"""Arrivals from an agent before it is judged or counted in the reference."""
EMA_WEIGHT = 0.2
"""Weight of the newest arrival in an agent's running mean direction and norm."""


class RobustFilter:
    """Per-arrival outlier rejection against per-agent robust statistics (see module doc)."""

    def __init__(self) -> None:
        self.directions: dict[int, np.ndarray] = {}
        self.norms: dict[int, float] = {}
        self.seen: dict[int, int] = {}
        self._reference: np.ndarray | None = None
        """The median of the judged agents' mean directions (derived: not checkpointed)."""
        self._reference_agents: tuple[int, ...] = ()
        self._reference_age = 0
        """Judged arrivals since the reference was computed."""

    def check(self, agent_id: int, grad: np.ndarray) -> str:
        """``""`` to accept, else the rejection reason. Updates the agent's running statistics."""
        norm = float(np.linalg.norm(grad))
        if norm == 0.0:
            return ""
        typical = [self.norms[a] for a in self.norms if a != agent_id and self.seen[a] >= MIN_OBSERVATIONS]
        too_large = len(typical) >= 2 and norm > NORM_FACTOR * statistics.median(typical)
        unit = grad / norm
        if agent_id in self.directions:
            self.directions[agent_id] = (1 - EMA_WEIGHT) * self.directions[agent_id] + EMA_WEIGHT * unit
            self.norms[agent_id] = (1 - EMA_WEIGHT) * self.norms[agent_id] + EMA_WEIGHT * norm
        else:
            self.directions[agent_id], self.norms[agent_id] = unit, norm
        self.seen[agent_id] = self.seen.get(agent_id, 0) + 1
        if too_large:
            return "norm_outlier"
        judged = [a for a in self.directions if self.seen[a] >= MIN_OBSERVATIONS]
        if agent_id not in judged or len(judged) < 3:
            return ""
        if float(self.directions[agent_id] @ self._reference_for(judged)) < 0.0:
            return "direction_outlier"
        return ""

    def _reference_for(self, judged: list[int]) -> np.ndarray:
        """The reference direction for ``judged`` agents, recomputed once per ``len(judged)`` arrivals."""
        agents = tuple(sorted(judged))
        if self._reference is None or agents != self._reference_agents or self._reference_age >= len(agents):
            self._reference = np.median(np.stack([self.directions[a] for a in agents]), axis=0)
            self._reference_agents, self._reference_age = agents, 0
        self._reference_age += 1
        return self._reference

    def export_state(self) -> dict[str, dict[int, Any]]:
        """The per-agent statistics, for the server's checkpoint (a cold filter lets attackers through)."""
        return {
            "directions": {a: d.copy() for a, d in self.directions.items()},
            "norms": dict(self.norms),
            "seen": dict(self.seen),
        }

    def restore(self, saved: dict[str, dict[int, Any]]) -> None:
        """Continue from :meth:`export_state`'s output."""
        self.directions = {int(a): np.asarray(d, dtype=np.float64).copy() for a, d in saved["directions"].items()}
        self.norms = {int(a): float(n) for a, n in saved["norms"].items()}
        self.seen = {int(a): int(n) for a, n in saved["seen"].items()}
        self._reference = None
