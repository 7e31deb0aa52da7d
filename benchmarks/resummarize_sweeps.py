"""Rewrite a committed sweep's summary files and figure from its row CSV, with the current summary arithmetic.

A speedup sweep directory holds ``speedup.csv`` (one row per report) and its summary ``speedup_summary.csv``,
``speedup_summary.md`` and ``speedup.png``; a sample-efficiency sweep directory holds ``results.csv`` and
``sample_efficiency_summary.csv`` and ``sample_efficiency.png``. This script rebuilds the summaries and the
figure the way ``afedpg sweep speedup|sample-efficiency`` writes them now, training nothing. The row CSV is
left byte for byte as it is (the sweeps' ``write_outputs`` would rewrite it with every number as a float, so
the speedup outputs are written into a scratch directory and only the summaries and the figure copied back).

The speedup summary needs what ``speedup.csv`` does not record: the heterogeneity profile, ``--iteration-time``
and ``--comm-delay`` the trials ran with (for the theoretical ratio), and ``--target`` if the sweep was given
one. Take them from the sweep's command::

    python benchmarks/resummarize_sweeps.py benchmarks/results/speedup-swimmer --hetero linear:4 \\
        --iteration-time 1.0 --target 28
    python benchmarks/resummarize_sweeps.py benchmarks/results/se-hopper

``--all`` rebuilds every directory of :data:`SWEEPS` under ``--root`` (default ``benchmarks/results``) with
the options listed there, copied from each sweep's command in ``benchmarks/RESULTS.md`` sections 4 and 5:

    python benchmarks/resummarize_sweeps.py --all

``--dry-run`` prints the summary and writes nothing: e.g. with a ``--target`` other than the sweep's, to read
times to another return off the same curves.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
import tempfile
from pathlib import Path

from afedpg_ray.cli import OneLineParser, fail
from afedpg_ray.heterogeneity import parse_profile
from tune_sweeps import sample_efficiency, speedup
from tune_sweeps.plots import read_rows

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_CSV = "speedup.csv"
SPEEDUP_OUTPUTS = ("speedup_summary.csv", "speedup_summary.md", "speedup.png")
"""What a speedup sweep writes besides ``speedup.csv``: the files this script replaces."""

SWEEPS: dict[str, list[str]] = {
    "speedup-swimmer": ["--hetero", "linear:4", "--iteration-time", "1.0", "--target", "28"],
    "speedup-swimmer-1m": ["--hetero", "linear:4", "--iteration-time", "1.0"],
    "speedup-swimmer-rennala": ["--hetero", "linear:4", "--iteration-time", "1.0"],
    "speedup-swimmer-rennala-eta0.1": ["--hetero", "linear:4", "--iteration-time", "1.0"],
    "speedup-swimmer-afedpg-eta0.1": ["--hetero", "linear:4", "--iteration-time", "1.0"],
    "se-hopper": [],
    "se-hopper-1m": [],
    "se-swimmer": [],
    "se-walker-1m": [],
}
"""Committed sweep directories (under ``--root``) and the options their summaries need, for ``--all``.

The speedup sweeps' options are those of their commands in ``benchmarks/RESULTS.md`` section 5 (none
gave ``--comm-delay``; ``speedup-swimmer`` was summarised with ``--target 28``); sample-efficiency
sweeps (section 4) need none."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resummarize_speedup(
    out_dir: Path,
    hetero: str,
    iteration_time: float | None = None,
    comm_delay: tuple[float, ...] = (),
    target: float | None = None,
    write: bool = True,
) -> str:
    """Rewrite ``out_dir``'s speedup summary and figure from its ``speedup.csv`` (unless not ``write``); return
    the Markdown summary."""
    rows = read_rows(out_dir / SPEEDUP_CSV)
    if not rows:
        fail(f"{out_dir / SPEEDUP_CSV} has no rows to summarise")
    timing = speedup.Timing(hetero, iteration_time, comm_delay)
    with tempfile.TemporaryDirectory(prefix="resummarize-") as scratch:
        text = speedup.write_outputs(rows, Path(scratch), timing, target)  # also writes a reformatted speedup.csv
        for name in SPEEDUP_OUTPUTS if write else ():
            shutil.copyfile(Path(scratch) / name, out_dir / name)
    return text


