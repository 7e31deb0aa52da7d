"""A generic hyperparameter sweep over any train option: grid search, or random search with ``--random N``.

``--grid 'eta0=0.003,0.01,0.03'`` sweeps one option over listed values (an option whose value is itself
a list, like ``hidden``, separates values with ``;``: ``'hidden=64,64;32,32'``; JSON-valued
``agent_resources`` always does, since its JSON holds commas). With ``--random N``
listed values become ``tune.choice`` and ``NAME=uniform:LO:HI`` / ``NAME=loguniform:LO:HI`` sample a
range. Values are parsed exactly as ``afedpg train`` parses the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from afedpg_ray.config import ConfigError
from tune_sweeps.plots import write_rows

NAME = "hyper"
"""Tune experiment name (its directory under the storage path)."""
RESULTS_CSV = "hyper.csv"
NOT_SWEPT = {"address", "env"}
"""Train options that make no sense per trial: ``env`` because each environment brings its own defaults
(``afedpg_ray/envs.py``), applied once for the sweep's ``--env``; one sweep per environment keeps them right."""
SWEEP_ONE_ENV = (
    "env: sweep one environment at a time (--env ID), so that each gets its own defaults from afedpg_ray/envs.py"
)
RANGES = ("uniform", "loguniform")
NO_RANGE = {
    "batch": "must be a multiple of --num-envs, which a random draw would rarely be",
    "num_envs": "must divide --batch, which a random draw would rarely do",
}
"""Options a range cannot sample: only its two ends are checked before the trials start, and a draw in
between would fail inside its trial."""
JSON_VALUED = {"agent_resources"}
"""Options whose one value is JSON (with commas inside): their grid values are separated by ``;`` only."""
LIST_VALUED = {"hidden", "comm_delay"}
"""Options whose one value is a comma-separated list: their grid values are separated by ``;`` only, so
``hidden=64,64`` is one two-layer value (not two one-layer values)."""


