"""One entry point, ``train(config) -> TrainResult``, called by the CLI, the Tune trainable and tests."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from afedpg_ray import runlock
from afedpg_ray.address import token_auth_on
from afedpg_ray.atomic import temporary_path, write_text_atomically
from afedpg_ray.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint
from afedpg_ray.config import RUN_ID_KEY, ConfigError, TrainConfig, check_env_id, first_line, load_config
from afedpg_ray.connection import connect, own_instance_resources, status_address, watch_hint
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.placement import local_shortfall
from afedpg_ray.policy import Policy, build_policy, num_params, set_flat
from afedpg_ray.runlog import RunLog, cut_progress, progress_problem, progress_shortfall
from afedpg_ray.runtime import LoopStats, RayRunner
from afedpg_ray.server import policy_snapshot_of
from afedpg_ray.signals import SIGTERM_RECEIVED, Terminated, sigterm_raises_terminated

POLICY_FILE = "policy.pt"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (also written as summary.json).

    Return, updates, samples, ``wall_time``, mean delay and rejections cover the whole run, across
    resumes (the mean delay: the updates progress.csv holds, see ``log_starts_after_update``); updates per
    second, start-up time, restarts, dropped agents and server restores are this driver session's (a resume
    starts every agent afresh; ``events.csv`` has every session's).
    ``wall_time`` is the run's clock at its final checkpoint, progress.csv's: it counts the first session's
    start-up but not a resumed session's (``startup_seconds`` has the last session's).
    """

    out_dir: str
    return_mean: float
    updates: int
    samples_total: int
    wall_time: float
    updates_per_second: float
    """Updates this session applied per second of its training loop, from the first dispatch to the last
    update: Ray's actor start-up and placement (``startup_seconds``) and the final checkpoint are left out."""
    mean_delay: float
    rejected: dict[str, int]
    restarts: dict[int, int]
    dropped_agents: list[int]
    server_restores: int = 0
    superseded: int = 0
    """rennala: gradients computed at a point already stepped past (their samples count in samples_total)."""
    resumed_at_update: int | None = None
    """None for a run trained in one go; else the checkpoint's update this driver session started from."""
    session_wall_time: float = 0.0
    """This driver session's share of ``wall_time`` (``wall_time`` adds the time before a resume)."""
    startup_seconds: float = 0.0
    """Seconds this session spent before its first dispatch: creating and placing the actors (the
    environments are built then) and writing the first checkpoint."""
    log_starts_after_update: int = 0
    """progress.csv's rows, and so ``mean_delay``, cover the updates after this one: 0 for the whole run; more
    when a resume found progress.csv missing (the earlier rows are gone)."""


def default_out_dir(config: TrainConfig) -> Path:
    """``runs/<env>-<algo>-n<agents>-s<seed>-<timestamp>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.env}-{config.algo}-n{config.agents}-s{config.seed}-{stamp}"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during :func:`train`, naming the run directory so the user can be told how to continue."""

    def __init__(self, out_dir: Path, terminated: bool = False) -> None:
        super().__init__(str(out_dir))
        self.out_dir = out_dir
        self.terminated = terminated
        self.exit_code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        """The shell's convention for a process stopped by that signal: 143 or 130."""

    def advice(self) -> str:
        """One line: how to continue the run, or that it stopped before its first checkpoint."""
        what = "terminated (SIGTERM)" if self.terminated else "interrupted"
        if (self.out_dir / CHECKPOINT_FILE).is_file():
            return f"{what}; continue the run with: afedpg train --resume {self.out_dir}"
        return f"{what} before the first checkpoint; nothing to resume in {self.out_dir}"


