"""``afedpg train`` and ``afedpg status`` against a cluster started separately with ``ray start --head``.

Everything runs as real processes: the head (``ray start --head --block`` on fresh ports with its own
temp dir, stopped by SIGTERM to that process in teardown), ``afedpg train --address`` in the
background and ``afedpg status --address`` beside it.

Authentication: the head and every client run with ``RAY_AUTH_MODE=token`` and a throw-away token in
``RAY_AUTH_TOKEN`` (see tests/_scenario_util.py), as ``ray up`` clusters do; the result therefore does
not depend on whether ``~/.ray/auth_token`` exists on this machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _scenario_util import VENV_BIN, ray_env, ray_head, short_tmpdir

from afedpg_ray import status as status_mod
from afedpg_ray.cli import build_parser, main
from afedpg_ray.signals import Terminated

AFEDPG = str(VENV_BIN / "afedpg")
TINY = ["--env", "CartPole-v1", "--batch", "64", "--num-envs", "2", "--no-progress", "--no-tensorboard"]
ROW = re.compile(r"^\s*(\d+)\s+([0-9a-f]{8})\s+(\d+)\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+$")


@pytest.fixture(scope="module")
def head():
    """A private head node plus the environment its clients need."""
    with short_tmpdir() as tmp:
        env = ray_env(tmp, auth="token")
        with ray_head(tmp, env) as info:
            yield {**info, "env": env, "tmp": tmp}


def afedpg(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([AFEDPG, *args], env=env, capture_output=True, text=True, timeout=timeout)


def agent_rows(text: str) -> dict[int, tuple[str, int]]:
    """``{agent: (node, updates)}`` from the last table in ``text``."""
    rows: dict[int, tuple[str, int]] = {}
    for line in text.splitlines():
        if line.startswith("agent "):
            rows = {}
        match = ROW.match(line)
        if match:
            rows[int(match[1])] = (match[2], int(match[3]))
    return rows


def wait_for_progress(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run has written at least one update row (its server exists and agents deliver)."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and len(path.read_text().splitlines()) >= 2):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"train exited {proc.returncode} early:\n{out}\n{err[-3000:]}")
        assert time.monotonic() < deadline, "no progress row in time"
        time.sleep(0.5)


def test_train_and_status_on_a_running_cluster(head):
    env, run_dir = head["env"], head["tmp"] / "run"
    train = subprocess.Popen(
        [AFEDPG, "train", "--address", head["address"], *TINY, "--agents", "3", "--hetero", "linear:3"]
        + ["--iteration-time", "0.5", "--samples", str(64 * 120), "--out", str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = None
    try:
        wait_for_progress(run_dir / "progress.csv", train)
        # --watch keeps printing tables until the run ends, then says so and exits 0 by itself
        watch = subprocess.Popen(
            [AFEDPG, "status", "--address", head["address"], "--watch", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        train_out, train_err = train.communicate(timeout=300)
        watch_out, watch_err = watch.communicate(timeout=120)
    finally:
        for proc in (train, watch):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert train.returncode == 0, train_err[-3000:]
    assert train_out.startswith("done: ") and "7680 samples" in train_out
    assert watch.returncode == 0, watch_err[-3000:]
    tables = watch_out.split("--- ")[1:]
    assert len(tables) >= 2, watch_out
    headers = re.findall(r"afedpg-server \(node (\w{8})\): version \d+, [\d.]+ updates/s", watch_out)
    assert headers, watch_out
    assert "afedpg-server: the training server has exited" in tables[-1]
    assert "died mid-run" not in watch_out  # a run that ended is not mistaken for a server to wait for
    rows = agent_rows(watch_out)
    assert sorted(rows) == [0, 1, 2], watch_out
    assert len({node for node, _ in rows.values()} | set(headers)) == 1  # one node, the head: agents and server
    # iterations padded to 0.5 s and 1.5 s: agent 0 delivers about 3x agent 2's updates (2x leaves margin)
    assert rows[0][1] >= 2 * rows[2][1], watch_out
    assert "slowest: agent " in watch_out


def test_train_and_status_through_ray_client(head):
    env = head["env"]
    run = afedpg(
        "train",
        "--address",
        head["client_address"],
        *TINY,
        "--agents",
        "2",
        "--samples",
        str(64 * 6),
        "--out",
        str(head["tmp"] / "client-run"),
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("done: ") and "384 samples" in run.stdout
    status = afedpg("status", "--address", head["client_address"], "--prefix", "nosuch", env=env)
    assert status.returncode == 2, status.stderr[-3000:]
    assert "no training server 'nosuch-server'" in status.stderr


def test_status_of_unreachable_address_is_one_line_and_quick():
    start = time.monotonic()
    with short_tmpdir() as tmp:
        result = afedpg("status", "--address", "127.0.0.1:1", env=ray_env(tmp), timeout=60)
    assert time.monotonic() - start < 20
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["afedpg: error: --address: cannot reach Ray at '127.0.0.1:1' (Connection refused)"]


def test_status_gives_up_on_a_port_that_is_not_ray():
    """Something accepts TCP at the address but never answers: ``--timeout`` bounds ``ray.init``."""
    with socket.socket() as listener, short_tmpdir() as tmp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # accepts (kernel backlog), never speaks
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        result = afedpg("status", "--address", address, "--timeout", "5", env=ray_env(tmp), timeout=90)
        elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("afedpg: error: --address: ") and address in last, result.stderr[-2000:]
    assert elapsed < 45


def test_train_with_unreachable_address_fails_quickly():
    """A dead port is reported in seconds (a TCP probe), not after ``ray.init``'s minutes of retries."""
    with short_tmpdir() as tmp:
        start = time.monotonic()
        result = afedpg(
            "train", "--address", "127.0.0.1:1", *TINY, "--out", str(tmp / "run"), env=ray_env(tmp), timeout=60
        )
        elapsed = time.monotonic() - start
        assert not (tmp / "run").exists()  # refused before writing anything: no directory left behind
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--address" in lines[0] and "127.0.0.1:1" in lines[0]
    assert elapsed < 30


