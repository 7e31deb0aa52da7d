"""``afedpg sweep sample-efficiency|speedup|hyper`` and ``afedpg plot``.

Every sweep validates all of its trials' train options (with ``config_from_dict``), its output
directory and its storage before Ray starts; bad input is one line naming the option, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from afedpg_ray import runlock
from afedpg_ray.cli import OneLineParser, add_train_options, config_from_args, fail, int_list, refuse_ignored_options
from afedpg_ray.config import ALGORITHMS, SEED_LIMIT, ConfigError, TrainConfig, first_line
from afedpg_ray.errors import RunError
from afedpg_ray.placement import packable_share, unplaceable_reason
from afedpg_ray.runlog import read_progress
from afedpg_ray.signals import SIGTERM_RECEIVED, sigterm_as_ctrl_c
from tune_sweeps import hyper, sample_efficiency, speedup
from tune_sweeps.plots import plot_learning_curves
from tune_sweeps.resume import record_command, record_path, resumed_args
from tune_sweeps.trainable import (
    TRIAL_CPUS,
    SweepRun,
    collect_rows,
    finished,
    grid_space,
    grid_trials,
    merged_train_dict,
    run_tuner,
    trial_bundles,
    trial_train_config,
)

PAPER_ALGOS = ("afedpg", "fedpg", "vanilla", "a3c")
RESULTS = {
    sample_efficiency.NAME: sample_efficiency.RESULTS_CSV,
    speedup.NAME: speedup.RESULTS_CSV,
    hyper.NAME: hyper.RESULTS_CSV,
}
"""Each kind of sweep's table in --out. The kinds write different files (and Tune directories), so one
--out may hold one sweep of each kind."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_sweep_options(parser: argparse.ArgumentParser, name: str, seeds: int, concurrent: int) -> None:
    add = parser.add_argument
    add("--seeds", type=int, help=f"seeds per configuration: --seed, --seed+1, ... (default {seeds})")
    add("--out", default=f"sweeps/{name}", help=f"directory for the CSVs and figures (default sweeps/{name})")
    add("--storage", help="Tune storage: a local path or a URI such as s3://bucket/dir (default: --out, absolute)")
    add(
        "--max-concurrent",
        type=int,
        help=f"most trials at once; 0 = as many as the CPUs fit (default {concurrent})",
    )
    add("--resume", action="store_true", help="resume the interrupted sweep found at STORAGE/" + name)
    add("--verbose", type=int, choices=(0, 1, 2), help="Tune's progress output: 0, 1 (default) or 2")
    # None above (and for every option with a default) tells "not given" apart: a resumed sweep keeps the
    # values it started with and refuses a different one; the defaults are filled in by _command_args
    parser.set_defaults(default_max_concurrent=concurrent, default_seeds=seeds, default_verbose=1)
    add("--no-tensorboard", action="store_true", help="no TensorBoard event files in the trials' run directories")


def _set_help(parser: argparse.ArgumentParser, option: str, text: str) -> None:
    """Replace ``option``'s --help text in ``parser`` (``argparse.SUPPRESS`` leaves it out; it is still parsed,
    so its command can refuse it by name)."""
    for action in parser._actions:  # argparse has no public way to reach an added action by option string
        if option in action.option_strings:
            action.help = text


AGENT_CPUS_HELP = (
    "CPUs per agent (default: the largest share, 0.01-1 in hundredths, at which the largest trial's bundles "
    "fit the cluster's nodes, each bundle whole on one node)"
)
"""A sweep's --agent-cpus default (:func:`_default_agent_cpus`), not train's share of the cluster's CPUs."""


