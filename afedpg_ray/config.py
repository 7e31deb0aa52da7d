"""Typed, frozen run configuration, validated once at the edge and saved as ``config.json``.

Every option has a docstring-style comment; derived values are properties. Tune and the tests pass
plain dicts through :func:`config_from_dict`, which validates exactly as the CLI does.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALGORITHMS = ("afedpg", "vanilla", "fedpg", "a3c", "pg", "rennala")
SCHEDULES = ("constant", "theory", "linear")
A3C_OPTIMIZERS = ("adam", "sgd")
AGENT_RESOURCE_KEYS = ("num_cpus", "memory", "resources")
"""The requests an ``--agent-resources`` group may make (what :func:`placement.agent_options` passes to Ray)."""
LOG_STD_LIMIT = 20.0
"""Largest ``|log_std_init|``: exp(20) ~ 5e8 is already a degenerate policy, and exp(+-100) over/underflows float32."""
SEED_LIMIT = 2**32
"""Seeds lie in ``[0, 2**32)``: numpy, torch and gymnasium accept these even with the per-agent offsets added."""


class ConfigError(ValueError):
    """A user-facing configuration problem: the message names the option and what is allowed."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class AgentResources:
    """Ray resource request for one group of agents (``first``..``last`` inclusive)."""

    first: int
    last: int
    num_cpus: float | None = None
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EstimatorConfig:
    """How an agent turns its samples into a policy-gradient estimate (see ``rollout.py``)."""

    gamma: float = 0.99
    """Discount factor of the return."""
    gae_lambda: float = 0.95
    """GAE(lambda) mixing; 1.0 gives the Monte-Carlo reward-to-go (GPOMDP with a critic baseline)."""
    critic: bool = True
    """Private per-agent value network as baseline (never sent); False uses the batch-mean baseline, and then
    reward-to-go stops at the batch's end (no value to bootstrap an unfinished episode from)."""
    critic_lr: float = 1e-3
    """Adam step size of the private critic."""
    critic_epochs: int = 5
    """Passes over each batch when fitting the critic."""
    normalize_advantages: bool = True
    """Standardise advantages within a batch."""
    normalize_obs: bool = True
    """Observation normaliser whose statistics are merged at the server and shipped with theta."""
    scale_rewards: bool = True
    """Divide rewards by a running std of the discounted return, whose statistics (like the observation
    normaliser's) are merged at the server and shipped with theta, so every agent scales alike."""
    log_std_init: float = 0.0
    """Initial state-independent log standard deviation of the Gaussian policy (``|x| <= 20``)."""
    entropy_coef: float = 0.0
    """Weight of the policy-entropy bonus added to the ascent direction."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run: environment, algorithm, agents, budget and outputs."""

    env: str = "CartPole-v1"
    """Any gymnasium environment id with a Box observation space."""
    algo: str = "afedpg"
    """Update rule: afedpg | vanilla | fedpg | a3c | pg | rennala (``ALGORITHMS``)."""
    agents: int = 4
    """Number of rollout agents (pg uses exactly one)."""
    hetero: str = "linear:4"
    """Per-agent slowdown profile: none | linear:R | sqrt | straggler:R | lognormal:SIGMA."""
    iteration_time: float | None = None
    """If set, agent i's iteration is padded to exactly s_i * T seconds."""
    comm_delay: tuple[float, ...] = ()
    """Extra seconds per iteration modelling communication; one value for all or one per agent."""
    samples: int = 200_000
    """Total environment steps over all agents."""
    batch: int = 1000
    """Environment steps per gradient (per agent iteration)."""
    num_envs: int = 4
    """Environments each agent steps at once (batched inference)."""
    seed: int = 0
    """Seed of the run; agent i uses seed + 1000 * (i + 1)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the policy (and critic) MLP."""
    schedule: str = "constant"
    """Step-size schedule: constant | theory (N-PG-IGT: eta0*2/(k+2), alpha0*(2/(k+2))^0.8) |
    linear (eta anneals from eta0 to 5% of it over the run's expected updates, alpha fixed)."""
    eta0: float = 0.03
    """Normalised step length (constant) or its scale (theory)."""
    alpha0: float = 0.2
    """Momentum weight (constant) or its scale (theory)."""
    alpha_end: float | None = None
    """If set (constant/linear schedules), alpha anneals geometrically from alpha0 to this over the run."""
    lr: float = 3e-3
    """A3C's step size - only used by ``a3c``."""
    a3c_optimizer: str = "adam"
    """A3C's step: ``adam`` (Adam's, as A3C implementations use) or ``sgd`` (the plain ``theta + lr * g``);
    ALGORITHMS.md allows either. ``sgd`` needs its own ``lr``: Adam's steps do not scale with the gradient."""
    collect: int | None = None
    """rennala only: fresh gradients averaged per step (None: one per agent, ``--agents``)."""
    staleness_power: float = 0.0
    """FedAsync-style staleness weighting ``(delay + 1) ** -power`` of each arrival (0: none): it scales
    the momentum weight of afedpg/vanilla and the arrival's share of a3c's Adam first moment."""
    max_grad_norm: float = 1e6
    """Gradients with a larger norm are rejected by the server."""
    byzantine: str = ""
    """``K:ATTACK``: the first K agents send corrupted gradients (sign_flip, scale:X, random_noise, nan)."""
    robust: str = "none"
    """Server-side defence: none | filter (rejects an agent whose running mean direction points against the
    median of all agents' means, or whose norm is far above the agents' typical norm; see ``byzantine.py``)."""
    checkpoint_every: int = 25
    """The server's state is checkpointed every this many updates (and at the start and the end)."""
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    """Gradient estimator options."""
    agent_cpus: float | None = None
    """CPUs each agent requests from Ray; None spreads the cluster's CPUs over the agents."""
    agent_resources: tuple[AgentResources, ...] = ()
    """Per-group Ray resource requests (override agent_cpus for the agents they cover)."""
    address: str | None = None
    """Existing Ray cluster address; None starts a local Ray instance."""
    placement_timeout: float = 120.0
    """Seconds every agent may wait for its resources before the run reports which one cannot be placed."""
    agent_timeout: float | None = None
    """Seconds an agent's iteration may take before it counts as that agent's failure (killed, then restarted
    or dropped, as a crash is): a hung environment or a node cut off but not yet declared dead would
    otherwise stall a synchronous round forever, or silently idle an asynchronous agent. None: wait forever."""
    out: str | None = None
    """Output directory; None picks runs/<env>-<algo>-n<agents>-s<seed>-<timestamp>."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files next to progress.csv."""

    @property
    def lookahead(self) -> bool:
        """Whether the rule samples at the extrapolated point."""
        return self.algo in ("afedpg", "fedpg", "pg", "rennala")

    @property
    def synchronous(self) -> bool:
        """Whether the rule waits for all agents every round."""
        return self.algo == "fedpg"

    @property
    def gradients_per_update(self) -> int:
        """Gradients one update averages: N for FedPG, ``collect`` for rennala, else 1."""
        if self.algo == "rennala":
            return self.collect if self.collect is not None else self.agents
        return self.agents if self.synchronous else 1

    @property
    def gradients_spent_per_update(self) -> int:
        """Gradients (batches of samples) one update costs. For rennala that is the M it averages plus
        about N - 1 superseded ones: after a step, every other agent is still computing at the old point
        and delivers one gradient the step has made useless (measured: 463 superseded in 67 steps at
        N = M = 8, against 7 x 67 = 469)."""
        if self.algo == "rennala":
            return self.gradients_per_update + self.agents - 1
        return self.gradients_per_update

    @property
    def expected_updates(self) -> int:
        """Updates the sample budget buys: the horizon ``linear`` and ``--alpha-end`` anneal over."""
        return max(1, self.samples // (self.batch * self.gradients_spent_per_update))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the config as pretty JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


MAX_STALENESS_POWER = 10.0
"""Largest --staleness-power: beyond it every stale gradient is weighted to nothing."""
MAX_WAIT_S = 3600.0
"""Longest modelled iteration or communication delay: an hour per iteration is a typo, not a profile."""
MAX_AGENTS = 4096
"""Largest --agents: each agent is a Ray actor with its own process (about 180 MiB with torch)."""
MAX_PLACEMENT_TIMEOUT_S = 86400.0
MAX_HIDDEN, MAX_LAYERS = 16384, 16
"""Largest policy layer width and depth: beyond them the flat parameter vector stops fitting in memory."""
MAX_HIDDEN_WEIGHTS = 50_000_000
"""Largest number of hidden-to-hidden weights (width and depth limits alone allow 4e9: 32 GB a vector)."""
MAX_NUM_ENVS = 4096
"""Largest --num-envs: every environment of an agent is alive at once in its process."""
MAX_STEP = 1000.0
"""Largest --eta0, --lr, --critic-lr and --entropy-coef: a step of norm 1000 (parameters are O(1)) is a typo."""
MAX_CRITIC_EPOCHS = 1000
"""Largest --critic-epochs: each is a pass over the whole batch, every iteration."""
MIN_ROBUST_AGENTS = 3
"""--robust filter compares each agent with the median of all agents: with one or two there is no majority."""
MAX_AGENT_CPUS = 1024
MAX_BATCH = 1_000_000
"""Largest --batch: an agent holds a whole batch (observations, actions, log-probs) in memory, and a
batch of a million steps is already 1000 times the MuJoCo default."""


def _is_number(value: Any) -> bool:
    """A finite real number. Bools are excluded (JSON ``true`` is no step size); numpy scalars from Tune pass."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive(option: str, value: Any, integer: bool = False) -> None:
    kind = "integer" if integer else "number"
    if not _is_number(value) or value <= 0 or (integer and not isinstance(value, numbers.Integral)):
        raise ConfigError(option, f"must be a positive {kind}, got {value!r}")


def _non_negative(option: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise ConfigError(option, f"must be a non-negative number, got {value!r}")


def _at_most(option: str, value: float, limit: float, why: str) -> None:
    """Refuse ``value`` above ``limit`` (``value`` already checked to be a number), saying ``why``."""
    if value > limit:
        raise ConfigError(option, f"must be at most {limit:g} ({why}), got {value!r}")


def _in_unit(option: str, value: Any, low_open: bool = True) -> None:
    ok = _is_number(value) and ((0 < value <= 1) if low_open else (0 <= value <= 1))
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(option, f"must be a number in {interval}, got {value!r}")


def _ray_quantity(where: str, value: Any) -> None:
    """A Ray resource amount: non-negative, and Ray keeps only 4 decimals (so 0 < x < 0.0001 is refused)."""
    if not _is_number(value) or value < 0:
        raise ConfigError("--agent-resources", f"{where} must be a non-negative number, got {value!r}")
    if 0 < value < 1e-4:
        raise ConfigError("--agent-resources", f"{where} must be 0 or at least 0.0001 (Ray's precision), got {value!r}")


def _check_agent_resources(groups: tuple[AgentResources, ...], agents: int) -> None:
    """Check each group's agent range and requests here, so Ray never sees a request it would refuse."""
    for group in groups:
        if not isinstance(group, AgentResources):
            raise ConfigError("--agent-resources", f"expected agent groups, got {group!r}")
        span = f"{group.first}" if group.first == group.last else f"{group.first}-{group.last}"
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in (group.first, group.last)):
            raise ConfigError("--agent-resources", f"agent range {span} must be integers")
        if not 0 <= group.first <= group.last < agents:
            raise ConfigError("--agent-resources", f"agent range {span} is outside 0-{agents - 1}")
    claimed: dict[int, str] = {}
    for group in groups:  # an agent in two groups would silently get a mix of both requests
        span = f"{group.first}" if group.first == group.last else f"{group.first}-{group.last}"
        for agent_id in range(group.first, group.last + 1):
            if agent_id in claimed:
                raise ConfigError(
                    "--agent-resources", f"agent {agent_id} is in two groups ({claimed[agent_id]} and {span})"
                )
            claimed[agent_id] = span
        if group.num_cpus is not None:
            _ray_quantity(f"agents {span}: num_cpus", group.num_cpus)
        memory = group.memory
        if memory is not None and (not isinstance(memory, numbers.Integral) or isinstance(memory, bool) or memory < 1):
            raise ConfigError(
                "--agent-resources", f"agents {span}: memory must be a positive integer (bytes), got {memory!r}"
            )
        if not isinstance(group.resources, dict):
            raise ConfigError(
                "--agent-resources", f'agents {span}: resources must map names to amounts, e.g. {{"fast_node": 1}}'
            )
        for name, amount in group.resources.items():
            if not isinstance(name, str) or not name:
                raise ConfigError("--agent-resources", f"agents {span}: resource names must be strings, got {name!r}")
            if name in ("CPU", "GPU"):  # Ray refuses these inside resources
                raise ConfigError(
                    "--agent-resources", f"agents {span}: {name} is not allowed in resources; use num_cpus"
                )
            _ray_quantity(f"agents {span}: resource {name!r}", amount)
        _ray_accepts(group, span)


