"""One driver per run directory: an advisory lock on ``driver.lock``, held for the whole run.

Without it, ``afedpg train --resume RUN`` started while RUN is still training would cut RUN's
progress.csv back to the last checkpoint before anything else noticed the clash. The lock is the
kernel's (``flock``): it is released when the driver's process ends in any way (crash, SIGKILL), so
no stale lock ever has to be recognised or broken, and no reused process id can keep a run locked.
The file stays after a run (emptied); while locked it names the holder (host and pid) for the error
message. A run refused before it wrote anything leaves no trace: the lock file is removed, and the
directory too if this driver created it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from afedpg_ray.errors import RunError

LOCK_FILE = "driver.lock"


class RunDirLockedError(RunError):
    """Another live driver trains this run directory."""


@dataclass
class RunLock:
    """A held run-directory lock (pass it to :func:`release`)."""

    path: Path
    fd: int
    created_dir: bool = False
    """Whether :func:`acquire` created the run directory (so that releasing an unused lock removes it)."""


def acquire(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` for this process; raise :class:`RunDirLockedError` if a live driver holds it."""
    path = run_dir / LOCK_FILE
    created_dir = not run_dir.exists()
    for _ in range(LOCK_ATTEMPTS):
        fd = _open(run_dir, path)
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
            raise RunDirLockedError(
                f"cannot lock {path} ({exc}); put the run directory on a local filesystem"
            ) from None
        if _is_current(fd, path):
            break
        os.close(fd)  # a refused run removed this file after we opened it: lock the file that is there now
    else:
        raise RunDirLockedError(f"cannot lock {path}: it keeps being replaced; is another driver starting there?")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    return RunLock(path, fd, created_dir)


def holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock (as :func:`acquire`'s refusal names it), or None if no driver does.

    For explaining a run directory that looks incomplete: a driver that is still starting holds the lock
    before it writes config.json. The probe takes the lock for an instant when it is free, so call it only
    on a path that refuses the run anyway (a driver starting at that instant would be refused too).
    """
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    except OSError:  # no lock file (or none this user may open): no driver to name
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)  # also releases the probe's lock if it got it
    return None


def release(lock: RunLock) -> None:
    """Give up a lock taken by :func:`acquire`.

    The file stays, emptied, unless the directory holds nothing else (a run refused before it wrote
    anything): then it is removed while still locked - a driver that opened it meanwhile sees that it
    was replaced (:func:`acquire` checks) - and the directory with it if :func:`acquire` created it.
    """
    try:
        os.ftruncate(lock.fd, 0)
        unused = {entry.name for entry in os.scandir(lock.path.parent)} == {lock.path.name}
        if unused:
            lock.path.unlink()
            if lock.created_dir:
                lock.path.parent.rmdir()
    except OSError:
        pass  # tidying only: a file we cannot remove is left as it is
    finally:
        os.close(lock.fd)  # closing the last descriptor releases the flock


LOCK_ATTEMPTS = 5
"""How often :func:`acquire` retries when the lock file it opened was removed before it locked it."""


def _open(run_dir: Path, path: Path) -> int:
    """Create ``run_dir`` if needed and open (or create) its lock file; one-line error if impossible."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:  # --out names a file, or a place this user cannot write
        in_the_way = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
        why = exc.strerror if in_the_way is None else f"{'it' if in_the_way == run_dir else in_the_way} is a file"
        raise RunError(f"cannot use {run_dir} as a run directory ({why}); choose another --out") from None


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one that was unlinked after we opened it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """Who holds the lock, as written in the file ("another driver" if it is not readable yet)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"process {holder['pid']} on host {holder['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another driver"
