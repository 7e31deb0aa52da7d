"""Update rules on one interface; :func:`make_rule` builds the one a config names."""

from __future__ import annotations

import math

from afedpg_ray.config import TrainConfig
from afedpg_ray.rules.a3c import A3CRule
from afedpg_ray.rules.base import RuleState, StepInfo, UpdateRule
from afedpg_ray.rules.nigt import NormalisedMomentumRule, afedpg, fedpg, pg, rennala, vanilla
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
    staleness_power: float = TrainConfig.staleness_power,
    delay_lookahead: float = 0.0,
    a3c_optimizer: str = TrainConfig.a3c_optimizer,
) -> UpdateRule:
    """Build the update rule named ``algo`` with its schedule constants.

    ``horizon`` is the number of updates the run expects to apply (``linear`` and ``alpha_end``
    anneal over it).
    ``staleness_power`` weighs stale arrivals (FedAsync) in afedpg, vanilla and a3c.
    ``delay_lookahead`` extends AFedPG's lookahead over the arrival's delay (a model-study knob, not a
    CLI option: ``benchmarks/lookahead_bias.py --delay-compensation``); other rules refuse it.
    A3C's Adam step follows ``linear`` too; ``theory``'s rates are NIGT's, so A3C keeps ``lr`` there.
    """
    sched = Schedule(schedule, eta0, alpha0, horizon, alpha_end)
    if not (math.isfinite(delay_lookahead) and delay_lookahead >= 0.0):
        raise ValueError(f"delay_lookahead must be a finite number >= 0, got {delay_lookahead}")
    if delay_lookahead and algo != "afedpg":
        raise ValueError(f"delay_lookahead extends AFedPG's lookahead; {algo} has none to extend")
    if algo == "afedpg":
        return afedpg(sched, staleness_power, delay_lookahead)
    if algo == "vanilla":
        return vanilla(sched, staleness_power)
    builders = {"fedpg": fedpg, "pg": pg, "rennala": rennala}  # no stale arrivals to weigh
    if algo in builders:
        return builders[algo](sched)
    if algo == "a3c":
        linear = sched if schedule == "linear" else None
        return A3CRule(lr, schedule=linear, staleness_power=staleness_power, optimizer=a3c_optimizer)
    raise ValueError(f"unknown algorithm {algo!r}")
