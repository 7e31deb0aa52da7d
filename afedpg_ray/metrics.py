"""Ray metrics (``ray.util.metrics``) for the dashboard, Prometheus and Grafana.

Exported with a ``ray_`` prefix at each node's metrics port. Every metric is created lazily inside
the actor that records it; outside Ray (in-process mode) recording is a no-op.
"""

from __future__ import annotations

import re
from typing import Any

from afedpg_ray.messages import SUPERSEDED, UpdateRecord

DELAY_BOUNDARIES = [0.5, 1, 2, 4, 8, 16, 32, 64, 128]
SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32]


_ACTOR_SUFFIX = re.compile(r"-(server|agent-\d+)(-r\d+)?$")


def run_tag(actor_name: str) -> str:
    """The run an actor belongs to, from its name: ``afedpg-<trial>-agent-3-r1`` -> ``afedpg-<trial>``.

    Every series carries it as the ``run`` tag, so concurrent sweep trials (each with its own actor
    prefix) are told apart in Prometheus and Grafana instead of summed together.
    """
    return _ACTOR_SUFFIX.sub("", actor_name)


def _current_run() -> str:
    import ray

    return run_tag(ray.get_runtime_context().get_actor_name() or "")


def _ray_metrics_available() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False


class ServerMetrics:
    """The server's gauges, counters and histograms."""

    def __init__(self) -> None:
        self.enabled = _ray_metrics_available()
        if not self.enabled:
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.version = Gauge(
            "afedpg_server_version", description="Updates applied by the parameter server.", tag_keys=("run",)
        )
        self.updates = Counter("afedpg_updates", description="Accepted updates per agent.", tag_keys=("run", "agent"))
        self.delay = Histogram(
            "afedpg_update_delay",
            description="Staleness of each accepted update (server versions).",
            boundaries=DELAY_BOUNDARIES,
            tag_keys=("run", "agent"),
        )
        self.return_mean = Gauge(
            "afedpg_return_mean", description="Mean return of recent training episodes.", tag_keys=("run",)
        )
        self.rejected = Counter(
            "afedpg_rejected_updates", description="Gradients rejected by the server.", tag_keys=("run", "reason")
        )
        self.superseded = Counter(
            "afedpg_superseded_gradients",
            description="rennala: gradients computed at a point already stepped past (samples spent, not a fault).",
            tag_keys=("run", "agent"),
        )
        self.faults = Counter(
            "afedpg_faults",
            description="Agent restarts, dropped agents, server restores and lost gradients.",
            tag_keys=("run", "kind", "agent"),
        )
        run = {"run": _current_run()}
        for metric in (self.version, self.updates, self.delay, self.return_mean, self.rejected):
            metric.set_default_tags(run)
        self.superseded.set_default_tags(run)
        self.faults.set_default_tags(run)

    def observe_fault(self, kind: str, agent: int | None) -> None:
        """Count one fault event (``agent_restart``, ``agent_dropped``, ``server_restored``, ``gradient_lost``)."""
        if self.enabled:
            self.faults.inc(1, tags={"kind": kind, "agent": "" if agent is None else str(agent)})

    def observe(self, record: UpdateRecord) -> None:
        """Record one server decision."""
        if not self.enabled:
            return
        if record.reason == SUPERSEDED:
            self.superseded.inc(1, tags={"agent": str(record.agent)})
            return
        if not record.accepted:
            self.rejected.inc(1, tags={"reason": record.reason})
            return
        tags = {"agent": str(record.agent)}
        self.version.set(record.update)
        self.updates.inc(1, tags=tags)
        self.delay.observe(record.delay, tags=tags)
        if record.return_mean == record.return_mean:  # skip NaN before the first finished episode
            self.return_mean.set(record.return_mean)


class AgentMetrics:
    """An agent's iteration-time histogram."""

    def __init__(self, agent_id: int) -> None:
        self.enabled = _ray_metrics_available()
        self.tags = {"agent": str(agent_id)}
        self.iteration: Any = None
        if self.enabled:
            from ray.util.metrics import Histogram

            self.iteration = Histogram(
                "afedpg_agent_iteration_seconds",
                description="Wall time of one agent iteration (sampling, gradient and modelled slowdown).",
                boundaries=SECONDS_BOUNDARIES,
                tag_keys=("run", "agent"),
            )
            self.iteration.set_default_tags({"run": _current_run()})

    def observe_iteration(self, seconds: float) -> None:
        """Record one iteration's wall time."""
        if self.enabled:
            self.iteration.observe(seconds, tags=self.tags)