# --- no cluster needed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status"], "--address"),
        (["status", "--address", "nohost"], "--address: expected host:port"),
        (["status", "--address", "127.0.0.1:99999"], "--address: expected host:port"),
        (["status", "--address", "http://127.0.0.1:8265"], "is a http:// URL (the dashboard's"),
        (["status", "--address", "127.0.0.1:1", "--watch", "0"], "--watch"),
        (["status", "--address", "127.0.0.1:1", "--timeout", "-1"], "--timeout"),
        (["status", "--address", "127.0.0.1:1", "--prefix", ""], "--prefix"),
        (["status", "--address", "127.0.0.1:1"], "cannot reach Ray at '127.0.0.1:1'"),
        (["status", "--address", "local"], "'local' starts a new Ray instance"),
    ],
)
def test_status_bad_input_is_one_line_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_status_is_registered_with_a_handler():
    args = build_parser().parse_args(["status", "--address", "10.0.0.1:6379", "--watch", "2"])
    assert args.handler is status_mod.cmd_status
    assert (args.prefix, args.watch, args.timeout) == ("afedpg", 2.0, status_mod.DEFAULT_TIMEOUT_S)


SNAPSHOT = {
    "version": 42,
    "elapsed": 10.0,
    "updates_per_second": 4.2,
    "samples_total": 2688,
    "return_mean": 31.25,
    "rejected": {"non_finite": 1},
    "agents": {
        0: dict(updates=30, rejected=0, iteration_seconds_sum=6.0, delay_sum=15, delay_max=3, last_seen=995.0),
        3: dict(updates=12, rejected=1, iteration_seconds_sum=9.6, delay_sum=48, delay_max=7, last_seen=990.0),
    },
}
for _i, _node in ((0, "5d6265e8def9bc3cbb75"), (3, "977124adcadf4d6a4b86")):
    SNAPSHOT["agents"][_i]["node_id"] = _node


def test_format_status_shows_the_recent_rate_where_the_server_keeps_it():
    snapshot = {**SNAPSHOT, "updates_per_second_recent": 7.25, "rate_window_s": 30.0}
    first = status_mod.format_status(snapshot, "afedpg-server", now=1000.0).splitlines()[0]
    assert first.startswith("afedpg-server: version 42, 7.25 updates/s over the last 30s, 2688 samples")


def test_format_status_is_a_straggler_table():
    text = status_mod.format_status({**SNAPSHOT, "node_id": "4dd783483a1f1227"}, "afedpg-server", now=1000.0)
    lines = text.splitlines()
    assert lines[0] == (
        "afedpg-server (node 4dd78348): version 42, 4.20 updates/s since start, 2688 samples, return 31.2, "
        "rejected non_finite=1, up 10s"
    )
    assert lines[1].split() == [
        "agent",
        "node",
        "updates",
        "rejected",
        "iter_mean_s",
        "delay_mean",
        "delay_max",
        "last_seen_s_ago",
    ]
    assert lines[2].split() == ["0", "5d6265e8", "30", "0", "0.200", "0.50", "3", "5.0"]
    assert lines[3].split() == ["3", "977124ad", "12", "1", "0.800", "4.00", "7", "10.0"]
    assert lines[4] == "slowest: agent 3 (0.800s per iteration, 4.0x the fastest)"
    assert agent_rows(text) == {0: ("5d6265e8", 30), 3: ("977124ad", 12)}


