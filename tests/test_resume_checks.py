"""``afedpg train --resume`` refuses, before Ray starts and before a file changes, a checkpoint that lacks
what the server's restore reads and a progress.csv with fewer rows than the checkpoint was taken after."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoint_util import no_ray, one_error_line, resumable_run, resume_argv, server_state, snapshot, update_record

from afedpg_ray.checkpoint import (
    OPTIONAL_ENTRIES,
    REQUIRED_ENTRIES,
    REQUIRED_RULE_ENTRIES,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from afedpg_ray.cli import main
from afedpg_ray.config import TrainConfig
from afedpg_ray.runlog import RunLog
from afedpg_ray.train import cut_to_checkpoint, load_resumable, load_run_config

RESTORED_ENTRIES = [
    "num_params",
    "obs_stats",
    "return_stats",
    "agent_versions",
    "samples_total",
    "episodes_total",
    "recent_returns",
    "rejected",
    "torch_rng",
    "numpy_rng",
]
"""The entries ParameterServer.restore indexes besides rule_state (whose absence is an unknown format)."""


@contextlib.contextmanager
def global_rngs_kept() -> Iterator[None]:
    """Undo what a restore does to torch's and numpy's global generators."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(numpy_state)


def refusal(run_dir: Path) -> str:
    """The message load_checkpoint refuses ``run_dir``'s checkpoint with (it must refuse it)."""
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(run_dir)
    message = str(refused.value)
    assert "\n" not in message, message
    return message


# -- a checkpoint without what restore reads -----------------------------------------------------------


def test_the_required_entries_are_what_restore_reads():
    # every entry restore indexes is required; every other entry a checkpoint holds may be absent
    config = TrainConfig()
    exported = {**server_state(config, progress_rows=0), "run_id": "0" * 32}  # the driver adds the last two
    assert set(exported) == set(REQUIRED_ENTRIES) | set(OPTIONAL_ENTRIES)
    assert set(REQUIRED_ENTRIES) == {"rule_state", *RESTORED_ENTRIES}
    assert REQUIRED_RULE_ENTRIES == ("theta", "theta_prev", "momentum")
    from afedpg_ray.server import ParameterServer

    with global_rngs_kept():
        for name in REQUIRED_ENTRIES:
            saved = {k: v for k, v in exported.items() if k != name}
            with pytest.raises(KeyError):
                ParameterServer(config).restore(saved)
        for name in REQUIRED_RULE_ENTRIES:
            saved = {**exported, "rule_state": {k: v for k, v in exported["rule_state"].items() if k != name}}
            with pytest.raises(TypeError):
                ParameterServer(config).restore(saved)
        for name in OPTIONAL_ENTRIES:
            ParameterServer(config).restore({k: v for k, v in exported.items() if k != name})


@pytest.mark.parametrize("name", RESTORED_ENTRIES)
def test_a_checkpoint_without_an_entry_restore_reads_is_refused_on_load(name, tmp_path):
    state = server_state(version=3, samples_total=300, progress_rows=3)
    del state[name]
    save_checkpoint(tmp_path, state)
    assert refusal(tmp_path) == f"{tmp_path / 'checkpoint.pt'}: damaged checkpoint (no {name})"


@pytest.mark.parametrize("name", ["theta", "theta_prev", "momentum"])
def test_a_rule_state_without_an_entry_restore_reads_is_refused_on_load(name, tmp_path):
    state = server_state()
    del state["rule_state"][name]
    save_checkpoint(tmp_path, state)
    assert refusal(tmp_path) == f"{tmp_path / 'checkpoint.pt'}: damaged checkpoint (no {name} in its rule state)"


def test_a_rule_state_with_an_unknown_entry_is_refused_on_load(tmp_path):
    state = server_state()
    state["rule_state"]["second_moment"] = np.zeros(3)  # RuleState(**rule_state) would raise in the server
    save_checkpoint(tmp_path, state)
    assert refusal(tmp_path).endswith("damaged checkpoint (unknown entry 'second_moment' in its rule state)")


@pytest.mark.parametrize("point", ["missing", None])
def test_a_rule_state_without_a_point_to_dispatch_is_refused_on_load(point, tmp_path):
    state = server_state()
    if point == "missing":
        del state["rule_state"]["point"]
    else:
        state["rule_state"]["point"] = None  # restore takes it, the server's first dispatch would assert
    save_checkpoint(tmp_path, state)
    assert refusal(tmp_path).endswith("damaged checkpoint (no point in its rule state)")


