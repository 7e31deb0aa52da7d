"""Atomic checkpoints of the parameter server's state (write to a temporary file, then rename)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afedpg_ray.atomic import temporary_path
from afedpg_ray.config import first_line
from afedpg_ray.rules.base import RuleState

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, damaged or belongs to another model; the message names the file."""


NO_OLDER_COPY = (
    "afedpg keeps no older checkpoint (each one replaces the last), so put back a copy of this file if you "
    "have one, or start the run afresh with a new --out"
)
"""What a user can do about a checkpoint that cannot be read."""


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically; a crash mid-write leaves the old one."""
    path = run_dir / CHECKPOINT_FILE
    tmp = temporary_path(path)
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
        raise CheckpointError(
            f"{path}: corrupt checkpoint, it cannot be read ({first_line(err)}); {NO_OLDER_COPY}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "rule_state" not in state:
        raise CheckpointError(f"{path}: not an afedpg checkpoint (unknown format)")
    rule_state, rows = state["rule_state"], state.get("progress_rows")
    if not isinstance(rule_state, dict) or not isinstance(rule_state.get("version"), int):
        raise CheckpointError(f"{path}: damaged checkpoint (no update version in its rule state)")
    problem = entries_problem(state)  # before the checks below, which take what is absent as an older file's
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint ({problem})")
    if not isinstance(state.get("samples_total", 0), int) or not (rows is None or isinstance(rows, int)):
        raise CheckpointError(f"{path}: damaged checkpoint (sample or row counts are not integers)")
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint ({problem})")
    return state


REQUIRED_ENTRIES = (
    "num_params",
    "rule_state",
    "obs_stats",
    "return_stats",
    "agent_versions",
    "samples_total",
    "episodes_total",
    "recent_returns",
    "rejected",
    "torch_rng",
    "numpy_rng",
)
"""What :meth:`~afedpg_ray.server.ParameterServer.restore` indexes (``saved[...]``), in its order: a
checkpoint without one fails inside the server actor, after Ray has started and progress.csv was cut."""
OPTIONAL_ENTRIES = ("schedule_horizon", "robust", "superseded", "elapsed", "progress_rows", "run_id")
"""What a checkpoint may lack (older ones do): restore and the driver read these with ``.get``."""
REQUIRED_RULE_ENTRIES = tuple(
    f.name
    for f in dataclasses.fields(RuleState)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
"""The rule state's entries ``RuleState(**rule_state)`` cannot do without (theta, theta_prev, momentum)."""
RULE_ENTRIES = frozenset(f.name for f in dataclasses.fields(RuleState))
"""Every entry a rule state may hold: ``RuleState(**rule_state)`` refuses any other."""
COUNTERS = ("samples_total", "episodes_total", "superseded", "progress_rows")
"""Counters a checkpoint holds (the last two may be absent in older ones): non-negative integers."""
RULE_ARRAYS = ("theta", "theta_prev", "momentum", "point")
"""The rule state's parameter-sized arrays (``momentum`` may be None: no arrival yet)."""


def entries_problem(state: dict[str, Any]) -> str | None:
    """The first entry restoring the server from ``state`` needs but ``state`` lacks (``no NAME``), an entry
    its rule state may not hold, or None. ``state`` is a dict whose ``rule_state`` is a dict."""
    for name in REQUIRED_ENTRIES:
        if name not in state:
            return f"no {name}"
    rule = state["rule_state"]
    for name in REQUIRED_RULE_ENTRIES:
        if name not in rule:
            return f"no {name} in its rule state"
    if rule.get("point") is None:  # every rule sets it (theta_0 at the start); the server dispatches it
        return "no point in its rule state"
    unknown = sorted(str(name) for name in rule if name not in RULE_ENTRIES)
    if unknown:  # e.g. a newer afedpg's: RuleState(**rule_state) would raise inside the server
        return f"unknown entry {unknown[0]!r} in its rule state"
    return None