def test_format_status_shows_rennalas_superseded_work_and_its_straggler():
    # agent 2's every gradient was superseded: it is still timed, and it is the straggler
    agents = {
        0: dict(updates=9, rejected=0, superseded=3, timed=12, iteration_seconds_sum=12.0, delay_sum=0, delay_max=0),
        2: dict(updates=0, rejected=0, superseded=4, timed=4, iteration_seconds_sum=16.0, delay_sum=0, delay_max=0),
    }
    text = status_mod.format_status({**SNAPSHOT, "superseded": 7, "agents": agents}, "r-server", now=1000.0)
    lines = text.splitlines()
    assert "superseded 7" in lines[0]
    assert lines[1].split()[:6] == ["agent", "node", "updates", "rejected", "superseded", "iter_mean_s"]
    assert lines[2].split()[2:6] == ["9", "0", "3", "1.000"]
    assert lines[3].split()[2:6] == ["0", "0", "4", "4.000"]
    assert lines[-1] == "slowest: agent 2 (4.000s per iteration, 4.0x the fastest)"


def test_format_status_before_any_update():
    empty = {**SNAPSHOT, "version": 0, "return_mean": float("nan"), "rejected": {}, "agents": {}}
    text = status_mod.format_status(empty, "x-server", now=0.0)
    assert text.startswith("x-server: version 0,")  # a snapshot without the server's node (older servers)
    assert "return -" in text and "rejected 0" in text
    assert text.splitlines()[-1] == "no agent has delivered a gradient yet"


def test_watch_stops_quietly_on_ctrl_c_and_when_the_server_exits(monkeypatch, capsys):
    calls = []

    def fake_fetch(server, timeout):
        calls.append(server)
        if len(calls) == 3:
            raise status_mod.ServerGoneError("the training server has exited (the run finished or stopped)")
        return SNAPSHOT

    monkeypatch.setattr(status_mod, "fetch_status", fake_fetch)
    monkeypatch.setattr(status_mod.time, "sleep", lambda seconds: None)
    assert status_mod.print_tables("handle", "afedpg-server", 1.0, 5.0) == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 2 and out.rstrip().endswith(
        "afedpg-server: the training server has exited (the run finished or stopped)"
    )

    # a server that dies before its budget is spent is followed to the one the driver restores
    calls.clear()
    unfinished = {**SNAPSHOT, "samples_budget": 10_000}
    lookups = []

    def fetch(server, timeout):
        calls.append(server)
        if server == "old" and len(calls) >= 2:
            raise status_mod.ServerGoneError("the training server has exited (the run finished or stopped)")
        if server == "new" and len(calls) >= 4:
            raise status_mod.ServerGoneError("the training server has exited (the run finished or stopped)")
        return {**unfinished, "samples_total": 10_000} if server == "new" else unfinished

    def refind():
        lookups.append(1)
        if len(lookups) == 1:
            return "old"  # the dead server's name is not released yet
        if len(lookups) == 2:
            raise status_mod.ServerGoneError("no server yet")  # the new one is still starting
        return "new"

    monkeypatch.setattr(status_mod, "fetch_status", fetch)
    assert status_mod.print_tables("old", "afedpg-server", 1.0, 5.0, status_mod.Follow(refind, lambda: True)) == 0
    out = capsys.readouterr().out
    assert "died mid-run; waiting for the driver to restore it" in out
    assert "restored from its checkpoint; following the new server" in out
    assert calls == ["old", "old", "new", "new"] and len(lookups) == 3
    # the new server spent its budget: when it goes, the watch ends without waiting for another
    assert out.rstrip().endswith("the training server has exited (the run finished or stopped)")

    # a run that ended just short of its last snapshot's budget has no agents left: no waiting
    calls.clear()
    lookups.clear()
    ended = status_mod.Follow(refind, lambda: False)
    assert status_mod.print_tables("old", "afedpg-server", 1.0, 5.0, ended) == 0
    out = capsys.readouterr().out
    assert "waiting for the driver" not in out and not lookups
    # while the run goes on but no replacement appears, the wait ends at its deadline
    clock = iter(range(0, 1000, 30))
    monkeypatch.setattr(status_mod.time, "monotonic", lambda: next(clock))
    stuck = status_mod.Follow(lambda: "old", lambda: True)
    assert status_mod.restored_server("old", stuck, wait=90.0, poll=1.0) is None
    assert next(clock) == 120  # deadline set at 0, checked at 30, 60 and 90: given up at 90
    monkeypatch.setattr(status_mod, "fetch_status", fake_fetch)

    # Ctrl-C and SIGTERM (raised as Terminated by show's handler) end it with the shell's codes, quietly
    for stop, code in ((KeyboardInterrupt, 130), (Terminated, 143)):

        def interrupt(seconds, stop=stop):
            raise stop

        calls.clear()
        monkeypatch.setattr(status_mod.time, "sleep", interrupt)
        assert status_mod.print_tables("handle", "afedpg-server", 1.0, 5.0) == code
        assert capsys.readouterr().out.count("--- ") == 1