def resummarize_sample_efficiency(out_dir: Path, write: bool = True) -> None:
    """Rewrite ``out_dir``'s sample-efficiency summary and figure from its ``results.csv`` (unless not ``write``:
    then print the summary's rows)."""
    rows = read_rows(out_dir / sample_efficiency.RESULTS_CSV)
    if not rows:
        fail(f"{out_dir / sample_efficiency.RESULTS_CSV} has no rows to summarise")
    if write:
        sample_efficiency.write_summary(rows, out_dir)  # prints the table; leaves results.csv alone
        return
    print(",".join(sample_efficiency.SUMMARY_COLUMNS))
    for row in sample_efficiency.speedup_summary(rows):
        print(",".join(str(row[column]) for column in sample_efficiency.SUMMARY_COLUMNS))


def resummarize(args: argparse.Namespace) -> None:
    """Rebuild one directory's summaries from the parsed options (its row CSV is checked to stay unchanged)."""
    out_dir = Path(args.dir)
    speedup_csv, se_csv = out_dir / SPEEDUP_CSV, out_dir / sample_efficiency.RESULTS_CSV
    if speedup_csv.is_file():
        if args.hetero is None:
            fail(f"--hetero: {out_dir} is a speedup sweep; give the profile its trials ran (e.g. linear:4)")
        before = _digest(speedup_csv)
        print(f"== {out_dir}")
        timing = (args.hetero, args.iteration_time, args.comm_delay or ())
        print(resummarize_speedup(out_dir, *timing, target=args.target, write=not args.dry_run), end="")
        row_csv = speedup_csv
    elif se_csv.is_file():
        given = [
            name for name in ("hetero", "iteration_time", "comm_delay", "target") if getattr(args, name) is not None
        ]
        if given:
            fail(f"--{given[0].replace('_', '-')}: {out_dir} is a sample-efficiency sweep, which takes no such option")
        before = _digest(se_csv)
        print(f"== {out_dir}")
        resummarize_sample_efficiency(out_dir, write=not args.dry_run)
        row_csv = se_csv
    else:
        fail(f"DIR: {out_dir} has neither {SPEEDUP_CSV} nor {sample_efficiency.RESULTS_CSV}")
    if _digest(row_csv) != before:  # the summaries must never touch the record they are computed from
        fail(f"{row_csv} changed while it was summarised", code=1)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _profile(text: str) -> str:
    try:
        parse_profile(text, 1, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dir", nargs="?", metavar="DIR", help="a sweep's results directory (speedup or sample-efficiency)"
    )
    parser.add_argument("--all", action="store_true", help="rebuild every directory of the script's SWEEPS table")
    parser.add_argument("--root", default=str(ROOT / "benchmarks" / "results"), help="where --all finds them")
    parser.add_argument("--hetero", type=_profile, help="speedup: the heterogeneity profile the trials ran")
    parser.add_argument("--iteration-time", type=_finite, help="speedup: the sweep's --iteration-time, if any")
    parser.add_argument("--comm-delay", type=_floats, help="speedup: the sweep's --comm-delay, if any")
    parser.add_argument("--target", type=_finite, help="speedup: the sweep's --target, if it had one")
    parser.add_argument("--dry-run", action="store_true", help="print the summary, write nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all:
        if args.dir or any(getattr(args, n) is not None for n in ("hetero", "iteration_time", "comm_delay", "target")):
            parser.error("--all takes its directories and options from the SWEEPS table; give no DIR or option")
        for name, options in SWEEPS.items():
            extra = ["--dry-run"] if args.dry_run else []
            resummarize(parser.parse_args([str(Path(args.root) / name), *options, *extra]))
        return 0
    if not args.dir:
        parser.error("give a sweep directory, or --all")
    resummarize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
