"""The only module that speaks Ray core: actors, resource requests and the arrival-order loop.

The driver keeps a ``{meta_ref: agent}`` map, waits with ``ray.wait`` for whichever agent finishes
first, hands that agent's gradient *reference* to the server actor and resubmits the agent with the
server's reply *reference*: the driver never waits for them or deserialises them (Ray does copy objects
under 100 KiB, such as the default policies' gradients, through the process that submitted their task).
The server actor runs one method at a time, so updates are applied strictly in arrival order.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from afedpg_ray.agent import RolloutAgent
from afedpg_ray.checkpoint_writer import CheckpointWriter
from afedpg_ray.config import TrainConfig, first_line
from afedpg_ray.errors import GradientLostError, RunError, ServerLostError
from afedpg_ray.heterogeneity import parse_profile
from afedpg_ray.messages import SUPERSEDED, GradientMeta, UpdateRecord
from afedpg_ray.placement import BUSY, SERVER_CPUS, agent_options, placement_problem
from afedpg_ray.ray_errors import (
    actor_exists,
    input_lost,
    raise_if_server_failed,
    ray_error_line,
    read_failed,
    task_error_line,
)
from afedpg_ray.runlog import RunLog
from afedpg_ray.server import ParameterServer
from afedpg_ray.signals import stops_held, stops_holdable

MAX_AGENT_RESTARTS = 3
"""Restarts per agent before the run continues without it."""
MAX_SERVER_RESTORES = 5
"""Server restores from checkpoint before the run gives up."""
RECORD_BATCH = 16
RECORD_LAG_S = 0.1
"""The loop logs the server's records once this many are waiting or this long has passed: checking
after every update costs a ``ray.wait`` per update, about a fifth of the loop at 300 updates/s."""
STOP_CHECKPOINT_S = 10.0
"""How long a run stopped by Ctrl-C or SIGTERM waits for the server's state to take a final checkpoint (a job
scheduler's grace period before SIGKILL is usually 30 s or more)."""
REJECTED_STREAK_PER_AGENT = 20
"""The run fails after this many consecutive rejected arrivals per agent (times ``--agents``). The budget
counts accepted samples only, so a run whose every gradient is rejected (a too small --max-grad-norm, NaN
observations) would otherwise redispatch forever; a Byzantine minority never gets this far, as every honest
arrival resets the count."""
SERVER_PROBE_S = 30.0
"""How long the driver waits for the server to answer when an agent's task failed: no answer means the
failure was the server's (its reply, the agent's input, is lost), not the agent's."""
NAME_RELEASE_S = 5.0
"""How long a run waits for its actor names to be released: a run that just finished in this process, or
whose driver crashed (``--resume``), holds them until Ray has reclaimed its actors."""
CREATION_SETTLE_S = 10.0
"""How long killing the run's actors first waits for those still being created (not yet known to be placed).
Ray ignores a kill that reaches a worker still setting an actor up ("Mismatched ActorID: ignoring
KillActor"); the actor is then created anyway and keeps its resources until this process exits, which for a
Tune trial or a test session is much later (seen: a leaked agent held 0.95 CPU and starved the next runs)."""
AWAITING_START = math.inf
"""``AgentSlot.reply_due`` of a step sent to a restarted actor that has not started yet: ``--agent-timeout``
counts from its start, since the start-up is no part of the step."""
PLACEMENT_NOTICE_S = 5.0
"""After this long, agents still waiting for a request no node can meet (a resource no node has, or more of
it than any node has) are reported (event and progress line), rather than only when ``--placement-timeout``
ends the run. Agents waiting for busy nodes are not: their wait may just be worker start-up."""
REJECTION_HINTS = {
    "norm_too_large": "raise --max-grad-norm or check the environment",
    "non_finite": "check the environment's observations and rewards (NaN or inf)",
    "bad_stats": "check that the agents run the same environment as the server",
    "bad_samples": "check that the agents run the same --batch and --num-envs as the server",
    "wrong_shape": "check that the agents build the same policy (--env, --hidden) as the server",
    "wrong_dtype": "agents must send floating-point numpy arrays (not a subclass); check for a modified agent",
    "norm_outlier": "the robust filter rejects every agent; try --robust none",
    "direction_outlier": "the robust filter rejects every agent; try --robust none",
}
"""What to change when every gradient is rejected for a reason (others: see progress.csv's reason column)."""


@dataclass
class AgentSlot:
    """Driver-side bookkeeping for one agent actor."""

    agent_id: int
    actor: Any
    options: dict[str, Any]
    restarts: int = 0
    alive: bool = True
    retry_at: float | None = None
    placing: Any = None
    """A restarted actor's ``node_id`` reference until it has been placed on a node."""
    place_by: float | None = None
    """When a restarted actor that is still not placed counts as failed (``--placement-timeout``)."""
    reply_due: float | None = None
    """When the step submitted last counts as the agent's failure (``--agent-timeout``); None: no step out,
    or no timeout; ``AWAITING_START``: a restarted actor's step, timed once the actor has started (its start-up,
    a new worker importing torch and building environments, can take longer than the timeout)."""


