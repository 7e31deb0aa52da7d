"""Compare settings of the same algorithms: two or more ``learning.py`` result directories side by side.

``learning.py`` keys its runs by (environment, algorithm, seed), so a changed option (``--train-args``)
goes to its own ``--out`` directory. This script reads several such directories, each under a label,
and writes, per environment and algorithm, every variant's returns over seeds (mean with its 95%
bootstrap CI, median, each seed) and ``P(variant > baseline)`` (the first variant) at the end and
along the run; and, within each variant, the paper's ordering ``P(afedpg > vanilla)`` along the run.

    python benchmarks/compare_variants.py --variant default=benchmarks/results/learning-1m \\
        --variant alpha-end=benchmarks/results/alpha-end/sw --out benchmarks/results/alpha-end

Only environments and algorithms present in every variant are compared; seeds may differ.
Writes ``compare.md`` and ``compare_<env>.png`` to ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from learning import (
    ORDERING_FRACTIONS,
    check_run_dirs,
    curve,
    improvement_cells,
    improvement_text,
    ordering_along_run,
    read_rows,
    seed_band,
    seed_summary,
)

from afedpg_ray.cli import OneLineParser
from tune_sweeps.plots import short_step_labels

Variant = tuple[str, list[dict]]
"""A label and the rows of its ``learning.csv``."""


def parse_variant(text: str) -> tuple[str, Path]:
    """``LABEL=DIR`` -> (label, directory holding a ``learning.csv``)."""
    label, sep, directory = text.partition("=")
    if not sep or not label or not directory:
        raise ValueError(f"--variant wants LABEL=DIR, got {text!r}")
    path = Path(directory)
    if not (path / "learning.csv").exists():
        raise ValueError(f"--variant {label}: no learning.csv in {path} (run benchmarks/learning.py there first)")
    return label, path


def load_variants(specs: list[str]) -> list[Variant]:
    """Each ``LABEL=DIR``'s rows; all variants must share one sample budget to be comparable."""
    variants = []
    for spec in specs:
        label, path = parse_variant(spec)
        if label in (seen for seen, _ in variants):  # the report would show two rows of one name
            raise ValueError(f"--variant {label}: each label may be used once")
        rows = list(read_rows(path / "learning.csv").values())
        check_run_dirs(path / "learning.csv", rows)  # every curve is read: a lost run must not fail half-way
        variants.append((label, rows))
    budgets = {int(r["samples"]) for _, rows in variants for r in rows}
    if len(budgets) != 1:
        raise ValueError(f"the variants ran different budgets {sorted(budgets)}; compare runs of one budget")
    return variants


def common(variants: list[Variant], key: str, **match: str) -> list[str]:
    """Values of ``key`` (in the first variant's order) that every variant has rows for."""
    present = [dict.fromkeys(r[key] for r in rows if all(r[k] == v for k, v in match.items())) for _, rows in variants]
    return [value for value in present[0] if all(value in p for p in present[1:])]


def runs_of(rows: list[dict], env: str, algo: str) -> list[dict]:
    """One variant's runs of ``algo`` on ``env``, in seed order."""
    return sorted((r for r in rows if r["env"] == env and r["algo"] == algo), key=lambda r: int(r["seed"]))


def returns_along(runs: list[dict], samples: int) -> np.ndarray:
    """Training return of each run (rows) at ``ORDERING_FRACTIONS`` of the budget, then at its end."""
    grid = np.array(ORDERING_FRACTIONS) * samples
    along = np.array([curve(Path(r["run_dir"]), grid) for r in runs])
    final = np.array([[float(r["final_return"])] for r in runs])
    return np.hstack([along, final])


def compare(variants: list[Variant]) -> str:
    """The markdown report: per environment and algorithm, each variant against the first."""
    samples = int(variants[0][1][0]["samples"])
    columns = "/".join(f"{f:.0%}" for f in ORDERING_FRACTIONS) + "/end"
    base_label = variants[0][0]
    lines = [
        f"Variants: {', '.join(label for label, _ in variants)} (baseline: {base_label}); {samples:,} steps per run.",
        "Returns at the end: mean [95% bootstrap CI], median, each seed. P(X > Y): chance that a random seed",
        f"of X is above one of Y, at {columns} of the budget.",
        "",
    ]
    for env in common(variants, "env"):
        lines += [f"### {env}", "", "| algo | variant | seeds | return | median | per seed | P(variant > baseline) |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for algo in common(variants, "algo", env=env):
            base = returns_along(runs_of(variants[0][1], env, algo), samples)
            for label, rows in variants:
                runs = runs_of(rows, env, algo)
                values = returns_along(runs, samples)
                vs_base = "-" if label == base_label else improvement_cells(values, base)
                cells = [algo, label, str(len(runs)), seed_summary(list(values[:, -1])), vs_base]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for label, rows in variants:
            env_rows = [r for r in rows if r["env"] == env]
            algos = {r["algo"] for r in env_rows}
            if {"afedpg", "vanilla"} <= algos:
                final = improvement_text(
                    [float(r["final_return"]) for r in runs_of(env_rows, env, "afedpg")],
                    [float(r["final_return"]) for r in runs_of(env_rows, env, "vanilla")],
                )
                along = ordering_along_run(env_rows, env, [("afedpg", "vanilla")], samples).removeprefix("- ")
                lines.append(f"- {label}: P(afedpg > vanilla) at the end {final}; {along}")
        lines.append("")
    return "\n".join(lines)


def plot(variants: list[Variant], env: str, path: Path) -> None:
    """Seed-mean training return against total samples: a colour per algorithm, a line style per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = int(variants[0][1][0]["samples"])
    grid = np.linspace(0, samples, 101)[1:]
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, algo in enumerate(common(variants, "algo", env=env)):
        for index, (label, rows) in enumerate(variants):
            runs = runs_of(rows, env, algo)
            mean = seed_band(np.array([curve(Path(r["run_dir"]), grid) for r in runs]))[0]
            style = styles[index % len(styles)]
            ax.plot(grid, mean, style, color=f"C{colour}", label=f"{algo}, {label} ({len(runs)} seeds)")
    ax.set_xlabel("environment steps (all agents)")
    short_step_labels(ax)
    ax.set_ylabel("training return (seed mean)")
    ax.set_title(env)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Parse the variants, write ``compare.md`` and one plot per environment."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="LABEL=DIR of a learning.py --out (2+)")
    parser.add_argument("--out", required=True, help="directory for compare.md and compare_<env>.png")
    args = parser.parse_args(argv)
    if len(args.variant) < 2:
        sys.exit("error: give at least two --variant LABEL=DIR (the first is the baseline)")
    try:
        variants = load_variants(args.variant)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    envs = common(variants, "env")
    if not envs:
        sys.exit("error: the variants have no environment in common")
    if not args.out.strip():  # Path("") is the working directory
        sys.exit("error: --out: give a directory for compare.md and the plots")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(compare(variants))
        for env in envs:
            plot(variants, env, out / f"compare_{env}.png")
    except OSError as err:
        sys.exit(f"error: --out: cannot write {err.filename or out} ({err.strerror})")
    print(f"wrote {out / 'compare.md'} and {len(envs)} plot(s)")


if __name__ == "__main__":
    main()
