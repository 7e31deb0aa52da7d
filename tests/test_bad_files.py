"""Damaged or hostile run files and requests Ray refuses: one ``afedpg: error:`` line, nothing touched.

A policy.pt, checkpoint.pt or progress.csv that loads but holds nonsense (NaN parameters, negative
counters, another program's CSV) must be refused when it is read, not turn into a torch traceback in
``afedpg eval`` or into Ray's error spam after a resume has already rewritten the run's files.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from _checkpoint_util import no_ray, one_error_line, resumable_run, snapshot
from _checkpoint_util import resume_argv as resume
from _ray_util import cpus_returned, released

from afedpg_ray.checkpoint import CheckpointError
from afedpg_ray.cli import main
from afedpg_ray.config import AgentResources, TrainConfig

AGENT_REQUEST_RAY_REFUSES = '{"0": {"resources": {"TPU": 3}}}'
"""Ray refuses any TPU count that is not a chip configuration (1, 2, 4 or 8) when the actor is created."""


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


# -- checkpoint.pt ------------------------------------------------------------------------------------


def test_an_intact_checkpoint_passes_the_checks(tmp_path, monkeypatch):
    def ray_started(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", ray_started)
    run, _ = resumable_run(tmp_path)
    with pytest.raises(RuntimeError, match="passed the checks"):
        main(resume(run))


@pytest.mark.parametrize("algo", ["afedpg", "vanilla", "a3c", "rennala", "fedpg", "pg"])
def test_checkpoints_of_every_rule_after_updates_pass_the_checks(algo, tmp_path):
    # the rules keep their own state in rule_state (a3c's second moment, rennala's collected sum and count)
    from afedpg_ray.checkpoint import load_checkpoint, save_checkpoint
    from afedpg_ray.messages import GradientMeta
    from afedpg_ray.normalizer import RunningStats
    from afedpg_ray.server import ParameterServer

    agents = 1 if algo == "pg" else 3
    robust = "filter" if algo == "afedpg" else "none"
    config = TrainConfig(algo=algo, agents=agents, batch=64, num_envs=2, samples=10_000, robust=robust)
    server = ParameterServer(config)
    rng = np.random.default_rng(0)

    def meta(agent: int) -> GradientMeta:
        stats = RunningStats.of(rng.normal(size=(64, 4)))
        return GradientMeta(agent, server.agent_versions[agent], 64, (10.0,), (10,), stats, 0.01, 0.0, 1.0)

    for step in range(agents + 1):  # rennala: one collection stepped, the next begun
        if config.synchronous:
            server.dispatch_round(list(range(agents)))
            server.apply_round([meta(a) for a in range(agents)], *[rng.normal(size=server.num_params)] * agents)
        else:
            server.dispatch(step % agents)
            server.apply(meta(step % agents), rng.normal(size=server.num_params))
    assert server.rejected == {}
    if algo == "rennala":
        assert int(server.state.extra["collected_count"]) == 1
    state = {**server.export_state(), "progress_rows": agents + 1}
    save_checkpoint(tmp_path, state)
    assert load_checkpoint(tmp_path)["rule_state"]["version"] == server.state.version
    if state["rule_state"]["extra"]:  # and a NaN in the rule's own state is damage too
        name = next(iter(state["rule_state"]["extra"]))
        state["rule_state"]["extra"][name] = np.asarray(state["rule_state"]["extra"][name]) * np.nan
        save_checkpoint(tmp_path, state)
        with pytest.raises(CheckpointError, match=f"damaged checkpoint \\(rule state {name} holds NaN or inf\\)"):
            load_checkpoint(tmp_path)


def damage_checkpoint(state: dict, damage: str) -> None:
    rule = state["rule_state"]
    if damage == "nan_theta":
        rule["theta"] = np.full_like(rule["theta"], np.nan)
    elif damage == "short_theta":
        rule["theta"] = rule["theta"][:-10]
    elif damage == "inf_theta_prev":
        rule["theta_prev"][0] = np.inf
    elif damage == "long_momentum":
        rule["momentum"] = np.zeros(len(rule["theta"]) + 1)
    elif damage == "nan_point":
        rule["point"][5] = np.nan
    elif damage == "text_theta":
        rule["theta"] = "theta"
    elif damage == "negative_version":
        rule["version"] = -3
    elif damage == "negative_samples":
        state["samples_total"] = -100
    elif damage == "negative_rows":
        state["progress_rows"] = -1
    elif damage == "nan_obs_stats":
        count, mean, m2 = state["obs_stats"]
        state["obs_stats"] = (count, np.full_like(mean, np.nan), m2)
    elif damage == "negative_obs_count":
        _, mean, m2 = state["obs_stats"]
        state["obs_stats"] = (-5.0, mean, m2)
    elif damage == "negative_return_m2":
        count, mean, m2 = state["return_stats"]
        state["return_stats"] = (10.0, mean, m2 - 1.0)
    elif damage == "foreign_obs_stats":
        state["obs_stats"] = (0.0, np.zeros(7), np.zeros(7))
    else:
        raise AssertionError(damage)


@pytest.mark.parametrize(
    "damage",
    [
        "nan_theta",
        "short_theta",
        "inf_theta_prev",
        "long_momentum",
        "nan_point",
        "text_theta",
        "negative_version",
        "negative_samples",
        "negative_rows",
        "nan_obs_stats",
        "negative_obs_count",
        "negative_return_m2",
        "foreign_obs_stats",
    ],
)
def test_a_damaged_checkpoint_is_refused_before_ray_starts_or_a_file_changes(damage, tmp_path, capsys, monkeypatch):
    from afedpg_ray.checkpoint import save_checkpoint

    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, state = resumable_run(tmp_path)
    (run / "progress.csv").write_text(
        (run / "progress.csv").read_text() + "1,0.5,0,0,100,0,nan,True,,nan,nan,nan,nan\n"
    )
    damage_checkpoint(state, damage)
    save_checkpoint(run, state)
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        main(resume(run))
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert f"{run / 'checkpoint.pt'}: " in err and ("damaged checkpoint" in err or "belongs to another run" in err), err
    assert snapshot(run) == before


# -- progress.csv -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "step,reward\n1,2.0\n2,3.5\n",  # another program's CSV
        "update,accepted\n5,True\n",  # afedpg's names, but not its columns
        "{header}\nfive,0.1,0,0,100,0,nan,True,,nan,nan,nan,nan\n",  # a value that does not parse
        "{header}\n1,0.1,0,0,100,0,nan,True\n",  # a short row
        "{header}\n1,0.1,0,0,100,0,nan,True,,nan,nan,nan,nan,extra\n",  # a long row
        "{header}\n1,0.1,0,0,100,0,nan,maybe,,nan,nan,nan,nan\n",  # accepted is neither True nor False
        b"\xff\xfe\x00binary",
    ],
)
def test_a_progress_file_in_another_format_is_refused_before_it_is_cut(text, tmp_path, capsys, monkeypatch):
    from afedpg_ray.runlog import PROGRESS_COLUMNS

    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, _ = resumable_run(tmp_path)
    if isinstance(text, bytes):
        (run / "progress.csv").write_bytes(text)
    else:
        (run / "progress.csv").write_text(text.format(header=",".join(PROGRESS_COLUMNS)))
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        main(resume(run))
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert f"{run / 'progress.csv'}: " in err, err
    assert snapshot(run) == before


def test_a_progress_file_afedpg_wrote_passes_the_checks(tmp_path, monkeypatch):
    from afedpg_ray.messages import UpdateRecord
    from afedpg_ray.runlog import RunLog

    def ray_started(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", ray_started)
    run, _ = resumable_run(tmp_path)
    log = RunLog(run, 2000, show_progress=False, tensorboard=False, append=True)
    log.record(UpdateRecord(1, 0.5, 0, 0, 100, 1, 12.0, True, alpha=0.2, eta=0.01, grad_norm=3.0))
    log.record(UpdateRecord(1, 0.6, 1, 1, 100, 1, float("nan"), False, "norm_too_large"))
    log.close()
    with pytest.raises(RuntimeError, match="passed the checks"):
        main(resume(run))


# -- --agent-resources Ray refuses --------------------------------------------------------------------


def test_an_agent_request_ray_refuses_is_one_line_before_ray_starts(capsys, monkeypatch):
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    argv = ["train", "--agents", "2", "--samples", "2000", "--batch", "1000"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--agent-resources", AGENT_REQUEST_RAY_REFUSES, "--no-progress"])
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert "--agent-resources" in err and "agents 0" in err and "'TPU' was set to 3" in err, err


@pytest.mark.usefixtures("ray_session")
def test_an_actor_ray_refuses_to_create_is_a_run_error_naming_agent_resources(tmp_path, monkeypatch):
    from afedpg_ray import runtime
    from afedpg_ray.train import train

    real_options = runtime.agent_options

    def tpu_request(config, agent_id, cluster_cpus):  # as if the config check had let it through
        options = real_options(config, agent_id, cluster_cpus)
        return {**options, "resources": {"TPU": 3}} if agent_id == 1 else options

    monkeypatch.setattr(runtime, "agent_options", tpu_request)
    config = TrainConfig(
        agents=2,
        hetero="none",
        batch=100,
        num_envs=2,
        samples=2000,
        agent_resources=(AgentResources(1, 1, num_cpus=0.01),),
        progress=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    with pytest.raises(runtime.RunError) as failed:
        train(config)
    message = str(failed.value)
    assert "\n" not in message and "agent 1" in message and "'TPU' was set to 3" in message, message
    assert "--agent-resources" in message
    assert released("afedpg-server") and released("afedpg-agent-0")  # the refused run freed its names
    # and its resources: agent 0 was killed while its worker was still creating it, a kill Ray can lose
    # (it then held 0.95 CPU for the rest of the session, and later runs could not place their agents)
    assert cpus_returned()


class RayErrorLog(logging.Handler):
    """Collects what Ray's driver logs at ERROR (its "Unhandled error" reports come through this logger;
    its stream handler writes to the stderr of the session's start, which pytest's capfd does not see)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.usefixtures("ray_session")
