"""Step-size schedules ``eta(k)`` and momentum weights ``alpha(k)``.

``theory`` is N-PG-IGT's (Fatkhullin et al., ICML 2023): ``eta(k) = eta0 * 2/(k+2)`` and
``alpha(k) = min(1, alpha0 * (2/(k+2))^(4/5))``. ``constant`` keeps both fixed, as deep-RL practice does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its two constants."""

    name: str
    eta0: float
    alpha0: float

    def eta(self, k: int) -> float:
        """Normalised step length at server version ``k``."""
        if self.name == "theory":
            return self.eta0 * 2.0 / (k + 2)
        return self.eta0

    def alpha(self, k: int) -> float:
        """Momentum weight of iteration ``k`` (AFedPG indexes it by the version a point was issued at)."""
        if self.name == "theory":
            return min(1.0, self.alpha0 * (2.0 / (k + 2)) ** 0.8)
        return min(1.0, self.alpha0)
