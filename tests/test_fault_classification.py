"""Whose fault a failed Ray call was, and the retries around it (the driver loop's decisions, in isolation).

Ray's error types do not say who failed: an agent killed for memory fails its task with a plain
``RayError`` (not ``RayActorError``), and a server that dies takes its agents' next inputs with it. These
tests drive those decisions of :class:`~afedpg_ray.runtime.RayRunner` directly, with the rest stubbed.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import pytest
import ray
from ray import ActorID
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ObjectLostError,
    OutOfMemoryError,
    OwnerDiedError,
    RayTaskError,
)

from afedpg_ray import runtime
from afedpg_ray.checkpoint_writer import CheckpointWriter
from afedpg_ray.config import TrainConfig
from afedpg_ray.errors import RunError, ServerLostError
from afedpg_ray.runtime import AgentSlot, LoopStats, RayRunner


class FakeActor:
    """Stands in for an actor handle: only its id, which Ray's actor errors name."""

    def __init__(self) -> None:
        self._actor_id = ActorID.from_random()


def bare_runner(**attributes) -> RayRunner:
    """A RayRunner without actors: only the attributes a decision reads."""
    runner = object.__new__(RayRunner)
    runner.server = FakeActor()
    for name, value in attributes.items():
        setattr(runner, name, value)
    return runner


@pytest.mark.parametrize("error", [OutOfMemoryError("the agent's worker was killed for memory"), ObjectLostError])
def test_a_plain_ray_error_is_the_agents_fault_while_the_server_answers(error):
    if error is ObjectLostError:
        error = ObjectLostError("ab" * 14, "owner", "call site")  # 28-hex object id
    restarted = []
    runner = bare_runner(_server_alive=lambda: True, _agent_failed=lambda slot, err: restarted.append((slot, err)))
    slot = AgentSlot(2, None, {})
    runner._classify_agent_failure(slot, error)
    assert restarted == [(slot, error)]


def test_an_agent_whose_input_was_a_lost_gradient_is_dispatched_afresh_not_restarted():
    # the server's apply never ran (the sender's gradient was lost), so the agent's next step, whose input
    # is that apply's reply, fails with the same OwnerDiedError wrapped as a task error
    cause = OwnerDiedError("cd" * 14, "owner", "call site")
    error = RayTaskError("ParameterServer.apply", "traceback", cause).as_instanceof_cause()
    runner = bare_runner(_server_alive=lambda: True, _agent_failed=lambda slot, err: pytest.fail("not a failure"))
    assert runner._classify_agent_failure(AgentSlot(1, None, {}), error) is True
    restarted = []
    runner = bare_runner(_server_alive=lambda: True, _agent_failed=lambda slot, err: restarted.append(slot))
    assert runner._classify_agent_failure(AgentSlot(1, None, {}), OutOfMemoryError("killed")) is False
    assert len(restarted) == 1


@pytest.mark.parametrize("upstream", [True, False])
def test_an_unreachable_server_named_in_the_agents_error_is_restored_even_if_it_answers_again(upstream):
    # a blip: the server's reply failed as unavailable (the update may or may not have run), then it answers
    # the probe; only a restore from the checkpoint is consistent, and the agent must not use up a restart
    runner = bare_runner(_server_alive=lambda: True, _agent_failed=lambda slot, err: pytest.fail("not the agent's"))
    error = ActorUnavailableError("RPC to the server failed", runner.server._actor_id.binary())
    if upstream:  # how the agent's step fails when its input was that reply
        error = RayTaskError("RolloutAgent.step", "traceback", error).as_instanceof_cause()
    with pytest.raises(ServerLostError):
        runner._classify_agent_failure(AgentSlot(0, None, {}), error)


def test_an_agents_own_actor_error_restarts_the_agent():
    restarted = []
    runner = bare_runner(_server_alive=lambda: True, _agent_failed=lambda slot, err: restarted.append(slot))
    agent = FakeActor()
    runner._classify_agent_failure(
        AgentSlot(0, agent, {}), ActorUnavailableError("RPC failed", agent._actor_id.binary())
    )
    runner._classify_agent_failure(AgentSlot(1, None, {}), ActorDiedError())
    assert [slot.agent_id for slot in restarted] == [0, 1]


def test_a_plain_ray_error_is_the_servers_loss_when_it_does_not_answer():
    runner = bare_runner(_server_alive=lambda: False, _agent_failed=lambda slot, err: pytest.fail("not the agent's"))
    with pytest.raises(ServerLostError):
        runner._classify_agent_failure(AgentSlot(0, None, {}), OutOfMemoryError("killed for memory"))


