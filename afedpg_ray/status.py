"""``afedpg status``: a live straggler table of a running training, read from its server actor.

It joins the cluster at ``--address`` (namespace ``afedpg``), looks up the named actor
``{prefix}-server`` and prints what ``ParameterServer.status()`` returns: per agent the updates it
delivered, its mean iteration time, its mean and maximum delay, when it was last seen and on which
node, plus the server's version, update rate, samples and return.

``ray.init`` can block for minutes on an address where no Ray cluster answers, so the address is
first probed with a plain TCP connect (a few seconds at most), and the connection itself runs under a
deadline; either failure is a one-line error with exit code 2.

The same probe watches the cluster afterwards (:class:`Lifeline`): once a run's own Ray instance stops
with it, every Ray call would block for a minute and then end the process with a C++ error, so the
watch ends with one line (exit 0) as soon as the cluster's address stops answering. SIGTERM and Ctrl-C
end the watch quietly with exit 143 and 130.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from afedpg_ray.address import (
    NAMESPACE,
    PROBE_TIMEOUT_S,
    AddressError,
    adopt_local_token,
    init_with_retry,
    local_token_source,
    probe_address,
    token_auth_on,
)
from afedpg_ray.cli import EXIT_USAGE, fail
from afedpg_ray.config import first_line
from afedpg_ray.signals import Terminated, sigterm_raises_terminated

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
"""Default deadline for joining the cluster and for each ``status()`` call."""


class StatusError(RuntimeError):
    """A one-line reason why the status cannot be shown."""


class ServerGoneError(StatusError):
    """The server actor does not exist (any more)."""


class InstanceGoneError(Exception):
    """The cluster's address stopped answering: the Ray instance is gone (a run's own one ends with it)."""


INSTANCE_GONE = "the run has ended (its Ray instance stopped)"
"""What the watch prints when the cluster's address stops answering."""

LIFELINE_POLL_S = 1.0
"""How often a Ray call that has not returned yet is checked on by probing the cluster's address."""


