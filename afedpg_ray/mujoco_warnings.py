"""MuJoCo's own warnings, routed through Python logging instead of stderr and ``MUJOCO_LOG.TXT``.

MuJoCo prints its warnings and appends them to ``MUJOCO_LOG.TXT`` in the working directory. Gymnasium's
HalfCheetah model uses a compiler attribute that MuJoCo 3.3+ calls deprecated, so every process that
builds it (each agent, the driver's environment check, evaluation) printed the same notice and left
a log file behind in the user's directory. Here such deprecation notices about the bundled models go
to the debug log, once per message and process; any other MuJoCo warning is logged as a warning.
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("afedpg_ray.mujoco")
DEPRECATION_MARK = "is deprecated"
"""Text that marks a notice about the bundled model files (not about the user's run)."""

_seen: set[str] = set()
_installed = False


def route_mujoco_warnings() -> None:
    """Install the handler in this process (idempotent; a no-op where MuJoCo is not installed)."""
    global _installed
    if _installed:
        return
    try:
        import mujoco
    except ImportError:  # classic-control environments need no MuJoCo
        return
    mujoco.set_mju_user_warning(handle_warning)
    _installed = True


def handle_warning(message: str) -> None:
    """Log one MuJoCo warning: deprecation notices at debug level, once per message; others as warnings."""
    if DEPRECATION_MARK in message:
        if message not in _seen:
            _seen.add(message)
            LOGGER.debug("MuJoCo: %s", message)
        return
    LOGGER.warning("MuJoCo: %s", message)
