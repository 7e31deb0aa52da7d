"""How the driver treats signals: Ctrl-C held while Ray starts; SIGTERM stopping a run or a sweep as Ctrl-C does.

Handlers can only be installed from the main thread. Elsewhere (a Tune trial's thread, a library
caller's worker thread) every helper here leaves the signals alone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or ``kill``'s stop): it stops a training the way Ctrl-C does."""


CTRL_C_HELD_NOTICE = "Ctrl-C: stopping once Ray has started (press Ctrl-C again to stop at once)"
"""What :func:`ctrl_c_deferred` prints when it holds a Ctrl-C."""

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
def ctrl_c_deferred(notice: str = CTRL_C_HELD_NOTICE) -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block and raise it when the block ends; a second one raises at once.

    The first one prints ``notice`` to stderr.

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
        # Ray's start-up can take 15 s on a loaded machine: say the key was heard
        print(f"\n{notice}", file=sys.stderr, flush=True)

    with _handler(signal.SIGINT, hold):
        yield
    if pressed:
        raise KeyboardInterrupt


class _Holds:
    """State of :func:`stops_holdable`'s dispatcher: how deep in :func:`stops_held` blocks the main thread
    is, the signals caught there, and the handlers the dispatcher stands in for."""

    depth = 0
    caught: list[int] = []
    handlers: dict[int, Any] = {}


STOPS = (signal.SIGINT, signal.SIGTERM)


def _deliver(signum: int, frame: Any) -> None:
    """Hand ``signum`` to the handler the dispatcher stands in for, as if it had come now."""
    handler = _Holds.handlers.get(signum, signal.SIG_DFL)
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # SIGTERM's default: the process ends, as it would have
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _dispatch(signum: int, frame: Any) -> None:
    if _Holds.depth == 0 or signum in _Holds.caught:  # not held, or sent again: the user insists
        _deliver(signum, frame)
    else:
        _Holds.caught.append(signum)


@contextmanager
def stops_holdable() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM go through a dispatcher that :func:`stops_held` can hold; outside
    such a hold they reach the handlers in place before (enter this after those are installed). Main
    thread only; installed once (per run), so a signal never finds a handler half swapped."""
    if threading.current_thread() is not threading.main_thread() or _Holds.handlers:
        yield
        return
    installed: dict[int, Any] = {}
    try:
        for signum in STOPS:
            handler = signal.getsignal(signum)
            if handler is not None:  # None: a handler not installed from Python, left alone
                _Holds.handlers[signum] = handler
                installed[signum] = signal.signal(signum, _dispatch)
        yield
    finally:
        for signum, handler in installed.items():
            signal.signal(signum, handler)  # a signal between two restores still reaches its handler
        _Holds.handlers = {}
        _Holds.caught = []


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM inside the block and deliver them when it ends (within :func:`stops_holdable`;
    elsewhere, including other threads, it does nothing).

    For a few quick steps that must not be cut in two - an update submitted to the server and queued for
    the log, a record taken off that queue, counted and written - so that a stop finds the log holding
    every update the server applied and can take a final checkpoint. Wrap nothing slow or blocking in it:
    a signal sent twice is delivered at once. If the block raises, its exception goes on and a held
    Ctrl-C is dropped (the run stops on that exception); a held SIGTERM is still recorded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Holds.depth += 1
    try:
        yield
    except BaseException:
        _Holds.depth -= 1
        if _Holds.depth == 0:
            if signal.SIGTERM in _Holds.caught:
                SIGTERM_RECEIVED.set()
            _Holds.caught = []
        raise
    _Holds.depth -= 1
    if _Holds.depth == 0 and _Holds.caught:
        caught, _Holds.caught = _Holds.caught, []
        # SIGTERM first: a job scheduler's stop (exit 143) outranks a Ctrl-C pressed meanwhile
        _deliver(signal.SIGTERM if signal.SIGTERM in caught else caught[0], None)