class _RaisingParser(argparse.ArgumentParser):
    """Parses one train option; errors become a ``ConfigError`` naming ``--grid``."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError("--grid", message)


def option_parser() -> argparse.ArgumentParser:
    """A parser that knows every train option (to check names and convert values)."""
    from afedpg_ray.cli import add_train_options

    parser = _RaisingParser(add_help=False)
    add_train_options(parser)
    return parser


@dataclass(frozen=True)
class Axis:
    """One swept option: listed ``values``, or a ``(low, high)`` range sampled ``uniform``/``loguniform``."""

    name: str
    values: tuple[Any, ...]
    kind: str = "values"


def _convert(parser: argparse.ArgumentParser, name: str, text: str) -> Any:
    if name in JSON_VALUED:  # the train parser keeps agent_resources' JSON text; a trial needs the groups
        from afedpg_ray.cli import parse_agent_resources

        try:
            return [dataclasses.asdict(group) for group in parse_agent_resources(text)]
        except ConfigError as err:
            raise ConfigError("--grid", f"{name}={text.strip()}: {err}") from None
    flag = "--" + name.replace("_", "-")
    value = getattr(parser.parse_args([f"{flag}={text.strip()}"]), name)
    if value is None:
        raise ConfigError("--grid", f"{name}: no value in {text!r}")
    return value


def parse_axis(spec: str, parser: argparse.ArgumentParser) -> Axis:
    """Parse ``NAME=V1,V2`` or ``NAME=uniform:LO:HI``; unknown names and bad values raise ``ConfigError``."""
    name, sep, text = spec.partition("=")
    if not sep or not text.strip():
        raise ConfigError("--grid", f"expected NAME=V1,V2,... (e.g. eta0=0.003,0.01), got {spec!r}")
    dest = name.strip().lstrip("-").replace("-", "_")
    known = sorted(set(vars(parser.parse_args([]))) - NOT_SWEPT)
    if dest == "env":
        raise ConfigError("--grid", SWEEP_ONE_ENV)
    if dest not in known:
        raise ConfigError("--grid", f"unknown train option {name.strip()!r}; options: {', '.join(known)}")
    kind, _, bounds = text.partition(":")
    if kind in RANGES:
        parts = bounds.split(":")
        if dest in NO_RANGE:
            raise ConfigError("--grid", f"{dest}: {NO_RANGE[dest]}; list the values instead, e.g. {dest}=V1,V2")
        if len(parts) != 2:
            raise ConfigError("--grid", f"{dest}: a range looks like {kind}:LO:HI, got {text!r}")
        low, high = (_convert(parser, dest, part) for part in parts)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError("--grid", f"{dest}: need numbers with LO < HI (LO > 0 for loguniform), got {text!r}")
        return Axis(dest, (low, high), kind)
    separator = ";" if ";" in text or dest in JSON_VALUED | LIST_VALUED else ","
    parts = [p for p in text.split(separator) if p.strip()]
    if not parts:
        raise ConfigError("--grid", f"{dest}: give at least one value, e.g. {dest}=V1,V2; got {text!r}")
    values = tuple(_convert(parser, dest, part) for part in parts)
    if len({repr(v) for v in values}) != len(values):  # a repeat would be ranked as extra seeds of one config
        raise ConfigError("--grid", f"{dest}: each value may be listed once, got {text!r}")
    return Axis(dest, values)


def check_axes(axes: Sequence[Axis], random: int | None, seeds: int) -> None:
    """Reject duplicate options, ranges without ``--random``, and sweeping ``seed`` with several ``--seeds``."""
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise ConfigError("--grid", f"each option may be swept once, got {', '.join(names)}")
    if not axes:
        raise ConfigError("--grid", "give at least one option to sweep, e.g. --grid 'eta0=0.003,0.01'")
    if random is None and any(axis.kind in RANGES for axis in axes):
        raise ConfigError("--grid", "uniform/loguniform ranges need random search (--random N)")
    if "seed" in names and seeds > 1:
        raise ConfigError("--grid", "seed is set by --seeds; sweep it with --seeds 1 or drop it from --grid")


def _domain(axis: Axis, random: bool) -> Any:
    from ray import tune

    if axis.kind == "values":
        return tune.choice(list(axis.values)) if random else tune.grid_search(list(axis.values))
    low, high = axis.values
    if isinstance(low, int) and isinstance(high, int):
        return tune.lograndint(low, high + 1) if axis.kind == "loguniform" else tune.randint(low, high + 1)
    return tune.loguniform(low, high) if axis.kind == "loguniform" else tune.uniform(low, high)


def param_space(base: dict[str, Any], axes: Sequence[Axis], seeds: Sequence[int], random: bool) -> dict[str, Any]:
    """Tune param space: the swept options at top level, plus a grid over the seeds."""
    from ray import tune

    space: dict[str, Any] = {"train": base, **{axis.name: _domain(axis, random) for axis in axes}}
    if "seed" not in space:
        space["seed"] = tune.grid_search(list(seeds))
    return space


def trial_configs(base: dict[str, Any], axes: Sequence[Axis], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Configs covering every listed value and range end, to validate before any trial starts."""
    names = [axis.name for axis in axes]
    seed_values = [None] if "seed" in names else list(seeds)
    configs = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        for seed in seed_values:
            config = {"train": base, **dict(zip(names, combo, strict=True))}
            if seed is not None:
                config["seed"] = seed
            configs.append(config)
    return configs


def _show(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value


def rank(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per configuration (its runs averaged), best final return first (configs with none last).

    ``seeds`` counts distinct seeds and ``runs`` the trials: random draws that land on the same values
    (``tune.choice``) make one configuration with more runs than seeds.
    """
    finals: dict[str, dict[str, Any]] = {}
    for row in rows:
        finals[row["trial_id"]] = row
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in finals.values():
        groups[tuple(repr(_show(row["config"].get(name))) for name in names)].append(row)
    table = []
    for members in groups.values():
        returns = np.array([float(m["return_mean"]) for m in members])
        table.append(
            {
                **{name: _show(members[0]["config"].get(name)) for name in names},
                "final_return": float(returns.mean()),
                "final_return_std": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
                "seeds": len({m["config"].get("seed") for m in members}),
                "runs": len(members),
                "wall_time": float(np.mean([float(m["wall_time"]) for m in members])),
            }
        )
    table.sort(key=lambda r: -r["final_return"] if math.isfinite(r["final_return"]) else math.inf)
    for position, row in enumerate(table, start=1):
        row["rank"] = position
    return table


def write_outputs(rows: Sequence[dict[str, Any]], names: Sequence[str], out_dir: Path) -> list[dict[str, Any]]:
    """Write ``hyper.csv`` (ranked by final return) and return its rows."""
    table = rank(rows, names)
    columns = ["rank", *names, "final_return", "final_return_std", "seeds", "runs", "wall_time"]
    write_rows(out_dir / RESULTS_CSV, table, columns)
    return table