def add_commands(sub: Any) -> None:
    """Register ``sweep`` (sample-efficiency, speedup, hyper) and ``plot`` on the ``afedpg`` subparsers."""
    sweep = sub.add_parser("sweep", help="Ray Tune sweeps that reproduce the paper's figures")
    kinds = sweep.add_subparsers(dest="sweep", required=True, parser_class=OneLineParser)

    se = kinds.add_parser("sample-efficiency", conflict_handler="resolve", help="return vs samples per agent over N")
    add_train_options(se)
    _set_help(se, "--samples", argparse.SUPPRESS)  # refused: the budget comes from --samples-per-agent
    _set_help(se, "--algo", f"one update rule for every N: {', '.join(ALGORITHMS)} (default pg for N = 1, else afedpg)")
    se.add_argument("--agents", type=int_list, help="agent counts N (default 1,2,4,8)")
    se.add_argument("--samples-per-agent", type=int, help="environment steps per agent per trial (required)")
    se.add_argument("--target", type=float, help="target return (default: the smallest N's final mean return)")
    _set_help(se, "--agent-cpus", AGENT_CPUS_HELP)
    _add_sweep_options(se, sample_efficiency.NAME, seeds=3, concurrent=0)
    se.set_defaults(handler=cmd_sample_efficiency, default_agents=(1, 2, 4, 8))

    sp = kinds.add_parser("speedup", conflict_handler="resolve", help="return vs wall time under heterogeneity")
    add_train_options(sp)
    _set_help(sp, "--algo", argparse.SUPPRESS)  # refused: the rules come from --algos
    sp.add_argument("--agents", type=int_list, help="agent counts N (default 4,8)")
    sp.add_argument("--algos", type=_names, help=f"rules (default {','.join(PAPER_ALGOS)})")
    sp.add_argument(
        "--target", type=float, help="target return (default: 80%% of the way from the highest start to the best final)"
    )
    _set_help(sp, "--agent-cpus", AGENT_CPUS_HELP)
    _add_sweep_options(sp, speedup.NAME, seeds=3, concurrent=1)
    sp.set_defaults(handler=cmd_speedup, default_agents=(4, 8), default_algos=PAPER_ALGOS)

    hy = kinds.add_parser("hyper", help="grid or random search over any train option")
    add_train_options(hy)
    hy.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="an option and its values")
    hy.add_argument("--random", type=int, help="random search: this many samples (values become tune.choice)")
    _set_help(hy, "--agent-cpus", AGENT_CPUS_HELP)
    _add_sweep_options(hy, hyper.NAME, seeds=1, concurrent=0)
    hy.set_defaults(handler=cmd_hyper)

    plot = sub.add_parser("plot", help="redraw figures from a sweep's or run's CSVs")
    plot.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="sweep or training run directories")
    plot.add_argument(
        "--out", help="learning-curve figure path (default RUN/learning_curve.png, or ./learning_curves.png)"
    )
    plot.set_defaults(handler=cmd_plot)


def _writable_dir(option: str, path: Path) -> Path:
    """Create ``path`` if needed and check it is writable, or fail naming ``option``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option}: cannot create directory {str(path)!r} ({err.strerror or err})")
    if not os.access(path, os.W_OK):
        fail(f"{option}: directory {str(path)!r} is not writable")
    return path.resolve()


@contextlib.contextmanager
def _driver_lock(args: argparse.Namespace, name: str) -> Iterator[None]:
    """Hold ``afedpg_ray.runlock``'s lock on ``OUT/<name>`` for the whole command, or exit 2 naming its holder.

    Two drivers on one sweep each started Ray and ran the unfinished trials, and both wrote the tables
    (measured); a resume started before the first driver had recorded its command ran with the defaults.
    The lock comes first, before the record is read. It is per kind of sweep (``OUT/<name>``, Tune's
    experiment directory under the default storage): sweeps of different kinds may share an ``--out``.
    """
    if not args.out.strip():  # Path("") is the working directory
        fail("--out: give a directory, got an empty string")
    out = Path(args.out)
    created_out = not out.exists()
    try:
        lock = runlock.acquire(out / name)
    except RunError as err:  # another driver holds it, or --out cannot hold a directory
        _remove_if_empty(out, created_out)
        fail(f"--out: {err}")
    try:
        yield
    finally:
        runlock.release(lock)  # removes OUT/<name> again if the sweep was refused before writing there
        _remove_if_empty(out, created_out)


def _remove_if_empty(path: Path, created: bool) -> None:
    """Remove ``path`` if this command created it and left it empty (a refused sweep leaves no trace)."""
    if created:
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.rmdir()


def _command_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The options a sweep runs with: on ``--resume`` the ones it started with, then the defaults of those
    not given (``--seeds``, ``--agents``, ``--algos`` default to None so that a resume can tell)."""
    args = resumed_args(args, name)
    for dest in ("seeds", "agents", "algos"):
        if getattr(args, dest, False) is None and hasattr(args, f"default_{dest}"):  # hyper's --agents: train's
            setattr(args, dest, getattr(args, f"default_{dest}"))
    return args