def state_problem(state: dict[str, Any]) -> str | None:
    """What makes a loaded checkpoint unusable, or None: what its entries hold (call it once
    :func:`entries_problem` has found them all). Unchecked, a NaN theta or a negative counter passes into
    the server and fails only after Ray has started and progress.csv has been cut."""
    rule = state["rule_state"]
    if rule["version"] < 0:
        return f"update version {rule['version']} is negative"
    for name in COUNTERS:
        value = state.get(name)
        if (value is not None or name in REQUIRED_ENTRIES) and (not _is_count(value) or value < 0):
            return f"{name} is {value!r}, not a count"
    size = state["num_params"]
    if not _is_count(size) or size < 1:
        return f"num_params is {size!r}, not a count"
    if state.get("run_id") is not None and not isinstance(state["run_id"], str):
        return f"run_id is {state['run_id']!r}, not a string"
    problem = _containers_problem(state)
    if problem:
        return problem
    for name in RULE_ARRAYS:
        if rule.get(name) is None:
            continue
        problem = _array_problem(f"rule state {name}", rule[name], size)
        if problem:
            return problem
        size = np.asarray(rule[name]).size  # the others must match the first
    extra = rule.get("extra")
    if extra is not None:
        if not isinstance(extra, dict):
            return "rule state extra is not a mapping of arrays"
        for name, value in extra.items():  # parameter-sized arrays, or scalars (rennala's count)
            try:
                array = np.asarray(value)
            except Exception:  # noqa: BLE001 - an object numpy cannot take is no array
                return f"rule state {name} is not an array"
            scalar = array.ndim == 0
            problem = _array_problem(
                f"rule state {name}", array.reshape(1) if scalar else array, None if scalar else size
            )
            if problem:
                return problem
    for name in ("obs_stats", "return_stats"):
        problem = _stats_problem(name, state[name])
        if problem:
            return problem
    robust = state.get("robust")
    if robust is not None:
        problem = _robust_problem(robust, size)
        if problem:
            return problem
    horizon = state.get("schedule_horizon")
    if horizon is not None and (not _is_count(horizon) or horizon < 1):
        return f"schedule_horizon is {horizon!r}, not a number of updates"
    elapsed = state.get("elapsed")
    if elapsed is not None and not (_is_number(elapsed) and math.isfinite(elapsed) and elapsed >= 0):
        return f"elapsed is {elapsed!r}, not a number of seconds"
    return None


def _containers_problem(state: dict[str, Any]) -> str | None:
    """Why the containers and RNG states restore copies (cheap checks: types, counts, finite returns) are
    unusable, or None: a list for a dict, or a string for a generator state, fails inside the server."""
    for name, what in (("agent_versions", "agent to update version"), ("rejected", "reason to count")):
        value = state[name]
        if not isinstance(value, dict) or not all(_is_count(n) and n >= 0 for n in value.values()):
            return f"{name} is not a mapping of {what}"
    returns = state["recent_returns"]
    if not isinstance(returns, (list, tuple)) or not all(_is_number(r) and math.isfinite(r) for r in returns):
        return "recent_returns is not a list of finite numbers"
    try:  # a scratch generator takes the state as the global ones would, without touching them
        torch.Generator().set_state(state["torch_rng"])
    except Exception:  # noqa: BLE001 - whatever torch refuses, restore would too
        return "torch_rng is not a torch random generator state"
    try:
        np.random.RandomState().set_state(state["numpy_rng"])
    except Exception:  # noqa: BLE001 - whatever numpy refuses, restore would too
        return "numpy_rng is not a numpy random generator state"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _array_problem(name: str, value: Any, size: int | None) -> str | None:
    """Why ``value`` is not a flat array of ``size`` (if given) finite numbers, or None."""
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - an object numpy cannot take is no array
        return f"{name} is not an array"
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        return f"{name} is not a flat array of numbers"
    if size is not None and array.size != size:
        return f"{name} has {array.size} values, not {size}"
    if not np.isfinite(array).all():
        return f"{name} holds NaN or inf"
    return None


def _stats_problem(name: str, stats: Any) -> str | None:
    """Why ``stats`` is not a normaliser's (count, mean, M2) with a finite count >= 0, finite means and
    finite M2 >= 0 of one size, or None."""
    if not isinstance(stats, (tuple, list)) or len(stats) != 3:
        return f"{name} is not a (count, mean, M2) triple"
    count, mean, m2 = stats
    if not _is_number(count) or not math.isfinite(count) or count < 0:
        return f"{name} count is {count!r}, not a count"
    problem = _array_problem(f"{name} mean", mean, None) or _array_problem(f"{name} M2", m2, np.asarray(mean).size)
    if problem:
        return problem
    if (np.asarray(m2) < 0).any():
        return f"{name} M2 has negative entries"
    return None


def _robust_problem(robust: Any, size: int | None) -> str | None:
    """Why the robust filter's per-agent state is unusable, or None."""
    try:
        directions, norms, seen = robust["directions"], robust["norms"], robust["seen"]
        for agent, direction in directions.items():
            problem = _array_problem(f"robust filter direction of agent {agent}", direction, size)
            if problem:
                return problem
        if not all(_is_number(n) and math.isfinite(n) and n >= 0 for n in norms.values()):
            return "robust filter norms are not finite non-negative numbers"
        if not all(_is_count(n) and n >= 0 for n in seen.values()):
            return "robust filter counts are not counts"
    except (TypeError, KeyError, AttributeError):
        return "robust filter state is not per-agent directions, norms and counts"
    return None
