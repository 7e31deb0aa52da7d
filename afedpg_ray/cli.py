"""The command line: ``afedpg train``, ``afedpg eval`` and friends.

Bad input gets one line naming the option and what is allowed, and exit code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from afedpg_ray import runlock
from afedpg_ray.config import (
    AGENT_RESOURCE_KEYS,
    ALGORITHMS,
    RUN_ID_KEY,
    SCHEDULES,
    AgentResources,
    ConfigError,
    EstimatorConfig,
    TrainConfig,
    config_from_dict,
    has_discrete_actions,
)
from afedpg_ray.envs import env_defaults
from afedpg_ray.heterogeneity import PROFILE_HELP

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``afedpg: error: ...`` and exit 2 (a subcommand's parser too: its prog is ``afedpg train``,
        but every other error of the CLI starts ``afedpg: error:``)."""
        self.exit(EXIT_USAGE, f"{self.prog.split()[0]}: error: {message}\n")


DEFAULT_PREFIX = "afedpg"
"""Name prefix of a run's actors: ``<prefix>-server`` and ``<prefix>-agent-<i>``."""
ACTOR_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error and exit."""
    print(f"afedpg: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _items(text: str, kind: type, what: str) -> tuple[Any, ...]:
    """Comma-separated values of ``kind``; an empty item (``64,,64``, ``""``) is refused, not skipped."""
    try:
        return tuple(kind(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    return _items(text, float, "numbers")


def int_list(text: str) -> tuple[int, ...]:
    """Parse comma-separated integers such as ``1,2,4,8`` (an argparse type)."""
    return _items(text, int, "integers")


MAX_STEPS = 2**63 - 1
"""Largest step count: the counters are 64-bit integers (numpy, torch, Ray's metrics)."""


def step_count(text: str) -> int:
    """A whole number of environment steps, also written as researchers write budgets: ``1e6``, ``2.5e5``,
    ``1_000_000`` (an argparse type; whether it is positive is the config's check)."""
    try:
        value: float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not (value == math.inf or (math.isfinite(value) and value == int(value))):
        raise argparse.ArgumentTypeError(
            f"must be a whole number of environment steps, e.g. 1000000 or 1e6; got {text!r}"
        )
    if value > MAX_STEPS:  # a float compares exactly with the int; a negative count is the config's to refuse
        raise argparse.ArgumentTypeError(
            f"too large: at most {MAX_STEPS} (about 9.2e18) environment steps; got {text!r}"
        )
    return int(value)


def _bounded(text: str, kind: type, allow_zero: bool) -> Any:
    """``text`` as an ``int`` or a finite ``float`` above 0 (or at least 0), else an ``ArgumentTypeError``."""
    what = ("a non-negative " if allow_zero else "a positive ") + ("integer" if kind is int else "number")
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):  # NaN fails isfinite
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1, e.g. a repetition count (an argparse type for the benchmark scripts)."""
    return _bounded(text, int, allow_zero=False)


def non_negative_int(text: str) -> int:
    """An integer >= 0, e.g. ``--eval-episodes`` where 0 means none (an argparse type)."""
    return _bounded(text, int, allow_zero=True)


def positive_float(text: str) -> float:
    """A finite number > 0, e.g. seconds (an argparse type: NaN and inf are refused)."""
    return _bounded(text, float, allow_zero=False)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_agent_resources(text: str) -> tuple[AgentResources, ...]:
    """Parse ``'{"0-3": {"num_cpus": 1, "resources": {"fast_node": 1}}, "4": {...}}'``."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            "--agent-resources", f'not valid JSON ({err.msg}); e.g. \'{{"0-3": {{"resources": {{"fast_node": 1}}}}}}\''
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError("--agent-resources", 'must be a JSON object mapping agent ranges like "0-3" to requests')
    keys = [key for key, _ in json.loads(text, object_pairs_hook=list)]
    repeated = [key for key in keys if keys.count(key) > 1]
    if repeated:  # json keeps the last of repeated keys: the earlier request would vanish
        raise ConfigError("--agent-resources", f"agent range {repeated[0]!r} is given twice")
    groups = []
    for key, request in raw.items():
        first, dash, last = str(key).partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise ConfigError("--agent-resources", f'agent range {key!r} must look like "3" or "0-3"') from None
        known = ", ".join(AGENT_RESOURCE_KEYS)
        if not isinstance(request, dict):
            raise ConfigError("--agent-resources", f"request for {key!r} must be an object with keys {known}")
        unknown = sorted(set(request) - set(AGENT_RESOURCE_KEYS))
        if unknown:
            raise ConfigError("--agent-resources", f"request for {key!r}: unknown key {unknown[0]!r}; known: {known}")
        # values are passed as given: validate() checks them (the same checks cover config.json and Tune)
        groups.append(
            AgentResources(lo, hi, request.get("num_cpus"), request.get("memory"), request.get("resources", {}))
        )
    return tuple(groups)