def _seeds(args: argparse.Namespace) -> list[int]:
    """Check the numeric options every sweep shares; returns the seeds ``--seed, --seed + 1, ...``."""
    if args.seeds < 1:
        fail(f"--seeds: must be a positive integer, got {args.seeds}")
    if args.max_concurrent is not None and args.max_concurrent < 0:
        fail(f"--max-concurrent: must be 0 (no limit) or a positive integer, got {args.max_concurrent}")
    first = args.seed if args.seed is not None else 0
    if 0 <= first < SEED_LIMIT <= first + args.seeds - 1:  # else validate() names the seed the user gave
        fail(f"--seeds: --seed {first} plus {args.seeds} seeds passes the largest seed 2**32 - 1")
    return [first + i for i in range(args.seeds)]


def _sweep_run(args: argparse.Namespace, name: str, placement_timeout: float) -> tuple[SweepRun, Path]:
    """Check (and create) the output directory and storage, and the sweep to resume; returns both."""
    if args.storage is not None and not args.storage.strip():  # an empty --out is refused by _driver_lock
        fail("--storage: give a path or URI, got an empty string")
    out = _writable_dir("--out", Path(args.out))
    storage = args.storage or str(out)
    if storage == "file://":  # Path("") would be the working directory
        fail("--storage: give a path after file://, e.g. file:///mnt/nfs/afedpg-sweeps")
    if "://" not in storage or storage.startswith("file://"):
        storage = str(_writable_dir("--storage", Path(storage.removeprefix("file://")).expanduser()))
    if not args.resume:
        _refuse_overwrite(out, storage, name, args.storage is None)
    concurrent = args.default_max_concurrent if args.max_concurrent is None else args.max_concurrent
    verbose = args.default_verbose if args.verbose is None else args.verbose
    sweep = SweepRun(name, storage, concurrent, args.resume, verbose, placement_timeout)
    if args.resume:
        from ray import tune

        try:
            restorable = tune.Tuner.can_restore(sweep.path)
        except Exception as err:  # noqa: BLE001 - pyarrow's filesystems raise their own types
            fail(f"--storage: cannot read {storage!r} ({first_line(err)})")
        if not restorable:
            fail(f"--resume: no sweep to resume at {sweep.path}")
    return sweep, out


def _refuse_overwrite(out: Path, storage: str, name: str, default_storage: bool) -> None:
    """Exit 2 if ``out`` or a local ``storage`` already holds a sweep of this kind: a new one would
    overwrite its record and tables, and put a second experiment beside its trials in Tune's directory."""
    kind = name.replace("_", "-")
    advice = "continue it with --resume or choose another"
    for held in (record_path(out, name), out / RESULTS[name]):
        if held.exists():
            fail(f"--out {out} already holds a {kind} sweep ({held.name}); {advice} --out")
    if "://" in storage:  # a remote storage is not read before Ray starts; the record in --out stands for it
        return
    experiment = Path(storage) / name
    from ray import tune

    if tune.Tuner.can_restore(str(experiment)):
        option = "--out" if default_storage else "--storage"
        fail(f"{option} {experiment.parent} already holds a {kind} sweep ({experiment}); {advice} {option}")


def _check_counts(counts: tuple[int, ...]) -> None:
    if not counts:
        fail("--agents: give at least one agent count, e.g. 1,2,4,8")
    bad = [n for n in counts if n < 1]
    if bad:
        fail(f"--agents: agent counts must be at least 1, got {bad[0]}")
    if len(set(counts)) != len(counts):  # a repeat would run once and be reported as asked
        fail(f"--agents: each agent count may be listed once, got {','.join(map(str, counts))}")


