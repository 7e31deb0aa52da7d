"""What ``train()`` writes around its training loop, checked without Ray: config.json and summary.json
replaced whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _checkpoint_util import resumable_run

from afedpg_ray.config import TrainConfig
from afedpg_ray.train import TrainResult, save_resumed_config, save_run_config, save_summary


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
