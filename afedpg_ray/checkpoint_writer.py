"""The driver's checkpoint writer: one write at a time, in order, on a thread of its own (fsync is slow).

A checkpoint counts progress.csv's rows; it is written only after those rows are fsynced, so that a power
loss never leaves a checkpoint counting rows the log lost (a resume would refuse it).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from afedpg_ray import checkpoint
from afedpg_ray.runlog import RunLog


class CheckpointWriter:
    """Writes the server's exported states as ``run_dir``'s checkpoint, stamped with the run's id.

    ``saved_version`` is the version of the last checkpoint on disk (None before the first).
    """

    def __init__(self, run_dir: Path, log: RunLog, run_id: str | None, saved_version: int | None) -> None:
        self.run_dir = run_dir
        self.log = log
        self.run_id = run_id
        """Stamped on every checkpoint: a resume refuses one another run wrote."""
        self.saved_version = saved_version
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._writing: Future | None = None

    def submit(self, state: dict[str, Any]) -> None:
        """Write ``state`` on the writer thread, after the write before it (whose failure surfaces here)."""
        self.flush()
        self._writing = self._thread.submit(self.write, state)

    def write(self, state: dict[str, Any]) -> None:
        """Write ``state`` now, on this thread, once the progress.csv rows it counts are on disk."""
        if self.run_id is not None:
            state["run_id"] = self.run_id
        self.log.sync_progress()
        checkpoint.save_checkpoint(self.run_dir, state)
        self.saved_version = int(state["rule_state"]["version"])

    def flush(self) -> None:
        """Wait until the last checkpoint submitted is on disk; raises its write's error if it failed."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def close(self) -> None:
        """Stop the writer thread once its write is done (no idle thread per run: Tune runs many in a process)."""
        self._thread.shutdown(wait=True)

    def standing(self) -> str:
        """Which checkpoint a resume continues from when no final one was taken (a write under way lands first)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - a failed write: the one before it stands
            pass
        if self.saved_version is None:
            return "no checkpoint was written"
        return f"the last checkpoint, at update {self.saved_version}, stands"