def _base(args: argparse.Namespace, variants: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The validated train options shared by every trial (as a plain dict), checked with the variant of
    the most agents: ``--agent-resources`` ranges number that trial's agents (smaller trials keep theirs)."""
    extra = {"address": None, "out": None, "progress": False, "tensorboard": not args.no_tensorboard}
    largest = max(variants, key=lambda variant: variant.get("agents", 0), default={})
    return config_from_args(args, {**extra, **largest, "seed": seed}, refuse_ignored=False).to_dict()


def _refuse_ignored(args: argparse.Namespace, trials: list[dict[str, Any]], configs: list[TrainConfig]) -> None:
    """Refuse an option that does nothing: a command-line option every trial would ignore (as ``afedpg
    train`` refuses it), or a grid value its own trial ignores (``--grid log_std_init=...`` on CartPole).
    An option that applies to some trials (``--schedule theory`` beside a3c) is kept."""
    given = {name: value for name, value in vars(args).items() if value is not None}
    ignored: list[ConfigError] = []
    for trial, config in zip(trials, configs, strict=True):
        variant = trial.get("variants", {}).get(trial.get("variant"), {})
        own = {**variant, **{k: v for k, v in trial.items() if k not in ("train", "variants", "variant")}}
        refuse_ignored_options(own, config)
        try:
            refuse_ignored_options(given, config)
        except ConfigError as err:
            ignored.append(err)
    if ignored and len(ignored) == len(configs):
        raise ignored[0]


def _launch(
    args: argparse.Namespace,
    name: str,
    trials: list[dict[str, Any]],
    space: Callable[[], dict[str, Any]],
    num_samples: int = 1,
) -> tuple[list[dict[str, Any]], Any, Path]:
    """Validate every trial and the directories, connect to Ray and run the Tuner.

    Returns the report rows, Tune's ``ResultGrid`` and the output directory. ``space`` builds the param
    space once the shared base (``trials[0]["train"]``) has its agent CPUs.
    """
    configs = [trial_train_config(trial) for trial in trials]  # raises ConfigError before Ray starts
    _refuse_ignored(args, trials, configs)
    from afedpg_ray.address import AddressError, parse_address

    if args.address:
        try:
            parse_address(args.address)  # the format, before anything is written or joined
        except AddressError as err:
            fail(str(err))
    sweep, out = _sweep_run(args, name, configs[0].placement_timeout)
    from afedpg_ray.connection import connect

    try:
        connect(args.address)
    except AddressError as err:
        fail(str(err))
    except RunError as err:
        fail(str(err), code=1)
    base = trials[0]["train"]
    if base.get("agent_cpus") is None and not sweep.resume:
        base["agent_cpus"] = _default_agent_cpus(max(c.agents for c in configs))
    if not sweep.resume:
        _warn_unplaceable(configs, base["agent_cpus"])
    # Tune's own hint names its staging copy of its metrics under /tmp/ray: not the runs', gone with the session
    held = "Tune's metrics; --no-tensorboard" if args.no_tensorboard else "each trial's run and Tune's metrics"
    print(f"TensorBoard: tensorboard --logdir {sweep.path}  ({held}; Tune's hint names a temporary copy of its own)")
    try:
        with sigterm_as_ctrl_c():
            # the record only once Tune has written the experiment: a record then always means a sweep to resume
            created = None if sweep.resume else lambda: record_command(out, name, args)
            results = run_tuner(sweep, space(), num_samples, created)
    except OSError as err:  # a remote --storage (s3://, gs://) is only reached here, by pyarrow
        fail(f"--storage: cannot use {sweep.storage!r} ({first_line(err)})", code=1)
    from tune_sweeps.placement_watch import STOPPED  # imports Tune: not before Ray is up

    if STOPPED:
        fail(STOPPED[0], code=1)
    rows, errors, cut = collect_rows(results)
    for line in errors:
        print(f"afedpg: warning: {line}", file=sys.stderr)
    if cut:
        print(
            f"afedpg: warning: trials stopped before their sample budget: {cut}; their reports are left out of "
            "the tables (rerun with --resume to finish them)",
            file=sys.stderr,
        )
    if not rows:
        expected = len(trials) if num_samples == 1 else 0  # random draws: trials lists only the range ends
        if _unfinished(results, expected):  # stopped (Ctrl-C, SIGTERM) before any trial reported
            _done(results, expected, _resume_command(args, name), wrote=False)
        fail(f"no trial reported a return; Tune's records are in {sweep.path}", code=1)
    print(f"Tune experiment: {sweep.path}")
    return rows, results, out


def _resume_command(args: argparse.Namespace, name: str) -> str:
    """The command that continues the sweep (its record in ``--out`` holds every other option)."""
    return f"afedpg sweep {name.replace('_', '-')} --resume --out {shlex.quote(args.out)}"


def _done(results: Any, expected: int, resume: str, wrote: bool = True) -> int:
    """0 if every trial finished; else one line on what is left and the command ``resume`` that continues
    the sweep: exit 130 if interrupted (143 if by SIGTERM), 1 if trials failed.

    ``expected`` is the number of trials the sweep asked for (0: as many as ``results``): Tune's grid
    leaves out trials that an interrupt stopped before they started. ``wrote`` says whether the tables
    and figures were written (from the trials that finished).
    """
    total = max(expected, len(results))
    unfinished = _unfinished(results, expected)
    from tune_sweeps.placement_watch import STOPPED

    if STOPPED:  # the watchdog stopped the sweep: say why rather than "interrupted"
        fail(STOPPED[0], code=1)
    if unfinished:
        fail(
            f"{'terminated (SIGTERM)' if SIGTERM_RECEIVED.is_set() else 'interrupted'} with {unfinished} of {total} "
            f"trials unfinished; {'the outputs are partial' if wrote else 'no outputs written'} - continue with: "
            f"{resume}",
            code=143 if SIGTERM_RECEIVED.is_set() else 130,
        )
    if results.num_errors:
        fail(
            f"{results.num_errors} of {len(results)} trials failed; the outputs are partial - retry them with: "
            f"{resume}",
            code=1,
        )
    return 0


def _unfinished(results: Any, expected: int) -> int:
    """Trials of ``results`` (of ``expected`` asked for) that neither finished nor failed."""
    return max(expected, len(results)) - sum(1 for result in results if finished(result)) - results.num_errors


def _alive_nodes() -> list[dict[str, float]]:
    """The resources of the cluster's live nodes."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _default_agent_cpus(max_agents: int) -> float:
    """CPUs per agent so that the largest trial fits the cluster alone (at most 1 each), its bundles
    packed onto the nodes one whole bundle per node."""
    node_cpus = [node.get("CPU", 0.0) for node in _alive_nodes()]
    share = packable_share(max_agents, node_cpus, TRIAL_CPUS)
    if share is None:
        fail(
            f"--agent-cpus: the cluster's nodes have {sum(node_cpus):g} CPUs, too few for a trial of {max_agents} "
            "agents (a head started with 0 CPUs before workers joined?); wait for nodes or give --agent-cpus",
            code=1,
        )
    print(
        f"each agent requests {share} CPU (set --agent-cpus to change); the cluster has {sum(node_cpus):g} CPUs "
        f"on {len(node_cpus)} node{'s' * (len(node_cpus) != 1)}"
    )
    return share


def _warn_unplaceable(configs: list[TrainConfig], agent_cpus: float | None) -> None:
    """One warning if some trial cannot be placed on the cluster's nodes as they are now (an autoscaler may
    still add nodes; if none come, the placement watchdog stops the sweep after --placement-timeout)."""
    nodes = _alive_nodes()
    for config in configs:
        bundles = trial_bundles(dataclasses.replace(config, agent_cpus=agent_cpus))
        reason = unplaceable_reason(bundles, nodes)
        if reason:
            print(
                f"afedpg: warning: {reason}; Tune will wait for nodes to join for up to --placement-timeout "
                f"{config.placement_timeout:g} s",
                file=sys.stderr,
            )
            return


def cmd_sample_efficiency(args: argparse.Namespace) -> int:
    """``afedpg sweep sample-efficiency``, holding its lock on ``--out``."""
    with _driver_lock(args, sample_efficiency.NAME):
        return _sample_efficiency(args)


def _sample_efficiency(args: argparse.Namespace) -> int:
    """:func:`cmd_sample_efficiency` once this driver holds the sweep's lock."""
    args = _command_args(args, sample_efficiency.NAME)
    _check_counts(args.agents)
    if args.samples_per_agent is None:
        fail("--samples-per-agent: required, the environment steps per agent of every trial, e.g. 100000")
    if args.samples is not None:
        fail("--samples: this sweep sets each trial's budget from --samples-per-agent")
    if args.samples_per_agent < 1:
        fail(f"--samples-per-agent: must be a positive integer, got {args.samples_per_agent}")
    if args.target is not None and not math.isfinite(args.target):
        fail(f"--target: must be a finite return, got {args.target}")
    seeds = _seeds(args)
    variants = sample_efficiency.variants(args.agents, args.samples_per_agent, args.algo)
    too_small = f"--samples-per-agent: must be at least --batch (one gradient), got {args.samples_per_agent}"
    try:
        base = _base(args, list(variants.values()), seeds[0])
    except ConfigError as err:  # a trial's --samples is N x --samples-per-agent: name the option the user gave
        if err.option == "--samples":
            fail(too_small)
        raise
    if args.samples_per_agent < base["batch"]:  # smaller N-trials would overshoot their budget
        fail(too_small)
    trials = grid_trials(base, variants, seeds)
    for trial in trials[:: len(seeds)]:  # one per N: rennala's --collect may need more than one batch per trial
        try:
            trial_train_config(trial)
        except ConfigError as err:
            if err.option != "--samples":
                raise
            agents = variants[trial["variant"]]["agents"]
            update = str(err).partition("(")[2].partition(")")[0]  # "2 x --batch 1000 = 2000 steps"
            fail(
                f"--samples-per-agent: {args.samples_per_agent} gives the {agents}-agent trial "
                f"{agents * args.samples_per_agent} steps, less than one update ({update})"
            )
    rows, results, out = _launch(args, sample_efficiency.NAME, trials, lambda: grid_space(base, variants, seeds))
    csv_path, png = sample_efficiency.write_outputs(rows, out, args.target)
    print(f"wrote {csv_path} and {png} ({len(rows)} reports)")
    return _done(results, len(trials), _resume_command(args, sample_efficiency.NAME))


