"""Where a file's next version is written before ``os.replace`` moves it in (checkpoint, policy, a cut
progress.csv, config.json, summary.json): a crash mid-write leaves the old version.

By default the temporary file sits beside its target. A Ray Tune trial moves them to a scratch
directory outside its working directory: Tune copies that directory to storage while the run writes,
and a temporary file listed by the copy and renamed before it is read fails the copy, and with it the
trial. The scratch directory must be on the target's filesystem (``os.replace`` cannot cross one).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_scratch_dir: Path | None = None


def set_scratch_dir(directory: Path | None) -> None:
    """Write temporary files in ``directory`` from now on in this process (None: beside their targets)."""
    global _scratch_dir
    _scratch_dir = directory


def temporary_path(target: Path) -> Path:
    """A path, unique to this process and thread, for writing ``target``'s next version."""
    directory = _scratch_dir if _scratch_dir is not None else target.parent
    return directory / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` in one step: a crash or an error mid-write leaves the old file."""
    tmp = temporary_path(path)
    try:
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray temporary file beside the run's files
        raise