@pytest.mark.parametrize("name", OPTIONAL_ENTRIES)
def test_a_checkpoint_without_an_optional_entry_still_loads(name, tmp_path):
    state = {**server_state(progress_rows=0), "run_id": "0" * 32}
    del state[name]
    save_checkpoint(tmp_path, state)
    assert name not in load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("agent_versions", [0, 0], "agent_versions is not a mapping of agent to update version"),
        ("agent_versions", {0: "3"}, "agent_versions is not a mapping of agent to update version"),
        ("rejected", "norm_too_large", "rejected is not a mapping of reason to count"),
        ("rejected", {"non_finite": -1}, "rejected is not a mapping of reason to count"),
        ("recent_returns", 21.5, "recent_returns is not a list of finite numbers"),
        ("recent_returns", [20.0, math.nan], "recent_returns is not a list of finite numbers"),
        ("recent_returns", ["20.0"], "recent_returns is not a list of finite numbers"),
        ("torch_rng", "seed 0", "torch_rng is not a torch random generator state"),
        ("torch_rng", torch.zeros(7, dtype=torch.uint8), "torch_rng is not a torch random generator state"),
        ("numpy_rng", None, "numpy_rng is not a numpy random generator state"),
        ("numpy_rng", ("MT19937",), "numpy_rng is not a numpy random generator state"),
        ("obs_stats", None, "obs_stats is not a (count, mean, M2) triple"),
        ("episodes_total", None, "episodes_total is None, not a count"),
        ("num_params", None, "num_params is None, not a count"),
    ],
)
def test_an_entry_of_the_wrong_type_is_refused_on_load(name, value, message, tmp_path):
    state = server_state()
    state[name] = value
    save_checkpoint(tmp_path, state)
    assert refusal(tmp_path) == f"{tmp_path / 'checkpoint.pt'}: damaged checkpoint ({message})"


def test_loading_checks_the_generator_states_without_touching_the_global_ones(tmp_path):
    save_checkpoint(tmp_path, server_state())
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()
    load_checkpoint(tmp_path)
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_before, strict=True))


