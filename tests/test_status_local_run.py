"""``afedpg status --watch`` beside a run on its own local Ray instance, which stops when the run ends.

Real processes: ``afedpg train`` without ``--address`` (its driver starts Ray in a private
``RAY_TMPDIR``, with token authentication as Ray 2.60 does by default) and two ``afedpg status
--address <the address the run prints> --watch 1`` beside it, one stopped with SIGTERM while the run
goes on, the other left to see the run, and its Ray instance, end.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from _scenario_util import VENV_BIN, ray_env, short_tmpdir

AFEDPG = str(VENV_BIN / "afedpg")
RAY_CPP_ERROR = re.compile(r"rpc_client\.h|SIGTERM received|Traceback|\.cc:\d+")
"""What Ray's C++ core (a GCS it cannot reach, its SIGTERM handler) or Python left in the watch's stderr."""


def wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> re.Match[str]:
    """The first match of ``pattern`` in the file ``path`` that ``proc`` writes, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        assert proc.poll() is None, f"{proc.args[1]} exited {proc.returncode} early:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} in {path} in time"
        time.sleep(0.5)


def test_watch_ends_with_the_runs_own_ray_instance_and_stops_quietly_on_sigterm():
    with short_tmpdir() as tmp:
        env = ray_env(tmp, auth="token")
        logs = {name: (tmp / f"{name}.out").open("w+") for name in ("train", "stopped", "watch")}
        procs: list[subprocess.Popen] = []

        def start(name: str, *args: str) -> subprocess.Popen:
            proc = subprocess.Popen([AFEDPG, *args], env=env, stdout=logs[name], stderr=subprocess.STDOUT)
            procs.append(proc)
            return proc

        try:
            # 2 agents padded to 0.5 s iterations (one a 4x straggler): about 20 s of training; the progress
            # bar stays on, so the run prints its status command
            train = start(
                "train",
                *("train", "--env", "CartPole-v1", "--batch", "64", "--num-envs", "2", "--no-tensorboard"),
                *("--agents", "2", "--iteration-time", "0.5", "--samples", str(64 * 50), "--out", str(tmp / "run")),
            )
            address = wait_for(tmp / "train.out", r"afedpg status --address (\S+)", train)[1]
            stopped = start("stopped", "status", "--address", address, "--watch", "1")
            watch = start("watch", "status", "--address", address, "--watch", "1")
            wait_for(tmp / "stopped.out", r"slowest: agent", stopped, timeout=120)
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(timeout=60) == 143
            assert train.wait(timeout=300) == 0, (tmp / "train.out").read_text()[-3000:]
            # without the lifeline, Ray's GCS client gave up after 60 s and ended the process with its own error
            watch.wait(timeout=180)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in logs.values():
                log.close()
        stopped_out = (tmp / "stopped.out").read_text()
        watch_out = (tmp / "watch.out").read_text()
    assert not RAY_CPP_ERROR.search(stopped_out), stopped_out[-3000:]
    assert stopped_out.rstrip().splitlines()[-1].startswith("slowest: agent "), stopped_out[-3000:]  # nothing after
    assert watch.returncode == 0, watch_out[-3000:]
    assert not RAY_CPP_ERROR.search(watch_out), watch_out[-3000:]
    assert watch_out.count("--- ") >= 2
    # the instance usually stops before the watch has asked whether the run's agents are gone too
    last = watch_out.rstrip().splitlines()[-1]
    assert last in (
        "afedpg-server: the run has ended (its Ray instance stopped)",
        "afedpg-server: the training server has exited (the run finished or stopped)",
    ), watch_out[-3000:]