ESTIMATOR_FLAGS = {f.name for f in dataclasses.fields(EstimatorConfig)}


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and the sweeps. Defaults are None so the env table can apply."""
    d = TrainConfig()
    e = EstimatorConfig()
    add = parser.add_argument
    add("--env", help=f"gymnasium environment id (default {d.env})")
    add("--algo", help=f"update rule: {', '.join(ALGORITHMS)} (default {d.algo})")
    add("--agents", type=int, help=f"number of agents (default {d.agents}; pg uses 1)")
    add("--hetero", help=f"slowdown profile: {PROFILE_HELP} (default {d.hetero})")
    add("--iteration-time", type=float, help="pad agent i's iteration to exactly s_i * T seconds")
    add("--comm-delay", type=_floats, help="extra seconds per iteration: one value, or one per agent")
    add("--samples", type=step_count, help=f"environment steps over all agents, e.g. 1e6 (default {d.samples})")
    add("--batch", type=int, help=f"environment steps per gradient (default {d.batch})")
    add("--num-envs", type=int, help=f"environments each agent steps at once (default {d.num_envs})")
    add("--seed", type=int, help=f"random seed, 0 <= seed < 2**32 (default {d.seed})")
    add("--hidden", type=int_list, help="hidden layer widths, e.g. 64,64")
    add("--schedule", help=f"step sizes: {', '.join(SCHEDULES)} (default {d.schedule}; per-env table may differ)")
    add("--eta0", type=float, help=f"normalised step length or its scale (default {d.eta0}; per-env table may differ)")
    add("--alpha0", type=float, help=f"momentum weight or its scale, in (0, 1] (default {d.alpha0})")
    add(
        "--alpha-end",
        type=float,
        help="anneal alpha geometrically from --alpha0 to this over the run (constant/linear schedules; default fixed)",
    )
    add("--lr", type=float, help=f"a3c's step size (default {d.lr}, for Adam)")
    add("--a3c-optimizer", help="a3c's step: adam (default) or sgd (the plain theta + lr * g; tune --lr for it)")
    add("--collect", type=int, help="rennala: fresh gradients averaged per step (default: --agents)")
    add(
        "--staleness-power",
        type=float,
        help="weigh an arrival of delay D by (D + 1)^-P in afedpg/vanilla's momentum, a3c's Adam moment (default 0)",
    )
    add("--max-grad-norm", type=float, help="reject gradients with a larger norm")
    add("--byzantine", help="K:ATTACK - the first K agents send sign_flip, scale:X, random_noise or nan gradients")
    add("--robust", help="server-side defence against Byzantine agents: none | filter (default none)")
    add("--checkpoint-every", type=int, help=f"checkpoint the server every K updates (default {d.checkpoint_every})")
    add("--gamma", type=float, help=f"discount (default {e.gamma}; per-env table may differ)")
    add("--gae-lambda", type=float, help=f"GAE lambda (default {e.gae_lambda})")
    add("--critic", type=_bool, help="private per-agent value network as baseline (true/false)")
    add("--critic-lr", type=float, help=f"critic Adam step size (default {e.critic_lr}; per-env table may differ)")
    add(
        "--critic-epochs",
        type=int,
        help=f"critic passes per batch (default {e.critic_epochs}; per-env table may differ)",
    )
    add("--normalize-obs", type=_bool, help="shared observation normaliser (true/false)")
    add("--scale-rewards", type=_bool, help="scale rewards by the return's running std (true/false)")
    add("--normalize-advantages", type=_bool, help="standardise advantages per batch (true/false)")
    add(
        "--log-std-init",
        type=float,
        help=f"initial log std of the Gaussian policy, in [-20, 20] (default {e.log_std_init})",
    )
    add("--entropy-coef", type=float, help="entropy bonus weight (default 0)")
    add("--agent-cpus", type=float, help="CPUs per agent (default: 95%% of the cluster's CPUs shared evenly, 0.01-1)")
    add("--agent-resources", help='per-agent Ray requests as JSON, e.g. \'{"0-3": {"resources": {"fast_node": 1}}}\'')
    add("--address", help="existing Ray cluster (auto, host:port or ray://...); default starts a local one")
    add(
        "--placement-timeout",
        type=float,
        help=f"seconds agents may wait for their resources, e.g. while an autoscaler adds nodes "
        f"(default {d.placement_timeout:g})",
    )
    add(
        "--agent-timeout",
        type=float,
        help="seconds an agent's iteration may take before it counts as a failed agent (killed and restarted; "
        "a modelled slowdown counts too, a restarted agent's start-up does not); default: wait forever",
    )


def config_from_args(
    args: argparse.Namespace, extra: dict[str, Any] | None = None, refuse_ignored: bool = True
) -> TrainConfig:
    """Merge defaults, the per-environment table and the given options into a validated config.

    ``refuse_ignored`` refuses a given option this config would ignore (a sweep checks each trial instead).
    """
    raw: dict[str, Any] = {}
    est: dict[str, Any] = {}
    given = {k.replace("-", "_"): v for k, v in vars(args).items() if v is not None}
    env = given.get("env", TrainConfig.env)
    table = env_defaults(env)
    est.update(table.pop("estimator", {}))
    raw.update(table)
    for key, value in given.items():
        if key in ESTIMATOR_FLAGS:
            est[key] = value
        elif key == "agent_resources":
            raw[key] = parse_agent_resources(value)
        elif key in {f.name for f in dataclasses.fields(TrainConfig)}:
            raw[key] = value
    if raw.get("algo") == "pg" and "agents" not in given:
        raw["agents"] = 1
    raw.update(extra or {})
    raw["estimator"] = est
    config = config_from_dict(raw)
    if refuse_ignored:
        refuse_ignored_options(given, config)
    return config


CRITIC_ONLY = ("gae_lambda", "critic_lr", "critic_epochs")
"""Estimator options that only the private critic uses (``--critic false`` takes a batch-mean baseline)."""


def refuse_ignored_options(given: dict[str, Any], config: TrainConfig) -> None:
    """Refuse an option given on the command line that this configuration would ignore, rather than run
    as if it did something (like ``--collect`` without rennala). Table defaults are not checked."""
    if not config.estimator.critic:
        for name in CRITIC_ONLY:
            if name in given:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(flag, "only the critic uses it (--critic false); drop it or use --critic true")
    if "schedule" in given and config.algo == "a3c" and config.schedule == "theory":
        raise ConfigError(
            "--schedule", "a3c's Adam step anneals with linear only (theory's rates are NIGT's); use linear or constant"
        )
    if "lr" in given and config.algo != "a3c":
        raise ConfigError("--lr", f"only a3c's Adam step uses it; {config.algo} steps with --eta0")
    if "a3c_optimizer" in given and config.algo != "a3c":
        raise ConfigError("--a3c-optimizer", f"only a3c uses it; {config.algo} steps with --eta0")
    for name in ("eta0", "alpha0"):
        if name in given and config.algo == "a3c":
            raise ConfigError(f"--{name}", "a3c takes a plain Adam step of size --lr (no NIGT step or momentum weight)")
    covered = {i for g in config.agent_resources if g.num_cpus is not None for i in range(g.first, g.last + 1)}
    if "agent_cpus" in given and len(covered) == config.agents:
        raise ConfigError("--agent-cpus", "every agent's --agent-resources group sets num_cpus; drop --agent-cpus")
    if "log_std_init" in given and has_discrete_actions(config.env):
        raise ConfigError("--log-std-init", f"{config.env} has discrete actions (no Gaussian log-std); drop it")


def build_parser() -> OneLineParser:
    """The ``afedpg`` argument parser with all subcommands."""
    parser = OneLineParser(prog="afedpg", description="AFedPG: asynchronous federated policy gradient on Ray")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train_p = sub.add_parser("train", help="train a shared policy with N asynchronous agents")
    add_train_options(train_p)
    train_p.add_argument("--out", help="output directory (default runs/<env>-<algo>-...)")
    train_p.add_argument(
        "--resume", help="continue the run in RUN_DIR from its checkpoint (--samples may raise the budget)"
    )
    train_p.add_argument(
        "--prefix",
        help="name prefix of the run's Ray actors (default afedpg); runs sharing a cluster need different ones, "
        "and afedpg status --prefix finds this one",
    )
    train_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    train_p.set_defaults(handler=cmd_train)
    eval_p = sub.add_parser("eval", help="run a saved policy deterministically and print its mean return")
    eval_p.add_argument("run_dir", help="a run directory written by afedpg train")
    eval_p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    eval_p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    eval_p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    eval_p.set_defaults(handler=cmd_eval)
    from tune_sweeps.cli import add_commands

    add_commands(sub)
    from afedpg_ray.status import add_commands as add_status_commands

    add_status_commands(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """``afedpg train`` (or ``afedpg train --resume RUN_DIR``)."""
    extra = {"progress": not args.no_progress, "tensorboard": not args.no_tensorboard}
    from afedpg_ray.address import AddressError
    from afedpg_ray.checkpoint import CheckpointError
    from afedpg_ray.errors import RunError
    from afedpg_ray.train import TrainingInterrupted, train

    prefix = DEFAULT_PREFIX if args.prefix is None else args.prefix
    if not ACTOR_PREFIX.fullmatch(prefix):
        fail(f"--prefix: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit; got {prefix!r}")
    if args.resume is not None:
        if not args.resume.strip():
            fail("--resume: give the run directory to continue")
        try:
            config = resume_config(args, extra)
        except RunError as err:  # its lock is held: exit 1, as train() refuses a locked run
            fail(str(err), code=1)
    else:
        config = config_from_args(args, extra)
        held = [name for name in RUN_FILES if config.out and (Path(config.out) / name).exists()]
        if held:
            fail(
                f"--out {config.out} already holds a run ({held[0]}); continue it with --resume {config.out} "
                "or choose another --out"
            )
    try:
        result = train(config, name_prefix=prefix, resume=bool(args.resume))
    except (CheckpointError, AddressError) as err:
        fail(str(err))
    except RunError as err:
        fail(str(err), code=1)
    except TrainingInterrupted as stop:
        fail(stop.advice(), code=stop.exit_code)
    returned = (
        f"{result.return_mean:.1f}"
        if math.isfinite(result.return_mean)
        else "n/a (no episode has finished yet: give more --samples)"
    )
    print(
        f"done: return {returned} after {result.samples_total} samples, {result.updates} updates "
        f"in {result.wall_time:.0f}s (start-up {result.startup_seconds:.0f}s, then "
        f"{result.updates_per_second:.1f} upd/s; mean delay {result.mean_delay:.2f}"
        + (
            f" over the updates after {result.log_starts_after_update} only (progress.csv lost the earlier rows)"
            if result.log_starts_after_update
            else ""
        )
        + (f", {result.superseded} gradients superseded" if result.superseded else "")
        + f"); outputs in {result.out_dir}\n"
        f"next: afedpg eval {result.out_dir}  (deterministic return); afedpg plot {result.out_dir}  (learning curve)"
    )
    return 0


RUN_FILES = ("checkpoint.pt", "policy.pt", "summary.json")
"""Files whose presence means a directory already holds a run (a fresh run would overwrite them). A
directory with only config.json, progress.csv and events.csv holds a run that stopped before its first
checkpoint (e.g. its agents could not be placed): there is nothing to resume, so a fresh run may reuse it."""


RESUME_MAY_CHANGE = {"resume", "samples", "address", "placement_timeout", "agent_timeout", "prefix"}
"""Options a resume may set: the budget, and where and how patiently the run continues."""
NOT_OPTIONS = {"no_progress", "no_tensorboard", "handler", "command", "argv"}
"""Namespace entries that are output flags or argparse's, not the run's config."""


def resume_config(args: argparse.Namespace, extra: dict[str, Any]) -> TrainConfig:
    """The config of the run in ``--resume RUN_DIR``.

    Only --samples, where and how patiently it runs (--address, --placement-timeout, --agent-timeout) and
    output flags may change; another option is accepted only with the run's own value.
    """
    run_dir = Path(args.resume)
    path = run_dir / "config.json"
    if not path.is_file():
        driver = runlock.holder(run_dir)  # a driver still starting holds the lock before it writes config.json
        if driver is not None:
            raise runlock.RunDirLockedError(
                f"{run_dir} is being trained by {driver}; wait for that run to end or stop it"
            )
        raise ConfigError("--resume", f"{path}: no config.json (is {run_dir} a run directory?)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError("--resume", f"{path}: corrupt config.json ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("--resume", f"{path}: unreadable config.json ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError("--resume", f"{path}: not a run's config (expected a JSON object)")
    raw.pop(RUN_ID_KEY, None)  # the run's identity, not an option
    raw.update(extra, out=str(run_dir))
    saved = config_from_dict(raw)
    _refuse_changed_options(args, saved, run_dir)
    if args.samples is not None:
        raw["samples"] = args.samples
    for option in ("address", "placement_timeout", "agent_timeout"):  # where the run continues may differ
        if getattr(args, option) is not None:
            raw[option] = getattr(args, option)
    return config_from_dict(raw)


def _refuse_changed_options(args: argparse.Namespace, saved: TrainConfig, run_dir: Path) -> None:
    """Refuse an option given with ``--resume`` whose value differs from the run's (``saved``): the checkpoint
    was trained with the run's. The run's own value, restated, is accepted."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in RESUME_MAY_CHANGE | NOT_OPTIONS}
    for name, value in sorted(given.items()):
        if name == "out":
            have, same = str(run_dir), Path(value).resolve() == run_dir.resolve()
        elif name == "agent_resources":
            have, same = "its own", parse_agent_resources(value) == saved.agent_resources
        else:
            holder = saved.estimator if name in ESTIMATOR_FLAGS else saved
            have = getattr(holder, name, None)
            same = hasattr(holder, name) and have == value
        if not same:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                "--resume",
                f"a resumed run keeps its config, which has {flag} {_shown(have)}; drop {flag} {_shown(value)}",
            )


def _shown(value: Any) -> str:
    """An option's value as it is typed: ``64,64``, ``true``, ``unset``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "unset" if value is None else str(value)


def cmd_eval(args: argparse.Namespace) -> int:
    """``afedpg eval RUN_DIR``."""
    if args.episodes < 1:
        fail(f"--episodes: must be a positive integer, got {args.episodes}")
    if not 0 <= args.seed < 2**32:
        fail(f"--seed: must be between 0 and 2**32 - 1, got {args.seed}")
    from afedpg_ray.rollout import evaluate
    from afedpg_ray.train import load_policy

    try:
        policy, stats, env = load_policy(Path(args.run_dir))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    returns = evaluate(policy, stats, env, args.episodes, args.seed, deterministic=not args.stochastic)
    mean = sum(returns) / len(returns)
    print(
        f"{env}: mean return {mean:.1f} over {len(returns)} episodes (min {min(returns):.1f}, max {max(returns):.1f})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``afedpg`` console script."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv  # a sweep records its command, so that --resume can rebuild the same trials
        return args.handler(args)
    except ConfigError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
