"""The Tune side of every sweep: one function trainable around ``train()``, and the Tuner that runs it.

A trial's config is ``{"train": <TrainConfig.to_dict()>, "variants": {label: overrides}, "variant": label,
<option>: <value>, ...}``: the base options, then the overrides of the trial's variant (e.g. label
``fedpg-n4`` -> ``{"algo": "fedpg", "agents": 4}``; a short label keeps Tune's trial table legible),
then any top-level train or estimator option (what ``hyper`` sweeps). :func:`merged_train_dict` applies
them in that order, so the driver validates exactly what a trial will run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from afedpg_ray.atomic import set_scratch_dir
from afedpg_ray.checkpoint import CHECKPOINT_FILE
from afedpg_ray.config import EstimatorConfig, TrainConfig, config_from_dict, last_line
from afedpg_ray.messages import UpdateRecord

TRIAL_CPUS = 0.1
"""CPUs of a trial's first bundle: the driver loop of ``train()`` (the server actor asks for none)."""
TRIAL_SHARE_OF_CPUS = 1.0
"""Without ``--agent-cpus``, a trial's agents share this many CPUs (the sweep CLI sets ``--agent-cpus``
from the cluster's CPUs and the largest N, so its trials fit side by side)."""
REPORT_FRACTION = 0.01
"""A trial reports to Tune about every 1% of its sample budget, and always at the end."""
ROW_COLUMNS = [
    "trial_id",
    "algo",
    "agents",
    "seed",
    "update",
    "samples_total",
    "samples_per_agent",
    "return_mean",
    "wall_time",
]
"""Columns of results.csv and speedup.csv: one row per Tune report."""

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_ESTIMATOR_FIELDS = {f.name for f in dataclasses.fields(EstimatorConfig)}


