"""MuJoCo's warnings go through logging: no deprecation chatter on stderr, no MUJOCO_LOG.TXT left behind."""

from __future__ import annotations

import logging
import subprocess
import sys

from afedpg_ray import mujoco_warnings

BUILD_HALFCHEETAH = (
    "from afedpg_ray.policy import build_policy; from afedpg_ray.rollout import make_vec_env; "
    "build_policy('HalfCheetah-v5', (8,), 0.0); make_vec_env('HalfCheetah-v5', 2).reset(seed=0)"
)


def test_deprecations_go_to_debug_once_and_other_warnings_stay_warnings(caplog, monkeypatch):
    monkeypatch.setattr(mujoco_warnings, "_seen", set())
    with caplog.at_level(logging.DEBUG, logger="afedpg_ray.mujoco"):
        for _ in range(3):
            mujoco_warnings.handle_warning("compiler attribute 'x' is deprecated")
        mujoco_warnings.handle_warning("Nan, Inf or huge value in QACC")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "MuJoCo: compiler attribute 'x' is deprecated"),
        (logging.WARNING, "MuJoCo: Nan, Inf or huge value in QACC"),
    ]


def test_halfcheetah_builds_quietly_and_leaves_no_log_file(tmp_path):
    # Gymnasium's HalfCheetah model uses an attribute MuJoCo calls deprecated: before the handler,
    # every process that built it printed the notice and wrote MUJOCO_LOG.TXT into its directory.
    run = subprocess.run([sys.executable, "-c", BUILD_HALFCHEETAH], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "deprecated" not in run.stderr and "deprecated" not in run.stdout
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
