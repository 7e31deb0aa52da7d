"""Shared fixtures: one local Ray instance per test session (ray.init costs seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance even if the machine runs a `ray start` cluster or sets RAY_ADDRESS
        # (which ray.init() with no address would join, and refuse num_cpus for)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
