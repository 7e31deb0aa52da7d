"""Step-size schedules ``eta(k)`` and momentum weights ``alpha(k)``.

``theory`` is N-PG-IGT's (Fatkhullin et al., ICML 2023): ``eta(k) = eta0 * 2/(k+2)`` and
``alpha(k) = min(1, alpha0 * (2/(k+2))^(4/5))``. ``constant`` keeps both fixed, as deep-RL practice does.
``linear`` keeps ``alpha`` fixed and anneals ``eta`` linearly from ``eta0`` at the start to
``LINEAR_FLOOR * eta0`` at the run's expected last update (``horizon``), as PPO implementations anneal
their learning rate; the floor keeps steps non-zero if rejected gradients make a run longer.

``alpha_end`` (``constant`` and ``linear`` only) anneals ``alpha`` geometrically from ``alpha0`` to
``alpha_end`` over the same horizon: a longer momentum memory late in a run, when gradient noise has
grown, where the lookahead is what keeps that memory from lagging (see ``benchmarks/lookahead_bias.py``).
Because AFedPG indexes ``alpha`` by the version a point was issued at, a stale gradient then gets
the weight of its own iteration (larger when ``alpha_end < alpha0``), which is the paper's delay
adaptation. Over a run of ``H`` updates, though, a delay of ``delta`` changes the weight only by the
factor ``(alpha_end / alpha0)^(delta / H)`` (``alpha(k) / alpha(k - delta)``): about 1% for ``delta`` 7,
``H`` 1000 and ``alpha0 / alpha_end`` 4, and none once ``k - delta`` has passed the horizon, so in
practice the adaptation is small.
"""

from __future__ import annotations

from dataclasses import dataclass

LINEAR_FLOOR = 0.05
"""Fraction of ``eta0`` that ``linear`` ends at (and keeps after the horizon)."""


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its two constants and the run's expected number of updates."""

    name: str
    eta0: float
    alpha0: float
    horizon: int = 1
    """Updates the run is expected to apply (sample budget / samples per update); used by ``linear`` and by
    ``alpha_end``."""
    alpha_end: float | None = None
    """If set, ``alpha`` anneals geometrically from ``alpha0`` to this over ``horizon`` updates."""

    def decay(self, k: int) -> float:
        """Multiplier of the step size at server version ``k`` (1 at the start)."""
        if self.name == "theory":
            return 2.0 / (k + 2)
        if self.name == "linear":
            return max(LINEAR_FLOOR, 1.0 - k / max(1, self.horizon))
        return 1.0

    def eta(self, k: int) -> float:
        """Normalised step length at server version ``k``."""
        return self.eta0 * self.decay(k)

    def alpha(self, k: int) -> float:
        """Momentum weight of iteration ``k`` (AFedPG indexes it by the version a point was issued at)."""
        if self.name == "theory":
            return min(1.0, self.alpha0 * (2.0 / (k + 2)) ** 0.8)
        if self.alpha_end is not None:
            progress = min(1.0, k / max(1, self.horizon))
            return min(1.0, self.alpha0 * (self.alpha_end / self.alpha0) ** progress)
        return min(1.0, self.alpha0)
