"""Update rules on one interface; :func:`make_rule` builds the one a config names."""

from __future__ import annotations

from afedpg_ray.config import TrainConfig
from afedpg_ray.rules.a3c import A3CRule
from afedpg_ray.rules.base import RuleState, StepInfo, UpdateRule
from afedpg_ray.rules.nigt import NormalisedMomentumRule, afedpg, fedpg, pg, vanilla
from afedpg_ray.rules.schedules import Schedule

__all__ = ["A3CRule", "NormalisedMomentumRule", "RuleState", "Schedule", "StepInfo", "UpdateRule", "make_rule"]


def make_rule(
    algo: str,
    schedule: str = TrainConfig.schedule,
    eta0: float = TrainConfig.eta0,
    alpha0: float = TrainConfig.alpha0,
    lr: float = TrainConfig.lr,
    horizon: int = 1,
    alpha_end: float | None = TrainConfig.alpha_end,
) -> UpdateRule:
    """Build the update rule named ``algo`` with its schedule constants.

    ``horizon`` is the number of updates the run expects to apply (``linear`` and ``alpha_end``
    anneal over it).
    A3C's Adam step follows ``linear`` too; ``theory``'s rates are NIGT's, so A3C keeps ``lr`` there.
    """
    sched = Schedule(schedule, eta0, alpha0, horizon, alpha_end)
    builders = {"afedpg": afedpg, "vanilla": vanilla, "fedpg": fedpg, "pg": pg}
    if algo in builders:
        return builders[algo](sched)
    if algo == "a3c":
        return A3CRule(lr, schedule=sched if schedule == "linear" else None)
    raise ValueError(f"unknown algorithm {algo!r}")
