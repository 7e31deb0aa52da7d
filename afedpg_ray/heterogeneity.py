"""Time profiles: which agent is slow and by how much, and how an iteration is padded to match.

A profile gives each agent ``i`` a slowdown ``s_i >= 1``. Padding is waiting (``time.sleep``), so a
modelled slow agent does not burn a core: real heterogeneity comes from Ray resource requests.
"""

from __future__ import annotations

import math
import time

import numpy as np

PROFILE_HELP = "none | linear:R | sqrt | straggler:R | lognormal:SIGMA"
MAX_SLOWDOWN = 1000.0
"""Largest slowdown a profile may give: beyond it the slow agent never reports in any real run."""


def parse_profile(spec: str, agents: int, seed: int = 0) -> list[float]:
    """Return the slowdown ``s_i >= 1`` of every agent for a profile string.

    - ``none``: all 1;
    - ``linear:R``: evenly spread from 1 (agent 0) to R (last agent);
    - ``sqrt``: agent i has slowdown sqrt(i + 1) (the successor paper's h_i = sqrt(i), 1-indexed);
    - ``straggler:R``: the last agent is R times slower, the rest 1;
    - ``lognormal:SIGMA``: exp(|N(0, SIGMA^2)|) per agent, seeded.
    """
    from afedpg_ray.config import ConfigError

    if not isinstance(spec, str):  # config.json / Tune may hand over anything
        raise ConfigError("--hetero", f"must be a profile string, got {spec!r}; profiles: {PROFILE_HELP}")
    name, _, arg = spec.partition(":")
    needs_arg = {"linear": "R >= 1", "straggler": "R >= 1", "lognormal": "SIGMA >= 0"}
    if name in ("none", "sqrt"):
        if arg:
            raise ConfigError("--hetero", f"{name!r} takes no argument; profiles: {PROFILE_HELP}")
    elif name in needs_arg:
        try:
            value = float(arg)
        except ValueError:
            raise ConfigError(
                "--hetero", f"{spec!r} needs a number ({needs_arg[name]}); profiles: {PROFILE_HELP}"
            ) from None
        low = 0.0 if name == "lognormal" else 1.0
        if not math.isfinite(value) or value < low:
            raise ConfigError("--hetero", f"{spec!r} needs {needs_arg[name]}; profiles: {PROFILE_HELP}")
    else:
        raise ConfigError("--hetero", f"unknown profile {spec!r}; profiles: {PROFILE_HELP}")

    slowdowns = _slowdowns(name, value if name in needs_arg else 0.0, agents, seed)
    if slowdowns and max(slowdowns) > MAX_SLOWDOWN:
        raise ConfigError(
            "--hetero", f"{spec!r} gives a slowdown of {max(slowdowns):.3g}; keep every slowdown <= {MAX_SLOWDOWN:g}"
        )
    return slowdowns


def _slowdowns(name: str, value: float, agents: int, seed: int) -> list[float]:
    """The slowdowns of a validated profile ``name`` with argument ``value``."""
    from afedpg_ray.config import ConfigError

    if name == "none":
        return [1.0] * agents
    if name == "sqrt":
        return [math.sqrt(i + 1) for i in range(agents)]
    if name == "linear":
        if agents == 1:
            return [1.0]
        return [1.0 + (value - 1.0) * i / (agents - 1) for i in range(agents)]
    if name == "straggler":
        return [1.0] * (agents - 1) + [value]
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError):  # numpy refuses negative or non-integer seeds
        raise ConfigError("--seed", f"must be a non-negative integer, got {seed!r}") from None
    try:
        return [float(math.exp(abs(x))) for x in rng.normal(0.0, value, size=agents)]
    except OverflowError:  # |N(0, SIGMA^2)| beyond ~709 has no float exp
        raise ConfigError("--hetero", f"'lognormal:{value:g}': SIGMA is so large that a slowdown overflows") from None


def theoretical_speedup(iteration_times: list[float]) -> float:
    """AFedPG's time-per-update advantage over FedPG's per-round time / N: ``(t_max / N) * sum(1/t_i)``."""
    n = len(iteration_times)
    return max(iteration_times) / n * sum(1.0 / t for t in iteration_times)


def padding_seconds(slowdown: float, compute_seconds: float, iteration_time: float | None) -> float:
    """Seconds to wait after computing so the iteration lasts as the profile says.

    With a fixed ``iteration_time`` T the whole iteration lasts ``s * T`` (no padding if compute
    already took longer); otherwise the padding is ``(s - 1)`` times the measured compute time.
    """
    if iteration_time is not None:
        return max(0.0, slowdown * iteration_time - compute_seconds)
    return (slowdown - 1.0) * compute_seconds


def wait(seconds: float) -> None:
    """Sleep without burning CPU (a plain ``time.sleep``; negative or zero returns at once)."""
    if seconds > 0:
        time.sleep(seconds)
