"""Typed messages that cross a process boundary (server <-> agents <-> driver)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afedpg_ray.normalizer import RunningStats

SUPERSEDED = "superseded"
"""The ``reason`` of a rennala arrival computed at a point the server has already stepped past: its
samples count and its statistics are merged, but the gradient is not used. Not a fault."""


@dataclass(frozen=True)
class Dispatch:
    """What the server sends an agent: the point to sample at, its version and the shared normaliser."""

    params: np.ndarray
    version: int
    obs_stats: RunningStats
    return_stats: RunningStats | None = None
    """Shared statistics of the discounted return (reward scaling), merged like ``obs_stats``."""


@dataclass(frozen=True)
class GradientMeta:
    """The small half of an agent's reply (the gradient itself travels as a separate object)."""

    agent_id: int
    version: int
    """Version of the point the gradient was computed at."""
    samples: int
    episode_returns: tuple[float, ...]
    episode_lengths: tuple[int, ...]
    obs_delta: RunningStats
    """Statistics of the observations seen in this iteration, to merge into the shared normaliser."""
    compute_seconds: float
    wait_seconds: float
    """Padding that modelled this agent's slowdown and communication delay."""
    grad_norm: float
    node_id: str = ""
    """Ray node the agent ran on (for the straggler table)."""
    return_delta: RunningStats | None = None
    """Statistics of the discounted returns seen in this iteration (reward scaling)."""
    sent_at: float = 0.0
    """Wall-clock time (``time.time()``) the reply left the agent, after its modelled padding: replies the
    driver finds ready together are applied in this order (clocks of different nodes differ by their skew)."""


@dataclass(frozen=True)
class UpdateRecord:
    """One row of progress.csv: what the server did with one arrival."""

    update: int
    wall_time: float
    agent: int
    delay: int
    samples_total: int
    episodes_total: int
    return_mean: float
    accepted: bool
    reason: str = ""
    alpha: float = float("nan")
    eta: float = float("nan")
    grad_norm: float = float("nan")
    agent_iteration_seconds: float = float("nan")