def train(config: TrainConfig, name_prefix: str = "afedpg", on_record: Any = None, resume: bool = False) -> TrainResult:
    """Train ``config`` on Ray (local or ``config.address``) and write the run directory.

    ``on_record`` (optional) is called with every :class:`~afedpg_ray.messages.UpdateRecord`; Tune
    uses it to report progress. With ``resume`` the run continues from ``config.out``'s checkpoint:
    version and counters continue and progress.csv is appended.
    """
    out_dir = Path(config.out) if config.out else default_out_dir(config)
    lock = runlock.acquire(out_dir)  # before the resume cuts progress.csv: a live run's rows stay
    try:
        return _train_locked(config, out_dir, name_prefix, on_record, resume)
    except KeyboardInterrupt as stop:  # still a KeyboardInterrupt for callers that only know that
        raise TrainingInterrupted(
            out_dir, terminated=isinstance(stop, Terminated) or SIGTERM_RECEIVED.is_set()
        ) from None
    finally:
        runlock.release(lock)


def _train_locked(config: TrainConfig, out_dir: Path, name_prefix: str, on_record: Any, resume: bool) -> TrainResult:
    """:func:`train` once this process holds ``out_dir``'s lock."""
    # Everything that can refuse the run happens before a file is written: the checkpoint is read and
    # matched against the config, and the cluster reached, before progress.csv is cut or config.json saved.
    resume_state = load_resumable(out_dir, config) if resume else None
    # A run only finishing needs no agent, nor a cluster to place them on (a smaller one would refuse them).
    # ray.init replaces the SIGTERM handler: ours goes in after it.
    dashboard = None if _budget_spent(config, resume_state) else _connect_placeable(config)
    with sigterm_raises_terminated():
        return _train_connected(config, out_dir, name_prefix, on_record, resume_state, dashboard)


def _connect_placeable(config: TrainConfig) -> str | None:
    """Reach Ray (:func:`connect`, its dashboard's address) and refuse, before any actor or file is made, a run
    whose agents the local instance this call started can never hold: nothing can join it, so waiting
    ``--placement-timeout`` for resources would only end the same way. A joined cluster may grow: it waits."""
    fresh = not ray.is_initialized()  # an instance started earlier (a test's, a Tune trial's) is not judged
    dashboard = connect(config.address)
    have = own_instance_resources() if fresh else None
    problem = local_shortfall(config, have) if have is not None else None
    if problem:
        raise ConfigError(*problem)
    return dashboard


