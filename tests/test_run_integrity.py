"""A run's records stay true to its server: rolled-back rows are dropped, hopeless runs end, names are checked."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _checkpoint_util import server_state
from _ray_util import released

from afedpg_ray import runlock
from afedpg_ray.checkpoint import load_checkpoint, save_checkpoint
from afedpg_ray.cli import main
from afedpg_ray.config import TrainConfig
from afedpg_ray.errors import RunError
from afedpg_ray.messages import UpdateRecord
from afedpg_ray.runlog import RunLog, cut_progress, read_progress
from afedpg_ray.runtime import REJECTED_STREAK_PER_AGENT, RayRunner, rejection_message
from afedpg_ray.train import cut_to_checkpoint, load_resumable, train


def record(
    update: int, accepted: bool = True, delay: int = 1, reason: str = "", grad_norm: float = 1.0
) -> UpdateRecord:
    return UpdateRecord(
        update=update,
        wall_time=0.1 * update,
        agent=update % 3,
        delay=delay,
        samples_total=100 * update,
        episodes_total=update,
        return_mean=10.0,
        accepted=accepted,
        reason=reason,
        grad_norm=grad_norm,
    )


def test_rollback_drops_the_rows_past_the_restored_version(tmp_path):
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for update in range(1, 11):
        log.record(record(update, delay=update))
    log.record(record(10, accepted=False, reason="non_finite"))
    assert log.rollback(7, 700) == 4  # updates 8, 9, 10 and the rejection at 10
    assert log.accepted == 7 and log.delay_sum == sum(range(1, 8))
    for update in range(8, 10):  # the restored server applies 8 and 9 again
        log.record(record(update, delay=0))
    log.close()
    rows = read_progress(tmp_path / "progress.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, 10))
    assert [int(r["delay"]) for r in rows[-2:]] == [0, 0] and log.accepted == 9
    assert not list(tmp_path.glob(".*tmp"))  # rewritten atomically, nothing left behind


def test_resume_cuts_progress_by_the_same_rule(tmp_path):
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for update in range(1, 9):
        log.record(record(update))
    log.record(record(8, accepted=False, reason="norm_too_large"))
    log.close()
    save_checkpoint(tmp_path, server_state(version=5, samples_total=500))  # an older one: no row count
    state = load_resumable(tmp_path, TrainConfig(samples=1000))
    assert state["samples_total"] == 500
    cut_to_checkpoint(tmp_path, state)
    assert [int(r["update"]) for r in read_progress(tmp_path / "progress.csv")] == [1, 2, 3, 4, 5]
    assert cut_progress(tmp_path / "progress.csv", 5) == []  # idempotent
    assert cut_progress(tmp_path / "missing.csv", 5) == []


def test_rollback_by_row_count_also_drops_rows_that_keep_the_version(tmp_path):
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for update in range(1, 6):
        log.record(record(update))
    rows_at_checkpoint = log.rows  # what a checkpoint at update 5 stores
    log.record(record(5, accepted=False, reason="norm_too_large"))  # after the checkpoint, same version
    log.record(record(6))
    assert log.rollback(5, 500, keep_rows=rows_at_checkpoint) == 2  # the version rule would keep the rejection
    assert log.rows == 5 and log.accepted == 5
    log.close()
    assert [r["accepted"] for r in read_progress(tmp_path / "progress.csv")] == ["True"] * 5
    appended = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False, append=True)
    assert appended.rows == 5 and appended.accepted == 5  # a resumed driver counts the rows already there
    assert appended.return_mean == 10.0  # and reports the run's return even before its own first record
    appended.close()


def test_superseded_rows_are_counted_and_taken_back(tmp_path):
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    log.record(record(1))
    log.record(record(1, accepted=False, reason="superseded", delay=1))
    rows_at_checkpoint = log.rows
    log.record(record(1, accepted=False, reason="superseded", delay=1))
    assert log.superseded == 2 and log.accepted == 1
    log.rollback(1, 100, keep_rows=rows_at_checkpoint)
    assert log.superseded == 1
    log.close()
    appended = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False, append=True)
    assert appended.superseded == 1 and appended.accepted == 1 and appended.rows == 2
    appended.close()


def tensorboard_points(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """The ``(step, value)`` points TensorBoard draws for ``tag``: event files read in name order, each
    purge (a session start at step S) hiding the earlier points at S and after, as TensorBoard does."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    points: list[tuple[int, float]] = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):  # TFRecord: length (8), its crc (4), the event, its crc (4)
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 16 + length
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                points = [(step, value) for step, value in points if step < event.step]
            for value in event.summary.value:
                if value.tag == tag:
                    points.append((event.step, value.simple_value))
    return points