@pytest.mark.parametrize("damage", ["obs_stats", "torch_rng", "theta", "agent_versions"])
def test_resume_of_an_incomplete_checkpoint_is_one_line_and_touches_nothing(damage, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, state = resumable_run(tmp_path, rows=3)
    if damage == "theta":
        del state["rule_state"]["theta"]
        expected = "damaged checkpoint (no theta in its rule state)"
    elif damage == "agent_versions":
        state["agent_versions"] = [3, 3]
        expected = "damaged checkpoint (agent_versions is not a mapping of agent to update version)"
    else:
        del state[damage]
        expected = f"damaged checkpoint (no {damage})"
    save_checkpoint(run, state)
    before = snapshot(run)
    assert {"checkpoint.pt", "progress.csv", "config.json"} <= set(before)
    with pytest.raises(SystemExit) as exit_info:
        main(resume_argv(run))
    assert exit_info.value.code == 2
    assert one_error_line(capsys) == f"afedpg: error: {run / 'checkpoint.pt'}: {expected}"
    assert snapshot(run) == before


# -- a progress.csv with fewer rows than the checkpoint was taken after --------------------------------


def keep_rows(run: Path, rows: int) -> None:
    """Rewrite ``run``'s progress.csv with only its first ``rows`` updates (as if someone truncated it)."""
    (run / "progress.csv").unlink()
    log = RunLog(run, 2000, show_progress=False, tensorboard=False)
    for update in range(1, rows + 1):
        log.record(update_record(update))
    log.close()


@pytest.mark.parametrize(("rows", "counted"), [(3, "3 rows"), (1, "1 row"), (0, "0 rows")])
def test_a_progress_file_shorter_than_the_checkpoint_is_refused(rows, counted, tmp_path):
    run, _ = resumable_run(tmp_path, rows=5)
    keep_rows(run, rows)
    before = snapshot(run)
    with pytest.raises(CheckpointError) as refused:
        load_resumable(run, load_run_config(run))
    assert str(refused.value) == (
        f"{run / 'progress.csv'} has {counted} but the checkpoint was taken after 5; restore the run's own "
        "file, or move it aside to resume without the rows before the checkpoint"
    )
    assert snapshot(run) == before


def test_an_emptied_progress_file_is_refused(tmp_path):
    run, _ = resumable_run(tmp_path, rows=2)
    (run / "progress.csv").write_text("")
    with pytest.raises(CheckpointError, match="progress.csv has 0 rows but the checkpoint was taken after 2"):
        load_resumable(run, load_run_config(run))


def test_a_progress_file_with_the_checkpoints_rows_or_more_or_none_resumes(tmp_path):
    run, state = resumable_run(tmp_path, rows=5)
    config = load_run_config(run)
    assert load_resumable(run, config)["progress_rows"] == 5
    log = RunLog(run, 2000, show_progress=False, tensorboard=False, append=True)
    log.record(update_record(6))  # logged after the checkpoint: the resume cuts it
    log.close()
    cut_to_checkpoint(run, load_resumable(run, config))
    assert len((run / "progress.csv").read_text().splitlines()) == 1 + 5
    (run / "progress.csv").unlink()  # missing: the resumed run starts a new file, as before
    assert load_resumable(run, config)["rule_state"]["version"] == state["rule_state"]["version"]


def test_an_older_checkpoint_compares_the_last_update_with_its_version(tmp_path):
    run, state = resumable_run(tmp_path, rows=5)
    del state["progress_rows"]  # written before checkpoints counted progress.csv's rows
    save_checkpoint(run, state)
    config = load_run_config(run)
    assert load_resumable(run, config)["rule_state"]["version"] == 5
    keep_rows(run, 3)
    with pytest.raises(CheckpointError) as refused:
        load_resumable(run, config)
    assert str(refused.value).startswith(
        f"{run / 'progress.csv'} ends at update 3 but the checkpoint was taken at update 5; restore the run's own"
    )


def test_resume_with_a_truncated_progress_file_is_one_line_and_touches_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, _ = resumable_run(tmp_path, rows=5)
    keep_rows(run, 2)
    before = snapshot(run)
    assert {"checkpoint.pt", "progress.csv", "config.json"} <= set(before)
    with pytest.raises(SystemExit) as exit_info:
        main(resume_argv(run))
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert f"{run / 'progress.csv'} has 2 rows but the checkpoint was taken after 5; " in err, err
    assert snapshot(run) == before


def _stamp(run: Path, config_id: str | None, checkpoint_id: str | None, state: dict) -> None:
    """Give ``run``'s config.json and checkpoint these run ids (None: none, as older runs wrote)."""
    raw = json.loads((run / "config.json").read_text())
    if config_id is not None:
        raw["run_id"] = config_id
    (run / "config.json").write_text(json.dumps(raw))
    save_checkpoint(run, {**state, "run_id": checkpoint_id} if checkpoint_id is not None else state)


def test_resume_with_another_runs_checkpoint_is_one_line_and_touches_nothing(tmp_path, capsys, monkeypatch):
    """A checkpoint copied from another run of the same model passed every check and continued the other
    run's parameters, after cutting progress.csv to the other run's row count."""
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, state = resumable_run(tmp_path, rows=3)
    _stamp(run, "a" * 32, "b" * 32, state)
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        main(resume_argv(run))
    assert exit_info.value.code == 2
    assert one_error_line(capsys) == (
        f"afedpg: error: {run / 'checkpoint.pt'}: written by another run (run id bbbbbbbb, this directory's is "
        "aaaaaaaa); put back this run's own checkpoint"
    )
    assert snapshot(run) == before


def test_resume_with_a_checkpoint_of_more_agents_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, state = resumable_run(tmp_path, rows=3)  # 2 agents
    save_checkpoint(run, {**state, "agent_versions": {0: 3, 1: 2, 2: 1}})
    with pytest.raises(SystemExit):
        main(resume_argv(run))
    assert one_error_line(capsys) == (
        f"afedpg: error: {run / 'checkpoint.pt'}: it tracks agent 2, but this run has 2 agents; it belongs to "
        "another run"
    )


@pytest.mark.parametrize(("config_id", "checkpoint_id"), [("a" * 32, "a" * 32), (None, "b" * 32), ("a" * 32, None)])
def test_a_run_id_only_refuses_when_both_sides_have_one_and_differ(config_id, checkpoint_id, tmp_path, monkeypatch):
    """The same run's checkpoint resumes; runs written before run ids (either side without one) are trusted."""

    def ray_started(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", ray_started)
    run, state = resumable_run(tmp_path, rows=3)
    _stamp(run, config_id, checkpoint_id, state)
    with pytest.raises(RuntimeError, match="passed the checks"):
        main(resume_argv(run))


def test_an_intact_run_with_rows_passes_the_checks(tmp_path, monkeypatch):
    def ray_started(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", ray_started)
    run, _ = resumable_run(tmp_path, rows=5)
    with pytest.raises(RuntimeError, match="passed the checks"):
        main(resume_argv(run))
