"""Checkpoints and run directories for resume tests: a real server's state, made without Ray.

A hand-made checkpoint (``{"rule_state": {"version": 5}}``) lacks what the server's restore reads and is
refused on load; these build the state :meth:`ParameterServer.export_state` returns, so every test that
saves a checkpoint saves a complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from afedpg_ray.config import TrainConfig
from afedpg_ray.messages import UpdateRecord


def server_state(
    config: TrainConfig | None = None,
    *,
    version: int = 0,
    samples_total: int = 0,
    progress_rows: int | None = None,
) -> dict[str, Any]:
    """A fresh server's exported state (``config``, default CartPole) as if taken at ``version`` after
    ``samples_total`` samples; ``progress_rows`` as the driver adds it (None: an older checkpoint without)."""
    from afedpg_ray.server import ParameterServer

    with torch.random.fork_rng(devices=[]):  # the server seeds torch's global generator: keep the test's
        state = ParameterServer(config or TrainConfig()).export_state()
    state["rule_state"]["version"] = version
    state["samples_total"] = samples_total
    if progress_rows is not None:
        state["progress_rows"] = progress_rows
    return state


def update_record(update: int, accepted: bool = True) -> UpdateRecord:
    """One progress.csv row as a server writes it for ``update`` (100 samples an update)."""
    return UpdateRecord(update, 0.1 * update, update % 2, 0, 100 * update, update, 10.0, accepted, alpha=0.2, eta=0.01)


def resumable_run(tmp_path: Path, rows: int = 0) -> tuple[Path, dict[str, Any]]:
    """A run directory a driver crash leaves: config.json, progress.csv with ``rows`` updates and a real
    server checkpoint taken after them (update ``rows``, ``progress_rows`` = ``rows``); returns it and the
    checkpoint's state."""
    from afedpg_ray.checkpoint import save_checkpoint
    from afedpg_ray.runlog import RunLog

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(out=str(run), agents=2, batch=100, num_envs=2, samples=2000, progress=False)
    config.save(run / "config.json")
    log = RunLog(run, config.samples, show_progress=False, tensorboard=False)
    for update in range(1, rows + 1):
        log.record(update_record(update))
    log.close()
    state = server_state(config, version=rows, samples_total=100 * rows, progress_rows=rows)
    save_checkpoint(run, state)
    return run, state


def resume_argv(run: Path) -> list[str]:
    """``afedpg train --resume RUN`` without a progress bar or TensorBoard."""
    return ["train", "--resume", str(run), "--no-progress", "--no-tensorboard"]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory, byte for byte (the driver's lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != "driver.lock"}


def one_error_line(capsys: Any) -> str:
    """The CLI's stderr, asserted to be one ``afedpg: error:`` line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("afedpg: error: "), err
    return err


def no_ray(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``afedpg_ray.train.connect``: a run that gets this far passed every check."""
    raise AssertionError("passed its checks and would start Ray")
