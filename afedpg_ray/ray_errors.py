"""Reading Ray's errors: whose failure it was, and one line to say so.

Ray's exception types do not say which actor failed (an agent whose input was the server's failed reply
fails too, a memory kill is a plain ``RayError``), and their messages run to paragraphs of traceback.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError

from afedpg_ray.errors import RunError

FAILED_REPLY_READ_S = 1.0
"""How long the driver waits for a failed agent step's gradient reference to hold its error (both returns
of a failed task land together, so it is there at once; the bound is for a reply lost with its node)."""


def actor_exists(name: str) -> bool:
    """Whether a live actor is named ``name`` in this driver's namespace (where the run's actors are made)."""
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


def raise_if_server_failed(err: BaseException, server_actor_id: str) -> None:
    """Raise :class:`RunError` if an agent task failed only because its input, the server's reply, is an error.

    Ray then fails the agent's task with the server's exception; restarting the agent would not help. The
    error names the failed actor by id in its text only, so the current server's id (hex) is looked for:
    an earlier server's failure, already restored, does not stop the run.
    """
    text = str(err)
    if isinstance(err, RayTaskError) and "could not be computed" in text and server_actor_id in text:
        raise RunError(f"the parameter server failed: {task_error_line(err)}") from None


def input_lost(err: BaseException) -> bool:
    """Whether a task never ran because an input object was lost (Ray raises it as a task error whose
    cause is the :class:`ObjectLostError`, e.g. an ``OwnerDiedError`` when the node holding it died)."""
    return isinstance(err, RayTaskError) and isinstance(err, ObjectLostError)


def read_failed(ref: Any) -> None:
    """Read a failed agent step's other return, its gradient, and drop the error it holds.

    Both returns of a failed step hold the error, and Ray logs an "Unhandled error" traceback for every
    error object freed unread: a failing agent would spam the terminal with each failure twice over.
    """
    try:
        ray.get(ref, timeout=FAILED_REPLY_READ_S)
    except RayError:  # the step's error, as expected (or GetTimeoutError: nothing more to do)
        pass


def task_error_line(err: BaseException) -> str:
    """The first line of the exception raised inside a Ray task (``str(err)`` starts with Ray's traceback,
    and its last line is the tail of the exception's message, e.g. a tensor's repr); for an error that is
    not a task's (an actor that died, a memory kill), :func:`ray_error_line`."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        lines = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    return ray_error_line(err)


def ray_error_line(err: BaseException, limit: int = 160) -> str:
    """A short, one-line description of a Ray error: its last line (Ray's messages run to paragraphs and end
    with the cause), shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    if isinstance(err, RayActorError) and "worker process has died" in text:
        text = "the actor's worker process died"
    return text if len(text) <= limit else text[: limit - 3] + "..."
