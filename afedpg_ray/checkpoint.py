"""Atomic checkpoints of the parameter server's state (write to a temporary file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from afedpg_ray.config import first_line

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or belongs to another model; the message names the file."""


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically; a crash mid-write leaves the old one."""
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(f".{CHECKPOINT_FILE}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt``; raises :class:`CheckpointError` naming the file on any problem."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        if (run_dir / "config.json").is_file():  # e.g. its agents could not be placed: nothing trained yet
            raise CheckpointError(
                f"{path}: no checkpoint - the run stopped before its first one, so there is nothing to resume; "
                f"start it afresh with the same options and --out {run_dir}"
            )
        raise CheckpointError(f"{path}: no checkpoint (is {run_dir} a run directory written by afedpg train?)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise CheckpointError(f"{path}: corrupt checkpoint ({first_line(err)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "rule_state" not in state:
        raise CheckpointError(f"{path}: not an afedpg checkpoint (unknown format)")
    rule_state, rows = state["rule_state"], state.get("progress_rows")
    if not isinstance(rule_state, dict) or not isinstance(rule_state.get("version"), int):
        raise CheckpointError(f"{path}: damaged checkpoint (no update version in its rule state)")
    if not isinstance(state.get("samples_total", 0), int) or not (rows is None or isinstance(rows, int)):
        raise CheckpointError(f"{path}: damaged checkpoint (sample or row counts are not integers)")
    return state
