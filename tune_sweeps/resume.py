"""A sweep's record of the command it started with, so that ``--resume`` rebuilds the same trials.

Tune restores a sweep's trials, not its command line. Without the record, a resumed sweep took its trial
count, its swept option names and every train option from the new command: a resume with other options
reported the restored trials under the wrong names, or waited for trials that would never run, while
the new options did nothing. With it, a resume runs as the sweep started; an option given again must
have its old value, and one left out keeps it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from afedpg_ray.cli import fail

KEPT_ON_RESUME = frozenset({"out", "storage", "resume", "address", "target"})
"""Options a resume takes from the new command when given: where the sweep lives and runs, and the
speedup summary's target (the summary is recomputed from the rows, so a new target takes effect)."""
_NOT_OPTIONS = frozenset({"handler", "argv", "command", "sweep"})
"""Parser bookkeeping in the namespace, not options."""
_WHY_KEPT = {"verbose": "Tune restores a sweep's progress output with it (Tuner.restore takes no new one)"}
"""Why a resume cannot change an option that changes no trial; any other keeps the trials as they started."""


def record_path(out: Path, name: str) -> Path:
    """Where the sweep ``name`` writing to ``out`` records its command (one file per kind of sweep)."""
    return out / f"{name}_command.json"


def record_command(out: Path, name: str, args: argparse.Namespace) -> None:
    """Write the command line ``args`` was parsed from (nothing if it was built without one), and the
    directory it ran in (a relative ``--storage`` is resolved against it on resume)."""
    argv = getattr(args, "argv", None)
    if argv is not None:
        record = {"argv": list(argv), "cwd": os.getcwd()}
        record_path(out, name).write_text(json.dumps(record, indent=2) + "\n")


def given(value: Any) -> bool:
    """Whether an option's parsed value means it was on the command line (every sweep option defaults to
    None, a flag to False, ``--grid`` to [])."""
    return value is not None and value is not False and value != []


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def resumed_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """``args`` as the sweep at ``--out`` started with them; ``args`` itself unless ``--resume``.

    Exit 2 naming the option if the new command gives one a value other than the sweep started with, or
    if ``--out`` holds no record: a resume with the options as given ran a 1-trial sweep as the default
    24 trials (measured, resumed before the sweep had written its record).
    """
    if not args.resume:
        return args
    path = record_path(Path(args.out), name)
    if not path.is_file():
        kind = name.replace("_", "-")
        fail(f"--resume: {args.out} holds no {kind} sweep to resume (no {path.name}); start it without --resume")
    from afedpg_ray.cli import build_parser

    try:
        record = json.loads(path.read_text())
        argv = record["argv"]
        with contextlib.redirect_stderr(io.StringIO()):  # the parser's own complaint: this line replaces it
            started = build_parser().parse_args(argv)
    except (OSError, ValueError, KeyError, TypeError, SystemExit):
        fail(
            f"--resume: {path} is not a sweep record this afedpg can read; move it aside to resume with the "
            "options of this command"
        )
    if started.handler is not args.handler:
        fail(f"--resume: {path} records another kind of sweep (afedpg {' '.join(argv[:2])})")
    for dest, value in vars(args).items():
        if dest in KEPT_ON_RESUME or dest in _NOT_OPTIONS or dest.startswith("default_") or not given(value):
            continue
        before = getattr(started, dest, None)
        if value != (before if given(before) else getattr(started, f"default_{dest}", None)):
            flag = "--" + dest.replace("_", "-")
            default = getattr(started, f"default_{dest}", None)
            was = (
                f"started with {flag} {_shown(before)}"
                if given(before)
                else f"started with the default {flag} {_shown(default)}"
                if default is not None
                else f"started without {flag}"
            )
            why = _WHY_KEPT.get(dest, "a resumed sweep runs the trials it started with")
            fail(
                f"{flag}: the sweep in {path.parent} {was}; {why} - "
                f"give the same value or leave {flag} out (to change it, start a new sweep with another --out)"
            )
    storage = started.storage
    if storage and "://" not in storage and not Path(storage).expanduser().is_absolute():
        started.storage = str(Path(record.get("cwd", ".")) / storage)  # where the sweep put it
    for dest in KEPT_ON_RESUME:
        if given(getattr(args, dest, None)):
            setattr(started, dest, getattr(args, dest))
    started.out = args.out  # the record was found there
    started.argv = argv
    return started
