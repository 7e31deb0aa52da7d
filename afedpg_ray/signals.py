"""How the driver treats signals: Ctrl-C held while Ray starts; SIGTERM stopping a run or a sweep as Ctrl-C does.

Handlers can only be installed from the main thread. Elsewhere (a Tune trial's thread, a library
caller's worker thread) every helper here leaves the signals alone.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or ``kill``'s stop): it stops a training the way Ctrl-C does."""


SIGTERM_RECEIVED = threading.Event()
"""Set by the SIGTERM handlers below (cleared when one is installed). Ask it, not the exception's type:
Ray's ``ray.get``/``ray.wait`` may turn an exception raised inside them into a plain KeyboardInterrupt."""


@contextmanager
def _handler(signum: int, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for ``signum`` within the block, then the previous one again (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signum == signal.SIGTERM:
        SIGTERM_RECEIVED.clear()
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _raise_terminated(signum: int, frame: Any) -> None:
    SIGTERM_RECEIVED.set()
    raise Terminated()


def sigterm_raises_terminated() -> AbstractContextManager[None]:
    """Within the block SIGTERM raises :class:`Terminated`, so a training stops as on Ctrl-C (its actors
    killed, how to resume printed) instead of Ray's handler exiting with a stack dump. Enter it after
    ``ray.init``, which installs that handler."""
    return _handler(signal.SIGTERM, _raise_terminated)


def _forward_as_ctrl_c(signum: int, frame: Any) -> None:
    SIGTERM_RECEIVED.set()
    os.kill(os.getpid(), signal.SIGINT)


def sigterm_as_ctrl_c() -> AbstractContextManager[None]:
    """Within the block SIGTERM sets :data:`SIGTERM_RECEIVED` and is passed on as Ctrl-C (SIGINT), whose
    handler (Tune's: a graceful stop that leaves the experiment resumable) does the stopping. Enter it
    after ``ray.init``."""
    return _handler(signal.SIGTERM, _forward_as_ctrl_c)


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block and raise it when the block ends; a second one raises at once.

    Measured: a Ctrl-C during ``ray.init`` could be swallowed inside Ray's start-up, and the run then went
    on to the end as if nothing was pressed. Only Python's default SIGINT handler is replaced.
    """
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if pressed:  # pressed again: the user insists
            raise KeyboardInterrupt
        pressed.append(signum)

    with _handler(signal.SIGINT, hold):
        yield
    if pressed:
        raise KeyboardInterrupt


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM inside the block and deliver them again when it ends (main thread only).

    For a few steps that must not be cut in two - an update submitted to the server and queued for the log,
    a record taken off that queue and written - so that a stop finds the log holding every update the
    server applied and can take a final checkpoint. Wrap no blocking call in it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not installed from Python, left alone
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):  # the handlers in place again decide what each one does
            os.kill(os.getpid(), signum)
