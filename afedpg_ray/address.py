"""Cluster addresses: parsing and a fast reachability probe, shared by ``train`` and ``status``.

Kept free of Ray, torch and gymnasium imports so a bad ``--address`` is reported in about a second.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

NAMESPACE = "afedpg"
"""Ray namespace of the run's named actors (``afedpg status`` looks there)."""
PROBE_TIMEOUT_S = 3.0
"""How long the TCP probe of ``--address`` may take."""


TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Ray's logger that announces, on every local start, that token authentication is on."""


class _DropTokenEnabledNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled" notice (its warning that auth is *disabled* passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def quiet_token_auth_notice() -> None:
    """Keep Ray's token-auth notice off the run's console: the run's own watch hint already says how to
    connect with a token (``RAY_AUTH_MODE=token afedpg status ...``). Idempotent."""
    logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    if not any(isinstance(f, _DropTokenEnabledNotice) for f in logger.filters):
        logger.addFilter(_DropTokenEnabledNotice())


class AddressError(RuntimeError):
    """A one-line reason why ``--address`` cannot be used."""


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``.

    Raises :class:`AddressError` for anything else.
    """
    if address in ("auto", "local"):
        return None
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    if "://" in rest:  # most often the dashboard's http://host:8265, which `ray job submit` takes
        scheme = rest.split("://", 1)[0]
        raise AddressError(
            f"--address: {address!r} is a {scheme}:// URL (the dashboard's, for `ray job submit`?); give the "
            "cluster's GCS address host:6379 or a Ray-client address ray://host:10001"
        )
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"--address: expected host:port or ray://host:port, got {address!r}")
    return host, int(port)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast unless something accepts TCP connections at ``address`` (no-op for ``auto``)."""
    target = parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err) or type(err).__name__)
        raise AddressError(f"--address: cannot reach Ray at {address!r} ({reason})") from None


CLIENT_CONNECT_ATTEMPTS = 3
CLIENT_RETRY_WAIT_S = 2.0
"""A ``ray://`` connection whose server failed to start is retried this often, this long apart."""


def init_with_retry(init: Callable[[], object], address: str | None) -> object:
    """Call ``init`` (a ``ray.init``), retrying a ``ray://`` connection whose server failed to start.

    A Ray-client head starts one server per client; on a loaded head that start can time out
    ("Initialization failure from server", a ``ConnectionAbortedError``) and a retry usually succeeds.
    Every other error, and the last attempt's, is raised to the caller. Returns what ``init`` returned.
    """
    attempts = CLIENT_CONNECT_ATTEMPTS if address and address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            return init()
        except ConnectionAbortedError:
            if attempt == attempts:
                raise
            time.sleep(CLIENT_RETRY_WAIT_S)


def token_auth_on() -> bool:
    """Whether this process authenticates to Ray with a token (RAY_AUTH_MODE=token; ``ray.init`` sets it
    when it enables token auth for a local instance, Ray's default since 2.59)."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def local_token_source() -> str | None:
    """Where Ray would read this machine's token from, in its order (the ``RAY_AUTH_TOKEN`` variable, the file
    ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``); None if there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named) if named else Path.home() / ".ray" / "auth_token"
    try:
        return str(path) if path.stat().st_size > 0 else None
    except OSError:
        return None


def adopt_local_token() -> bool:
    """Before joining a cluster at an explicit address: authenticate with this machine's token, if it has one and
    ``RAY_AUTH_MODE`` is unset (an explicit setting is kept). Returns whether token mode is on.

    Ray sends a token to an explicit address only under ``RAY_AUTH_MODE=token``; without it a cluster that uses
    token authentication (Ray's default for local instances since 2.59) refuses the driver, which Ray retries
    with a warning a second until it gives up (measured: 20 lines, then "Failed to connect"). A cluster without
    authentication ignores the token (measured with Ray 2.60)."""
    if "RAY_AUTH_MODE" not in os.environ and local_token_source() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray read its config at import: refresh it, as Ray does when it turns token auth on for a local
        # instance (a private API: if it moves, the variable still reaches the workers and the next process)
        ray = sys.modules.get("ray")
        if "ray._raylet" in sys.modules and ray is not None and not ray.is_initialized():
            try:
                sys.modules["ray._raylet"].Config.initialize("")
            except Exception:  # noqa: BLE001
                pass
    return token_auth_on()
