"""The parameter server's state and logic: a plain class; ``runtime.py`` wraps it as one Ray actor.

It holds theta_k, theta_{k-1}, the momentum, the version k, every agent's version k_i, the shared
observation statistics and the run's counters. Every gradient is validated before it touches the
global parameters, so a bad agent can never make them non-finite.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
import torch

from afedpg_ray.byzantine import RobustFilter
from afedpg_ray.config import TrainConfig
from afedpg_ray.messages import SUPERSEDED, Dispatch, GradientMeta, UpdateRecord
from afedpg_ray.metrics import ServerMetrics
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.policy import build_policy, get_flat
from afedpg_ray.rate import RATE_WINDOW_S, RecentRate
from afedpg_ray.rules import RuleState, UpdateRule, make_rule

RETURN_WINDOW = 20
"""Finished training episodes averaged into ``return_mean``."""


@dataclass
class AgentStats:
    """What the server has seen of one agent, for the straggler table."""

    updates: int = 0
    rejected: int = 0
    superseded: int = 0
    iteration_seconds_sum: float = 0.0
    timed: int = 0
    """Arrivals whose iteration time is in ``iteration_seconds_sum``: used and superseded gradients (a
    superseded gradient cost its agent a full iteration too, so it still shows who is slow)."""
    delay_sum: int = 0
    delay_max: int = 0
    last_seen: float = 0.0
    node_id: str = ""

    def observe(self, meta: GradientMeta, delay: int, accepted: bool, reason: str = "") -> None:
        """Count one arrival from this agent."""
        self.last_seen = time.time()
        self.node_id = meta.node_id or self.node_id
        if not accepted and reason != SUPERSEDED:
            self.rejected += 1
            return
        self.timed += 1
        self.iteration_seconds_sum += meta.compute_seconds + meta.wait_seconds
        if reason == SUPERSEDED:
            self.superseded += 1
            return
        self.updates += 1
        self.delay_sum += delay
        self.delay_max = max(self.delay_max, delay)


class ParameterServer:
    """Applies arriving gradients one at a time with the configured update rule."""

    def __init__(self, config: TrainConfig, start_time: float | None = None) -> None:
        torch.manual_seed(config.seed)
        policy, obs_dim = build_policy(config.env, config.hidden, config.estimator.log_std_init)
        self.config = config
        self.horizon = config.expected_updates
        """Updates the schedule anneals over; a resumed run keeps its checkpoint's (see :meth:`restore`)."""
        self.rule = self._make_rule()
        self.state = RuleState.initial(get_flat(policy))
        self.obs_stats = RunningStats.empty(obs_dim)
        self.return_stats = RunningStats.empty(1)
        self.agent_versions: dict[int, int] = {}
        self.samples_total = 0
        self.episodes_total = 0
        self.recent_returns: deque[float] = deque(maxlen=RETURN_WINDOW)
        self.rejected: dict[str, int] = {}
        self.records_emitted = 0
        """Update records this server instance has returned (one progress.csv row each; not checkpointed)."""
        self.superseded = 0
        """rennala: gradients computed at a point already stepped past (their samples count, they do not)."""
        self.start_time = time.time() if start_time is None else start_time
        """Epoch of the run's clock. The driver passes its own: an actor's ``__init__`` runs only once its
        worker process is up, which can be after the agents' (under load, seconds), and progress.csv's
        wall times must include the agents' start-up for runs and sweeps to compare."""
        self.agent_stats: dict[int, AgentStats] = {}
        self.recent_rate = RecentRate()
        self.metrics = ServerMetrics()
        self.robust = RobustFilter() if config.robust == "filter" else None

    def _make_rule(self) -> UpdateRule:
        """The configured update rule (schedule and constants from the config)."""
        cfg = self.config
        return make_rule(
            cfg.algo,
            cfg.schedule,
            cfg.eta0,
            cfg.alpha0,
            cfg.lr,
            horizon=self.horizon,
            alpha_end=cfg.alpha_end,
            staleness_power=cfg.staleness_power,
            a3c_optimizer=cfg.a3c_optimizer,
        )

    def export_state(self) -> dict[str, Any]:
        """The server's whole state: parameters, momentum, counters, RNG. The agents' critics and
        environments, and gradients in flight, are not part of it: a resumed run continues from here, not bit
        for bit."""
        return {
            "schedule_horizon": self.horizon,
            "robust": self.robust.export_state() if self.robust is not None else None,
            "rule_state": dataclasses.asdict(self.state),
            "obs_stats": (self.obs_stats.count, self.obs_stats.mean, self.obs_stats.m2),
            "return_stats": (self.return_stats.count, self.return_stats.mean, self.return_stats.m2),
            "agent_versions": dict(self.agent_versions),
            "samples_total": self.samples_total,
            "episodes_total": self.episodes_total,
            "recent_returns": list(self.recent_returns),
            "rejected": dict(self.rejected),
            "superseded": self.superseded,
            "elapsed": time.time() - self.start_time,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "num_params": self.num_params,
        }

    def restore(self, saved: dict[str, Any]) -> int:
        """Continue from :meth:`export_state`'s output; returns the restored version.

        The clock is not restored: ``wall_time`` keeps counting from the ``start_time`` this server was
        created with (the driver's: on ``--resume`` it already continues the checkpoint's elapsed time),
        so a mid-run restore does not take the time since the last checkpoint off the run's clock.
        """
        if saved["num_params"] != self.num_params:
            raise ValueError(f"checkpoint has {saved['num_params']} parameters, this policy has {self.num_params}")
        self.state = RuleState(**saved["rule_state"])
        # A resume with a bigger --samples keeps the original plan: recomputing the horizon from the new
        # budget would make linear's eta and alpha_end's alpha jump back up mid-run.
        horizon = int(saved.get("schedule_horizon", self.horizon))  # older checkpoints: the config's
        if horizon != self.horizon:
            self.horizon = horizon
            self.rule = self._make_rule()
        if self.robust is not None:  # older checkpoints have no filter state: start it afresh, like the run did
            self.robust = RobustFilter()
            if saved.get("robust") is not None:
                self.robust.restore(saved["robust"])
        count, mean, m2 = saved["obs_stats"]
        self.obs_stats = RunningStats(count, np.asarray(mean), np.asarray(m2))
        count, mean, m2 = saved["return_stats"]
        self.return_stats = RunningStats(count, np.asarray(mean), np.asarray(m2))
        self.agent_versions = dict(saved["agent_versions"])
        self.samples_total = int(saved["samples_total"])
        self.episodes_total = int(saved["episodes_total"])
        self.recent_returns = deque(saved["recent_returns"], maxlen=RETURN_WINDOW)
        self.rejected = dict(saved["rejected"])
        self.superseded = int(saved.get("superseded", 0))  # absent in older checkpoints
        torch.set_rng_state(saved["torch_rng"])
        np.random.set_state(saved["numpy_rng"])
        return self.state.version

    def note_fault(self, kind: str, agent: int | None) -> None:
        """Record a fault the driver observed, so it shows in the dashboard's metrics."""
        self.metrics.observe_fault(kind, agent)

    def emitted(self) -> int:
        """Update records returned since this server was created: the driver's final checkpoint on Ctrl-C is
        consistent with progress.csv only if it logged exactly these."""
        return self.records_emitted

    def pid(self) -> int:
        """Process id of the server (chaos tests kill it)."""
        return os.getpid()

    @property
    def num_params(self) -> int:
        """Number of policy parameters."""
        return int(self.state.theta.size)

    def dispatch(self, agent_id: int) -> Dispatch:
        """(Re)start ``agent_id`` at the most recent dispatch point (theta_0 at the start)."""
        self.agent_versions[agent_id] = self.state.version
        return self._dispatch()

    def dispatch_round(self, agent_ids: list[int]) -> Dispatch:
        """(Re)start a synchronous round: every agent in ``agent_ids`` gets the same current point."""
        for agent_id in agent_ids:
            self.agent_versions[agent_id] = self.state.version
        return self._dispatch()

    def _dispatch(self) -> Dispatch:
        """What an agent is sent: the current sampling point (float32 halves the bytes), its version and the
        shared normaliser statistics."""
        assert self.state.point is not None
        return Dispatch(self.state.point.astype(np.float32), self.state.version, self.obs_stats, self.return_stats)

    def check(self, meta: GradientMeta, grad: np.ndarray) -> str:
        """Why this gradient must be rejected, or ``""`` if it is acceptable."""
        if meta.agent_id not in self.agent_versions:
            return "unknown_agent"
        if meta.version > self.state.version:
            return "future_version"
        if meta.version != self.agent_versions[meta.agent_id]:
            return "stale_version"
        if not isinstance(grad, np.ndarray) or grad.shape != self.state.theta.shape:
            return "wrong_shape"
        # strings or objects would raise below; complex would lose its imaginary part; a subclass such as a
        # masked array hides entries from the finiteness test below, and np.asarray brings them into theta
        if type(grad) is not np.ndarray or grad.dtype.kind != "f":
            return "wrong_dtype"
        # an honest agent reports ceil(batch / num_envs) * num_envs steps (a Python or numpy integer)
        if not _is_integer(meta.samples) or not 0 < meta.samples <= self.config.batch + self.config.num_envs:
            return "bad_samples"
        if not _numbers(meta.episode_returns) or not _numbers(meta.episode_lengths):  # numpy would read "1.5"
            return "bad_samples"
        returns = np.asarray(meta.episode_returns, dtype=np.float64)
        lengths = np.asarray(meta.episode_lengths, dtype=np.float64)
        if returns.shape != lengths.shape or np.any(~(lengths >= 1)):
            return "bad_samples"
        returns_finite = meta.return_delta is None or _stats_finite(meta.return_delta)
        deltas_finite = _stats_finite(meta.obs_delta) and returns_finite
        # one NaN episode return would make the reported mean return NaN for the next 20 episodes
        if not np.all(np.isfinite(grad)) or not deltas_finite or not np.all(np.isfinite(returns)):
            return "non_finite"
        # merging a wrong-shaped delta raises inside this actor; a negative count or M2 makes the shared
        # normaliser NaN; a count other than the samples, or an extreme mean, would take it over or overflow it
        samples = int(meta.samples)
        if not _mergeable(meta.obs_delta, self.obs_stats, samples, samples) or not _mergeable(
            meta.return_delta, self.return_stats, 0, samples
        ):
            return "bad_stats"
        if float(np.linalg.norm(grad)) > self.config.max_grad_norm:
            return "norm_too_large"
        if self.robust is not None:
            return self.robust.check(meta.agent_id, grad)
        return ""

    def apply(self, meta: GradientMeta, grad: np.ndarray) -> tuple[Dispatch, UpdateRecord]:
        """Validate and apply one asynchronous arrival; the sender gets the next point back."""
        reason = self.check(meta, grad)
        if reason:
            return self._reject(meta, reason)
        if self.config.algo == "rennala":
            return self._collect(meta, np.asarray(grad, dtype=np.float64))
        issued = self.agent_versions[meta.agent_id]
        delay = self.state.version - issued
        _, info = self.rule.apply(self.state, [np.asarray(grad, dtype=np.float64)], [issued])
        self._absorb(meta)
        self.agent_versions[meta.agent_id] = self.state.version
        record = self._record(meta, delay, True, "", info.alpha, info.eta)
        return self._dispatch(), record

    def _collect(self, meta: GradientMeta, grad: np.ndarray) -> tuple[Dispatch, UpdateRecord]:
        """Rennala: add a gradient computed at the current point to the collection; the M-th one steps.

        A gradient computed at a point the server has since stepped past is superseded (Rennala uses
        only gradients at the current point): its samples and statistics count, the gradient does not.
        The collection lives in the rule state, so checkpoints and restores keep it.
        """
        issued, version = self.agent_versions[meta.agent_id], self.state.version
        self._absorb(meta)
        self.agent_versions[meta.agent_id] = version
        if issued < version:
            self.superseded += 1
            return self._dispatch(), self._record(meta, version - issued, False, SUPERSEDED)
        extra = dict(self.state.extra or {})
        total = extra["collected_sum"] + grad if "collected_sum" in extra else grad.copy()
        count = int(extra.get("collected_count", 0)) + 1
        if count < self.config.gradients_per_update:
            extra.update(collected_sum=total, collected_count=np.array(count))
            self.state.extra = extra
            return self._dispatch(), self._record(meta, 0, True, "")
        self.state.extra = None
        _, info = self.rule.apply(self.state, [total / count], [version])
        self.agent_versions[meta.agent_id] = self.state.version
        return self._dispatch(), self._record(meta, 0, True, "", info.alpha, info.eta)

    def apply_round(self, metas: list[GradientMeta], *grads: np.ndarray) -> tuple[Dispatch, list[UpdateRecord]]:
        """Synchronous round (FedPG): average the valid gradients, one step, everyone gets the new point."""
        reasons = [self.check(m, g) for m, g in zip(metas, grads, strict=True)]
        valid = [(m, np.asarray(g, dtype=np.float64)) for m, g, r in zip(metas, grads, reasons, strict=True) if not r]
        records: list[UpdateRecord] = []
        for meta, reason in zip(metas, reasons, strict=True):
            if reason:
                records.append(self._reject(meta, reason)[1])
        if valid:
            issued = [self.agent_versions[m.agent_id] for m, _ in valid]
            _, info = self.rule.apply(self.state, [g for _, g in valid], issued)
            for meta, _ in valid:
                self._absorb(meta)
            for meta, _ in valid:
                records.append(self._record(meta, 0, True, "", info.alpha, info.eta))
        for meta in metas:
            if meta.agent_id in self.agent_versions:  # an unknown sender was rejected, not registered
                self.agent_versions[meta.agent_id] = self.state.version
        return self._dispatch(), records

    def _absorb(self, meta: GradientMeta) -> None:
        """Count an arrival's samples and episodes and merge its normaliser statistics (done for every arrival
        that is not rejected, also a superseded one: its samples were spent)."""
        self.obs_stats = self.obs_stats.merge(meta.obs_delta)
        if meta.return_delta is not None:
            self.return_stats = self.return_stats.merge(meta.return_delta)
        self.samples_total += int(meta.samples)  # a numpy integer would make every later checkpoint unreadable
        self.episodes_total += len(meta.episode_returns)
        self.recent_returns.extend(float(r) for r in meta.episode_returns)

    def _reject(self, meta: GradientMeta, reason: str) -> tuple[Dispatch, UpdateRecord]:
        """Refuse an arrival without touching the parameters: count the reason, send the sender the current point."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if meta.agent_id in self.agent_versions:
            self.agent_versions[meta.agent_id] = self.state.version
        return self._dispatch(), self._record(meta, self.state.version - meta.version, False, reason)

    def _record(
        self,
        meta: GradientMeta,
        delay: int,
        accepted: bool,
        reason: str,
        alpha: float = float("nan"),
        eta: float = float("nan"),
    ) -> UpdateRecord:
        """The progress record of one arrival, also counted in the sender's straggler statistics."""
        self.agent_stats.setdefault(meta.agent_id, AgentStats()).observe(meta, delay, accepted, reason)
        if accepted:
            self.recent_rate.observe(time.time(), self.state.version)
        record = UpdateRecord(
            update=self.state.version,
            wall_time=time.time() - self.start_time,
            agent=meta.agent_id,
            delay=delay,
            samples_total=self.samples_total,
            episodes_total=self.episodes_total,
            return_mean=float(np.mean(self.recent_returns)) if self.recent_returns else float("nan"),
            accepted=accepted,
            reason=reason,
            alpha=alpha,
            eta=eta,
            grad_norm=meta.grad_norm,
            agent_iteration_seconds=meta.compute_seconds + meta.wait_seconds,
        )
        self.metrics.observe(record)
        self.records_emitted += 1
        return record

    def shift_clock(self, seconds: float) -> None:
        """Move the run's clock back by ``seconds`` (a resumed session's start-up is not training time)."""
        self.start_time += seconds

    def status(self) -> dict:
        """Live view for ``afedpg status``: version, rates, and per-agent straggler statistics."""
        now = time.time()
        elapsed = now - self.start_time
        return {
            "version": self.state.version,
            "elapsed": elapsed,
            "updates_per_second": self.state.version / elapsed if elapsed > 0 else 0.0,
            "updates_per_second_recent": self.recent_rate.rate(now),
            "rate_window_s": RATE_WINDOW_S,
            "samples_total": self.samples_total,
            "samples_budget": self.config.samples,
            "return_mean": float(np.mean(self.recent_returns)) if self.recent_returns else float("nan"),
            "rejected": dict(self.rejected),
            "superseded": self.superseded,
            "agents": {i: asdict(stats) for i, stats in sorted(self.agent_stats.items())},
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
        }

    def memory_rss(self) -> int:
        """Resident memory of the server's process in bytes (VmRSS of /proc/self/status; 0 if unavailable)."""
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def _is_integer(value: Any) -> bool:
    """A Python or numpy integer (not a bool, not a float that happens to be whole)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _numbers(values: Any) -> bool:
    """A tuple or list of real numbers (episode returns or lengths as an agent sends them)."""
    return isinstance(values, tuple | list) and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in values
    )


def _stats_finite(stats: Any) -> bool:
    """``stats`` is a :class:`RunningStats` of real-valued arrays, all finite."""
    return (
        isinstance(stats, RunningStats)
        and isinstance(stats.count, int | float | np.integer | np.floating)
        and all(type(a) is np.ndarray and a.dtype.kind in "fi" for a in (stats.mean, stats.m2))  # no subclasses
        and stats.is_finite()
    )


def _mergeable(delta: RunningStats | None, into: RunningStats, min_count: int, max_count: int) -> bool:
    """Whether ``delta`` (finite) can be merged into ``into``: same shapes, ``min_count <= count <=
    max_count``, M2 >= 0, and the merged statistics stay finite (a finite but extreme mean, 1e200, would
    overflow the shared M2 at the next merge and blind every agent's policy for the rest of the run)."""
    if delta is None:
        return True
    if not (
        np.shape(delta.mean) == into.mean.shape
        and np.shape(delta.m2) == into.m2.shape
        and min_count <= float(delta.count) <= max_count
        and bool(np.all(np.asarray(delta.m2) >= 0.0))
    ):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        merged = into.merge(delta)
        # the next merge squares a mean difference and scales it by a count: that too must stay finite
        second_moment = np.square(merged.mean) * max(float(merged.count), 1.0)
        return merged.is_finite() and bool(np.all(np.isfinite(merged.var)) and np.all(np.isfinite(second_moment)))


def policy_snapshot_of(saved: dict[str, Any]) -> dict[str, Any]:
    """The global parameters and normaliser in :meth:`ParameterServer.export_state`'s output (a checkpoint),
    for saving the final policy without another call to the server."""
    count, mean, m2 = saved["obs_stats"]
    stats = RunningStats(count, np.asarray(mean), np.asarray(m2))
    return {
        "theta": np.asarray(saved["rule_state"]["theta"]).copy(),
        "obs_mean": stats.mean.copy(),
        "obs_var": stats.var.copy(),
        "obs_count": stats.count,
        "version": int(saved["rule_state"]["version"]),
    }