def test_a_failing_agent_is_reported_by_its_error_and_leaves_no_unhandled_ray_errors(tmp_path, monkeypatch):
    # The agent's step raises inside torch (NaN parameters make an invalid distribution): the run's last
    # line must quote that exception, not the tail of its message (a tensor's repr), and the step's second
    # return (the gradient the driver never reads) must not surface later as Ray's "Unhandled error".
    from afedpg_ray import runtime, train
    from afedpg_ray.server import ParameterServer

    config = TrainConfig(
        agents=1,
        hetero="none",
        batch=100,
        num_envs=2,
        samples=2000,
        progress=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    state = ParameterServer(config).export_state()
    state["rule_state"]["theta"] = np.full_like(state["rule_state"]["theta"], np.nan)
    state["rule_state"]["point"] = state["rule_state"]["theta"].copy()
    monkeypatch.setattr(train, "load_resumable", lambda run_dir, config: state)  # past the checkpoint's checks
    monkeypatch.setattr(runtime, "MAX_AGENT_RESTARTS", 0)  # the first failure retires the only agent
    ray_log = RayErrorLog()
    logging.getLogger("ray._private.worker").addHandler(ray_log)
    try:
        with pytest.raises(runtime.RunError) as failed:
            train.train(config, resume=True)
        message = str(failed.value)
        del failed  # the traceback holds the loop's frame, and with it the references
        gc.collect()
        time.sleep(3)  # Ray reports an unread error once its reference is freed, from its own thread
    finally:
        logging.getLogger("ray._private.worker").removeHandler(ray_log)
    assert message.startswith("every agent failed; last error: ValueError: Expected parameter logits"), message
    assert "\n" not in message
    assert not [m for m in ray_log.messages if "Unhandled error" in m], ray_log.messages


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_checkpoint_that_cannot_be_read_says_what_to_do(damage, tmp_path, capsys, monkeypatch):
    # "corrupt checkpoint ([Errno 22] Invalid argument)" named no way out
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run, _ = resumable_run(tmp_path, rows=3)
    path = run / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:40] + bytes(100) + data[140:])
    with pytest.raises(SystemExit) as exit_info:
        main([*resume(run), "--samples", "4000"])
    assert exit_info.value.code == 2
    err = one_error_line(capsys)
    assert err.startswith(f"afedpg: error: {path}: corrupt checkpoint, it cannot be read ("), err
    assert err.endswith("put back a copy of this file if you have one, or start the run afresh with a new --out")