class Lifeline:
    """Runs Ray calls while probing the cluster's address, so that a cluster that stops ends the watch at once.

    With the GCS gone, a Ray call blocks for 60 s and then the C++ core terminates the process with its
    own error; the call therefore runs in a thread, and the address is probed before it and every
    :data:`LIFELINE_POLL_S` while it is pending.
    """

    def __init__(self, address: str, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
        self.address = address
        self.probe_timeout = probe_timeout
        self.lost = False
        """Set once the address stopped answering: the process must then end with ``os._exit``."""

    def check(self) -> None:
        """:class:`InstanceGoneError` unless the address accepts a TCP connection (asked twice, a second apart,
        so that one lost connection on a slow network does not end the watch)."""
        for attempt in range(2):
            try:
                probe_address(self.address, self.probe_timeout)
                return
            except AddressError:
                if attempt == 0:
                    time.sleep(1.0)
        self.lost = True
        raise InstanceGoneError(self.address)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, or :class:`InstanceGoneError` as soon as the address stops answering (the call is
        then left blocked in its daemon thread)."""
        self.check()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the calling thread
                outcome["error"] = err

        thread = threading.Thread(target=run, name="afedpg-status-call", daemon=True)
        thread.start()
        while True:
            thread.join(LIFELINE_POLL_S)
            if not thread.is_alive():
                break
            self.check()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def connect(address: str, timeout: float) -> None:
    """Join the cluster at ``address`` in namespace ``afedpg`` within ``timeout`` seconds.

    The TCP probe catches unreachable addresses quickly. If ``ray.init`` itself does not return in
    time (something answers at the port but it is not a Ray cluster that lets us in), the error is
    printed and the process exits with code 2 at once: a half-finished ``ray.init`` cannot be
    cancelled, and the interpreter's exit handlers would wait for it.
    """
    if address == "local":  # ray.init would start a new, empty cluster: no run could be found in it
        raise StatusError("--address: 'local' starts a new Ray instance; give the running cluster's (auto, host:port)")
    try:
        probe_address(address, min(PROBE_TIMEOUT_S, timeout))
    except AddressError as err:
        raise StatusError(str(err)) from None
    adopt_local_token()  # before Ray is imported: it reads RAY_AUTH_MODE once
    import ray

    outcome: dict[str, BaseException] = {}

    def join() -> None:
        try:
            init_with_retry(
                lambda: ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False),
                address,
            )
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=join, name="afedpg-status-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        # a cluster that refuses a driver without its token keeps it retrying: this is how that looks too
        hint = f" ({token_hint()})"
        print(
            f"afedpg: error: --address: no Ray cluster let us in at {address!r} within {timeout:.0f}s{hint}",
            file=sys.stderr,
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_USAGE)
    if "error" in outcome:
        hint = f"; {token_hint()}"
        raise StatusError(f"--address: cannot connect to Ray at {address!r}: {first_line(outcome['error'])}{hint}")


def token_hint() -> str:
    """What to check when a cluster does not let ``status`` in: whether and which token it sent (Ray sends one to
    an explicit address only under RAY_AUTH_MODE=token, which ``status`` sets itself when this machine has one)."""
    where = local_token_source()
    if token_auth_on() and where is not None:
        return (
            f"if the cluster uses token authentication, its token must be the one in {where} "
            "(`ray get-auth-token` on the cluster's head prints it)"
        )
    return (
        "if the cluster uses token authentication (Ray's default for local instances since 2.59), run with "
        "RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token "
        "(`ray get-auth-token` on its head prints it)"
    )


def find_server(prefix: str) -> Any:
    """The actor handle of ``{prefix}-server`` (or its restored ``-rN``); :class:`ServerGoneError` otherwise."""
    import ray

    name = f"{prefix}-server"
    try:
        return ray.get_actor(name)
    except ValueError:
        pass
    # a server restored from its checkpoint is named "<prefix>-server-r<N>" if the old name was still taken
    servers = [n for n in ray.util.list_named_actors() if re.search(r"-server(-r\d+)?$", n)]
    restored = [n for n in servers if re.fullmatch(rf"{re.escape(name)}-r\d+", n)]
    if restored:
        return ray.get_actor(max(restored, key=lambda n: int(n.rsplit("-r", 1)[1])))
    others = sorted(servers)
    hint = f" (servers found: {', '.join(others)}; pick one with --prefix)" if others else ""
    raise ServerGoneError(f"no training server {name!r} in namespace {NAMESPACE!r} on this cluster{hint}")


def fetch_status(server: Any, timeout: float) -> dict[str, Any]:
    """``server.status()``, or :class:`ServerGoneError` / :class:`StatusError`."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return ray.get(server.status.remote(), timeout=timeout)
    except RayActorError:
        raise ServerGoneError("the training server has exited (the run finished or stopped)") from None
    except GetTimeoutError:
        raise StatusError(f"the training server did not answer within {timeout:.0f}s") from None


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _rate_text(status: dict[str, Any]) -> str:
    """The recent update rate (servers before it was kept report only the rate since the run's start,
    which includes start-up and, after a resume, the earlier sessions)."""
    if "updates_per_second_recent" not in status:
        return f"{status['updates_per_second']:.2f} updates/s since start"
    return f"{status['updates_per_second_recent']:.2f} updates/s over the last {status['rate_window_s']:.0f}s"


def format_status(status: dict[str, Any], name: str, now: float | None = None) -> str:
    """The straggler table for one ``ParameterServer.status()`` snapshot (pure; no Ray).

    "last seen" compares the server's clock with this machine's, so clock skew between machines
    shows up there.
    """
    now = time.time() if now is None else now
    rejected = status.get("rejected") or {}
    rejected_text = ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "0"
    where = f" (node {status['node_id'][:8]})" if status.get("node_id") else ""  # older servers do not say
    lines = [
        f"{name}{where}: version {status['version']}, {_rate_text(status)}, "
        f"{status['samples_total']} samples, return {_fmt(status['return_mean'], 1)}, "
        f"rejected {rejected_text}, "
        + (f"superseded {status['superseded']}, " if status.get("superseded") else "")
        + f"up {status.get('elapsed', float('nan')):.0f}s"
    ]
    agents = sorted(status.get("agents", {}).items(), key=lambda item: int(item[0]))
    with_superseded = any(stats.get("superseded") for _, stats in agents)  # rennala's column
    header = ("agent", "node", "updates", "rejected") + (("superseded",) if with_superseded else ())
    header += ("iter_mean_s", "delay_mean", "delay_max", "last_seen_s_ago")
    rows = [header]
    means: dict[int, float] = {}
    for agent, stats in agents:
        updates = int(stats["updates"])
        timed = int(stats.get("timed", updates))  # snapshots from before superseded work was timed
        iteration = stats["iteration_seconds_sum"] / timed if timed else float("nan")
        delay = stats["delay_sum"] / updates if updates else float("nan")
        if timed:
            means[int(agent)] = iteration
        seen = max(0.0, now - stats["last_seen"]) if stats.get("last_seen") else float("nan")
        row = [str(agent), (stats.get("node_id") or "-")[:8], str(updates), str(stats.get("rejected", 0))]
        if with_superseded:
            row.append(str(stats.get("superseded", 0)))
        row += [_fmt(iteration, 3), _fmt(delay), str(stats["delay_max"]) if updates else "-", _fmt(seen, 1)]
        rows.append(tuple(row))
    if len(rows) == 1:
        lines.append("no agent has delivered a gradient yet")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
    if len(means) >= 2:
        slowest = max(means, key=means.__getitem__)
        fastest = min(means.values())
        ratio = f", {means[slowest] / fastest:.1f}x the fastest" if fastest > 0 else ""
        lines.append(f"slowest: agent {slowest} ({means[slowest]:.3f}s per iteration{ratio})")
    return "\n".join(lines)


def show(args: argparse.Namespace) -> int:
    """Connect, find the server, print its table (repeatedly with ``--watch``), disconnect."""
    import ray

    connect(args.address, args.timeout)
    lifeline = Lifeline(lifeline_address(args.address))
    name = f"{args.prefix}-server"
    code = EXIT_USAGE
    try:
        with sigterm_raises_terminated():  # instead of the handler ray.init installed, which dumps a stack trace
            server = lifeline.call(find_server, args.prefix)
            follow = Follow(
                lambda: lifeline.call(find_server, args.prefix), lambda: lifeline.call(agents_alive, args.prefix)
            )
            code = print_tables(server, name, args.watch, args.timeout, follow, lifeline)
    except KeyboardInterrupt as stop:  # before the first table
        code = stop_exit_code(stop)
    except InstanceGoneError:  # before the first table: nothing to show
        print(f"afedpg: error: {name}: {INSTANCE_GONE}", file=sys.stderr)
    finally:
        if lifeline.lost:
            # ray.shutdown (also Ray's exit handler) waits for the GCS (5 s measured), and a Ray call may be
            # left blocked in the lifeline's thread, which Ray's C++ core ends with its own error after a minute
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        ray.shutdown()
    return code


def lifeline_address(address: str) -> str:
    """The address whose TCP port tells whether the cluster is still there: the GCS's (``auto`` resolved
    once connected), or the Ray-client server's for ``ray://``."""
    if address.startswith("ray://"):
        return address
    import ray

    return ray.get_runtime_context().gcs_address


def stop_exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's convention for a process stopped by SIGTERM (143) or Ctrl-C (130).

    The exception's type is enough here: Ray calls run in the lifeline's thread, so the main thread is
    never inside ``ray.get`` (which may turn :class:`Terminated` into a plain KeyboardInterrupt) when a
    signal arrives.
    """
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


RESTORE_WAIT_S = 90.0
"""How long ``--watch`` looks for a restored server after the one it watched died before its budget was
spent: the driver first waits up to 30 s for the old one to answer (``SERVER_PROBE_S``), then starts a
new one from the checkpoint."""


END_GRACE_S = 3.0
"""How long ``--watch`` gives Ray to unregister a finished run's agents before it takes agents that are
still listed for a run that goes on (and waits for its restored server)."""


def agents_alive(prefix: str) -> bool:
    """Whether any agent actor of the run ``prefix`` is still registered: a run that ended kills its agents
    before its server, while a server restore leaves them running."""
    import ray

    return any(re.fullmatch(rf"{re.escape(prefix)}-agent-\d+", name) for name in ray.util.list_named_actors())


@dataclass(frozen=True)
class Follow:
    """How ``--watch`` follows a run whose server died: look the server up again, and ask if the run goes on."""

    refind: Callable[[], Any]
    run_goes_on: Callable[[], bool]


def _actor_id(handle: Any) -> Any:
    return getattr(handle, "_actor_id", handle)


def restored_server(old: Any, follow: Follow, wait: float, poll: float) -> Any | None:
    """A server other than ``old`` found within ``wait`` seconds (polling every ``poll``); None as soon as
    the run has no agents left (it ended), or when the wait is over."""
    deadline = time.monotonic() + wait
    while True:
        try:
            new = follow.refind()
            if _actor_id(new) != _actor_id(old):
                return new
        except ServerGoneError:
            pass
        if time.monotonic() >= deadline or not follow.run_goes_on():
            return None
        time.sleep(poll)


def print_tables(
    server: Any,
    name: str,
    watch: float | None,
    timeout: float,
    follow: Follow | None = None,
    lifeline: Lifeline | None = None,
) -> int:
    """Print the table once, or every ``watch`` seconds until the server or the whole Ray instance is gone
    (exit 0) or Ctrl-C or SIGTERM (exit 130 or 143).

    With ``follow``, a server that dies while the run goes on (its budget not spent, its agents alive)
    is followed to its replacement when the driver restores one from the checkpoint. With ``lifeline``
    each ``status()`` call runs under it (``follow``'s calls should too).
    """

    def fetch(server: Any) -> dict[str, Any]:
        return fetch_status(server, timeout) if lifeline is None else lifeline.call(fetch_status, server, timeout)

    clear = watch is not None and sys.stdout.isatty()
    status = fetch(server)  # failing here is an error: there is no run to show
    try:
        while True:
            if clear:
                print("\x1b[H\x1b[2J", end="")
            elif watch is not None:
                print(f"--- {time.strftime('%H:%M:%S')}")
            print(format_status(status, name), flush=True)
            if watch is None:
                return 0
            time.sleep(watch)
            while True:
                try:
                    status = fetch(server)
                    break
                except ServerGoneError as gone:
                    unfinished = status.get("samples_total", 0) < status.get("samples_budget", 0)
                    replacement = None
                    if follow is not None and unfinished:
                        time.sleep(END_GRACE_S)  # a run that ended kills its agents just before its server
                    if follow is not None and unfinished and follow.run_goes_on():
                        print(f"{name}: the server died mid-run; waiting for the driver to restore it", flush=True)
                        replacement = restored_server(server, follow, RESTORE_WAIT_S, min(watch, 2.0))
                    if replacement is None:
                        print(f"{name}: {gone}", flush=True)
                        return 0
                    server = replacement
                    print(f"{name}: restored from its checkpoint; following the new server", flush=True)
    except InstanceGoneError:  # a run's own Ray instance stops with it: as normal an end as its server's exit
        print(f"{name}: {INSTANCE_GONE}", flush=True)
        return 0
    except KeyboardInterrupt as stop:
        return stop_exit_code(stop)


MAX_SECONDS = 86400.0
"""Longest --watch interval or --timeout (a day; larger values overflow the waits underneath)."""


def cmd_status(args: argparse.Namespace) -> int:
    """``afedpg status``."""
    for flag, value in (("--watch", args.watch), ("--timeout", args.timeout)):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
            fail(f"{flag}: must be a positive number of seconds up to {MAX_SECONDS:g}, got {value}")
    if not args.prefix:
        fail("--prefix: must not be empty")
    try:
        return show(args)
    except StatusError as err:
        fail(str(err))


def add_commands(subparsers: Any) -> None:
    """Register ``afedpg status`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "status", help="live straggler table of a running training (per-agent updates, delays, nodes)"
    )
    parser.add_argument(
        "--address", required=True, help="the Ray cluster the training runs on: host:port (GCS) or ray://host:port"
    )
    parser.add_argument("--prefix", default="afedpg", help="actor name prefix of the run (default afedpg)")
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C or the run ends"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline for joining the cluster and for each status call (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    parser.set_defaults(handler=cmd_status)