def _train_connected(
    config: TrainConfig,
    out_dir: Path,
    name_prefix: str,
    on_record: Any,
    resume_state: dict[str, Any] | None,
    dashboard: str | None,
) -> TrainResult:
    """:func:`train` once Ray is reached (unless the resumed run's budget is spent) and the resume state
    (if any) is read."""
    run_id = (read_run_id(out_dir) if resume_state is not None else None) or uuid.uuid4().hex
    if resume_state is not None:
        cut_to_checkpoint(out_dir, resume_state)
        save_resumed_config(out_dir, config, run_id)
    else:
        save_run_config(out_dir / "config.json", config, run_id)
    initial_samples = int(resume_state["samples_total"]) if resume_state else 0
    resuming = resume_state is not None
    log_missing = resuming and _progress_missing(out_dir, resume_state)  # before RunLog creates a new one
    log = RunLog(
        out_dir, config.samples, config.progress, config.tensorboard, append=resuming, initial_samples=initial_samples
    )
    if resume_state is not None:  # the rows the cut kept (none if progress.csv was moved aside): a server
        resume_state["progress_rows"] = log.rows  # restored before the next checkpoint rolls back to these
    finishing = _budget_spent(config, resume_state)
    if not finishing:
        log.note(watch_hint(status_address(config.address), dashboard, name_prefix, token_auth_on()))
        rounding = rounds_note(config)
        if rounding:
            log.note(rounding)
    prior_wall = float(resume_state.get("elapsed", 0.0)) if resume_state else 0.0  # training time before the resume
    if resume_state is not None:
        version = resume_state["rule_state"]["version"]
        log.event("resumed", None, f"resumed at update {version}, {initial_samples} samples", prior_wall)
        if log_missing:
            message = (
                f"{out_dir / 'progress.csv'} was missing: a new one starts after update {version}, and the "
                "summary's mean delay covers only the updates from here"
            )
            log.event("progress_missing", None, message, prior_wall)
        horizon = resume_state.get("schedule_horizon")  # absent in older checkpoints
        uses_horizon = config.schedule == "linear" or config.alpha_end is not None  # constant, theory: no horizon
        if uses_horizon and horizon is not None and int(horizon) != config.expected_updates:
            message = (
                f"--samples {config.samples} buys {config.expected_updates} updates; "
                f"the schedule horizon was kept at {int(horizon)} updates"
            )
            log.event("schedule_kept", None, message, prior_wall)
    if on_record is not None:
        log.add_listener(on_record)
    try:
        if finishing:  # stopped after its final checkpoint: only the end's outputs are missing
            final_state, stats = resume_state, LoopStats()
        else:
            runner = RayRunner(config, log, out_dir, name_prefix, resume_state, run_id)
            stats = runner.run()  # ends with a final checkpoint taken and every actor killed
            final_state = runner.last_state  # the final checkpoint: no server call can fail after the run
    except BaseException:
        with contextlib.suppress(Exception):  # e.g. a rollback stopped with progress.csv closed: report the stop
            log.close()
        raise
    log.close()
    assert final_state is not None
    snapshot = policy_snapshot_of(final_state)
    rejected = dict(final_state.get("rejected", {}))
    # the run's clock at its final checkpoint, progress.csv's: a resumed session's start-up is not on it
    wall = float(final_state.get("elapsed", prior_wall))
    session_wall = wall - prior_wall
    save_policy(out_dir / POLICY_FILE, config, snapshot)
    last = log.last
    result = TrainResult(
        out_dir=str(out_dir),
        return_mean=float(log.return_mean),
        updates=int(snapshot["version"]),
        samples_total=int(last.samples_total) if last else initial_samples,
        wall_time=wall,
        updates_per_second=stats.loop_updates / stats.loop_seconds if stats.loop_seconds > 0 else 0.0,
        mean_delay=log.delay_sum / log.accepted if log.accepted else 0.0,
        log_starts_after_update=log.updates_before_log,
        rejected=rejected,
        restarts=dict(stats.restarts),
        dropped_agents=list(stats.dropped),
        server_restores=stats.server_restores,
        superseded=log.superseded,
        resumed_at_update=int(resume_state["rule_state"]["version"]) if resume_state else None,
        session_wall_time=session_wall,
        startup_seconds=stats.startup_seconds,
    )
    save_summary(out_dir, result)
    return result


def _progress_missing(run_dir: Path, state: dict[str, Any]) -> bool:
    """Whether a resume finds no progress.csv although its checkpoint was taken after logged rows (moved
    aside: what a resume refusing a damaged progress.csv suggests). The run continues from the checkpoint,
    which holds its state; only the rows, and the statistics read from them, are gone."""
    logged = state.get("progress_rows")
    if logged is None:  # an older checkpoint: every update up to its version was logged
        logged = int(state["rule_state"]["version"])
    return logged > 0 and not (run_dir / "progress.csv").is_file()


def rounds_note(config: TrainConfig) -> str | None:
    """What a synchronous run will really train when its budget is not a whole number of rounds (every
    round spends one gradient per agent, so fedpg with 4 agents x 1000 steps ends a 6000-step budget at
    8000, which surprised a user); None when the budget fits."""
    if not config.synchronous:
        return None
    per_round = config.agents * config.batch
    rounds = math.ceil(config.samples / per_round)
    if rounds * per_round == config.samples:
        return None
    return (
        f"note: fedpg trains in rounds of {per_round} samples ({config.agents} agents x --batch {config.batch}), "
        f"so --samples {config.samples} ends at {rounds * per_round}"
    )


def save_summary(run_dir: Path, result: TrainResult) -> None:
    """Write ``result`` as the run's summary.json (atomically). A number that is not finite (the return of a
    run in which no episode has finished yet) is written as null: ``NaN`` is not JSON, and strict parsers
    refuse the whole file."""
    fields = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.__dict__.items()}
    write_text_atomically(run_dir / "summary.json", json.dumps(fields, indent=2, allow_nan=False) + "\n")