def cmd_speedup(args: argparse.Namespace) -> int:
    """``afedpg sweep speedup``, holding its lock on ``--out``."""
    with _driver_lock(args, speedup.NAME):
        return _speedup(args)


def _speedup(args: argparse.Namespace) -> int:
    """:func:`cmd_speedup` once this driver holds the sweep's lock."""
    args = _command_args(args, speedup.NAME)
    _check_counts(args.agents)
    if not args.algos:
        fail(f"--algos: give at least one rule, e.g. {','.join(PAPER_ALGOS)}")
    if len(set(args.algos)) != len(args.algos):  # a repeat would run once and be reported as asked
        fail(f"--algos: each rule may be listed once, got {','.join(args.algos)}")
    unknown = [a for a in args.algos if a not in ALGORITHMS]
    if unknown:
        fail(f"--algos: unknown algorithm {unknown[0]!r}; choose from {', '.join(ALGORITHMS)}")
    if args.algo is not None:
        fail("--algo: this sweep takes its rules from --algos")
    if args.target is not None and not math.isfinite(args.target):
        fail(f"--target: must be a finite return, got {args.target}")
    seeds = _seeds(args)
    variants = speedup.variants(args.algos, args.agents)
    base = _base(args, list(variants.values()), seeds[0])
    trials = grid_trials(base, variants, seeds)
    rows, results, out = _launch(args, speedup.NAME, trials, lambda: grid_space(base, variants, seeds))
    ran = merged_train_dict(rows[0]["config"])  # what the trials ran (a resumed sweep keeps its options)
    timing = speedup.Timing(ran["hetero"], ran.get("iteration_time"), tuple(ran.get("comm_delay") or ()))
    text = speedup.write_outputs(rows, out, timing, args.target)
    print(text, end="")
    print(f"wrote {out}/speedup.csv, speedup.png, speedup_summary.csv and speedup_summary.md")
    return _done(results, len(trials), _resume_command(args, speedup.NAME))


