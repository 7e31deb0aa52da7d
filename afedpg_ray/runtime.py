"""The only module that speaks Ray core: actors, resource requests and the arrival-order loop.

The driver keeps a ``{meta_ref: agent}`` map, waits with ``ray.wait`` for whichever agent finishes
first, hands that agent's gradient *reference* to the server actor and resubmits the agent with the
server's reply *reference*: gradients and parameters never detour through the driver. The server
actor runs one method at a time, so updates are applied strictly in arrival order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from afedpg_ray.agent import RolloutAgent
from afedpg_ray.config import TrainConfig
from afedpg_ray.heterogeneity import parse_profile
from afedpg_ray.runlog import RunLog
from afedpg_ray.server import ParameterServer

MAX_AGENT_RESTARTS = 3
"""Restarts per agent before the run continues without it."""
PLACEMENT_TIMEOUT_S = 60.0
"""How long an agent may wait for its resources before the run reports it as unplaceable."""


NAMESPACE = "afedpg"
"""Ray namespace of the named server and agent actors (``afedpg status`` looks there)."""


class RunError(RuntimeError):
    """A run cannot continue (e.g. every agent failed, or an agent's resources do not exist)."""


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` or start a local instance (no-op if already connected)."""
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING")
        else:
            ray.init(namespace=NAMESPACE, logging_level="WARNING")
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        raise RunError(f"--address: cannot connect to Ray at {address!r}: {str(err).splitlines()[0]}") from None


def agent_options(config: TrainConfig, agent_id: int, cluster_cpus: float) -> dict[str, Any]:
    """Ray actor options for one agent: its group's request, else an even share of the CPUs."""
    cpus = (
        config.agent_cpus if config.agent_cpus is not None else min(1.0, max(0.01, 0.95 * cluster_cpus / config.agents))
    )
    options: dict[str, Any] = {"num_cpus": round(cpus, 4), "max_restarts": 0}
    for group in config.agent_resources:
        if group.first <= agent_id <= group.last:
            if group.num_cpus is not None:
                options["num_cpus"] = group.num_cpus
            if group.memory is not None:
                options["memory"] = group.memory
            if group.resources:
                options["resources"] = dict(group.resources)
    return options


@dataclass
class AgentSlot:
    """Driver-side bookkeeping for one agent actor."""

    agent_id: int
    actor: Any
    options: dict[str, Any]
    restarts: int = 0
    alive: bool = True
    retry_at: float | None = None


@dataclass
class LoopStats:
    """What the loop observed, for the run summary."""

    restarts: dict[int, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)


class RayRunner:
    """Creates the server and agent actors and drives them until the sample budget is spent."""

    def __init__(
        self, config: TrainConfig, log: RunLog, name_prefix: str = "afedpg", server: Any | None = None
    ) -> None:
        self.config = config
        self.log = log
        self.prefix = name_prefix
        self.start = time.time()
        self.slowdowns = parse_profile(config.hetero, config.agents, config.seed)
        delays = config.comm_delay or (0.0,)
        self.comm_delays = [delays[0] if len(delays) == 1 else delays[i] for i in range(config.agents)]
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.server = server or ray.remote(ParameterServer).options(name=f"{name_prefix}-server", num_cpus=0).remote(
            config
        )
        self.slots = [AgentSlot(i, None, agent_options(config, i, cluster_cpus)) for i in range(config.agents)]
        for slot in self.slots:
            slot.actor = self._make_agent(slot)
        self.stats = LoopStats()
        self.samples_total = 0
        self._check_placement()

    def _make_agent(self, slot: AgentSlot) -> Any:
        i = slot.agent_id
        name = f"{self.prefix}-agent-{i}" if slot.restarts == 0 else f"{self.prefix}-agent-{i}-r{slot.restarts}"
        actor_cls = ray.remote(RolloutAgent).options(name=name, **slot.options)
        return actor_cls.remote(i, self.config, self.slowdowns[i], self.comm_delays[i])

    def _check_placement(self) -> None:
        """Fail with the agent and its request named if an agent cannot be placed in time."""
        refs = {slot.actor.node_id.remote(): slot for slot in self.slots}
        try:
            ray.get(list(refs), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            stuck = [refs[r] for r in refs if r not in ready]
            slot = stuck[0]
            raise RunError(
                f"agent {slot.agent_id} could not be placed within {PLACEMENT_TIMEOUT_S:.0f}s: no node offers "
                f"{slot.options} (cluster has {ray.cluster_resources()})"
            ) from None
        except (RayActorError, RayTaskError) as err:
            raise RunError(f"an agent failed to start: {_first_line(err)}") from None

    def _elapsed(self) -> float:
        return time.time() - self.start

    def _submit(self, slot: AgentSlot, dispatch_ref: Any) -> tuple[Any, Any]:
        return slot.actor.step.options(num_returns=2).remote(dispatch_ref)

    def _agent_failed(self, slot: AgentSlot, err: Exception) -> None:
        """Drop the in-flight gradient, then schedule a restart (with backoff) or retire the agent."""
        ray.kill(slot.actor, no_restart=True)
        slot.restarts += 1
        self.stats.restarts[slot.agent_id] = slot.restarts
        if slot.restarts > MAX_AGENT_RESTARTS:
            slot.alive = False
            self.stats.dropped.append(slot.agent_id)
            self.log.event(
                "agent_dropped",
                slot.agent_id,
                f"gave up after {MAX_AGENT_RESTARTS} restarts: {_first_line(err)}",
                self._elapsed(),
            )
            if not any(s.alive for s in self.slots):
                raise RunError(f"every agent failed; last error: {_first_line(err)}")
            return
        backoff = min(8.0, 0.5 * 2 ** (slot.restarts - 1))
        slot.retry_at = time.monotonic() + backoff
        self.log.event(
            "agent_restart",
            slot.agent_id,
            f"restart {slot.restarts} in {backoff:.1f}s after: {_first_line(err)}",
            self._elapsed(),
        )

    def run(self) -> LoopStats:
        """Drive the loop (asynchronous or synchronous) until the sample budget is spent."""
        if self.config.synchronous:
            self._run_sync()
        else:
            self._run_async()
        for slot in self.slots:
            if slot.alive:
                ray.kill(slot.actor, no_restart=True)
        return self.stats

    def _run_async(self) -> None:
        pending: dict[Any, tuple[AgentSlot, Any]] = {}
        for slot in self.slots:
            meta_ref, grad_ref = self._submit(slot, self.server.dispatch.remote(slot.agent_id))
            pending[meta_ref] = (slot, grad_ref)
        while self.samples_total < self.config.samples:
            for slot in self._restart_due():
                meta_ref, grad_ref = self._submit(slot, self.server.dispatch.remote(slot.agent_id))
                pending[meta_ref] = (slot, grad_ref)
            if not pending:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self._wait_timeout())
            if not ready:
                continue
            slot, grad_ref = pending.pop(ready[0])
            try:
                meta = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:
                self._agent_failed(slot, err)
                continue
            dispatch_ref, record_ref = self.server.apply.options(num_returns=2).remote(meta, grad_ref)
            meta_ref, next_grad_ref = self._submit(slot, dispatch_ref)
            pending[meta_ref] = (slot, next_grad_ref)
            record = ray.get(record_ref)
            self.log.record(record)
            self.samples_total = record.samples_total

    def _wait_timeout(self) -> float | None:
        due = [s.retry_at for s in self.slots if s.alive and s.retry_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _restart_due(self) -> list[AgentSlot]:
        """Recreate the agents whose backoff has passed; returns them."""
        now = time.monotonic()
        restarted = []
        for slot in self.slots:
            if slot.alive and slot.retry_at is not None and slot.retry_at <= now:
                slot.retry_at = None
                slot.actor = self._make_agent(slot)
                restarted.append(slot)
                self.log.event("agent_rejoined", slot.agent_id, "restarted at the current point", self._elapsed())
        return restarted

    def _run_sync(self) -> None:
        dispatch_ref = None
        while self.samples_total < self.config.samples:
            if self._restart_due():
                dispatch_ref = None  # restarted agents are registered at the next round's point
            live = [s for s in self.slots if s.alive and s.retry_at is None]
            if not live:
                time.sleep(self._wait_timeout() or 0.05)
                continue
            if dispatch_ref is None:
                for slot in live:
                    ray.get(self.server.dispatch.remote(slot.agent_id))
                dispatch_ref = self.server.dispatch.remote(live[0].agent_id)
            submitted = [(slot, *self._submit(slot, dispatch_ref)) for slot in live]
            metas, grads = [], []
            for slot, meta_ref, grad_ref in submitted:
                try:
                    metas.append(ray.get(meta_ref))
                    grads.append(grad_ref)
                except (RayActorError, RayTaskError) as err:
                    self._agent_failed(slot, err)
            if not metas:
                dispatch_ref = None
                continue
            dispatch_ref, records_ref = self.server.apply_round.options(num_returns=2).remote(metas, *grads)
            for record in ray.get(records_ref):
                self.log.record(record)
                self.samples_total = max(self.samples_total, record.samples_total)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