def cut_to_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Drop progress.csv's rows past the checkpoint (they died with the driver): the same cut as a
    server restore, exact by row count (older checkpoints: by version)."""
    cut_progress(run_dir / "progress.csv", int(state["rule_state"]["version"]), state.get("progress_rows"))


def load_resumable(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint ``config`` can continue from, or :class:`CheckpointError` saying why not.

    Checked before anything is written: the checkpoint must be intact (finite parameters, counts that
    are counts), the policy must have its number of parameters and observation size (a checkpoint
    copied from another run, or a config.json edited by hand, is refused here rather than inside the
    server), progress.csv (cut and appended to) must be afedpg's and hold at least the rows logged before
    the checkpoint (or be absent), and the budget must exceed what the run has already spent - unless the
    run has no policy.pt: then it stopped (Ctrl-C, SIGTERM) after its final checkpoint but before writing
    it, and the resume only finishes it (no update is applied; policy.pt and summary.json are written).
    """
    # complete (every entry the server's restore reads) and consistent with itself; here, with the config
    state = load_checkpoint(run_dir)
    path = run_dir / CHECKPOINT_FILE
    saved = int(state["num_params"])
    policy, obs_dim = build_policy(config.env, config.hidden, config.estimator.log_std_init)
    if saved != num_params(policy):
        raise CheckpointError(
            f"{path}: its policy has {saved} parameters, but {config.env} with hidden sizes "
            f"{list(config.hidden)} has {num_params(policy)}; it belongs to another run"
        )
    if np.asarray(state["obs_stats"][1]).size != obs_dim:
        raise CheckpointError(
            f"{path}: its observation statistics have {np.asarray(state['obs_stats'][1]).size} dimensions, "
            f"but {config.env}'s observations {obs_dim}; it belongs to another run"
        )
    own, saved_id = read_run_id(run_dir), state.get("run_id")
    if own is not None and saved_id is not None and own != saved_id:
        raise CheckpointError(
            f"{path}: written by another run (run id {saved_id[:8]}, this directory's is {own[:8]}); "
            "put back this run's own checkpoint"
        )
    agents = [agent for agent in state["agent_versions"] if isinstance(agent, int)]
    if agents and max(agents) >= config.agents:
        raise CheckpointError(
            f"{path}: it tracks agent {max(agents)}, but this run has {config.agents} agents; it belongs to another run"
        )
    progress = run_dir / "progress.csv"
    problem = progress_problem(progress)
    if problem:  # cut_to_checkpoint would rewrite it in afedpg's columns, and the log fail to parse it
        raise CheckpointError(
            f"{progress}: {problem}; restore the run's own file, or move this one aside to resume without "
            "the rows before the checkpoint"
        )
    shortfall = progress_shortfall(progress, int(state["rule_state"]["version"]), state.get("progress_rows"))
    if shortfall:  # the cut would keep them all and the run append after them: a silent gap in the log
        raise CheckpointError(
            f"{progress} {shortfall}; restore the run's own file, or move it aside to resume without the rows "
            "before the checkpoint"
        )
    spent = int(state["samples_total"])
    # finishing a run stopped after its final checkpoint: no policy.pt yet, and the budget it was given
    finishing = not (run_dir / POLICY_FILE).is_file() and config.samples >= _saved_budget(run_dir)
    if config.samples <= spent and not finishing:
        raise CheckpointError(
            f"{run_dir} has already trained {spent} samples (its last checkpoint); --samples is the new total "
            f"budget, so pass more than {spent} to continue it"
        )
    return state


def _budget_spent(config: TrainConfig, resume_state: dict[str, Any] | None) -> bool:
    """Whether the resumed run has already trained its budget (it stopped after its final checkpoint,
    before writing policy.pt: :func:`load_resumable` accepts no other such run)."""
    return resume_state is not None and int(resume_state["samples_total"]) >= config.samples