def cmd_hyper(args: argparse.Namespace) -> int:
    """``afedpg sweep hyper``, holding its lock on ``--out``."""
    with _driver_lock(args, hyper.NAME):
        return _hyper(args)


def _hyper(args: argparse.Namespace) -> int:
    """:func:`cmd_hyper` once this driver holds the sweep's lock."""
    args = _command_args(args, hyper.NAME)
    if args.random is not None and args.random < 1:
        fail(f"--random: must be a positive number of samples, got {args.random}")
    parser = hyper.option_parser()
    axes = [hyper.parse_axis(spec, parser) for spec in args.grid]
    hyper.check_axes(axes, args.random, args.seeds)
    for axis in axes:  # the grid's values override the option's in every trial: it would do nothing
        if getattr(args, axis.name, None) is not None:
            flag = "--" + axis.name.replace("_", "-")
            fail(f"{flag}: {axis.name} is also swept by --grid; give it in one place")
    seeds = _seeds(args)
    # --agent-resources ranges number the agents of the largest trial, also when --agents is swept
    counts = [max(axis.values) for axis in axes if axis.name == "agents"]
    base = _base(args, [{"agents": counts[0]}] if counts else [], seeds[0])
    random = args.random is not None
    trials = hyper.trial_configs(base, axes, seeds)

    def space() -> dict[str, Any]:
        return hyper.param_space(base, axes, seeds, random)

    rows, results, out = _launch(args, hyper.NAME, trials, space, args.random or 1)
    table = hyper.write_outputs(rows, [axis.name for axis in axes], out)
    for row in table[:5]:
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"wrote {out / hyper.RESULTS_CSV} ({len(table)} configurations, best first)")
    expected = 0 if random else len(trials)  # random: trials lists the range ends, not the draws
    return _done(results, expected, _resume_command(args, hyper.NAME))