@dataclass
class LoopStats:
    """What the loop observed, for the run summary."""

    restarts: dict[int, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    server_restores: int = 0
    startup_seconds: float = 0.0
    """From the runner's creation to the first dispatch: actors created and placed, first checkpoint."""
    loop_updates: int = 0
    """Updates this session applied (accepted records that stepped the version)."""
    loop_seconds: float = 0.0
    """From the first dispatch to the last of those updates (server clock): the rate's denominator."""


class RayRunner:
    """Creates the server and agent actors and drives them until the sample budget is spent.

    The server's state is checkpointed to ``run_dir`` every ``config.checkpoint_every`` updates, at
    the start and at the end; if the server actor dies it is recreated from the last checkpoint and
    every agent is re-dispatched (in-flight gradients are dropped, never applied twice).
    """

    def __init__(
        self,
        config: TrainConfig,
        log: RunLog,
        run_dir: Path,
        name_prefix: str = "afedpg",
        resume_state: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.run_dir = run_dir
        self.prefix = name_prefix
        # The event clock continues the server's progress clock (its elapsed time is checkpointed).
        self.resumed = resume_state is not None
        self._resumed_elapsed = float(resume_state.get("elapsed", 0.0)) if resume_state else 0.0
        self.start = time.time() - self._resumed_elapsed
        self.slowdowns = parse_profile(config.hetero, config.agents, config.seed)
        delays = config.comm_delay or (0.0,)
        self.comm_delays = [delays[0] if len(delays) == 1 else delays[i] for i in range(config.agents)]
        self.stats = LoopStats()
        self.last_state = resume_state
        saved_version = int(resume_state["rule_state"]["version"]) if resume_state else None
        self.checkpoints = CheckpointWriter(run_dir, log, run_id, saved_version)
        self._records: deque[tuple[Any, int, int]] = deque()
        """Update records not yet logged, with the samples each update carries and its sender, oldest first."""
        self._round: Any = None
        """The synchronous loop's last round's records (a reference), until they are read."""
        self._round_records: deque[UpdateRecord] = deque()
        """That round's records read but not yet logged."""
        self._restoring = False
        self._server_rows = log.rows
        """progress.csv rows when the current server was created: it emits one record per later row."""
        self._last_drain = time.monotonic()
        self._loop_started_elapsed = 0.0
        """The run clock's reading at the first dispatch (updates' ``wall_time`` is on the same clock)."""
        self.session_start = int(resume_state["rule_state"]["version"]) if resume_state else 0
        """The update this session started at: with an agent's restarts, it keys the agent's seed."""
        self.samples_total = int(resume_state["samples_total"]) if resume_state else 0
        self._last_update = self.session_start
        """Version of the last record logged (a checkpoint is due when it reaches a multiple)."""
        self._rejected: list[UpdateRecord] = []
        """Records rejected since the last accepted update (see REJECTED_STREAK_PER_AGENT)."""
        self._check_names_free()
        self.server: Any = None
        self.slots: list[AgentSlot] = []
        self._placed = False
        """Whether every first-generation actor is known to be created (restarted agents: ``slot.placing``)."""
        try:
            self.server = self._make_server()
            cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
            self.slots = [AgentSlot(i, None, agent_options(config, i, cluster_cpus)) for i in range(config.agents)]
            for slot in self.slots:
                slot.actor = self._make_agent(slot)
            self._check_placement()
            if resume_state is None:
                self._checkpoint()
        except ServerLostError as lost:  # before the loop runs, nothing restores it
            self.shutdown()
            raise RunError(f"the parameter server died while starting: {lost}") from None
        except BaseException as failed:  # a refusal, Ctrl-C while waiting for placement, ...
            # free the names and resources for the next run in this process (a Ctrl-C does not wait)
            self.shutdown(settle=not isinstance(failed, KeyboardInterrupt))
            raise
        self._placed = True

    # -- actors -----------------------------------------------------------------------------------

    def _check_names_free(self) -> None:
        """Fail with one line if another run on this cluster uses this run's actor names.

        Creating a named actor whose name is taken raises ValueError deep inside Ray; a run that just
        ended may hold the names for a moment, so wait briefly before failing.
        """
        names = [f"{self.prefix}-server"] + [f"{self.prefix}-agent-{i}" for i in range(self.config.agents)]
        deadline = time.monotonic() + NAME_RELEASE_S
        while True:
            taken = [name for name in names if actor_exists(name)]
            if not taken:
                return
            if time.monotonic() >= deadline:
                raise RunError(
                    f"a run is already using the actor name {taken[0]!r} on this cluster; "
                    "wait for it to finish or stop it, or give this run another --prefix"
                )
            time.sleep(0.1)

    def _make_server(self) -> Any:
        """Create the server actor, restored from ``self.last_state`` if there is one (``self.server`` is
        the new actor even if that restore fails, so that it is the one killed next)."""
        # On the driver's node: the run already depends on that node, so the server adds no failure domain
        # there, while elsewhere it could share a spot worker's fate with agents. It asks for no CPU, so any
        # node can host it (a soft affinity would pass over a head node started with no CPUs).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        options = {"num_cpus": SERVER_CPUS, "max_restarts": 0, "scheduling_strategy": here}
        try:
            server = ray.remote(ParameterServer).options(name=f"{self.prefix}-server", **options)
            server = server.remote(self.config, self.start)
        except ValueError:  # the dead server's name may not be released yet
            name = f"{self.prefix}-server-r{self.stats.server_restores}"
            try:
                server = ray.remote(ParameterServer).options(name=name, **options).remote(self.config, self.start)
            except ValueError as err:  # Ray refused the actor itself, not only its name
                raise RunError(f"Ray refused to create the parameter server: {first_line(err)}") from None
        self.server = server
        if self.last_state is not None:
            self._server_call(server.restore.remote(self.last_state))
        return server

    def _make_agent(self, slot: AgentSlot) -> Any:
        """Create ``slot``'s agent actor; a request Ray refuses (e.g. a TPU count that is no chip
        configuration, which config validation could not ask Ray about) is a :class:`RunError`."""
        i = slot.agent_id
        name = f"{self.prefix}-agent-{i}" if slot.restarts == 0 else f"{self.prefix}-agent-{i}-r{slot.restarts}"
        try:
            actor_cls = ray.remote(RolloutAgent).options(name=name, **slot.options)
            return actor_cls.remote(
                i, self.config, self.slowdowns[i], self.comm_delays[i], slot.restarts, self.session_start
            )
        except (ValueError, TypeError) as err:
            asked = {k: v for k, v in slot.options.items() if k != "max_restarts"}
            raise RunError(
                f"--agent-resources: Ray refused agent {i}'s request {asked}: {first_line(err)}"
                if any(group.first <= i <= group.last for group in self.config.agent_resources)
                else f"Ray refused to create agent {i} ({asked}): {first_line(err)}"
            ) from None

    def _check_placement(self) -> None:
        """Fail with the agent and its request named if an agent cannot be placed in time."""
        refs = {slot.actor.node_id.remote(): slot for slot in self.slots}
        timeout = self.config.placement_timeout
        deadline = time.monotonic() + timeout
        pending = list(refs)
        noticed = False
        try:
            while pending:
                left = deadline - time.monotonic()
                wait_s = left if noticed else min(PLACEMENT_NOTICE_S, left)
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, wait_s))
                ray.get(ready)  # an agent whose constructor failed raises here
                if not pending:
                    return
                slot = refs[pending[0]]
                asked, problem = placement_problem(slot.options, [n["Resources"] for n in ray.nodes() if n["Alive"]])
                if time.monotonic() >= deadline:
                    raise RunError(
                        f"agent {slot.agent_id} could not be placed within {timeout:g}s (--placement-timeout): "
                        f"requested {asked}; {problem}"
                    )
                if not noticed and problem != BUSY:  # busy may only be slow worker start-up: no alarm
                    noticed = True
                    self.log.event(
                        "placement_waiting",
                        slot.agent_id,
                        f"requested {asked}; {problem}; {len(pending)} of {len(refs)} agents wait; the run stops after "
                        f"{timeout:g}s (--placement-timeout) unless resources free up or a node that has them joins",
                        self._elapsed(),
                    )
        except RayError as err:
            raise RunError(f"an agent failed to start: {ray_error_line(err)}") from None

    def _elapsed(self) -> float:
        """Seconds on the run's clock (which continues a resumed run's)."""
        return time.time() - self.start

    def _submit(self, slot: AgentSlot, dispatch_ref: Any) -> tuple[Any, Any]:
        """Start ``slot``'s next iteration at the point ``dispatch_ref`` will hold: (meta, gradient) references."""
        timeout = self.config.agent_timeout
        if timeout is None:
            slot.reply_due = None
        elif slot.placing is not None:  # a restarted actor still starting: its clock starts once it is up
            slot.reply_due = AWAITING_START
        else:
            slot.reply_due = time.monotonic() + timeout
        return slot.actor.step.options(num_returns=2).remote(dispatch_ref)

    def _overdue(self) -> list[AgentSlot]:
        """Agents whose step has taken longer than ``--agent-timeout`` (they are no longer watched)."""
        now = time.monotonic()
        late = [s for s in self.slots if s.alive and s.reply_due is not None and s.reply_due <= now]
        for slot in late:
            slot.reply_due = None
        return late

    def _overdue_error(self) -> RunError:
        """What an overdue agent is failed with (its events.csv line)."""
        return RunError(f"no reply within {self.config.agent_timeout:g}s (--agent-timeout)")

    # -- checkpoints and server faults ------------------------------------------------------------

    def _server_call(self, ref: Any) -> Any:
        """``ray.get`` a server result: an exception raised by the server's code becomes :class:`RunError`
        (it would recur after a restore); any other Ray failure - the actor died, was killed for memory,
        or lost its own reply - becomes :class:`ServerLostError`, and the loop restores the server. A task
        that never ran because its input, an agent's gradient, was lost raises :class:`GradientLostError`."""
        try:
            return ray.get(ref)
        except RayTaskError as err:
            if input_lost(err):
                raise GradientLostError(task_error_line(err)) from None
            raise RunError(f"the parameter server failed: {task_error_line(err)}") from None
        except RayError as err:
            raise ServerLostError(ray_error_line(err)) from None

    def _server_alive(self) -> bool:
        """Whether the server answers within ``SERVER_PROBE_S`` (asked when an agent's task failed)."""
        try:
            ray.get(self.server.pid.remote(), timeout=SERVER_PROBE_S)
        except RayError:  # GetTimeoutError is one too
            return False
        return True

    def _server_unreachable(self, err: RayError) -> bool:
        """Whether the agent's input, the server's reply, failed because the server actor died or could not
        be reached (``ActorUnavailableError``: the update may or may not have run, so only a restore from
        the checkpoint is consistent). Ray names the failed actor in the error, also when it was upstream."""
        return isinstance(err, RayActorError) and err.actor_id == self.server._actor_id.hex()

    def _classify_agent_failure(self, slot: AgentSlot, err: RayError) -> bool:
        """An agent's task failed: the server's loss (restore), the server's error (stop), a lost gradient
        (returns True: dispatch the agent afresh), or the agent's own failure (restart it). Ray's error
        types do not say whose it was (a memory kill is a plain RayError, and an agent whose input was
        the dead server's reply fails too), so the server is asked."""
        if self._server_unreachable(err) or not self._server_alive():
            raise ServerLostError(ray_error_line(err))
        if input_lost(err):  # its last gradient never reached the server, so it has no next point
            return True
        raise_if_server_failed(err, self.server._actor_id.hex())
        self._agent_failed(slot, err)
        return False

    def _checkpoint(self) -> None:
        """Take the server's state now; write it to disk on the writer thread (fsync is slow)."""
        self.last_state = self._server_call(self.server.export_state.remote())
        self.last_state["progress_rows"] = self.log.rows  # every submitted update is logged by now
        self.checkpoints.submit(self.last_state)

    def _checkpoint_is_current(self) -> bool:
        """Whether the last checkpoint taken holds every update and row logged (the budget was spent at a
        periodic checkpoint: the final one would write the same state again)."""
        state = self.last_state
        return (
            state is not None
            and int(state["rule_state"]["version"]) == self._last_update
            and state.get("progress_rows") == self.log.rows
        )

    def _restore_server(self, reason: str) -> None:
        """Recreate the server from the last checkpoint (bounded retries, then give up); a new server that
        dies during its own restore counts as one more death and is retried the same way."""
        self._restoring = True  # until the log is rolled back: a stop meanwhile keeps the checkpoint on disk
        self.checkpoints.flush()  # its writer fsyncs progress.csv, which the rollback replaces
        self._records.clear()  # the dead server's replies: the loop starts afresh
        self._round, self._round_records = None, deque()
        while True:
            self.stats.server_restores += 1
            if self.stats.server_restores > MAX_SERVER_RESTORES:
                raise RunError(f"the parameter server died {self.stats.server_restores} times; last: {reason}")
            ray.kill(self.server, no_restart=True)
            try:
                self.server = self._make_server()
                break
            except ServerLostError as lost:
                reason = str(lost)
        assert self.last_state is not None
        version = int(self.last_state["rule_state"]["version"])
        self.samples_total = int(self.last_state["samples_total"])
        self._rejected.clear()
        # updates logged after the checkpoint were lost with the server and will be applied again
        dropped = self.log.rollback(version, self.samples_total, self.last_state.get("progress_rows"))
        self.stats.loop_updates -= max(0, self._last_update - version)  # they count when applied again
        self._last_update = version
        self._server_rows = self.log.rows
        self._fault("server_restored", None, f"server died ({reason}); restored at update {version}")
        if dropped:
            message = f"dropped {dropped} progress.csv rows past update {version} (lost with the server)"
            self.log.event("progress_rolled_back", None, message, self._elapsed())
        self._restoring = False

    def _fault(self, kind: str, agent: int | None, message: str) -> None:
        """Log a fault in events.csv and count it in the server's metrics (fire and forget)."""
        self.log.event(kind, agent, message, self._elapsed())
        self.server.note_fault.remote(kind, agent)

    # -- agent faults -----------------------------------------------------------------------------

    def _agent_failed(self, slot: AgentSlot, err: Exception) -> None:
        """Drop the in-flight gradient, then schedule a restart (with backoff) or retire the agent."""
        ray.kill(slot.actor, no_restart=True)
        slot.reply_due = None  # its step died with it
        slot.restarts += 1
        self.stats.restarts[slot.agent_id] = slot.restarts
        if slot.restarts > MAX_AGENT_RESTARTS:
            slot.alive = False
            self.stats.dropped.append(slot.agent_id)
            message = f"gave up after {MAX_AGENT_RESTARTS} restarts: {task_error_line(err)}"
            self._fault("agent_dropped", slot.agent_id, message)
            if not any(s.alive for s in self.slots):
                raise RunError(f"every agent failed; last error: {task_error_line(err)}")
            return
        backoff = min(8.0, 0.5 * 2 ** (slot.restarts - 1))
        slot.retry_at = time.monotonic() + backoff
        message = f"restart {slot.restarts} in {backoff:.1f}s after: {task_error_line(err)}"
        self._fault("agent_restart", slot.agent_id, message)

    def _restart_due(self) -> list[AgentSlot]:
        """Recreate the agents whose backoff has passed; returns them."""
        now = time.monotonic()
        restarted = []
        for slot in self.slots:
            if slot.alive and slot.retry_at is not None and slot.retry_at <= now:
                slot.retry_at = None
                slot.actor = self._make_agent(slot)
                slot.placing = slot.actor.node_id.remote()
                slot.place_by = now + self.config.placement_timeout
                restarted.append(slot)
                self.log.event("agent_rejoined", slot.agent_id, "restarted at the current point", self._elapsed())
        return restarted

    def _unplaced_restarts(self) -> list[AgentSlot]:
        """Restarted agents whose placement deadline has passed without a node (their node died, or the
        resources they ask for are gone); agents placed in time stop being watched."""
        watched = [s for s in self.slots if s.alive and s.placing is not None]
        if not watched:
            return []
        ready, _ = ray.wait([s.placing for s in watched], num_returns=len(watched), timeout=0)
        placed = set(ready)
        now = time.monotonic()
        late = []
        for slot in watched:
            if slot.placing in placed:
                slot.placing = slot.place_by = None
                if slot.reply_due == AWAITING_START and self.config.agent_timeout is not None:
                    slot.reply_due = now + self.config.agent_timeout  # its step starts now
            elif slot.place_by is not None and now >= slot.place_by:
                slot.placing = slot.place_by = None
                late.append(slot)
        return late

    def _placement_failed(self, slot: AgentSlot) -> None:
        """A restarted agent found no node in time: one more failure of that agent (restart or drop)."""
        asked, problem = placement_problem(slot.options, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        timeout = self.config.placement_timeout
        self._agent_failed(slot, RunError(f"not placed within {timeout:g}s (--placement-timeout): {asked}; {problem}"))

    def _await_restarted_placement(self) -> None:
        """Synchronous rounds: wait until each restarted agent is placed, or count it as failed at its
        deadline (a round that included it would otherwise wait for it forever)."""
        for slot in self.slots:
            if not (slot.alive and slot.placing is not None and slot.place_by is not None):
                continue
            ref, deadline = slot.placing, slot.place_by
            slot.placing = slot.place_by = None
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except GetTimeoutError:
                self._placement_failed(slot)
            except RayError:
                pass  # it died while starting: its first step fails and is handled as that agent's fault

    def _wait_timeout(self) -> float | None:
        """How long the loop may block before an agent's restart or placement deadline falls due (None: no limit)."""
        due = [s.retry_at for s in self.slots if s.alive and s.retry_at is not None]
        due += [s.place_by for s in self.slots if s.alive and s.place_by is not None]
        due += [s.reply_due for s in self.slots if s.alive and s.reply_due not in (None, AWAITING_START)]
        return max(0.0, min(due) - time.monotonic()) if due else None

    # -- the loops --------------------------------------------------------------------------------

    def run(self) -> LoopStats:
        """Drive the loop (asynchronous or synchronous) until the sample budget is spent."""
        loop = self._run_sync if self.config.synchronous else self._run_async
        with stops_holdable():
            return self._run(loop)

    def _run(self, loop: Callable[[], None]) -> LoopStats:
        """:meth:`run`, with Ctrl-C and SIGTERM holdable."""
        loop_started = self._elapsed()
        self.stats.startup_seconds = loop_started - self._resumed_elapsed
        if self.resumed:  # the run's clock counts training: a resumed session's start-up is left out of it
            loop_started = self._shift_clock(self.stats.startup_seconds)
        self._loop_started_elapsed = loop_started
        try:
            while True:
                try:
                    loop()
                    if not self._checkpoint_is_current():
                        self._checkpoint()
                    self.checkpoints.flush()
                    break
                except ServerLostError as lost:
                    self._restore_server(str(lost))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated): keep what was trained, then stop
            self.log.event("stopped", None, self._checkpoint_on_stop(), self._elapsed())
            raise
        except OSError as err:
            if isinstance(err, ConnectionError):  # a socket's, not the run directory's
                raise
            raise RunError(self._write_failed(err)) from None
        finally:
            self.checkpoints.close()
            # finished (the final checkpoint holds everything the caller needs), failed or stopped: free the
            # names and resources for the next run on the cluster
            self._kill_actors()
        return self.stats

    def _write_failed(self, err: OSError) -> str:
        """One line for a run stopped because its files could not be written (a full disk, a read-only or
        vanished mount): what failed, which checkpoint stands, how to go on."""
        where = err.filename or self.run_dir
        why = err.strerror or first_line(err)
        return (
            f"cannot write {where}: {why}; {self.checkpoints.standing()} - free space or fix the directory, "
            f"then continue with afedpg train --resume {self.run_dir}"
        )

    def _shift_clock(self, seconds: float) -> float:
        """Move the run's clock (the driver's and the server's) back by ``seconds``; returns its reading.

        Without it a resumed run's first update would carry the session's start-up (actors created and
        placed, seconds), a step in the middle of the wall-clock curves that sweeps time. Events logged
        during the start-up keep the time they were logged at."""
        self.start += seconds
        try:
            self._server_call(self.server.shift_clock.remote(seconds))
        except ServerLostError:
            pass  # the loop's first call finds it dead; its replacement starts on the shifted clock
        return self._elapsed()

    def shutdown(self, settle: bool = True) -> None:
        """Finish the checkpoint being written and kill every actor this runner created (``settle``: see
        :meth:`_kill_actors`)."""
        self.checkpoints.flush()
        self.checkpoints.close()
        self._kill_actors(settle)

    def _kill_actors(self, settle: bool = True) -> None:
        """Kill every agent and the server (their names and resources are free for the next run at once).

        With ``settle``, actors not yet known to be created get up to ``CREATION_SETTLE_S`` to finish first,
        so that the kill is not lost (see there); actors that cannot be placed have no worker and die at once.
        """
        if settle:
            self._await_creations()
        for slot in self.slots:
            if slot.actor is not None:
                ray.kill(slot.actor, no_restart=True)
        if self.server is not None:
            ray.kill(self.server, no_restart=True)

    def _await_creations(self) -> None:
        """Wait up to ``CREATION_SETTLE_S`` for the actors not yet known to be created (see there)."""
        unconfirmed = [slot.placing for slot in self.slots if slot.alive and slot.placing is not None]
        if not self._placed:
            unconfirmed += [slot.actor.node_id.remote() for slot in self.slots if slot.actor is not None]
            unconfirmed += [self.server.pid.remote()] if self.server is not None else []
        if not unconfirmed:
            return
        ready, _ = ray.wait(unconfirmed, num_returns=len(unconfirmed), timeout=CREATION_SETTLE_S)
        for ref in ready:
            read_failed(ref)  # an actor that failed to start: read its error (Ray reports unread ones)

    def _after_update(self, record: UpdateRecord, take: Callable[[], object]) -> bool:
        """Log one update record, calling ``take`` to remove it from its queue; returns whether a checkpoint
        is due after it.

        Taking it, the driver's counters and its progress.csv row happen under :func:`stops_held`, so a
        Ctrl-C finds all or none of them done; the slower part of logging (progress bar, TensorBoard,
        listeners) follows outside."""
        with stops_held():
            take()
            due = self._account(record)
        self.log.notify(record)
        if len(self._rejected) >= REJECTED_STREAK_PER_AGENT * self.config.agents:
            raise RunError(rejection_message(self._rejected, self.config))
        return due

    def _account(self, record: UpdateRecord) -> bool:
        """The driver's counters and the record's row; whether a checkpoint is due after it."""
        if not record.accepted and record.reason != SUPERSEDED:
            self._rejected.append(record)
            self.log.write_row(record)
            return False
        self._rejected.clear()
        self.samples_total = max(self.samples_total, record.samples_total)  # superseded samples were spent too
        # due once per update reached: fedpg's round and rennala's collection log several rows per update
        stepped, self._last_update = record.update != self._last_update, record.update
        if stepped and record.accepted:
            self.stats.loop_updates += 1
            self.stats.loop_seconds = max(0.0, record.wall_time - self._loop_started_elapsed)
        self.log.write_row(record)
        return stepped and record.accepted and record.update % self.config.checkpoint_every == 0

    def _drain_records(self, block: bool, checkpoint: bool = True) -> None:
        """Log the server's records in submission order: all of them, or (not ``block``) the finished ones.

        The loop does not wait for each record (a round trip per update); checkpoints wait for every
        submitted update, so a checkpoint's version always matches the last line of progress.csv. Without
        ``checkpoint`` none is taken even if one falls due (a stop decides itself whether the log allows one).
        """
        self._last_drain = time.monotonic()
        if not self._records:
            return
        if block:
            count = len(self._records)
        else:
            refs = [ref for ref, _, _ in self._records]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            done = set(ready)
            count = next((i for i, ref in enumerate(refs) if ref not in done), len(refs))
        due = False
        while count > 0 or (due and self._records):  # a due checkpoint first logs every submitted update
            ref, _samples, agent_id = self._records[0]  # popped once read: a Ctrl-C in the read leaves it queued
            try:
                record = self._server_call(ref)
            except GradientLostError as lost:
                self._records.popleft()
                count -= 1
                self._fault("gradient_lost", agent_id, f"update dropped, its gradient was lost on the way: {lost}")
                continue
            count -= 1
            due = self._after_update(record, self._records.popleft) or due
        if due and checkpoint:
            self._checkpoint()

    def _run_async(self) -> None:
        """The asynchronous loop (afedpg, vanilla, a3c, pg, rennala): every agent works on its own; each reply
        found ready goes to the server in the order it was sent, and its sender is resubmitted at once with the
        server's answer. Records are logged in batches; restarts and placement deadlines are handled between
        waits. Returns when the applied updates have spent the sample budget."""
        pending: dict[Any, tuple[AgentSlot, Any]] = {}
        self._records.clear()
        for slot in self.slots:
            if slot.alive and slot.retry_at is None:
                meta_ref, grad_ref = self._submit(slot, self.server.dispatch.remote(slot.agent_id))
                pending[meta_ref] = (slot, grad_ref)
        while True:
            if len(self._records) >= RECORD_BATCH or time.monotonic() - self._last_drain >= RECORD_LAG_S:
                self._drain_records(block=False)
            if self._budget_spent():
                return
            for slot in self._restart_due():
                meta_ref, grad_ref = self._submit(slot, self.server.dispatch.remote(slot.agent_id))
                pending[meta_ref] = (slot, grad_ref)
            for slot in self._unplaced_restarts():
                _forget(pending, slot)  # its step can never run
                self._placement_failed(slot)
            for slot in self._overdue():
                _forget(pending, slot)  # killed with the agent: a late reply would find no actor to resubmit
                self._agent_failed(slot, self._overdue_error())
            if not pending:
                time.sleep(self._wait_timeout() or 0.05)
                continue
            # Every reply that has already arrived, in one call; else block for the next one.
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            if not ready:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self._wait_timeout())
            if self._budget_spent(block=False):
                continue  # the replies stay in flight, like every other agent's work at the end
            arrivals: list[tuple[Any, Any, AgentSlot, Any]] = []
            for meta_ref in ready:
                slot, grad_ref = pending.pop(meta_ref)
                slot.reply_due = None
                try:
                    arrivals.append((ray.get(meta_ref), meta_ref, slot, grad_ref))
                except RayError as err:
                    read_failed(grad_ref)
                    if self._classify_agent_failure(slot, err):
                        meta_ref, grad_ref = self._submit(slot, self.server.dispatch.remote(slot.agent_id))
                        pending[meta_ref] = (slot, grad_ref)
            for meta, meta_ref, slot, grad_ref in in_arrival_order(arrivals):
                if self._budget_spent(block=False):
                    pending[meta_ref] = (slot, grad_ref)  # stays in flight, like every other agent's work at the end
                    continue
                with stops_held():  # an update submitted is queued for the log
                    dispatch_ref, record_ref = self.server.apply.options(num_returns=2).remote(meta, grad_ref)
                    self._records.append((record_ref, meta.samples, slot.agent_id))
                next_meta_ref, next_grad_ref = self._submit(slot, dispatch_ref)
                pending[next_meta_ref] = (slot, next_grad_ref)

    def _budget_spent(self, block: bool = True) -> bool:
        """Whether the sample budget is spent; with ``block``, decided on applied updates only.

        Without ``block`` it only says whether the updates already submitted may spend it.
        """
        in_flight = sum(samples for _, samples, _ in self._records)
        if self.samples_total + in_flight < self.config.samples:
            return False
        if not block:
            return True
        self._drain_records(block=True)  # rejected gradients add no samples: wait for the verdicts
        return self.samples_total >= self.config.samples

    def _run_sync(self) -> None:
        """The synchronous loop (fedpg): each round sends one point to every live agent, waits for all of them,
        and submits their gradients as one averaged update."""
        dispatch_ref = None
        while self.samples_total < self.config.samples:
            if self._restart_due():
                dispatch_ref = None  # restarted agents are registered at the next round's point
            self._await_restarted_placement()  # a round waits for every member: no member may be unplaceable
            live = [s for s in self.slots if s.alive and s.retry_at is None]
            if not live:
                time.sleep(self._wait_timeout() or 0.05)
                continue
            if dispatch_ref is None:
                dispatch_ref = self.server.dispatch_round.remote([slot.agent_id for slot in live])
            submitted = [(slot, *self._submit(slot, dispatch_ref)) for slot in live]
            metas, grads = [], []
            input_lost = False
            for slot, meta_ref, grad_ref in submitted:
                try:
                    wait_s = None if slot.reply_due is None else max(0.0, slot.reply_due - time.monotonic())
                    metas.append(ray.get(meta_ref, timeout=wait_s))
                    grads.append(grad_ref)
                    slot.reply_due = None
                except GetTimeoutError:  # the round goes on without it (before RayError: it is one)
                    self._agent_failed(slot, self._overdue_error())
                except RayError as err:
                    read_failed(grad_ref)
                    input_lost |= self._classify_agent_failure(slot, err)
            if not metas:
                dispatch_ref = None
                continue
            with stops_held():  # a round submitted is queued for the log
                dispatch_ref, self._round = self.server.apply_round.options(num_returns=2).remote(metas, *grads)
            if input_lost:  # that agent sat the round out: only dispatch_round registers it at the next point
                dispatch_ref = None
            try:
                if self._log_round():
                    self._checkpoint()
            except GradientLostError as lost:  # the round never ran; the next one starts from a fresh dispatch
                self._fault("gradient_lost", None, f"round dropped, a gradient was lost on the way: {lost}")
                dispatch_ref = None

    def _log_round(self) -> bool:
        """Log the records of the round submitted last (if not yet logged); returns whether a checkpoint is due."""
        if self._round is not None:
            try:
                records = self._server_call(self._round)  # a Ctrl-C while waiting leaves it to be read again
            except GradientLostError:
                self._round = None  # the round never ran
                raise
            self._round = None
            self._round_records.extend(records)
        due = False
        while self._round_records:
            due = self._after_update(self._round_records[0], self._round_records.popleft) or due
        return due

    def _checkpoint_on_stop(self) -> str:
        """After Ctrl-C or SIGTERM: log the updates the server has applied and checkpoint them, so that a
        resume redoes none. Returns what happened, for the log: the checkpoint's version, or why none was
        taken and which one stands."""
        try:
            why_not = self._final_checkpoint()
        except KeyboardInterrupt:
            why_not = "stopped again while taking the final checkpoint"
        except Exception as err:  # noqa: BLE001 - any failure: the last checkpoint written stands
            why_not = f"no final checkpoint ({first_line(err)})"
        if why_not is None:
            return f"final checkpoint at update {self.checkpoints.saved_version}"
        return f"{why_not}; {self.checkpoints.standing()}"

    def _final_checkpoint(self) -> str | None:
        """:meth:`_checkpoint_on_stop`'s checkpoint; None if taken, else why not: no answer within
        ``STOP_CHECKPOINT_S``, a server restore under way, a log that does not hold every record the server
        emitted (a stop between submitting an update and logging it)."""
        if self._restoring:
            return "stopped during a server restore"
        if self.server is None:
            return "no server"
        state_ref = self.server.export_state.remote()  # runs after every update already submitted
        emitted_ref = self.server.emitted.remote()
        ready, _ = ray.wait([emitted_ref], num_returns=1, timeout=STOP_CHECKPOINT_S)
        if not ready:
            return f"the server did not answer within {STOP_CHECKPOINT_S:g} s"
        # their records are ready (the server ran them before the export); a checkpoint falling due on the
        # way is not taken: with a record missing from the log (emitted != logged) it would count it
        self._drain_records(block=True, checkpoint=False)
        try:
            self._log_round()
        except GradientLostError:
            pass  # that round never ran: nothing to log
        state, emitted = ray.get([state_ref, emitted_ref])
        logged = self.log.rows - self._server_rows
        version = int(state["rule_state"]["version"])
        if emitted != logged:
            return f"the server emitted {emitted} records, the log holds {logged}"
        if version != self._last_update:
            return f"the server is at update {version}, the log at {self._last_update}"
        state["progress_rows"] = self.log.rows
        self.checkpoints.flush()
        self.checkpoints.write(state)
        self.last_state = state
        return None