def _saved_budget(run_dir: Path) -> int:
    """The ``samples`` budget in ``run_dir``'s config.json (0 if it cannot be read: the CLI refuses such a run)."""
    try:
        return int(json.loads((run_dir / "config.json").read_text())["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def save_run_config(path: Path, config: TrainConfig, run_id: str) -> None:
    """Write a new run's config.json (atomically): its options and its identity (``run_id``)."""
    raw = {**config.to_dict(), RUN_ID_KEY: run_id}
    write_text_atomically(path, json.dumps(raw, indent=2, sort_keys=True) + "\n")


def read_run_id(run_dir: Path) -> str | None:
    """The identity in ``run_dir``'s config.json (None for a run older than identities, or no file)."""
    try:
        run_id = json.loads((run_dir / "config.json").read_text()).get(RUN_ID_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def save_resumed_config(run_dir: Path, config: TrainConfig, run_id: str) -> None:
    """Record a resumed run's new budget in config.json (and its identity, if it had none yet), and nothing
    else: where this session runs (--address, --placement-timeout) is not part of the run and must not
    bind later resumes. Written atomically: every resume rewrites it, and a resume needs it whole."""
    path = run_dir / "config.json"
    raw = json.loads(path.read_text()) if path.is_file() else config.to_dict()
    raw["samples"] = config.samples
    raw.setdefault(RUN_ID_KEY, run_id)
    write_text_atomically(path, json.dumps(raw, indent=2, sort_keys=True) + "\n")


def save_policy(path: Path, config: TrainConfig, snapshot: dict[str, Any]) -> None:
    """Write the final policy (flat parameters, normaliser, architecture) atomically."""
    payload = {
        "env": config.env,
        "hidden": list(config.hidden),
        "log_std_init": config.estimator.log_std_init,
        "normalize_obs": config.estimator.normalize_obs,
        **{k: np.asarray(v) if isinstance(v, np.ndarray) else v for k, v in snapshot.items()},
    }
    tmp = temporary_path(path)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_policy(run_dir: Path) -> tuple[Policy, RunningStats | None, str]:
    """Load ``RUN_DIR/policy.pt``; returns the policy, its normaliser (or None) and the env id."""
    path = run_dir / POLICY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved policy (is {run_dir} a finished run directory?)")
    try:
        payload = torch.load(path, weights_only=False)
        env_id = payload["env"]
        if not isinstance(env_id, str):
            raise TypeError(f"its environment id is {env_id!r}")
    except Exception as err:  # noqa: BLE001 - any failure to read it means the file is unusable
        raise ValueError(f"{path}: corrupt or incompatible policy file ({first_line(err)})") from None
    try:  # an environment this machine cannot make (MuJoCo missing) is not the file's fault
        check_env_id(env_id)
    except ConfigError as err:
        why = str(err).removeprefix("--env: ")
        raise ValueError(f"{path}: cannot rebuild the policy's environment: {why}") from None
    try:
        policy, obs_dim = build_policy(env_id, tuple(payload["hidden"]), payload["log_std_init"])
        theta = _finite_array(payload["theta"], "theta")
        if theta.size and np.abs(theta).max() > np.finfo(np.float32).max:  # the policy's float32 makes it inf
            raise ValueError("theta holds values beyond float32's range")
        set_flat(policy, theta)
        stats = None
        if payload.get("normalize_obs", True):
            mean = _finite_array(payload["obs_mean"], "obs_mean", obs_dim)
            var = _finite_array(payload["obs_var"], "obs_var", obs_dim)
            count = float(payload["obs_count"])
            if (var < 0).any():
                raise ValueError("obs_var has negative variances")
            if not math.isfinite(count) or count < 0:
                raise ValueError(f"obs_count is {count}, not a count")
            stats = RunningStats(count, mean, var * count)
    except Exception as err:  # noqa: BLE001 - any failure to read it means the file is unusable
        raise ValueError(f"{path}: corrupt or incompatible policy file ({first_line(err)})") from None
    return policy, stats, env_id


def _finite_array(value: Any, name: str, size: int | None = None) -> np.ndarray:
    """``value`` as a flat float array of finite numbers (of ``size`` if given), else ValueError naming it:
    NaN parameters or statistics would fail only later, deep inside torch or the normaliser."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        raise ValueError(f"{name} is not a flat array of numbers")
    if size is not None and array.size != size:
        raise ValueError(f"{name} has {array.size} values, the environment's observations {size}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf")
    return array.astype(np.float64)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with."""
    return load_config(run_dir / "config.json")
