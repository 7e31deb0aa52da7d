"""Why a run stops or the driver loop recovers: the exception types, free of Ray imports.

Kept apart from :mod:`afedpg_ray.runtime` so that modules that only refuse or report (the run-directory
lock, the command lines) do not import Ray to name them.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot continue (e.g. every agent failed, or an agent's resources do not exist)."""


class ServerLostError(RuntimeError):
    """The server actor died; the loop restores it from the last checkpoint."""


class GradientLostError(RuntimeError):
    """An update never ran: its gradient was lost before the server could read it (the node holding it died).

    The server's state is untouched, so the loop drops that one update instead of restoring the server.
    """
