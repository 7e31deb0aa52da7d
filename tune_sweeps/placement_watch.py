"""A sweep that cannot place any trial says so and stops, instead of waiting without a word.

Tune checks a pending trial only against the cluster's *total* CPUs; a bundle no single node can hold,
or a custom resource no node has, leaves every trial pending forever and Tune silent (and Ray prints
nothing for a placement group it cannot place). :class:`PlacementWatchdog` stops such a sweep, as
Ctrl-C does (resumable), once no trial has run for ``--placement-timeout`` seconds while some wait.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ray.tune import Callback

from afedpg_ray.placement import unplaceable_reason

STOPPED: list[str] = []
"""The watchdog's one-line reason, once it has stopped the sweep (module-level: a resumed sweep runs the
copy of the callback that Tune pickled with the experiment, not the one the driver built)."""


class PlacementWatchdog(Callback):
    """Stops the sweep (as Ctrl-C) when trials wait and none has run for ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting_since: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # a restored sweep starts its own clock
        return {"timeout_s": self.timeout_s, "_waiting_since": None}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Called by Tune's loop: start, reset or act on the clock of a sweep with nothing running."""
        statuses = {trial.status for trial in trials}
        if "PENDING" not in statuses or statuses & {"RUNNING", "PAUSED"}:
            self._waiting_since = None
            return
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if STOPPED or now - self._waiting_since < self.timeout_s:
            return
        STOPPED.append(self._reason(next(t for t in trials if t.status == "PENDING")))
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own handler stops the sweep gracefully (resumable)

    def _reason(self, trial: Any) -> str:
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        bundles = [dict(b) for b in trial.placement_group_factory.bundles]
        detail = unplaceable_reason(bundles, nodes) or "the nodes that could hold it stayed busy"
        return (
            f"no trial could start within --placement-timeout {self.timeout_s:g} s: {detail}; add nodes and rerun "
            "with --resume, or start a new sweep with a smaller --agent-cpus or other --agent-resources"
        )
