"""One driver per run directory: a lock file naming the process that trains it.

Without it, ``afedpg train --resume RUN`` started while RUN is still training would cut RUN's
progress.csv back to the last checkpoint before anything else noticed the clash. A lock left by a
driver that died (crash, SIGKILL) is stale: on the same host its process is gone, and it is replaced.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from afedpg_ray.runtime import RunError

LOCK_FILE = "driver.lock"


class RunDirLockedError(RunError):
    """Another live driver trains this run directory."""


def acquire(run_dir: Path) -> Path:
    """Take ``run_dir``'s lock for this process; raise :class:`RunDirLockedError` if a live driver holds it."""
    path = run_dir / LOCK_FILE
    holder = _read(path)
    if holder is not None:
        host, pid = holder.get("host"), holder.get("pid")
        if host != socket.gethostname():
            raise RunDirLockedError(
                f"{run_dir} is locked by process {pid} on host {host}; if that run has stopped, delete {path}"
            )
        if isinstance(pid, int) and _alive(pid):
            raise RunDirLockedError(
                f"{run_dir} is being trained by process {pid}; stop it first or choose another --out"
            )
        path.unlink(missing_ok=True)  # stale: its driver died without releasing it
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exclusive: two starting drivers cannot both win
    except FileExistsError:
        raise RunDirLockedError(f"{run_dir} was locked by another driver just now; choose another --out") from None
    with os.fdopen(fd, "w") as handle:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)
    return path


def release(path: Path) -> None:
    """Remove a lock taken by :func:`acquire` (only if this process still holds it)."""
    holder = _read(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's holder, or None if there is no lock; an unreadable lock counts as stale."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": socket.gethostname(), "pid": None}
    return holder if isinstance(holder, dict) else {"host": socket.gethostname(), "pid": None}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
