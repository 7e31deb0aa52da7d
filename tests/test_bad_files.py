"""Damaged or hostile run files and requests Ray refuses: one ``afedpg: error:`` line, nothing touched.

A policy.pt, checkpoint.pt or progress.csv that loads but holds nonsense (NaN parameters, negative
counters, another program's CSV) must be refused when it is read, not turn into a torch traceback in
``afedpg eval`` or into Ray's error spam after a resume has already rewritten the run's files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from afedpg_ray.cli import main
from afedpg_ray.config import TrainConfig

AGENT_REQUEST_RAY_REFUSES = '{"0": {"resources": {"TPU": 3}}}'
"""Ray refuses any TPU count that is not a chip configuration (1, 2, 4 or 8) when the actor is created."""


def no_ray(*args, **kwargs):
    raise AssertionError("passed its checks and would start Ray")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("afedpg: error: "), err
    return err


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != "driver.lock"}


# -- policy.pt ----------------------------------------------------------------------------------------


def saved_policy(run: Path, **damage) -> Path:
    """A CartPole policy.pt as a finished run writes it, with ``damage`` replacing some of its entries."""
    from afedpg_ray.policy import build_policy, get_flat
    from afedpg_ray.train import save_policy

    config = TrainConfig()
    policy, obs_dim = build_policy(config.env, config.hidden, config.estimator.log_std_init)
    snapshot = {
        "theta": get_flat(policy),
        "obs_mean": np.zeros(obs_dim),
        "obs_var": np.ones(obs_dim),
        "obs_count": 100.0,
        "version": 3,
    }
    run.mkdir(exist_ok=True)
    save_policy(run / "policy.pt", config, {**snapshot, **damage})
    return run


def test_an_intact_policy_evaluates(tmp_path, capsys):
    assert main(["eval", str(saved_policy(tmp_path / "run")), "--episodes", "1"]) == 0
    assert "mean return" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        ("nan_theta", "theta"),
        ("inf_theta", "theta"),
        ("huge_theta", "theta"),  # finite in float64, inf in the policy's float32
        ("nan_obs_mean", "obs_mean"),
        ("negative_obs_var", "obs_var"),
        ("nan_obs_var", "obs_var"),
        ("nan_obs_count", "obs_count"),
        ("short_obs_mean", "obs_mean"),
    ],
)
def test_a_policy_with_nonsense_numbers_is_a_corrupt_file_not_a_traceback(damage, what, tmp_path, capsys):
    run = saved_policy(tmp_path / "run")
    import torch

    payload = torch.load(run / "policy.pt", weights_only=False)
    if damage == "nan_theta":
        payload["theta"][3] = np.nan
    elif damage == "inf_theta":
        payload["theta"][0] = np.inf
    elif damage == "huge_theta":
        payload["theta"][0] = 1e300
    elif damage == "nan_obs_mean":
        payload["obs_mean"][1] = np.nan
    elif damage == "negative_obs_var":
        payload["obs_var"][2] = -1.0
    elif damage == "nan_obs_var":
        payload["obs_var"][0] = np.nan
    elif damage == "nan_obs_count":
        payload["obs_count"] = float("nan")
    elif damage == "short_obs_mean":
        payload["obs_mean"] = payload["obs_mean"][:2]
    torch.save(payload, run / "policy.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run), "--episodes", "1"])
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert "policy.pt: corrupt or incompatible policy file" in err and what in err, err
