"""One driver per run directory: an advisory lock on ``driver.lock``, held for the whole run.

Without it, ``afedpg train --resume RUN`` started while RUN is still training would cut RUN's
progress.csv back to the last checkpoint before anything else noticed the clash. The lock is the
kernel's (``flock``): it is released when the driver's process ends in any way (crash, SIGKILL), so
no stale lock ever has to be recognised or broken, and no reused process id can keep a run locked.
The file itself stays; while locked it names the holder (host and pid) for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from afedpg_ray.runtime import RunError

LOCK_FILE = "driver.lock"


class RunDirLockedError(RunError):
    """Another live driver trains this run directory."""


@dataclass
class RunLock:
    """A held run-directory lock (pass it to :func:`release`)."""

    path: Path
    fd: int


def acquire(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` for this process; raise :class:`RunDirLockedError` if a live driver holds it."""
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:  # --out names a file, or a place this user cannot write
        raise RunError(f"cannot use {run_dir} as a run directory ({exc.strerror}); choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirLockedError(
            f"{run_dir} is being trained by {holder}; wait for that run to end or stop it (or choose another --out)"
        ) from None
    except OSError as exc:  # a filesystem without locks: say so rather than run unprotected in silence
        os.close(fd)
        raise RunDirLockedError(f"cannot lock {path} ({exc}); put the run directory on a local filesystem") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    return RunLock(path, fd)


def release(lock: RunLock) -> None:
    """Give up a lock taken by :func:`acquire` (the file stays, emptied: unlinking it would let two later
    drivers lock two different files of the same name)."""
    try:
        os.ftruncate(lock.fd, 0)
    finally:
        os.close(lock.fd)  # closing the last descriptor releases the flock


def _holder(fd: int) -> str:
    """Who holds the lock, as written in the file ("another driver" if it is not readable yet)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"process {holder['pid']} on host {holder['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another driver"
