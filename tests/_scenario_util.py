"""Helpers shared by the real-cluster tests and their subprocess scenarios (``tests/_scenario_*.py``).

Every cluster these tests start is private to the test: its own ports, its own ``RAY_TMPDIR`` (so the
``ray_current_cluster`` address file and the session directories never touch ``/tmp/ray``, which
other people's clusters on this machine use), and it is torn down by the process that started it.
Nothing here uses ``address="auto"`` or ``ray stop``.

Token authentication: the environment built by :func:`ray_env` sets ``RAY_AUTH_MODE`` explicitly, so
the result does not depend on whether ``~/.ray/auth_token`` exists on the machine. ``token`` mode
uses a throw-away token passed in ``RAY_AUTH_TOKEN`` (which Ray reads before any token file).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (all held open until all are picked)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            ports.append(sock.getsockname()[1])
        return ports


def agent_ports() -> dict[str, int]:
    """Fixed ports for one node's agents.

    With unassigned (0) ports the raylet waits only ~15 s for the dashboard agent to publish its
    port files and aborts otherwise; on a loaded 2-core machine the agent can take longer than that
    just to import. Pre-assigned ports skip that wait.
    """
    metrics_agent, listen, runtime_env, export = free_ports(4)
    return {
        "metrics_agent_port": metrics_agent,
        "dashboard_agent_listen_port": listen,
        "runtime_env_agent_port": runtime_env,
        "metrics_export_port": export,
    }


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A short private directory under /tmp (Ray's Unix socket paths must stay under ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="afr", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ray_env(tmp: Path, auth: str = "disabled", **extra: str) -> dict[str, str]:
    """Environment for a subprocess that starts or joins a private test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=str(tmp),
        RAY_AUTH_MODE=auth,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PYTHONUNBUFFERED="1",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if auth == "token":
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env.update(extra)
    return env


def run_scenario(script: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``tests/<script>`` in a fresh interpreter; return the JSON object on its last stdout line."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"{script} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1])


@contextmanager
def ray_head(
    tmp: Path, env: dict[str, str], num_cpus: int = 2, startup_timeout: float = 120.0
) -> Iterator[dict[str, str]]:
    """A ``ray start --head --block`` process of our own, on fresh ports, stopped on exit.

    Stopped with SIGTERM to that one process (Ray's handler then stops the node's processes), then
    SIGKILL to its process group if anything is left. Never ``ray stop``, which would stop every
    Ray instance on the machine.
    """
    gcs, client, dashboard = free_ports(3)
    ports = agent_ports()
    log_path = tmp / "head.log"
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={tmp / 'ray'}",
        "--include-dashboard=false",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-grpc-port={ports['metrics_agent_port']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen_port']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent_port']}",
        f"--metrics-export-port={ports['metrics_export_port']}",
        "--disable-usage-stats",
    ]
    # The Ray-client proxier gives each client's server 30 s to start; on two busy cores (a CI run
    # next to other jobs) that start took longer once and the client got "Initialization failure".
    head_env = {**env, "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while "Ray runtime started" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start --head failed (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield {
            "address": f"127.0.0.1:{gcs}",
            "client_address": f"ray://127.0.0.1:{client}",
            "metrics_port": str(ports["metrics_export_port"]),
        }
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM ``proc`` (started with ``start_new_session``), wait, then SIGKILL its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


PLACEMENT_TIMEOUT_S = 5.0
"""``--placement-timeout`` of the unplaceable run inside tests/_scenario_multinode.py."""
_cluster_scenario: dict[str, Any] = {}


def cluster_scenario() -> dict[str, Any]:
    """tests/_scenario_multinode.py's result, run at most once per pytest process.

    tests/test_multinode.py and tests/test_metrics.py both read it; a failure is remembered too, so a
    broken cluster costs one run, not two.
    """
    if not _cluster_scenario:
        try:
            with short_tmpdir() as tmp:
                _cluster_scenario["result"] = run_scenario(
                    "_scenario_multinode.py", [str(tmp / "runs"), str(PLACEMENT_TIMEOUT_S)], ray_env(tmp), timeout=300
                )
        except (AssertionError, subprocess.TimeoutExpired) as err:
            _cluster_scenario["error"] = str(err)
    if "error" in _cluster_scenario:
        raise AssertionError(_cluster_scenario["error"])
    return _cluster_scenario["result"]
