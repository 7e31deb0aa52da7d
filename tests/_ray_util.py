"""Helpers for tests that run on the session's Ray instance (``ray_session`` in conftest.py)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray


def released(name: str, timeout: float = 30.0) -> bool:
    """Whether no actor holds ``name`` within ``timeout`` s (Ray releases a killed actor's name within moments;
    a loaded machine can take seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return True
        time.sleep(0.1)
    return False


def cpus_returned(timeout: float = 30.0) -> bool:
    """Whether every CPU of the session's instance is free again within ``timeout`` s (a run that ended or
    failed must not leave an actor holding its share)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0) - 1e-6:
            return True
        time.sleep(0.2)
    return False


def orphan_ref() -> Any:
    """An ObjectRef whose owner (a throwaway actor) is dead: reading it, or running a task on it, fails with
    Ray's ``OwnerDiedError``, the error of an object lost with its node (a single machine has no node to lose)."""

    @ray.remote(num_cpus=0)
    class Owner:
        def make(self) -> list:
            return [ray.put(np.zeros(4, dtype=np.float32))]

    owner = Owner.remote()
    [ref] = ray.get(owner.make.remote())
    ray.kill(owner)
    return ref