def _forget(pending: dict[Any, tuple[AgentSlot, Any]], slot: AgentSlot) -> None:
    """Stop waiting for ``slot``'s step: drop its references from the loop's ``pending`` map."""
    for ref in [ref for ref, (owner, _) in pending.items() if owner is slot]:
        del pending[ref]


def in_arrival_order(arrivals: list[tuple[GradientMeta, Any, Any, Any]]) -> list[tuple[GradientMeta, Any, Any, Any]]:
    """Replies found ready together, ``(meta, ...)`` tuples, in the order their agents sent them.

    ``ray.wait`` lists ready references in the order they were passed (dispatch order): a reply that
    waited behind the driver (draining records, a checkpoint) would otherwise be applied before one sent
    earlier, and its delay counted differently from the order the gradients really arrived in.
    """
    return sorted(arrivals, key=lambda arrival: arrival[0].sent_at)


def rejection_message(rejected: list[UpdateRecord], config: TrainConfig) -> str:
    """One line saying why every recent gradient was rejected and what to change."""
    reason, _ = Counter(record.reason for record in rejected).most_common(1)[0]
    detail = reason
    if reason == "norm_too_large":
        norms = [record.grad_norm for record in rejected if record.reason == reason]
        detail += f": median norm {statistics.median(norms):.3g} > --max-grad-norm {config.max_grad_norm:g}"
    hint = REJECTION_HINTS.get(reason, "see the reason column of progress.csv")
    return f"{len(rejected)} consecutive gradients rejected ({detail}); {hint}"