def listening_socket() -> tuple[socket.socket, str]:
    """A listening TCP socket on a free local port, and its address (it stands for a cluster's GCS)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def test_lifeline_passes_results_on_and_ends_a_call_blocked_on_a_cluster_that_stopped():
    listener, address = listening_socket()
    lifeline = status_mod.Lifeline(address)
    release = threading.Event()

    def blocked() -> None:  # a Ray call while the GCS goes away: it would wait a minute, then abort
        listener.close()
        release.wait()

    try:
        assert lifeline.call(lambda x: x + 1, 1) == 2
        with pytest.raises(ValueError, match="bad"):
            lifeline.call(int, "bad")
        assert not lifeline.lost
        with pytest.raises(status_mod.InstanceGoneError):
            lifeline.call(blocked)
        assert lifeline.lost
    finally:
        release.set()
        listener.close()


def test_watch_ends_with_one_line_when_the_ray_instance_stops(monkeypatch, capsys):
    """A run's own Ray instance stops with it: the next refresh says so and the watch ends with exit 0."""
    listener, address = listening_socket()
    monkeypatch.setattr(status_mod, "fetch_status", lambda server, timeout: SNAPSHOT)
    monkeypatch.setattr(status_mod.time, "sleep", lambda seconds: listener.close())  # the run ends meanwhile
    try:
        code = status_mod.print_tables("handle", "afedpg-server", 1.0, 5.0, None, status_mod.Lifeline(address))
    finally:
        listener.close()
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 1
    assert out.rstrip().endswith("afedpg-server: the run has ended (its Ray instance stopped)")


@pytest.mark.parametrize("has_token", [False, True])
def test_status_at_an_address_that_never_lets_it_in_names_the_token_after_its_timeout(has_token, tmp_path):
    """A port that accepts but never completes Ray's handshake looks, from the driver, like a cluster that
    refuses a driver without its token: the one line must say what to do about the token, not only time out.
    Without a token on the machine: set one; with one (which status then sends by itself): it must be the
    cluster's."""
    import os
    import sys

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
        if has_token:
            env["RAY_AUTH_TOKEN"] = "0" * 32
        argv = [sys.executable, "-m", "afedpg_ray.cli", "status", "--address", f"127.0.0.1:{port}", "--timeout", "3"]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith(f"afedpg: error: --address: no Ray cluster let us in at '127.0.0.1:{port}' within 3s")
    if has_token:
        assert "its token must be the one in RAY_AUTH_TOKEN (`ray get-auth-token`" in last, last
    else:
        assert "run with RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN" in last, last


def test_a_driver_joining_an_address_sends_this_machines_token_unless_told_otherwise(monkeypatch, tmp_path):
    """Ray sends a token to an explicit address only under RAY_AUTH_MODE=token: a local run's own instance
    (token auth, Ray 2.60's default) refused ``afedpg status`` without it, with a warning a second for 20 s."""
    from afedpg_ray.address import adopt_local_token, local_token_source

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so that the teardown restores what the session had
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delitem(sys.modules, "ray._raylet", raising=False)  # leave this process's Ray config alone
    assert local_token_source() is None and adopt_local_token() is False  # no token here: nothing to send
    assert "RAY_AUTH_MODE" not in os.environ
    token_file = tmp_path / ".ray" / "auth_token"
    token_file.parent.mkdir()
    token_file.write_text("")
    assert local_token_source() is None  # an empty file is no token (Ray refuses it)
    token_file.write_text("a" * 32)
    assert local_token_source() == str(token_file)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert adopt_local_token() is False and os.environ["RAY_AUTH_MODE"] == "disabled"  # an explicit choice stays
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert adopt_local_token() is True and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))  # Ray reads only the file named
    assert local_token_source() is None
    monkeypatch.setenv("RAY_AUTH_TOKEN", "b" * 32)
    assert local_token_source() == "RAY_AUTH_TOKEN"
