"""What a run writes for people to open: progress.csv, events.csv, TensorBoard and a progress bar."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afedpg_ray.atomic import temporary_path
from afedpg_ray.messages import SUPERSEDED, UpdateRecord

PROGRESS_COLUMNS = [f.name for f in dataclasses.fields(UpdateRecord) if f.name != "extra"]
EVENT_COLUMNS = ["wall_time", "kind", "agent", "message"]


class RunLog:
    """Appends update records and events to CSV files, TensorBoard and a tqdm bar."""

    def __init__(
        self,
        out_dir: Path,
        total_samples: int,
        show_progress: bool = True,
        tensorboard: bool = True,
        append: bool = False,
        initial_samples: int = 0,
    ) -> None:
        self.out_dir = out_dir
        self._progress_path, events_path = out_dir / "progress.csv", out_dir / "events.csv"
        self._progress_file, self._progress = _csv_writer(self._progress_path, PROGRESS_COLUMNS, append)
        self._events_file, self._events = _csv_writer(events_path, EVENT_COLUMNS, append)
        self._tb = self._open_tensorboard(initial_samples if append else None) if tensorboard else None
        self._bar = _progress_bar(total_samples, initial_samples) if show_progress else None
        if self._bar is not None:  # Ray starts the actors and each builds its environments: tens of seconds
            self._bar.set_postfix_str("starting agents; the first gradient follows their set-up")
        self._samples_seen = initial_samples
        # (server time, server version) of recent accepted gradients: the rate counts server updates,
        # which for fedpg and rennala take several gradients each.
        self._times: deque[tuple[float, int]] = deque(maxlen=200)
        self._delays: deque[int] = deque(maxlen=200)
        self.last: UpdateRecord | None = None
        self.accepted = 0
        """Accepted gradients in progress.csv (with ``append``, the rows already there count too)."""
        self.delay_sum = 0
        self.superseded = 0
        """rennala's superseded gradients in progress.csv (samples spent, gradient unused)."""
        self.rows = 0
        """Rows in progress.csv: a checkpoint stores it, so going back to it cuts exactly the later rows."""
        self._earlier_return = float("nan")  # the last return logged before a resume
        self._first_row: tuple[int, bool] | None = None  # (update, accepted) of progress.csv's first row
        if append and self._progress_path.is_file():
            for row in read_progress(self._progress_path):
                self._count(row, +1)
                self._earlier_return = float(row["return_mean"])
                self._first_row = self._first_row or (int(row["update"]), row["accepted"] == "True")
        self._listeners: list[Callable[[UpdateRecord], None]] = []
        self._rejection_reasons: set[str] = set()

    def add_listener(self, callback: Callable[[UpdateRecord], None]) -> None:
        """Call ``callback`` with every record (Tune reports through this)."""
        self._listeners.append(callback)

    def record(self, rec: UpdateRecord) -> None:
        """Log one server update (accepted or rejected): :meth:`write_row`, then :meth:`notify`."""
        self.write_row(rec)
        self.notify(rec)

    def write_row(self, rec: UpdateRecord) -> None:
        """The record's progress.csv row and the counters a checkpoint relies on: quick, nothing that blocks."""
        row = dataclasses.asdict(rec)
        self._progress.writerow(row)
        self.rows += 1
        self.superseded += rec.reason == SUPERSEDED
        self.last = rec
        self._first_row = self._first_row or (rec.update, rec.accepted)
        if rec.accepted:
            self.accepted += 1
            self.delay_sum += rec.delay
            # the server's clock at the update: the driver writes rows in batches, so its own clock would
            # see bursts of updates (thousands per second) and then none
            self._times.append((rec.wall_time, rec.update))
            self._delays.append(rec.delay)

    def notify(self, rec: UpdateRecord) -> None:
        """What follows a written row: the first rejection's event, TensorBoard, the progress bar and the
        listeners (these may be slow, or block)."""
        if not rec.accepted and rec.reason != SUPERSEDED and rec.reason not in self._rejection_reasons:
            self._rejection_reasons.add(rec.reason)  # logged once per reason; progress.csv has every one
            self.event(
                "rejected", rec.agent, f"first gradient rejected for {rec.reason} (update {rec.update})", rec.wall_time
            )
        if self._tb is not None and rec.accepted:
            step = rec.samples_total
            if not math.isnan(rec.return_mean):
                self._tb.add_scalar("return_mean", rec.return_mean, step)
            self._tb.add_scalar("delay", rec.delay, step)
            self._tb.add_scalar("version", rec.update, step)
        if self._bar is not None:
            if rec.samples_total > self._bar.total:  # the last gradient overshoots; tqdm drops a total passed
                self._bar.total = rec.samples_total
            self._bar.update(max(0, rec.samples_total - self._samples_seen))
            self._bar.set_postfix(self.summary_fields(), refresh=False)
        self._samples_seen = max(self._samples_seen, rec.samples_total)
        for callback in self._listeners:
            callback(rec)

    def rollback(self, version: int, samples_total: int, keep_rows: int | None = None) -> int:
        """Drop the rows logged after the checkpoint at ``version`` (a restored server redoes them).

        ``keep_rows`` (the checkpoint's row count) cuts exactly; without it, rows past ``version`` go.
        Returns how many rows were dropped; the counters they fed are taken back. TensorBoard is told to
        hide its points past ``samples_total`` (a new event file that purges them); listeners' reports
        already sent stay (they cannot be unsent).
        """
        self._progress_file.close()
        dropped = cut_progress(self._progress_path, version, keep_rows)
        self._progress_file, self._progress = _csv_writer(self._progress_path, PROGRESS_COLUMNS, append=True)
        for row in dropped:
            self._count(row, -1)
        self._times.clear()  # the recent-rate window would count the dropped updates
        self._delays.clear()
        self._samples_seen = samples_total
        if self._tb is not None:
            self._tb.close()
            self._tb = self._open_tensorboard(samples_total)
        if self._bar is not None:
            self._bar.n = samples_total
            self._bar.refresh()
        return len(dropped)

    def _count(self, row: dict[str, str], sign: int) -> None:
        """Add (+1) or take back (-1) one progress.csv row's share of the counters."""
        self.rows += sign
        if row.get("accepted") == "True":
            self.accepted += sign
            self.delay_sum += sign * int(row["delay"])
        elif row.get("reason") == SUPERSEDED:
            self.superseded += sign

    def _open_tensorboard(self, kept_samples: int | None) -> Any:
        """A TensorBoard writer for ``tb/``; after a cut to ``kept_samples`` (a resume or a server restore), its
        file starts by purging the points logged past that step (TensorBoard hides them), so the redone
        updates are not drawn twice."""
        purge_step = None if kept_samples is None else kept_samples + 1
        # one file per writer, read in name order: names carry whole seconds, so two writers within a second
        # (a restore soon after the start, or a test's resume) would share a file without a finer stamp
        suffix = f".{time.time_ns():020d}"
        return _tensorboard_writer(self.out_dir / "tb", purge_step, suffix)

    @property
    def updates_before_log(self) -> int:
        """Updates the run applied before progress.csv's first row: 0 when the file holds the whole run, more
        when a resume found it missing (moved aside), so that what is counted from it (the mean delay)
        covers only the later updates. An accepted row's update is the version it made; a rejected one's,
        the version it was refused at."""
        if self._first_row is None:
            return 0
        update, accepted = self._first_row
        return max(0, update - 1 if accepted else update)

    @property
    def return_mean(self) -> float:
        """The latest recent-episode return: of this session's last record, else of the rows a resumed
        run found (a resume with nothing left to do still reports the run's return)."""
        return self.last.return_mean if self.last is not None else self._earlier_return

    def summary_fields(self) -> dict[str, Any]:
        """Recent return, server updates per second and mean delay, as shown on the progress bar."""
        rate = 0.0
        if len(self._times) > 1:
            (t_first, version_first), (t_last, version_last) = self._times[0], self._times[-1]
            if t_last > t_first:
                rate = (version_last - version_first) / (t_last - t_first)
        delay = sum(self._delays) / len(self._delays) if self._delays else 0.0
        ret = self.last.return_mean if self.last is not None else float("nan")
        return {"return": f"{ret:.1f}", "upd/s": f"{rate:.1f}", "delay": f"{delay:.2f}"}

    def event(self, kind: str, agent: int | None, message: str, wall_time: float) -> None:
        """Log a run event to events.csv and print it as one ``[kind] ...`` line.

        Every kind is a warning or a change of the run's state (a restart, a dropped agent, a placement wait,
        a resume, a kept schedule, the first rejection per reason), never a routine update, so each is
        worth its line: above the progress bar, or on stderr without it (``--no-progress``, a batch job's
        log), where it would otherwise be seen only in events.csv.
        """
        self._events.writerow(
            {"wall_time": f"{wall_time:.3f}", "kind": kind, "agent": "" if agent is None else agent, "message": message}
        )
        self._events_file.flush()
        who = "" if agent is None else f" agent {agent}:"
        line = f"[{kind}]{who} {message}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """Print ``message`` above the progress bar, or on its own line to a terminal (a Tune trial or a
        benchmark's log gets nothing); not part of the run's files."""
        if self._bar is not None:
            self._bar.write(message)
        elif sys.stdout.isatty():
            print(message, flush=True)

    def flush(self) -> None:
        """Flush files to disk."""
        self._progress_file.flush()
        self._events_file.flush()
        if self._tb is not None:
            self._tb.flush()

    def sync_progress(self) -> None:
        """Make the progress.csv rows written so far durable. Line buffering hands each row to the OS at once
        (a killed driver loses none), but a power loss could still lose them after a checkpoint that counts
        them was written, and a resume refuses a progress.csv shorter than its checkpoint."""
        os.fsync(self._progress_file.fileno())

    def close(self) -> None:
        """Flush and close everything."""
        self.flush()
        self._progress_file.close()
        self._events_file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _csv_writer(path: Path, columns: list[str], append: bool) -> tuple[Any, csv.DictWriter]:
    """A line-buffered CSV writer (rows reach the disk even if the driver is SIGKILLed)."""
    has_rows = append and path.is_file() and path.stat().st_size > 0
    handle = path.open("a" if append else "w", newline="", buffering=1)
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    if not has_rows:
        writer.writeheader()
    return handle, writer


def cut_progress(path: Path, version: int, keep_rows: int | None = None) -> list[dict[str, str]]:
    """Keep only the rows of progress.csv logged before the checkpoint at ``version`` (atomically);
    returns the dropped rows.

    Used when the run goes back to a checkpoint: a restored server or a resumed driver applies the later
    updates again, so their old rows would repeat update numbers. With ``keep_rows`` (what the checkpoint
    recorded) the first ``keep_rows`` rows stay - exact even for rows that do not advance the version
    (rejections, and rennala's collected gradients); older checkpoints fall back to ``update <= version``.
    """
    if not path.is_file():
        return []
    rows = read_progress(path)
    if keep_rows is not None:
        kept, dropped = rows[:keep_rows], rows[keep_rows:]
    else:
        kept = [row for row in rows if int(row["update"]) <= version]
        dropped = [row for row in rows if int(row["update"]) > version]
    tmp = temporary_path(path)
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PROGRESS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return dropped


def _tensorboard_writer(path: Path, purge_step: int | None, suffix: str) -> Any:
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(path), purge_step=purge_step, filename_suffix=suffix)


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True, desc="samples")


INT_COLUMNS = ("update", "agent", "delay", "samples_total", "episodes_total")
FLOAT_COLUMNS = ("wall_time", "return_mean", "alpha", "eta", "grad_norm", "agent_iteration_seconds")


def progress_problem(path: Path) -> str | None:
    """Why ``path`` is not a progress.csv afedpg wrote (its columns, each row's values), or None (also if
    it does not exist). A resume checks it before cutting it: cut_progress rewrites whatever it finds with
    afedpg's columns, and the log that appends to it parses every row."""
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames
            if columns is None:
                return None  # empty: the header is written when the log opens it
            if sorted(columns) != sorted(PROGRESS_COLUMNS):
                unknown = [c for c in columns if c not in PROGRESS_COLUMNS]
                missing = [c for c in PROGRESS_COLUMNS if c not in columns]
                what = f"unknown column {unknown[0]!r}" if unknown else f"no {missing[0]!r} column"
                if not unknown and not missing:
                    what = "a repeated column"
                return f"not a progress.csv afedpg wrote ({what})"
            for number, row in enumerate(reader, start=2):
                problem = _row_problem(row)
                if problem:
                    return f"line {number}: {problem}"
    except (UnicodeDecodeError, csv.Error) as err:
        return f"not a progress.csv afedpg wrote ({type(err).__name__}: {err})"
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    return None


def progress_shortfall(path: Path, version: int, keep_rows: int | None = None) -> str | None:
    """How ``path`` falls short of the rows logged before the checkpoint at ``version`` (which recorded
    ``keep_rows`` of them), or None (also if it does not exist: a resume then starts a new file).

    A resume keeps the first ``keep_rows`` rows and appends after them; fewer (a truncated file, or
    another run's) would leave a silent gap in the log, its update numbers jumping. Older checkpoints
    (no row count) compare the last row's update: every update up to ``version`` was logged before it.
    Call it on a file :func:`progress_problem` has accepted.
    """
    if not path.is_file():
        return None
    rows = read_progress(path)
    if keep_rows is not None:
        if len(rows) < keep_rows:
            return f"has {len(rows)} row{'' if len(rows) == 1 else 's'} but the checkpoint was taken after {keep_rows}"
        return None
    last = int(rows[-1]["update"]) if rows else 0
    if last < version:
        return f"ends at update {last} but the checkpoint was taken at update {version}"
    return None


def _row_problem(row: dict[Any, Any]) -> str | None:
    """Why one progress.csv row (as ``csv.DictReader`` reads it) is not one afedpg wrote, or None."""
    if None in row:
        return "more values than columns"
    if any(value is None for value in row.values()):
        return "fewer values than columns"
    for column in INT_COLUMNS + FLOAT_COLUMNS:
        try:
            int(row[column]) if column in INT_COLUMNS else float(row[column])
        except ValueError:
            return f"{column} is {row[column]!r}, not a number"
    if row["accepted"] not in ("True", "False"):
        return f"accepted is {row['accepted']!r}, not True or False"
    return None


def read_progress(path: Path) -> list[dict[str, str]]:
    """Rows of a progress.csv as dicts of strings."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
