"""What ``train()`` writes around its training loop, checked without Ray (a stand-in runner): config.json
and summary.json replaced whole or not at all, summary.json's clock, and a failed run's log closed without
hiding why it failed."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from _checkpoint_util import resumable_run, update_record

from afedpg_ray.checkpoint import save_checkpoint
from afedpg_ray.config import TrainConfig
from afedpg_ray.runlog import RunLog, read_progress
from afedpg_ray.runtime import LoopStats
from afedpg_ray.train import (
    TrainingInterrupted,
    TrainResult,
    load_run_config,
    save_resumed_config,
    save_run_config,
    save_summary,
    train,
)


def a_result(run: Path) -> TrainResult:
    return TrainResult(str(run), 1.0, 2, 200, 3.0, 1.0, 0.0, {}, {}, [])


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("config.json", lambda run: save_run_config(run / "config.json", TrainConfig(out=str(run)), "0" * 32)),
        ("config.json", lambda run: save_resumed_config(run, TrainConfig(out=str(run), samples=9000), "0" * 32)),
        ("summary.json", lambda run: save_summary(run, a_result(run))),
    ],
    ids=["new-config", "resumed-config", "summary"],
)
def test_a_json_write_that_fails_midway_leaves_the_old_file(name, write, tmp_path, monkeypatch):
    # a kill between truncating config.json and writing it made the next --resume refuse a "corrupt config.json"
    run, _ = resumable_run(tmp_path)
    (run / "summary.json").write_text('{"return_mean": 0.0}\n')
    before = (run / name).read_bytes()
    # UTF-8 cannot encode a lone surrogate: the write fails once the file is open (as a kill would stop it)
    monkeypatch.setattr("afedpg_ray.train.json.dumps", lambda *args, **kwargs: '{"samples": "\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        write(run)
    monkeypatch.undo()
    assert (run / name).read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    json.loads((run / name).read_text())


def test_a_summary_without_a_return_is_strict_json(tmp_path):
    # no episode finished (a 1000-step task on a tiny budget): the return is NaN, which json.dumps writes as
    # a bare NaN that strict parsers (JavaScript's JSON.parse, jq) refuse; it is written as null
    result = dataclasses.replace(a_result(tmp_path), return_mean=float("nan"), mean_delay=float("inf"))
    save_summary(tmp_path, result)

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert summary["return_mean"] is None and summary["mean_delay"] is None and summary["samples_total"] == 200


STARTUP_S, TRAINING_S, EARLIER_S = 7.0, 2.0, 50.0
"""The stand-in session's start-up and training, and the resumed run's training before it."""


class OneUpdateRunner:
    """Stands in for :class:`~afedpg_ray.runtime.RayRunner`: a session that starts up for ``STARTUP_S`` s
    (not on the run's clock, as RayRunner shifts it for a resume) and trains the budget in one update of
    ``TRAINING_S`` s, advancing ``time.time`` by both."""

    clock: list[float]
    """Seconds added to ``time.time``."""

    def __init__(self, config: TrainConfig, log: RunLog, run_dir: Path, *args: Any) -> None:
        self.config, self.log, self.resume_state = config, log, args[1]
        self.last_state: dict[str, Any] | None = self.resume_state

    def run(self) -> LoopStats:
        """Train the budget in one update logged on the run's clock, and take a final checkpoint."""
        self.clock[0] += STARTUP_S + TRAINING_S
        state = copy.deepcopy(self.resume_state)
        state["rule_state"]["version"] += 1
        state["samples_total"] = self.config.samples
        state["elapsed"] += TRAINING_S
        record = update_record(state["rule_state"]["version"])
        self.log.record(dataclasses.replace(record, wall_time=state["elapsed"], samples_total=self.config.samples))
        state["progress_rows"] = self.log.rows
        self.last_state = state
        return LoopStats(startup_seconds=STARTUP_S, loop_updates=1, loop_seconds=TRAINING_S)


@pytest.fixture
def stand_in_runner(monkeypatch):
    """Ray replaced by :class:`OneUpdateRunner` in ``train()``; returns the runner class."""
    OneUpdateRunner.clock = [0.0]
    real_time = time.time  # the time module's: the whole process sees the session's seconds pass, as in a run
    monkeypatch.setattr("afedpg_ray.train.time.time", lambda: real_time() + OneUpdateRunner.clock[0])
    monkeypatch.setattr("afedpg_ray.train.connect", lambda address: None)
    monkeypatch.setattr("afedpg_ray.train.status_address", lambda address: "head:6379")
    monkeypatch.setattr("afedpg_ray.train.RayRunner", OneUpdateRunner)
    return OneUpdateRunner


def resumed_run(tmp_path: Path) -> Path:
    """A run directory a driver crash left after 3 updates and ``EARLIER_S`` s of training."""
    run, state = resumable_run(tmp_path, rows=3)
    save_checkpoint(run, {**state, "elapsed": EARLIER_S})
    return run


def test_a_resumed_runs_wall_time_is_progress_csvs_clock(tmp_path, stand_in_runner):
    # summary.json counted the resumed session's start-up, which progress.csv's clock leaves out
    run = resumed_run(tmp_path)
    result = train(load_run_config(run), resume=True)
    rows = read_progress(run / "progress.csv")
    assert result.wall_time == pytest.approx(float(rows[-1]["wall_time"])) == EARLIER_S + TRAINING_S
    assert result.session_wall_time == pytest.approx(TRAINING_S) and result.startup_seconds == STARTUP_S
    assert json.loads((run / "summary.json").read_text())["wall_time"] == result.wall_time


def test_a_log_that_cannot_close_does_not_hide_why_the_run_stopped(tmp_path, stand_in_runner, monkeypatch):
    # Ctrl-C in a server restore's rollback, between closing progress.csv and reopening it: closing the log
    # then raised "I/O operation on closed file" in place of the interruption (a traceback, not the advice)
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    class RollbackInterrupted(OneUpdateRunner):
        def run(self) -> LoopStats:
            monkeypatch.setattr("afedpg_ray.runlog.cut_progress", interrupted)
            self.log.rollback(3, 300, 3)
            raise AssertionError("the rollback was not interrupted")

    monkeypatch.setattr("afedpg_ray.train.RayRunner", RollbackInterrupted)
    run = resumed_run(tmp_path)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(load_run_config(run), resume=True)
    assert stopped.value.advice() == f"interrupted; continue the run with: afedpg train --resume {run}"


def test_a_synchronous_budget_that_is_not_whole_rounds_is_announced():
    # fedpg spends one gradient per agent per round: 6000 steps with 4 agents x 1000 ended at 8000, unannounced
    from afedpg_ray.train import rounds_note

    fedpg = TrainConfig(algo="fedpg", agents=4, batch=1000, num_envs=2, samples=6000)
    assert rounds_note(fedpg) == (
        "note: fedpg trains in rounds of 4000 samples (4 agents x --batch 1000), so --samples 6000 ends at 8000"
    )
    assert rounds_note(dataclasses.replace(fedpg, samples=8000)) is None  # whole rounds
    assert rounds_note(dataclasses.replace(fedpg, algo="afedpg")) is None  # one gradient at a time


def test_events_print_without_the_progress_bar(tmp_path, stand_in_runner, capsys):
    # --no-progress printed no event line: a resume that kept the old schedule horizon said so in events.csv only
    from _checkpoint_util import resume_argv

    from afedpg_ray.cli import main

    run, state = resumable_run(tmp_path, rows=3)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "schedule": "linear"}))
    save_checkpoint(run, {**state, "schedule_horizon": 10})
    assert main([*resume_argv(run), "--samples", "4000"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "[resumed] resumed at update 3, 300 samples" in err, err
    assert "[schedule_kept] --samples 4000 buys 40 updates; the schedule horizon was kept at 10 updates" in err, err


def test_a_resume_without_progress_csv_warns_and_its_summary_says_what_it_covers(tmp_path, stand_in_runner, capsys):
    # progress.csv removed: the resume was silent, and the summary's "mean delay" covered the new rows only
    from _checkpoint_util import resume_argv

    from afedpg_ray.cli import main

    run = resumed_run(tmp_path)
    (run / "progress.csv").unlink()
    assert main([*resume_argv(run), "--samples", "4000"]) == 0
    out, err = capsys.readouterr()
    assert (
        f"[progress_missing] {run / 'progress.csv'} was missing: a new one starts after update 3, and the "
        "summary's mean delay covers only the updates from here"
    ) in err.splitlines(), err
    assert "mean delay 0.00 over the updates after 3 only (progress.csv lost the earlier rows)" in out, out
    assert json.loads((run / "summary.json").read_text())["log_starts_after_update"] == 3
    from afedpg_ray.checkpoint import load_checkpoint

    state = load_checkpoint(run)  # the final checkpoint the stand-in runner does not write: update 4, one row
    state["rule_state"]["version"], state["samples_total"], state["progress_rows"] = 4, 4000, 1
    save_checkpoint(run, state)
    capsys.readouterr()
    assert main([*resume_argv(run), "--samples", "6000"]) == 0  # a later resume still knows
    assert json.loads((run / "summary.json").read_text())["log_starts_after_update"] == 3
    assert "[progress_missing]" not in capsys.readouterr().err  # the new file is there


def test_a_whole_runs_log_starts_at_its_first_update(tmp_path, stand_in_runner, capsys):
    from _checkpoint_util import resume_argv

    from afedpg_ray.cli import main

    run = resumed_run(tmp_path)
    assert main([*resume_argv(run), "--samples", "4000"]) == 0
    assert "over the updates after" not in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["log_starts_after_update"] == 0