def _ray_accepts(group: AgentResources, span: str) -> None:
    """Ask Ray's own option check (pure, no cluster needed) about the request ``agent_options`` will make:
    Ray knows rules this module does not, such as the TPU counts that form a chip configuration, and would
    otherwise refuse them only when the agents are created, after the run has started."""
    try:  # a private module: a Ray that moved it still refuses the request, at actor creation (RunError)
        from ray._common.ray_option_utils import validate_actor_options
    except ImportError:
        return
    options: dict[str, Any] = {"num_cpus": group.num_cpus, "memory": group.memory, "resources": group.resources}
    try:
        validate_actor_options({k: v for k, v in options.items() if v is not None and v != {}}, in_options=True)
    except Exception as err:  # noqa: BLE001 - ValueError mostly, but any refusal is the request's fault
        raise ConfigError("--agent-resources", f"agents {span}: Ray refuses the request: {first_line(err)}") from None


def agent_resources_from_dict(raw: Any) -> AgentResources:
    """Rebuild one :class:`AgentResources` from its ``config.json`` / Tune dict; unknown keys are refused."""
    known = ("first", "last", *AGENT_RESOURCE_KEYS)
    if not isinstance(raw, dict):
        raise ConfigError("--agent-resources", f"each group must be an object with keys {', '.join(known)}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError("--agent-resources", f"unknown key {unknown[0]!r}; known keys are {', '.join(known)}")
    if "first" not in raw or "last" not in raw:
        raise ConfigError("--agent-resources", f"each group needs first and last agent ids, got {raw!r}")
    return AgentResources(**raw)


def validate(config: TrainConfig) -> TrainConfig:
    """Check every option; raise :class:`ConfigError` naming the first bad one. Returns ``config``.

    Only checks that need no Ray; the environment is created once per process (see :func:`check_env_id`).
    """
    from afedpg_ray.byzantine import ROBUST_CHOICES, parse_attack  # local imports: avoid a cycle
    from afedpg_ray.heterogeneity import parse_profile

    if config.algo not in ALGORITHMS:
        raise ConfigError("--algo", f"unknown algorithm {config.algo!r}; choose one of {', '.join(ALGORITHMS)}")
    if config.schedule not in SCHEDULES:
        raise ConfigError("--schedule", f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _positive("--agents", config.agents, integer=True)
    if config.agents > MAX_AGENTS:
        raise ConfigError("--agents", f"must be at most {MAX_AGENTS} (one Ray actor process each), got {config.agents}")
    if config.algo == "pg" and config.agents != 1:
        raise ConfigError("--agents", f"pg is the single-agent rule and needs --agents 1, got {config.agents}")
    _positive("--samples", config.samples, integer=True)
    _positive("--batch", config.batch, integer=True)
    _positive("--num-envs", config.num_envs, integer=True)
    _at_most("--num-envs", config.num_envs, MAX_NUM_ENVS, "every environment of an agent is alive at once")
    if config.batch < config.num_envs:
        raise ConfigError("--batch", f"must be at least --num-envs ({config.num_envs}), got {config.batch}")
    if config.batch > MAX_BATCH:
        raise ConfigError("--batch", f"must be at most {MAX_BATCH:,} steps per gradient, got {config.batch}")
    if config.batch % config.num_envs:  # each vector step yields num_envs samples; the batch would overshoot
        below = config.batch - config.batch % config.num_envs
        raise ConfigError(
            "--batch",
            f"must be a multiple of --num-envs ({config.num_envs}) so every gradient uses exactly --batch steps, "
            f"got {config.batch}; use {below} or {below + config.num_envs}",
        )
    if config.iteration_time is not None:
        _positive("--iteration-time", config.iteration_time)
        if config.iteration_time > MAX_WAIT_S:
            raise ConfigError(
                "--iteration-time", f"must be at most {MAX_WAIT_S:g} seconds, got {config.iteration_time!r}"
            )
    for delay in config.comm_delay:
        if not _is_number(delay) or delay < 0 or delay > MAX_WAIT_S:
            raise ConfigError("--comm-delay", f"must be between 0 and {MAX_WAIT_S:g} seconds, got {delay!r}")
    if len(config.comm_delay) not in (0, 1, config.agents):
        raise ConfigError(
            "--comm-delay", f"give one value or one per agent ({config.agents}), got {len(config.comm_delay)}"
        )
    if not config.hidden or any(
        not _is_number(h) or not isinstance(h, numbers.Integral) or h < 1 for h in config.hidden
    ):
        raise ConfigError("--hidden", f"must be positive layer widths such as 64,64, got {config.hidden!r}")
    if max(config.hidden) > MAX_HIDDEN or len(config.hidden) > MAX_LAYERS:
        raise ConfigError(
            "--hidden",
            f"at most {MAX_LAYERS} layers of at most {MAX_HIDDEN} units (the server and every agent hold the "
            f"policy), got {config.hidden!r}",
        )
    hidden_weights = sum(a * b for a, b in zip(config.hidden, config.hidden[1:], strict=False))
    if hidden_weights > MAX_HIDDEN_WEIGHTS:
        raise ConfigError(
            "--hidden",
            f"{hidden_weights:,} hidden-to-hidden weights, more than {MAX_HIDDEN_WEIGHTS:,} (the server and every "
            f"agent hold several copies of the policy), got {config.hidden!r}",
        )
    _positive("--checkpoint-every", config.checkpoint_every, integer=True)
    if config.address is not None and not str(config.address).strip():  # it would quietly start a local Ray
        raise ConfigError("--address", "give auto, host:port or ray://host:port, got an empty string")
    if config.address:
        from afedpg_ray.address import AddressError, parse_address  # local import: address imports nothing of ours

        try:
            parse_address(config.address)
        except AddressError as err:
            raise ConfigError("--address", str(err).removeprefix("--address: ")) from None
    if config.out is not None and not config.out.strip():  # it would quietly become the default runs/ directory
        raise ConfigError("--out", "give a directory for the run, got an empty string")
    _positive("--placement-timeout", config.placement_timeout)
    if config.placement_timeout > MAX_PLACEMENT_TIMEOUT_S:
        raise ConfigError(
            "--placement-timeout",
            f"must be at most {MAX_PLACEMENT_TIMEOUT_S:g} seconds, got {config.placement_timeout!r}",
        )
    if config.agent_timeout is not None:
        _positive("--agent-timeout", config.agent_timeout)
        if config.agent_timeout > MAX_PLACEMENT_TIMEOUT_S:
            raise ConfigError(
                "--agent-timeout", f"must be at most {MAX_PLACEMENT_TIMEOUT_S:g} seconds, got {config.agent_timeout!r}"
            )
    _positive("--eta0", config.eta0)
    _positive("--lr", config.lr)
    if config.a3c_optimizer not in A3C_OPTIMIZERS:
        raise ConfigError("--a3c-optimizer", f"choose {' or '.join(A3C_OPTIMIZERS)}, got {config.a3c_optimizer!r}")
    for option, value in (("--eta0", config.eta0), ("--lr", config.lr)):
        _at_most(option, value, MAX_STEP, "a step that large is a typo")
    _positive("--max-grad-norm", config.max_grad_norm)
    _in_unit("--alpha0", config.alpha0)
    if config.alpha_end is not None:
        _in_unit("--alpha-end", config.alpha_end)
        if config.schedule == "theory":
            raise ConfigError("--alpha-end", "the theory schedule decays alpha itself; use constant or linear")
        if config.algo == "a3c":  # a3c has no momentum weight: the option would silently do nothing
            raise ConfigError(
                "--alpha-end", "a3c has no momentum weight alpha; drop --alpha-end or pick another --algo"
            )
    if config.collect is not None:
        _positive("--collect", config.collect, integer=True)
        if config.algo != "rennala":  # the option would silently do nothing
            raise ConfigError("--collect", f"only rennala collects gradients per step; drop it for {config.algo}")
    one_update = config.batch * config.gradients_per_update
    if config.samples < one_update:  # the run would still take one update, overshooting the budget
        raise ConfigError(
            "--samples",
            f"must cover at least one update ({config.gradients_per_update} x --batch {config.batch} = "
            f"{one_update} steps), got {config.samples}; raise --samples or lower --batch",
        )
    _non_negative("--staleness-power", config.staleness_power)
    if config.staleness_power > MAX_STALENESS_POWER:
        raise ConfigError(
            "--staleness-power",
            f"must be at most {MAX_STALENESS_POWER:g} (a power of 2 already weighs a delay of 7 by 1/64)",
        )
    if config.staleness_power > 0 and config.algo in ("fedpg", "pg", "rennala"):  # the option would silently do nothing
        raise ConfigError(
            "--staleness-power", f"{config.algo} applies no stale gradient; use it with afedpg, vanilla or a3c"
        )
    if config.agent_cpus is not None:
        _positive("--agent-cpus", config.agent_cpus)
        if config.agent_cpus < 1e-4:  # Ray keeps 4 decimals: the request would become 0 CPUs
            raise ConfigError("--agent-cpus", f"must be at least 0.0001 (Ray's precision), got {config.agent_cpus!r}")
        if config.agent_cpus > MAX_AGENT_CPUS:
            raise ConfigError("--agent-cpus", f"must be at most {MAX_AGENT_CPUS}, got {config.agent_cpus!r}")
    _check_agent_resources(config.agent_resources, config.agents)
    seed = config.seed
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError("--seed", f"must be an integer in [0, 2**32), got {seed!r}")
    est = config.estimator
    if not isinstance(est, EstimatorConfig):
        raise ConfigError("estimator", f"must be an object of estimator options, got {est!r}")
    _in_unit("--gamma", est.gamma)
    _in_unit("--gae-lambda", est.gae_lambda, low_open=False)
    _positive("--critic-lr", est.critic_lr)
    _at_most("--critic-lr", est.critic_lr, MAX_STEP, "a step that large is a typo")
    _positive("--critic-epochs", est.critic_epochs, integer=True)
    _at_most("--critic-epochs", est.critic_epochs, MAX_CRITIC_EPOCHS, "each is a pass over the whole batch")
    _non_negative("--entropy-coef", est.entropy_coef)
    _at_most("--entropy-coef", est.entropy_coef, MAX_STEP, "the bonus would drown the return")
    if not _is_number(est.log_std_init) or abs(est.log_std_init) > LOG_STD_LIMIT:
        raise ConfigError("--log-std-init", f"must be a number in [-20, 20], got {est.log_std_init!r}")
    for flag in ("critic", "normalize_advantages", "normalize_obs", "scale_rewards"):
        if not isinstance(getattr(est, flag), bool):  # a JSON string "false" would be truthy
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be true or false, got {getattr(est, flag)!r}")
    slowdowns = parse_profile(config.hetero, config.agents, config.seed)
    if config.iteration_time is not None and config.iteration_time * max(slowdowns) > MAX_WAIT_S:
        raise ConfigError(
            "--iteration-time",
            f"the slowest agent would take {config.iteration_time * max(slowdowns):g} s an iteration "
            f"(--hetero {config.hetero} x {config.iteration_time:g} s); keep it at most {MAX_WAIT_S:g} s",
        )
    parse_attack(config.byzantine, config.agents)
    if config.robust not in ROBUST_CHOICES:
        raise ConfigError("--robust", f"unknown defence {config.robust!r}; choose one of {', '.join(ROBUST_CHOICES)}")
    if config.robust == "filter" and config.agents < MIN_ROBUST_AGENTS:  # it would never reject anything
        raise ConfigError(
            "--robust",
            f"the filter compares each agent with the median of all agents and needs at least {MIN_ROBUST_AGENTS} "
            f"agents, got {config.agents}",
        )
    check_env_id(config.env)
    return config


def check_env_id(env_id: str) -> None:
    """Raise :class:`ConfigError` unless gymnasium knows ``env_id``, can create it and its spaces are supported.

    The environment is created once per process and id (cached), so Tune grids and repeated
    validation stay cheap while a missing dependency (MuJoCo, Box2D) still fails before Ray starts.
    """
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id:
        raise ConfigError("--env", f"must be a gymnasium environment id such as CartPole-v1, got {env_id!r}")
    if env_id not in gym.registry:
        close = _close_env_ids(env_id, list(gym.registry))
        hint = f" (did you mean {', '.join(close)}?)" if close else " (e.g. CartPole-v1, Hopper-v5)"
        raise ConfigError("--env", f"unknown gymnasium environment {env_id!r}{hint}")
    problem = _env_problem(env_id)
    if problem:
        raise ConfigError("--env", problem)


def _close_env_ids(env_id: str, known: list[str]) -> list[str]:
    """Up to five registered ids resembling ``env_id``, closest first: a typo anywhere in the name
    (``HalfCheetha-v5``, ``Swimer-v5``), a wrong case (``cartpole-v1``), or the right name at another version."""
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(env_id.lower(), list(by_lower), n=5, cutoff=0.75)
    if not close:  # the name right, the version unknown (Hopper-v9): every version of it
        stem = env_id.split("-")[0].lower()
        close = [name for name in by_lower if name.split("-")[0] == stem][:5]
    return [by_lower[name] for name in close]


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, without terminal colour codes (gymnasium colours its
    warnings), else the error's type name: error messages for one-line reports."""
    lines = _message_lines(err)
    return lines[0] if lines else type(err).__name__


def last_line(err: BaseException) -> str:
    """The last non-empty line of an error's message (a Ray error's is the remote exception, after its
    traceback), without colour codes, else the error's type name."""
    lines = _message_lines(err)
    return lines[-1] if lines else type(err).__name__


def _message_lines(err: BaseException) -> list[str]:
    return [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]


def has_discrete_actions(env_id: str) -> bool:
    """Whether ``env_id`` (already checked by :func:`check_env_id`) has a Discrete action space."""
    return _env_facts(env_id).discrete


def _env_problem(env_id: str) -> str | None:
    """Why ``env_id`` cannot be trained on, or None (see :func:`_env_facts`)."""
    return _env_facts(env_id).problem


@dataclass(frozen=True)
class EnvFacts:
    """What validation needs to know of an environment, from making it once."""

    problem: str | None
    """Why it cannot be trained on, or None."""
    discrete: bool = False
    """Whether its actions are Discrete."""


@functools.cache  # lru_cache without a bound: one entry per env id
def _env_facts(env_id: str) -> EnvFacts:
    """``env_id`` made once (then closed) and its spaces checked: why it cannot be trained on, if so.

    The space rules are :mod:`afedpg_ray.policy`'s: Box observations, Discrete or 1-D Box actions.
    Failures are cached too, so a Tune grid over a bad id does not retry the import per trial.
    """
    import gymnasium as gym

    from afedpg_ray.mujoco_warnings import route_mujoco_warnings

    route_mujoco_warnings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter would break the one-line error
            env = gym.make(env_id)
    except gym.error.DependencyNotInstalled as err:
        return EnvFacts(f"{env_id} needs a package that is not installed: {first_line(err)}")
    except Exception as err:  # any make-time failure would recur in every agent: report it once, here
        return EnvFacts(f"cannot create {env_id}: {type(err).__name__}: {first_line(err)}")
    try:
        obs_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box):
        return EnvFacts(f"{env_id} has observation space {obs_space}; only Box observations are supported")
    if not (
        isinstance(action_space, gym.spaces.Discrete)
        or (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1)
    ):
        return EnvFacts(f"{env_id} has action space {action_space}; only Discrete or 1-D Box actions are supported")
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if discrete and int(action_space.start) != 0:  # the policy's actions are indices 0..n-1
        start = action_space.start
        return EnvFacts(f"{env_id} numbers its actions from {start}; only Discrete actions from 0 are supported")
    return EnvFacts(None, discrete=discrete)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Rebuild and validate a :class:`TrainConfig` from a plain dict (config.json, Tune)."""
    raw = dict(raw)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option; known options are {', '.join(sorted(known))}")
    est = raw.pop("estimator", {}) or {}
    if isinstance(est, dict):
        est_known = {f.name for f in dataclasses.fields(EstimatorConfig)}
        bad = sorted(set(est) - est_known)
        if bad:
            raise ConfigError(bad[0], f"unknown estimator option; known: {', '.join(sorted(est_known))}")
        est = EstimatorConfig(**est)
    groups_raw = raw.pop("agent_resources", ()) or ()
    if not isinstance(groups_raw, (list, tuple)):
        raise ConfigError("--agent-resources", f"must be a list of agent groups, got {groups_raw!r}")
    groups = tuple(g if isinstance(g, AgentResources) else agent_resources_from_dict(g) for g in groups_raw)
    for key in ("hidden", "comm_delay"):
        if key in raw:
            if not isinstance(raw[key], (list, tuple)):  # a hand-edited config.json: "hidden": 64
                option = "--" + key.replace("_", "-")
                raise ConfigError(option, f"must be a list of numbers such as [64, 64], got {raw[key]!r}")
            raw[key] = tuple(raw[key])
    return validate(TrainConfig(estimator=est, agent_resources=groups, **raw))


RUN_ID_KEY = "run_id"
"""config.json's entry beside the options: the run's identity, also stamped on each of its checkpoints."""


def load_config(path: Path) -> TrainConfig:
    """Load ``config.json`` written by a run."""
    raw = json.loads(path.read_text())
    if isinstance(raw, dict):
        raw.pop(RUN_ID_KEY, None)
    return config_from_dict(raw)