def cmd_plot(args: argparse.Namespace) -> int:
    """``afedpg plot RUN_OR_SWEEP_DIR...``: redraw figures from CSVs."""
    if args.out and Path(args.out).suffix.lower() not in (".png", ".pdf", ".svg"):
        fail(f"--out: give a .png, .pdf or .svg file, got {args.out!r}")
    try:
        return _plot(args)
    except OSError as err:
        fail(f"--out: cannot write {err.filename or args.out} ({err.strerror})")


def _checked_csv(csv_path: Path, read: Callable[[Any], Any], arg: Any) -> Any:
    """``read(arg)``, with a CSV that lacks afedpg's columns or values reported by its path."""
    try:
        return read(arg)
    except (KeyError, ValueError) as err:
        fail(f"RUN_OR_SWEEP_DIR: {csv_path} is not a CSV afedpg wrote ({type(err).__name__}: {first_line(err)})")


def _require_rows(csv_path: Path) -> None:
    """Exit 2 naming ``csv_path`` if it holds no data row (an empty figure would pass for a result)."""
    with csv_path.open(newline="") as handle:
        if sum(1 for _ in csv.reader(handle)) < 2:
            fail(f"RUN_OR_SWEEP_DIR: {csv_path} has no rows to plot (a sweep stopped before any trial reported?)")


def _header(csv_path: Path) -> list[str]:
    """The first row of ``csv_path`` ([] for an empty file)."""
    with csv_path.open(newline="") as handle:
        return next(csv.reader(handle), [])


def _plottable_run(progress: Path) -> bool:
    """Whether a run's progress.csv has afedpg's columns (else exit 2 naming it) and at least one update."""
    rows = _checked_csv(progress, read_progress, progress)
    # the header, not the first row: a one-line garbage file has no rows and passed for a run just started
    header = _checked_csv(progress, _header, progress)
    columns = ("samples_total", "wall_time", "return_mean")
    missing = [c for c in columns if header and c not in header]
    if missing:
        fail(f"RUN_OR_SWEEP_DIR: {progress} is not a CSV afedpg wrote (no column {missing[0]!r})")
    _checked_csv(progress, lambda rs: [float(r[c]) for r in rs for c in columns], rows)  # every value a number
    if not rows:
        print(f"{progress} has no updates yet; skipped")
    return bool(rows)


def _plot(args: argparse.Namespace) -> int:
    """:func:`cmd_plot` once its arguments are checked."""
    runs: list[Path] = []
    drew_sweep = False
    for text in args.paths:
        path = Path(text)
        if not path.is_dir():
            fail(f"RUN_OR_SWEEP_DIR: {text!r} is not a directory")
        found = False
        if (path / sample_efficiency.RESULTS_CSV).is_file():
            _require_rows(path / sample_efficiency.RESULTS_CSV)
            print(_checked_csv(path / sample_efficiency.RESULTS_CSV, sample_efficiency.redraw, path))
            found = drew_sweep = True
        if (path / speedup.RESULTS_CSV).is_file():
            _require_rows(path / speedup.RESULTS_CSV)
            print(_checked_csv(path / speedup.RESULTS_CSV, speedup.redraw, path))
            found = drew_sweep = True
        if (path / "progress.csv").is_file():
            if _plottable_run(path / "progress.csv"):
                runs.append(path)
            found = True
        if not found and (path / hyper.RESULTS_CSV).is_file():
            fail(
                f"RUN_OR_SWEEP_DIR: {text!r} holds a hyper sweep, which has no figure; its table is {hyper.RESULTS_CSV}"
            )
        if not found:
            fail(f"RUN_OR_SWEEP_DIR: {text!r} has no results.csv, speedup.csv or progress.csv")
    if not runs and not drew_sweep:
        fail("RUN_OR_SWEEP_DIR: nothing to plot yet: no run has applied an update (plot again once it has)")
    if runs:
        default = runs[0] / "learning_curve.png" if len(runs) == 1 else Path("learning_curves.png")
        print(plot_learning_curves(runs, Path(args.out) if args.out else default))
    return 0