def merged_train_dict(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The plain train-config dict of one trial: base, then its variant's overrides, then top-level options."""
    raw = copy.deepcopy(trial_config["train"])
    variant = trial_config.get("variants", {}).get(trial_config.get("variant"), {})
    overrides = {**variant, **trial_config}
    for key, value in overrides.items():
        if key in _ESTIMATOR_FIELDS:
            raw.setdefault("estimator", {})[key] = value
        elif key in _TRAIN_FIELDS:
            raw[key] = value
    if raw.get("agent_resources") and isinstance(raw.get("agents"), int):
        raw["agent_resources"] = groups_within(raw["agent_resources"], raw["agents"])
    return raw


def groups_within(groups: list[Any], agents: int) -> list[Any]:
    """A sweep's ``--agent-resources`` ranges number the agents of its largest trial (the CLI checks them
    against it); a trial of ``agents`` agents keeps the groups, or the parts of groups, it has."""
    kept = []
    for group in groups:
        if isinstance(group, dict) and isinstance(group.get("first"), int) and isinstance(group.get("last"), int):
            if group["first"] >= agents:
                continue
            group = {**group, "last": min(group["last"], agents - 1)}
        kept.append(group)  # anything malformed goes on to validation, which names it
    return kept


def trial_train_config(trial_config: dict[str, Any]) -> TrainConfig:
    """Validated :class:`TrainConfig` of one trial (raises ``ConfigError`` naming a bad option)."""
    return config_from_dict(merged_train_dict(trial_config))


def variant_label(overrides: dict[str, Any]) -> str:
    """A short name for a variant, e.g. ``afedpg-n4``."""
    return f"{overrides['algo']}-n{overrides['agents']}"


def grid_trials(base: dict[str, Any], variants: dict[str, dict], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every trial config of a variants x seeds grid, as Tune will expand it (to validate them up front)."""
    return [{"train": base, "variants": variants, "variant": v, "seed": s} for v in variants for s in seeds]


def grid_space(base: dict[str, Any], variants: dict[str, dict], seeds: Sequence[int]) -> dict[str, Any]:
    """Tune param space of a variants x seeds grid (``variants`` maps labels to overrides)."""
    from ray import tune

    grid = {"variant": tune.grid_search(list(variants)), "seed": tune.grid_search(list(seeds))}
    return {"train": base, "variants": variants, **grid}


def with_trial_agent_cpus(config: TrainConfig) -> TrainConfig:
    """``config`` with ``agent_cpus`` fixed: a trial's agents must ask for what its placement group reserved.

    Without it the group would be sized for one share and ``train()`` would ask for another (a share of
    the whole cluster's CPUs), which Ray refuses as not fitting any bundle. The sweep CLI always sets
    ``--agent-cpus``; this covers a Tuner built on :func:`make_trainable` directly.
    """
    from afedpg_ray.placement import agent_cpus

    if config.agent_cpus is not None:
        return config
    return dataclasses.replace(config, agent_cpus=agent_cpus(config, TRIAL_SHARE_OF_CPUS))


def trial_bundles(config: TrainConfig) -> list[dict[str, float]]:
    """Placement-group bundles: a small one for the trial's driver, then one per agent that asks for something.

    An agent whose request is all zeros (``--agent-resources '{"0-3": {"num_cpus": 0}}'``) reserves
    nothing: Ray refuses a bundle with only zero amounts.
    """
    from afedpg_ray.placement import agent_options

    config = with_trial_agent_cpus(config)
    bundles: list[dict[str, float]] = [{"CPU": TRIAL_CPUS}]
    for agent_id in range(config.agents):
        options = agent_options(config, agent_id, cluster_cpus=TRIAL_SHARE_OF_CPUS)
        wanted = {"CPU": options["num_cpus"], **options.get("resources", {}), "memory": options.get("memory") or 0}
        bundle = {name: float(amount) for name, amount in wanted.items() if amount}
        if bundle:
            bundles.append(bundle)
    return bundles


def trial_resources(trial_config: dict[str, Any]) -> Any:
    """Tune resource request of one trial: a placement group its server and agents start inside."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_bundles(trial_train_config(trial_config)))


SNAPSHOT_FILES = (CHECKPOINT_FILE, "progress.csv", "events.csv", "config.json")
"""What a trial's Tune checkpoint holds of its run directory: enough for ``train(resume=True)``. The
checkpoint goes first: it is replaced atomically, and progress.csv holds at least the rows it counts
from the moment it is written (they are fsynced before it), so copying in this order is consistent."""
TRIAL_CHECKPOINT_MIN_S = 30.0
"""Seconds between a trial's Tune checkpoints at least: Tune snapshots and syncs the experiment's state
with each (it warns when that happens more than once in 5 s), and a run checkpoints every 25 updates.
A stopped trial resumes from its run's own later checkpoint if Tune synced it at the stop
(:func:`_stopped_attempts_checkpoint`); these bound what a resume loses only without that."""
CHECKPOINT_PAYLOAD_KEY = "_with_checkpoint"
"""A report payload's marker: attach a snapshot of the run directory (popped before Tune sees it)."""


class ThrottledReporter:
    """Turns ``train()``'s update records into Tune reports, about every ``fraction`` of the budget.

    A report also carries a trial checkpoint when the run has written a newer checkpoint of its own
    (every ``--checkpoint-every`` updates) and the last trial checkpoint is ``checkpoint_every_s`` old,
    except the last report: Tune reruns only trials that did not finish, and they resume from it.
    ``resumed_from`` is the samples of the checkpoint this attempt resumed from: :func:`collect_rows`
    joins the earlier attempt's reports up to there.
    """

    def __init__(
        self,
        config: TrainConfig,
        send: Callable[[dict[str, Any]], None],
        fraction: float = REPORT_FRACTION,
        run_dir: Path | None = None,
        resumed_from: int | None = None,
        checkpoint_every_s: float | None = None,
    ):
        self.config = config
        self.send = send
        self.step = max(1, int(config.samples * fraction))
        self.next_at = 0
        self.attempt = time.time()
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self.checkpointed: tuple[int, int] | None = None
        """Inode and modification time (ns) of the run checkpoint the last trial checkpoint was taken of."""
        self.checkpoint_every_s = TRIAL_CHECKPOINT_MIN_S if checkpoint_every_s is None else checkpoint_every_s
        self.checkpointed_at = -math.inf
        """``time.monotonic()`` of the last trial checkpoint."""
        self.reached_budget = False
        """Whether a report at the sample budget was sent (a resume that only finishes a run sends none)."""

    def __call__(self, record: UpdateRecord) -> None:
        """Report ``record`` if it crossed the next threshold or finished the budget."""
        if self.reached_budget:
            return  # FedPG's last round logs a record per agent, each with the final samples: one report
        if record.samples_total < self.next_at and record.samples_total < self.config.samples:
            return
        self.next_at = (record.samples_total // self.step + 1) * self.step
        payload = self._payload(record.update, record.samples_total, record.return_mean, record.wall_time)
        self.reached_budget = record.samples_total >= self.config.samples
        due = time.monotonic() - self.checkpointed_at >= self.checkpoint_every_s
        stamp = self._new_checkpoint() if due and not self.reached_budget else None
        if stamp is not None:
            payload[CHECKPOINT_PAYLOAD_KEY] = True
            self.checkpointed, self.checkpointed_at = stamp, time.monotonic()
        self.send(payload)

    def finish(self, result: Any) -> None:
        """After ``train()`` returned: report its result if no report reached the budget (a trial restored
        from a checkpoint taken as its run ended only finishes the run, and sends no record), so that the
        trial's reports show it finished."""
        if not self.reached_budget:
            self.reached_budget = True
            self.send(self._payload(result.updates, result.samples_total, result.return_mean, result.wall_time))

    def _payload(self, update: int, samples_total: int, return_mean: float, wall_time: float) -> dict[str, Any]:
        return {
            "algo": self.config.algo,
            "agents": self.config.agents,
            "seed": self.config.seed,
            "update": update,
            "samples_total": samples_total,
            "samples_per_agent": samples_total / self.config.agents,
            "return_mean": return_mean,
            "wall_time": wall_time,
            "attempt": self.attempt,
            "resumed_from_samples": math.nan if self.resumed_from is None else self.resumed_from,
        }

    def _new_checkpoint(self) -> tuple[int, int] | None:
        """The identity of the run's checkpoint on disk if no trial checkpoint was taken of it yet.

        The modification time alone is not enough: the kernel stamps files with a clock that advances in
        ticks of a few milliseconds, so two checkpoints written within one tick had the same time (a test
        saw it). Each checkpoint replaces the last with a file created while the last still existed, so its
        inode differs from its predecessor's."""
        if self.run_dir is None:
            return None
        try:
            status = (self.run_dir / CHECKPOINT_FILE).stat()
        except OSError:  # none written yet
            return None
        stamp = (status.st_ino, status.st_mtime_ns)
        return stamp if stamp != self.checkpointed else None


def snapshot_run(run_dir: Path) -> Path:
    """Copy what a resume needs of ``run_dir`` into a new temporary directory (the caller removes it).

    The logs are being appended to meanwhile: their copies end at the last complete line (a resume
    refuses a progress.csv with a broken row, even past the rows it keeps)."""
    target = Path(tempfile.mkdtemp(prefix="afedpg-trial-checkpoint-"))
    for name in SNAPSHOT_FILES:
        source = run_dir / name
        if source.is_file():
            _copy_snapshot_file(source.read_bytes(), target / name)
    return target


def _copy_snapshot_file(content: bytes, target: Path) -> None:
    """Write one of :data:`SNAPSHOT_FILES`; a log is cut after its last complete line (it was being appended)."""
    target.write_bytes(content[: content.rfind(b"\n") + 1] if target.suffix == ".csv" else content)


def report_to_tune(run_dir: Path, report: Callable[..., None]) -> Callable[[dict[str, Any]], None]:
    """A sender for :class:`BackgroundSender`: ``report(metrics)``, or ``report(metrics, checkpoint=...)``
    with a snapshot of ``run_dir`` where the payload asks for one (Tune persists it to its storage before
    ``report`` returns, so the snapshot is removed then)."""
    from ray import tune

    def send(payload: dict[str, Any]) -> None:
        if payload.pop(CHECKPOINT_PAYLOAD_KEY, None) is None:
            report(payload)
            return
        snapshot = snapshot_run(run_dir)
        try:
            report(payload, checkpoint=tune.Checkpoint.from_directory(str(snapshot)))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    return send


class BackgroundSender:
    """Calls ``send`` with each payload on a thread of its own, in order, so the caller never waits for it.

    ``tune.report`` from a function trainable blocks until Tune's controller has fetched the result (a
    round trip to the driver): measured 20-40 ms a report with a sweep's trials sharing 2 cores, 4-9% of a
    trial's time (``benchmarks/tune_report.py``). Inside ``train()``'s loop that stall delays every agent
    whose gradient arrives meanwhile. The first error of ``send`` (``SystemExit`` included: it is how Tune
    ends a trial it stopped) is re-raised by the next call and by :meth:`close`, which also delivers what
    is queued.
    """

    _CLOSE = object()

    def __init__(self, send: Callable[[Any], None]):
        self._send = send
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._deliver, name="tune-report", daemon=True)
        self._thread.start()

    def __call__(self, payload: Any) -> None:
        """Queue ``payload`` for sending and return at once; re-raise a failed send's error here first.

        Tune stops a trial (Ctrl-C of the sweep, a stop criterion, a scheduler) by ending the thread
        blocked in ``tune.report`` with ``SystemExit``: raised here, it ends ``train()`` in the trial's
        own thread (which kills the run's actors) instead of only the sender's.
        """
        if self._error is not None:
            raise self._error
        self._queue.put(payload)

    def _deliver(self) -> None:
        while (payload := self._queue.get()) is not self._CLOSE:
            if self._error is not None:
                continue  # drain: after a failed send nothing more is sent
            try:
                self._send(payload)
            except BaseException as err:  # handed to close(), which re-raises it
                self._error = err

    def close(self, reraise: bool = True) -> None:
        """Send everything queued, stop the thread and (if ``reraise``) re-raise the first error of ``send``."""
        self._queue.put(self._CLOSE)
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error


def run_trial(trial_config: dict[str, Any]) -> None:
    """Tune function trainable: run ``train()`` inside the trial's placement group and report progress."""
    from ray import tune

    from afedpg_ray.train import train

    trial_id = tune.get_context().get_trial_id()
    # Ray logs a line for every checkpoint a trial reports, at any --verbose: one per --checkpoint-every
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    raw = merged_train_dict(trial_config)
    # Tune runs the trial in its own working directory (synced to storage as an artifact). A trial rerun
    # after a sweep's --resume syncs into the same storage directory: naming the run by its start keeps
    # the rerun's files (TensorBoard events above all) apart from the interrupted attempt's.
    started = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path.cwd() / f"run-{trial_id}-{started}"
    raw.update(out=str(run_dir), progress=False, address=None)
    config = with_trial_agent_cpus(config_from_dict(raw))
    resumed_from = _restore_trial_checkpoint(run_dir, config, trial_id)
    # Tune copies the working directory to storage while the run writes: no temporary file may vanish
    # from it mid-copy (see afedpg_ray.atomic); its parent holds every trial's working directory
    # (one per trial, reused by its reruns: a trial Tune stops is killed before it can remove it)
    scratch = Path.cwd().parent / f".afedpg-scratch-{trial_id}"
    scratch.mkdir(exist_ok=True)
    set_scratch_dir(scratch)
    sender = BackgroundSender(report_to_tune(run_dir, tune.report))
    reporter = ThrottledReporter(config, sender, run_dir=run_dir, resumed_from=resumed_from)
    try:
        result = train(config, name_prefix=f"afedpg-{trial_id}", on_record=reporter, resume=resumed_from is not None)
        reporter.finish(result)
    except BaseException:
        sender.close(reraise=False)  # the run's own error is the one to show
        raise
    finally:
        set_scratch_dir(None)
        shutil.rmtree(scratch, ignore_errors=True)
    sender.close()  # the last report must reach Tune before the trial's function returns


def _restore_trial_checkpoint(run_dir: Path, config: TrainConfig, trial_id: str) -> int | None:
    """If Tune restores this trial from a checkpoint, unpack its run's latest checkpoint into ``run_dir`` and
    return the samples it holds (``train(resume=True)`` continues from there); None for a trial that starts
    afresh (a new one, or a failed one that Tune reruns from scratch).

    The latest is Tune's trial checkpoint, or the stopped attempt's own run checkpoint if newer: Tune takes
    no trial checkpoint at a stop, but it syncs the trial's working directory to storage as it stops it
    (:func:`_stopped_attempts_checkpoint`).
    """
    from ray import tune

    from afedpg_ray.checkpoint import load_checkpoint

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as saved:
        for name in SNAPSHOT_FILES:
            if (Path(saved) / name).is_file():
                shutil.copy2(Path(saved) / name, run_dir / name)
    samples = int(load_checkpoint(run_dir)["samples_total"])
    later = _stopped_attempts_checkpoint(run_dir, config, trial_id, samples)
    if later is None:
        return samples
    try:
        for name in SNAPSHOT_FILES:  # the stopped attempt's files only, none of Tune's older snapshot
            (run_dir / name).unlink(missing_ok=True)
            if (later / name).is_file():
                shutil.copy2(later / name, run_dir / name)
    finally:
        shutil.rmtree(later, ignore_errors=True)
    return int(load_checkpoint(run_dir)["samples_total"])


def _stopped_attempts_checkpoint(run_dir: Path, config: TrainConfig, trial_id: str, samples: int) -> Path | None:
    """A local copy of the run directory files (:data:`SNAPSHOT_FILES`) of this trial's latest earlier
    attempt of the same run, if Tune synced them to storage and their checkpoint is resumable and holds more
    than ``samples``; None otherwise (the caller removes the copy).

    Trial checkpoints are at least :data:`TRIAL_CHECKPOINT_MIN_S` apart, so Tune's latest could be far
    behind the run (measured: update 115 of a run stopped at 169, whose synced checkpoint was at 166). The
    same run is the one with Tune's checkpoint's run id (a failed trial rerun from scratch starts another);
    a copy cut short by the stop fails :func:`load_resumable` and the next earlier attempt is tried.
    """
    from ray import tune

    from afedpg_ray.train import read_run_id

    run_id = read_run_id(run_dir)
    storage = tune.get_context().get_storage()
    for path in _earlier_attempts(storage.storage_filesystem, storage.trial_fs_path, f"run-{trial_id}-", run_dir):
        copy = _download_snapshot(storage.storage_filesystem, path)
        held = _resumable_samples(copy, config) if read_run_id(copy) == run_id else None
        if held is not None and held > samples:
            return copy
        shutil.rmtree(copy, ignore_errors=True)
        if held is not None:
            return None  # the run's earlier attempts are older still
    return None


def _earlier_attempts(filesystem: Any, trial_path: str, prefix: str, current: Path) -> list[str]:
    """Storage paths of the trial's earlier run directories (``run-<trial_id>-<start>``), latest first."""
    from pyarrow import fs

    try:
        entries = filesystem.get_file_info(fs.FileSelector(trial_path, allow_not_found=True))
    except OSError:  # storage unreachable from this node: Tune's checkpoint it is
        return []
    runs = [entry for entry in entries if entry.type == fs.FileType.Directory and entry.base_name.startswith(prefix)]
    runs = [entry for entry in runs if entry.base_name != current.name]
    return [entry.path for entry in sorted(runs, key=lambda entry: entry.base_name, reverse=True)]


def _download_snapshot(filesystem: Any, run_path: str) -> Path:
    """Copy :data:`SNAPSHOT_FILES` of the run directory at ``run_path`` in storage into a new temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="afedpg-synced-run-"))
    for name in SNAPSHOT_FILES:
        try:
            with filesystem.open_input_stream(f"{run_path}/{name}") as stream:
                _copy_snapshot_file(stream.read(), target / name)
        except OSError:  # absent, or cut off by the stop: load_resumable decides
            continue
    return target


def _resumable_samples(run_dir: Path, config: TrainConfig) -> int | None:
    """The samples of ``run_dir``'s checkpoint if ``train(resume=True)`` would continue it, else None."""
    from afedpg_ray.train import load_resumable

    try:
        return int(load_resumable(run_dir, config)["samples_total"])
    except (ValueError, OSError):  # CheckpointError: damaged, another run's, or its log lacks rows
        return None


def make_trainable() -> Any:
    """:func:`run_trial` with its per-trial placement group, ready for ``tune.Tuner``."""
    from ray import tune

    return tune.with_resources(run_trial, trial_resources)


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """Where and how to run one sweep's Tuner."""

    name: str
    """Experiment name: the Tune directory is ``storage/name``."""
    storage: str
    """Absolute local path or URI of Tune's storage."""
    max_concurrent: int = 0
    """Most trials at once; 0 lets Tune run as many as the cluster's CPUs fit."""
    resume: bool = False
    """Restore the experiment at ``storage/name`` instead of starting a new one."""
    verbose: int = 1
    """Tune's verbosity: 0 silent, 1 status updates, 2 every report."""
    placement_timeout: float = 120.0
    """Seconds the sweep may have trials waiting for resources and none running before it stops."""

    @property
    def path(self) -> str:
        """The experiment's directory (path or URI)."""
        return f"{self.storage.rstrip('/')}/{self.name}"


def variant_generator(max_concurrent: int = 0) -> Any:
    """Tune's trial generator for every sweep: each random draw is run on every seed of the grid.

    Tune's default draws the random options afresh for every grid variant, so a random search over
    ``eta0`` with ``--seeds 3`` would run 3 different ``eta0`` values once each instead of one value on
    3 seeds, and ``hyper.csv`` could not average a configuration over seeds. ``max_concurrent`` (0: no
    limit) goes here: Tune ignores ``max_concurrent_trials`` once a generator is given.
    """
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(constant_grid_search=True, max_concurrent=max_concurrent)


SNAPSHOT_WARNING_THRESHOLD = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
"""Tune's switch for its 3-line "experiment state snapshotting has been triggered multiple times"
warning (0 turns it off), which a short trial's frequent checkpoints trigger."""


class TuneAdviceFilter(logging.Filter):
    """Drops two of Tune's log records that mislead a sweep's user.

    - ``Resume experiment with: Tuner.restore(path=..., trainable=...)`` after a stop: Python advice; the
      sweep's own last line gives the command that resumes it (``afedpg sweep KIND --resume --out DIR``).
    - ``Failed to fetch metrics ... FileNotFoundError`` as the results are read: Tune's note on every trial
      without a report yet (it never started, or a stop came first), harmless - such a trial counts as
      unfinished. A failure of any other kind (a damaged result.json) still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the two records above, True for any other."""
        message = record.getMessage()
        if message.startswith("Experiment has been interrupted") and "Tuner.restore(" in message:
            return False
        failures = message.splitlines()[1:]
        missing = bool(failures) and all(": FileNotFoundError(" in line for line in failures)
        return not (message.startswith("Failed to fetch metrics") and missing)


TUNE_ADVICE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
"""The loggers of the records :class:`TuneAdviceFilter` drops."""


def quiet_tune_advice() -> None:
    """Install :class:`TuneAdviceFilter` on Tune's loggers (once: a logger keeps one copy of a filter)."""
    for name in TUNE_ADVICE_LOGGERS:
        logging.getLogger(name).addFilter(_ADVICE_FILTER)


_ADVICE_FILTER = TuneAdviceFilter()


def run_tuner(
    sweep: SweepRun, param_space: dict[str, Any], num_samples: int = 1, created: Callable[[], None] | None = None
) -> Any:
    """Fit (or restore and finish) the sweep with Ray Tune and return its ``ResultGrid``.

    ``created`` is called once a new sweep's Tuner has written its experiment to storage, before any trial
    runs. With ``verbose`` 0 Tune's snapshotting warning is off too (unless the environment sets its threshold).
    """
    from ray import tune

    from tune_sweeps.placement_watch import PlacementWatchdog

    trainable = make_trainable()
    quiet_tune_advice()
    if sweep.resume:  # Tune restores the options (and the watchdog) the sweep started with
        tuner = tune.Tuner.restore(sweep.path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=variant_generator(sweep.max_concurrent)),
            run_config=tune.RunConfig(
                name=sweep.name,
                storage_path=sweep.storage,
                verbose=sweep.verbose,
                sync_config=tune.SyncConfig(sync_artifacts=True),
                # a trial's latest checkpoint is all its resume needs (each holds the whole server state)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[PlacementWatchdog(sweep.placement_timeout)],
            ),
        )
        if created is not None:  # Tuner() wrote tuner.pkl: Tuner.can_restore holds from here
            created()
    quiet = sweep.verbose == 0 and SNAPSHOT_WARNING_THRESHOLD not in os.environ
    if quiet:  # Tune reads it when fit() starts its controller
        os.environ[SNAPSHOT_WARNING_THRESHOLD] = "0"
    try:
        return tuner.fit()
    finally:
        if quiet:
            del os.environ[SNAPSHOT_WARNING_THRESHOLD]


def _last_attempt(frame: Any) -> Any:
    """The reports of a trial's last attempt (each run of the trial function is one)."""
    if "attempt" in frame:
        frame = frame[frame["attempt"] == frame["attempt"].max()]
    return frame


def _run_reports(frame: Any) -> Any:
    """The reports that make up a trial's run: its last attempt's, and, if that attempt resumed from a
    trial checkpoint, the earlier attempt's up to the checkpoint's samples (and so on back). An attempt
    that started afresh (a trial rerun from scratch) drops every earlier report."""
    import pandas as pd

    if "attempt" not in frame:
        return frame
    attempts = sorted(frame["attempt"].unique())
    current = frame[frame["attempt"] == attempts[-1]]
    parts = [current]
    for earlier in reversed(attempts[:-1]):
        resumed_from = float(current["resumed_from_samples"].iloc[0]) if "resumed_from_samples" in frame else math.nan
        if not math.isfinite(resumed_from):
            break
        current = frame[frame["attempt"] == earlier]
        parts.append(current[current["samples_total"] <= resumed_from])
    return pd.concat(parts[::-1])


def finished(result: Any) -> bool:
    """Whether a trial ran to its sample budget without an error.

    Tune's own state cannot say: when a sweep is stopped (Ctrl-C, SIGTERM) Tune marks its running
    trials TERMINATED, the same state as a trial that finished.
    """
    if result.error is not None:
        return False
    frame = result.metrics_dataframe
    if frame is None or frame.empty or "samples_total" not in frame:
        return False
    budget = int(merged_train_dict(result.config)["samples"])
    return int(_last_attempt(frame)["samples_total"].max()) >= budget


def collect_rows(results: Any) -> tuple[list[dict[str, Any]], list[str], int]:
    """Rows (``ROW_COLUMNS`` plus the trial's config) of the trials that finished, a line per failed
    trial, and how many trials stopped short of their budget (their rows are left out: a cut-off run's
    last return is not a final return, nor its time a time to the budget).

    Rows without a return yet (before the first finished episode) are left out. A trial that Tune ran
    more than once contributes the reports of its run as the last attempt completed it
    (:func:`_run_reports`).
    """
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    cut = 0
    for result in results:
        if result.error is not None:
            errors.append(f"trial at {result.path} failed: {last_line(result.error)}")
            continue
        frame = result.metrics_dataframe
        if frame is None or frame.empty or "return_mean" not in frame:
            continue
        if not finished(result):
            cut += 1
            continue
        for record in _run_reports(frame).to_dict("records"):
            value = float(record["return_mean"])
            if not math.isfinite(value):
                continue
            row = {column: record.get(column) for column in ROW_COLUMNS}
            row["config"] = result.config
            rows.append(row)
    rows.sort(key=lambda r: (r["agents"], str(r["algo"]), r["seed"], str(r["trial_id"]), r["samples_total"]))
    return rows, errors, cut