class FakeLog:
    """Records what the restore writes to events.csv and progress.csv."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.rows = 9  # two rows past the checkpoint's 7, until the rollback

    def event(self, kind: str, agent: int | None, message: str, elapsed: float) -> None:
        self.events.append(kind)

    def rollback(self, version: int, samples: int, rows: int | None) -> int:
        dropped, self.rows = self.rows - rows, rows
        return dropped


def restoring_runner(monkeypatch, deaths: int) -> RayRunner:
    """A runner whose new servers die ``deaths`` times during their own restore."""
    monkeypatch.setattr(runtime.ray, "kill", lambda actor, no_restart=True: None)
    made = []

    def make_server() -> str:
        made.append(len(made))
        if len(made) <= deaths:
            raise ServerLostError(f"new server {len(made)} died while restoring")
        return "server"

    runner = bare_runner(
        stats=LoopStats(loop_updates=9),  # updates 1-9 applied in this session, 8 and 9 after the checkpoint
        _last_update=9,
        server="dead server",
        last_state={"rule_state": {"version": 7}, "samples_total": 700, "progress_rows": 7},
        log=FakeLog(),
        start=time.time(),
        _rejected=[],
        checkpoints=CheckpointWriter(Path("unused"), None, None, None),  # type: ignore[arg-type]  # writes nothing
        _records=deque(),
        _make_server=make_server,
        _fault=lambda kind, agent, message: None,
    )
    return runner


def test_a_server_that_dies_during_its_restore_is_restored_again(monkeypatch):
    runner = restoring_runner(monkeypatch, deaths=2)
    runner._restore_server("killed")
    assert runner.server == "server" and runner.stats.server_restores == 3
    assert (runner.samples_total, runner._last_update) == (700, 7)
    assert runner.stats.loop_updates == 7  # the two lost updates count once, when applied again
    # the log is back at the checkpoint's rows, and the new server's records are counted from there
    assert runner.log.rows == runner._server_rows == 7 and not runner._restoring


def test_restores_are_bounded_even_when_each_new_server_dies(monkeypatch):
    runner = restoring_runner(monkeypatch, deaths=100)
    with pytest.raises(RunError, match=f"died {runtime.MAX_SERVER_RESTORES + 1} times; last: new server"):
        runner._restore_server("killed")


def pinned_actor(**options):
    """A tiny actor standing in for an agent (defined here so that Ray ships it by value, not by module)."""

    class Pinned:
        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    return ray.remote(Pinned).options(**options).remote()


@pytest.mark.usefixtures("ray_session")
def test_a_restarted_agent_that_finds_no_node_counts_as_failed_at_its_deadline():
    options = {"num_cpus": 0, "resources": {"gone_node_type": 1}}  # say its node type was scaled away
    unplaceable = pinned_actor(**options)
    placeable = pinned_actor(num_cpus=0)
    failed = []
    runner = bare_runner(config=TrainConfig(placement_timeout=1.0), _agent_failed=lambda s, err: failed.append(err))
    stuck = AgentSlot(0, unplaceable, options, restarts=1, placing=unplaceable.node_id.remote())
    fine = AgentSlot(1, placeable, {"num_cpus": 0}, restarts=1, placing=placeable.node_id.remote())
    runner.slots = [stuck, fine]
    try:
        ray.get(fine.placing, timeout=60)  # a loaded machine may take seconds to start a worker
        stuck.place_by = fine.place_by = time.monotonic() + 2.0
        assert runner._unplaced_restarts() == []  # before its deadline nothing is decided
        assert fine.placing is None and stuck.placing is not None  # the placed one is no longer watched
        assert runner._wait_timeout() <= 2.0  # the loop wakes up for the deadline
        time.sleep(2.1)
        late = runner._unplaced_restarts()
        assert late == [stuck] and stuck.placing is None
        runner._placement_failed(stuck)
        assert len(failed) == 1
        assert str(failed[0]) == (
            "not placed within 1s (--placement-timeout): gone_node_type=1; no node has 'gone_node_type'"
        )
    finally:
        ray.kill(unplaceable)
        ray.kill(placeable)


class StepRecorder:
    """Stands in for an agent actor handle: ``step.options(...).remote(...)`` returns two dummy references."""

    def __init__(self) -> None:
        self.step = self

    def options(self, **_: object) -> StepRecorder:
        return self

    def remote(self, *_: object) -> tuple[str, str]:
        return "meta", "grad"


@pytest.mark.usefixtures("ray_session")
def test_the_agent_timeout_of_a_restarted_agent_counts_from_its_start_not_its_creation():
    # a restarted actor starts a new worker (torch, environments: seconds, on a cloud node more); its first
    # step is sent at once. Counted from then, a timeout shorter than the start-up failed it again and again
    runner = bare_runner(config=TrainConfig(agent_timeout=3.0))
    starting = ray.put("node")  # stands in for the restarted actor's node_id reply: not yet read by the loop
    restarted = AgentSlot(0, StepRecorder(), {}, restarts=1, placing=starting, place_by=time.monotonic() + 60)
    running = AgentSlot(1, StepRecorder(), {})
    runner.slots = [restarted, running]
    runner._submit(restarted, "point")
    runner._submit(running, "point")
    assert restarted.reply_due == runtime.AWAITING_START
    assert running.reply_due == pytest.approx(time.monotonic() + 3.0, abs=0.5)
    assert runner._wait_timeout() <= 3.0  # the starting agent's step sets no deadline of its own
    restarted.reply_due = running.reply_due = time.monotonic() - 1  # as if 4 s had passed ...
    restarted.reply_due = runtime.AWAITING_START  # ... while agent 0 was still starting
    assert runner._overdue() == [running]
    assert runner._unplaced_restarts() == []  # agent 0 is up now: its step's clock starts
    assert restarted.placing is None
    assert restarted.reply_due == pytest.approx(time.monotonic() + 3.0, abs=0.5)
    runner.config = TrainConfig()  # without --agent-timeout nothing is timed
    fresh = AgentSlot(2, StepRecorder(), {}, restarts=1, placing=ray.put("node"))
    runner._submit(fresh, "point")
    assert fresh.reply_due is None


def test_a_ctrl_c_during_ray_start_up_is_held_then_raised(capsys):
    import os
    import signal

    from afedpg_ray.signals import CTRL_C_HELD_NOTICE, ctrl_c_deferred

    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # lands inside the block (ray.init there): held, not raised
            time.sleep(0.05)
            reached_end = True
    assert reached_end
    assert capsys.readouterr().err.strip() == CTRL_C_HELD_NOTICE  # the held key is acknowledged, once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C raises at once
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached_end = False
    assert reached_end


def test_a_failing_agent_backs_off_then_is_dropped_and_a_run_with_none_left_stops(monkeypatch):
    monkeypatch.setattr(runtime.ray, "kill", lambda actor, no_restart: None)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: 100.0)
    faults = []
    slots = [AgentSlot(0, "actor-0", {}), AgentSlot(1, "actor-1", {})]
    runner = bare_runner(
        stats=LoopStats(), slots=slots, _fault=lambda kind, agent, message: faults.append((kind, agent, message))
    )
    retry_at = []
    for _ in range(runtime.MAX_AGENT_RESTARTS):
        runner._agent_failed(slots[0], RuntimeError("env crashed"))
        retry_at.append(slots[0].retry_at)
    assert retry_at == [100.5, 101.0, 102.0]  # backoff 0.5 s, 1 s, 2 s
    assert [kind for kind, _, _ in faults] == ["agent_restart"] * 3 and slots[0].alive
    runner._agent_failed(slots[0], RuntimeError("env crashed"))  # one failure past the restarts: retired
    assert not slots[0].alive and runner.stats.dropped == [0] and runner.stats.restarts == {0: 4}
    assert faults[-1][:2] == ("agent_dropped", 0) and "gave up after 3 restarts: env crashed" in faults[-1][2]
    for _ in range(runtime.MAX_AGENT_RESTARTS):
        runner._agent_failed(slots[1], RuntimeError("node lost"))
    with pytest.raises(RunError, match="every agent failed; last error: node lost"):
        runner._agent_failed(slots[1], RuntimeError("node lost"))


def test_stops_held_delivers_ctrl_c_and_sigterm_when_the_block_ends():
    import os
    import signal

    from afedpg_ray.signals import SIGTERM_RECEIVED, Terminated, sigterm_raises_terminated, stops_held, stops_holdable

    steps = []
    with sigterm_raises_terminated(), stops_holdable():
        with pytest.raises(KeyboardInterrupt):
            with stops_held():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("after the signal")  # the block is not cut in two
            steps.append("after the block")
        assert steps == ["after the signal"]
        with pytest.raises(Terminated):  # both held: SIGTERM (exit 143) is delivered
            with stops_held():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after both")
        assert SIGTERM_RECEIVED.is_set() and steps[-1] == "after both"
        with pytest.raises(KeyboardInterrupt):  # sent twice: the user insists, delivered at once
            with stops_held():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("not reached")
        assert steps[-1] == "after both"
        with pytest.raises(ValueError):  # the block's own exception goes on; the held Ctrl-C is dropped
            with stops_held():
                os.kill(os.getpid(), signal.SIGINT)
                raise ValueError("the block failed")
        with stops_held():  # nothing held is left over for the next block
            steps.append("clean")
    SIGTERM_RECEIVED.clear()  # a later run in this process was not terminated
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with stops_held():  # outside stops_holdable nothing is held
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