def test_tensorboard_hides_the_points_a_rollback_or_a_resume_dropped(tmp_path):
    # a restored server (or a resumed run) redoes the updates past its checkpoint: TensorBoard drew both
    # trajectories over the same samples; each cut now starts an event file that purges the dropped points
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=True)
    for update in range(1, 8):
        log.record(record(update, delay=1))
    log.rollback(5, 500)  # a server restore at update 5: updates 6 and 7 are redone
    for update in range(6, 9):
        log.record(record(update, delay=2))
    log.close()
    delays = tensorboard_points(tmp_path / "tb", "delay")
    assert delays == [(100 * u, 1.0) for u in range(1, 6)] + [(100 * u, 2.0) for u in range(6, 9)]
    # a resume from a checkpoint at update 7 (the driver died at 8): update 8 is redone
    resumed = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=True, append=True, initial_samples=700)
    resumed.record(record(8, delay=3))
    resumed.close()
    delays = tensorboard_points(tmp_path / "tb", "delay")
    assert [step for step, _ in delays] == [100 * u for u in range(1, 9)] and delays[-1] == (800, 3.0)


HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from afedpg_ray import runlock; "
    "runlock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def hold_lock_in_another_process(run_dir) -> subprocess.Popen:
    """A process that holds ``run_dir``'s driver lock until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_resume_of_a_live_run_is_refused_before_progress_is_touched(tmp_path):
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for update in range(1, 9):
        log.record(record(update))
    log.close()
    save_checkpoint(tmp_path, server_state(version=5, samples_total=500, progress_rows=5))
    before = (tmp_path / "progress.csv").read_text()
    live = hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(RunError, match=f"being trained by process {live.pid} on host {socket.gethostname()}"):
            train(TrainConfig(out=str(tmp_path)), resume=True)
    finally:
        live.kill()
        live.wait()
    assert (tmp_path / "progress.csv").read_text() == before  # the live run's rows are untouched


def test_run_lock_is_free_once_its_holder_dies_whatever_the_file_says(tmp_path):
    holder = hold_lock_in_another_process(tmp_path)
    holder.kill()  # SIGKILL: no chance to release; the kernel drops the lock
    holder.wait()
    lock = runlock.acquire(tmp_path)
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    with pytest.raises(runlock.RunDirLockedError, match=f"being trained by process {os.getpid()}"):
        runlock.acquire(tmp_path)  # a second driver, even in this process, is refused
    (tmp_path / "progress.csv").write_text("update\n")  # a run's file: the lock file stays, emptied
    runlock.release(lock)
    assert lock.path.read_text() == ""
    # a leftover file naming a live, unrelated process (a reused pid) does not lock the run
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1}))
    runlock.release(runlock.acquire(tmp_path))


def test_a_lock_that_guarded_nothing_leaves_no_trace(tmp_path):
    run_dir = tmp_path / "new" / "run"
    runlock.release(runlock.acquire(run_dir))  # a fresh run refused before writing anything
    assert not run_dir.exists() and (tmp_path / "new").exists()  # only the directory acquire made goes
    run_dir.mkdir()
    runlock.release(runlock.acquire(run_dir))
    assert run_dir.exists() and not any(run_dir.iterdir())  # a directory the user made stays


def test_lock_on_a_removed_file_is_not_current(tmp_path):
    lock = runlock.acquire(tmp_path)
    stale = os.open(lock.path, os.O_RDWR)  # a driver that opened the file just before it was removed
    runlock.release(lock)  # the directory held nothing else: the file is removed
    try:
        assert not runlock._is_current(stale, lock.path)
        fresh = runlock.acquire(tmp_path)  # the next driver locks a new file, so the stale one cannot clash
        assert runlock._is_current(fresh.fd, fresh.path) and not runlock._is_current(stale, fresh.path)
        runlock.release(fresh)
    finally:
        os.close(stale)


def test_rejection_message_names_the_main_reason_and_the_fix():
    config = TrainConfig(max_grad_norm=0.001)
    streak = [record(0, False, reason="norm_too_large", grad_norm=n) for n in (0.03, 0.04, 0.05)]
    streak.append(record(0, False, reason="non_finite", grad_norm=math.nan))
    message = rejection_message(streak, config)
    assert message == (
        "4 consecutive gradients rejected (norm_too_large: median norm 0.04 > --max-grad-norm 0.001); "
        "raise --max-grad-norm or check the environment"
    )
    assert "check the environment" in rejection_message([record(0, False, reason="non_finite")], config)


# -- on real Ray ----------------------------------------------------------------------------------


def placeholder(name: str):
    """A live actor that only holds ``name`` (defined here so that Ray ships it by value, not by module)."""
    import ray

    class Placeholder:
        def ping(self) -> bool:
            return True

    actor = ray.remote(Placeholder).options(name=name, num_cpus=0).remote()
    assert ray.get(actor.ping.remote())
    return actor


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("algo", ["afedpg", "fedpg"])
def test_a_run_whose_every_gradient_is_rejected_ends_with_run_error(tmp_path, algo):
    import ray

    config = TrainConfig(
        env="CartPole-v1",
        algo=algo,
        agents=2,
        hetero="none",
        batch=100,
        num_envs=2,
        samples=2000,
        max_grad_norm=1e-9,
        progress=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    limit = REJECTED_STREAK_PER_AGENT * config.agents
    seen: list[UpdateRecord] = []
    thetas: list[np.ndarray] = []

    def on_record(record: UpdateRecord) -> None:
        seen.append(record)
        if len(seen) in (1, limit):  # the server's parameters after the first and the last rejection
            thetas.append(ray.get(ray.get_actor("afedpg-server").export_state.remote())["rule_state"]["theta"])

    with pytest.raises(RunError) as failed:
        train(config, on_record=on_record)
    message = str(failed.value)
    assert message.startswith(f"{limit} consecutive gradients rejected (norm_too_large: median norm ")
    assert "> --max-grad-norm 1e-09); raise --max-grad-norm" in message and "\n" not in message
    # the global parameters never moved: no update was applied, theta is still the start checkpoint's
    assert len(seen) == limit and all(r.update == 0 and not r.accepted for r in seen)
    saved = load_checkpoint(tmp_path / "run")
    assert saved["rule_state"]["version"] == 0 and len(thetas) == 2
    assert all(np.array_equal(theta, saved["rule_state"]["theta"]) for theta in thetas)
    assert released("afedpg-server") and released("afedpg-agent-0")  # the failed run freed its names


@pytest.mark.usefixtures("ray_session")
def test_a_failing_server_call_becomes_one_line_run_error():
    import ray
    from ray.exceptions import RayTaskError

    from afedpg_ray.ray_errors import raise_if_server_failed

    class ParameterServer:
        """Stands in for a server whose method raises (e.g. a merge that cannot broadcast)."""

        def apply(self, _payload: int) -> int:
            raise ValueError("operands could not be broadcast together\nwith shapes (4,) (5,)")

    expected = r"^the parameter server failed: ValueError: operands could not be broadcast together$"
    server = ray.remote(ParameterServer).remote()
    reply = server.apply.remote(1)
    with pytest.raises(RunError, match=expected):
        RayRunner._server_call(None, reply)  # type: ignore[arg-type]  # uses no runner state
    # an agent handed the failed reply as its input fails with the server's error: not an agent fault
    with pytest.raises(RayTaskError) as downstream:
        ray.get(ray.remote(lambda dispatch: dispatch).remote(reply))
    with pytest.raises(RunError, match=expected):
        raise_if_server_failed(downstream.value, server._actor_id.hex())
    # the same failure of another server (one restored since) is not this run's server failing
    raise_if_server_failed(downstream.value, ray.remote(ParameterServer).remote()._actor_id.hex())


@pytest.mark.usefixtures("ray_session")
def test_a_second_run_with_the_same_names_fails_with_one_line(tmp_path):
    import ray

    holder = placeholder("busy-server")
    config = TrainConfig(
        env="CartPole-v1", agents=2, batch=100, num_envs=2, samples=400, progress=False, tensorboard=False
    )
    try:
        with pytest.raises(RunError, match=r"^a run is already using the actor name 'busy-server' on this cluster"):
            train(dataclasses.replace(config, out=str(tmp_path / "run")), name_prefix="busy")
        # beside it, a run under another --prefix
        argv = ["train", "--env", "CartPole-v1", "--agents", "2", "--batch", "100", "--num-envs", "2"]
        argv += ["--samples", "400", "--no-progress", "--no-tensorboard", "--prefix", "busy-2"]
        assert main([*argv, "--out", str(tmp_path / "beside")]) == 0
    finally:
        ray.kill(holder, no_restart=True)


@pytest.mark.usefixtures("ray_session")
def test_status_finds_a_restored_server_and_lists_it():
    import ray

    from afedpg_ray.status import ServerGoneError, find_server

    restored = placeholder("chaos-server-r1")
    try:
        assert find_server("chaos")._actor_id == restored._actor_id
        with pytest.raises(ServerGoneError, match=r"servers found: .*chaos-server-r1"):
            find_server("nothing")
    finally:
        ray.kill(restored, no_restart=True)


def test_progress_bar_rate_counts_server_updates_not_gradients(tmp_path):
    """fedpg and rennala use several gradients per update: the bar's upd/s must count updates."""
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for gradient in range(9):  # one gradient per second, four per update: versions 0,0,0,0,1,1,1,1,2
        log.record(dataclasses.replace(record(gradient // 4), wall_time=float(gradient)))
    assert log.summary_fields()["upd/s"] == "0.2"  # 2 updates in 8 s, not 1 gradient/s
    log.close()


def test_progress_bar_rate_is_timed_by_the_server_not_by_when_rows_are_written(tmp_path):
    """The driver logs records in batches: 10 updates a second apart, written in one burst, are 1 upd/s."""
    log = RunLog(tmp_path, 10_000, show_progress=False, tensorboard=False)
    for update in range(1, 11):
        log.record(dataclasses.replace(record(update), wall_time=float(update)))
    assert log.summary_fields()["upd/s"] == "1.0"
    log.close()


def test_the_progress_bar_keeps_its_total_when_the_last_gradient_overshoots(tmp_path):
    # a budget that is not a multiple of the batch ends past it: tqdm then drew "1.1kstep" with no total
    log = RunLog(tmp_path, 1050, show_progress=True, tensorboard=False)
    for update in range(1, 12):
        log.record(record(update))
    assert log._bar is not None and log._bar.total == 1100
    assert "1.10k/1.10k" in str(log._bar)
    log.close()
