"""The command line: bad input fails fast with one line and exit 2; a tiny train + eval end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _checkpoint_util import server_state

from afedpg_ray.cli import main


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--env", "NoSuchEnv-v9"], "--env"),
        (["--agents", "0"], "--agents"),
        (["--samples", "0"], "--samples"),
        (["--batch", "-5"], "--batch"),
        (["--batch", "1000", "--num-envs", "3"], "--batch"),  # would silently take 1002 steps
        (["--batch", "100000000000", "--samples", "1000000000000"], "--batch"),  # could not fit in memory
        (["--samples", "500", "--batch", "1000"], "--samples"),  # one update would overshoot the budget
        (["--algo", "fedpg", "--agents", "4", "--samples", "3000", "--batch", "1000"], "--samples"),
        (["--iteration-time", "0"], "--iteration-time"),
        (["--iteration-time", "-1"], "--iteration-time"),
        (["--algo", "ppo"], "--algo"),
        (["--hetero", "linear:x"], "--hetero"),
        (["--hetero", "zigzag"], "--hetero"),
        (["--algo", "pg", "--agents", "4"], "--agents"),
        (["--alpha0", "1.5"], "--alpha0"),
        (["--alpha-end", "0"], "--alpha-end"),
        (["--schedule", "theory", "--alpha-end", "0.05"], "--alpha-end"),
        (["--schedule", "cosine"], "--schedule"),
        (["--comm-delay", "1,2,3"], "--comm-delay"),
        (["--comm-delay", "1e300"], "--comm-delay"),
        (["--iteration-time", "1e9"], "--iteration-time"),
        (["--hetero", "linear:1e300"], "--hetero"),
        (["--byzantine", "1:scale:nan"], "--byzantine"),
        (["--staleness-power", "-1"], "--staleness-power"),
        (["--collect", "4"], "--collect"),  # afedpg collects nothing
        (["--algo", "rennala", "--collect", "0"], "--collect"),
        (["--algo", "rennala", "--staleness-power", "1"], "--staleness-power"),
        (["--staleness-power", "11"], "--staleness-power"),
        (["--algo", "fedpg", "--staleness-power", "0.5"], "--staleness-power"),
        (["--agent-resources", "{not json"], "--agent-resources"),
        (["--agent-resources", '{"0-9": {"num_cpus": 1}}'], "--agent-resources"),
        (["--agents", "two"], "--agents"),
        (["--byzantine", "1:bogus"], "--byzantine"),
        (["--byzantine", "4:sign_flip"], "--byzantine"),
        (["--robust", "krum"], "--robust"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--placement-timeout", "-3"], "--placement-timeout"),
        (["--resume", "/nonexistent/run"], "--resume"),
        (["--env", "FrozenLake-v1"], "--env"),  # registered, but Discrete observations
        (["--env", "Blackjack-v1"], "--env"),  # Tuple observations
        (["--agent-resources", '{"0": {"resources": 5}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"num_cpus": -1}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"num_cpus": "one"}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"num_cpus": 0.00001}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"memory": -5}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"memory": 1.5}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"num_gpus": 1}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"resources": {"fast_node": -1}}}'], "--agent-resources"),
        (["--agent-resources", '{"0": {"resources": {"CPU": 1}}}'], "--agent-resources"),
        (["--agent-resources", '{"0": 3}'], "--agent-resources"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "-1", "--hetero", "lognormal:0.5"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--hetero", "lognormal:1e6"], "--hetero"),  # exp(|N(0, SIGMA^2)|) overflows
        (["--log-std-init", "nan"], "--log-std-init"),
        (["--log-std-init", "inf"], "--log-std-init"),
        (["--log-std-init", "100"], "--log-std-init"),
        (["--log-std-init", "-21"], "--log-std-init"),
        (["--entropy-coef", "nan"], "--entropy-coef"),
        (["--entropy-coef", "-0.1"], "--entropy-coef"),
        (["--gamma", "nan"], "--gamma"),
        (["--gae-lambda", "1.5"], "--gae-lambda"),
        (["--critic-lr", "inf"], "--critic-lr"),
        (["--alpha-end", "nan"], "--alpha-end"),
        (["--algo", "a3c", "--alpha-end", "0.05"], "--alpha-end"),
        # options this configuration would ignore
        (["--critic", "false", "--gae-lambda", "0.9"], "--gae-lambda"),
        (["--critic", "false", "--critic-epochs", "3"], "--critic-epochs"),
        (["--critic", "false", "--critic-lr", "0.01"], "--critic-lr"),
        (["--algo", "a3c", "--schedule", "theory"], "--schedule"),
        (["--log-std-init", "-0.5"], "--log-std-init"),  # CartPole's actions are discrete
        (["--agents", "5000"], "--agents"),
        (["--hidden", "1000000000"], "--hidden"),
        (["--agent-cpus", "1e300"], "--agent-cpus"),
        (["--placement-timeout", "1e300"], "--placement-timeout"),
        (["--resume", ""], "--resume"),
        (["--out", ""], "--out"),
        (["--out", "  "], "--out"),
        (["--address", ""], "--address"),  # would quietly start a local Ray
        (["--agent-resources", '{"0-": {"num_cpus": 1}}'], "--agent-resources"),  # read as agent 0
        (["--agent-resources", '{"0": {"num_cpus": 1}, "0": {"num_cpus": 2}}'], "given twice"),
        (["--agent-resources", '{"0-2": {"num_cpus": 1}, "2-3": {"num_cpus": 2}}'], "agent 2 is in two groups"),
        (["--hidden", "64,,64"], "--hidden"),  # the empty item was dropped: one layer
        (["--comm-delay", ""], "--comm-delay"),
        (["--agents", "2", "--agent-cpus", "0.5", "--agent-resources", '{"0-1": {"num_cpus": 1}}'], "--agent-cpus"),
        (["--lr", "0.01"], "--lr"),  # afedpg steps with --eta0
        (["--algo", "a3c", "--eta0", "0.1"], "--eta0"),
        (["--algo", "a3c", "--alpha0", "0.5"], "--alpha0"),
        (["--agents", "2", "--robust", "filter"], "--robust"),  # no majority to compare with
        (["--eta0", "1e308"], "--eta0"),  # theta would overflow within three updates
        (["--algo", "a3c", "--lr", "5000"], "--lr"),
        (["--critic-lr", "1e300"], "--critic-lr"),
        (["--entropy-coef", "1e300"], "--entropy-coef"),
        (["--critic-epochs", "1000000000"], "--critic-epochs"),
        (["--hidden", "16384,16384,16384"], "--hidden"),  # 537M hidden weights: GBs per copy
        (["--num-envs", "100000", "--batch", "100000"], "--num-envs"),
        (["--hetero", "linear:1000", "--iteration-time", "3600"], "--iteration-time"),  # 1000 hours
        (["--prefix", "my run"], "--prefix"),  # becomes a Ray actor name
        (["--a3c-optimizer", "sgd"], "--a3c-optimizer"),  # afedpg: only a3c steps with it
        (["--algo", "a3c", "--a3c-optimizer", "rmsprop"], "--a3c-optimizer"),
        (["--prefix", ""], "--prefix"),
        (["--prefix", "x" * 65], "--prefix"),
        (["--samples", "1.5e3x"], "--samples"),
        (["--samples", "2.5"], "--samples"),  # not a whole number of steps
        (["--samples", "-1e3"], "--samples"),
        (["--agent-timeout", "0"], "--agent-timeout"),
        (["--agent-timeout", "nan"], "--agent-timeout"),
        (["--agent-timeout", "1e300"], "--agent-timeout"),
    ],
)
def test_bad_train_input_is_one_line_exit_2(argv, option, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError(f"{argv} passed validation and would start Ray")

    monkeypatch.setattr("afedpg_ray.train.train", no_training)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err, err


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"alpha_end": "0.05"}, "--alpha-end"),  # a string from config.json / Tune: no TypeError
        ({"staleness_power": "0.5"}, "--staleness-power"),
        ({"alpha0": None}, "--alpha0"),
        ({"eta0": "0.03"}, "--eta0"),
        ({"seed": -1, "hetero": "lognormal:0.5"}, "--seed"),
        ({"seed": 1.5}, "--seed"),
        ({"hetero": 4}, "--hetero"),
        ({"comm_delay": ["1"]}, "--comm-delay"),
        ({"estimator": {"log_std_init": "1"}}, "--log-std-init"),
        ({"estimator": {"entropy_coef": "0.01"}}, "--entropy-coef"),
        ({"estimator": {"critic": "false"}}, "--critic"),  # a truthy string would keep the critic on
        ({"agent_resources": [{"first": 0, "last": 1, "num_gpus": 1}]}, "--agent-resources"),
        ({"agent_resources": [{"first": 0, "last": 1, "resources": 5}]}, "--agent-resources"),
        ({"agent_resources": [{"last": 1}]}, "--agent-resources"),
        ({"agent_resources": ["0-1"]}, "--agent-resources"),
        ({"env": 5}, "--env"),
        # hand-edited config.json values that used to pass and fail later (a traceback, or inside the agents)
        ({"agents": 4.0}, "--agents"),
        ({"estimator": {"critic_epochs": 5.0}}, "--critic-epochs"),
        ({"hidden": 64}, "--hidden"),
        ({"hidden": [64.0, 64]}, "--hidden"),
        ({"comm_delay": 0.5}, "--comm-delay"),
        ({"agent_cpus": 0.00004}, "--agent-cpus"),  # Ray would round it to 0 CPUs
    ],
)
def test_bad_config_dict_is_a_config_error(changes, option):
    from afedpg_ray.config import ConfigError, TrainConfig, config_from_dict

    raw = {**TrainConfig().to_dict(), **changes}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert info.value.option == option, info.value


def test_good_agent_resources_and_rising_alpha_pass():
    from afedpg_ray.cli import build_parser, config_from_args
    from afedpg_ray.config import AgentResources, config_from_dict

    request = '{"0-1": {"num_cpus": 0.25, "memory": 1000000, "resources": {"fast_node": 1}}, "2-3": {"num_cpus": 0}}'
    args = build_parser().parse_args(["train", "--agent-resources", request, "--alpha-end", "0.5", "--seed", "7"])
    config = config_from_args(args)
    assert config.agent_resources == (
        AgentResources(0, 1, 0.25, 1_000_000, {"fast_node": 1}),
        AgentResources(2, 3, 0, None, {}),
    )
    assert config.alpha_end == 0.5 > config.alpha0  # a rising alpha is a legitimate experiment
    assert config_from_dict(config.to_dict()) == config  # config.json round trip


@pytest.mark.parametrize(
    "argv",
    [
        ["--env", "Swimmer-v5", "--critic", "false"],  # the table's critic options are not the user's: no refusal
        ["--env", "Hopper-v5", "--log-std-init", "-0.5"],  # a Gaussian policy has a log-std
        ["--env", "Hopper-v5", "--algo", "a3c"],  # the table's linear schedule: a3c anneals with it
        ["--critic", "true", "--critic-lr", "0.001"],
    ],
)
def test_options_a_configuration_uses_are_accepted(argv):
    from afedpg_ray.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["train", *argv]))
    assert config.env in argv or config.env == "CartPole-v1"


def test_env_is_made_once_and_make_errors_are_config_errors(monkeypatch):
    import gymnasium as gym

    from afedpg_ray import config as config_module
    from afedpg_ray.config import ConfigError, check_env_id

    made = []
    real_make = gym.make

    def counting_make(env_id, **kwargs):
        made.append(env_id)
        return real_make(env_id, **kwargs)

    config_module._env_facts.cache_clear()
    try:
        monkeypatch.setattr(gym, "make", counting_make)
        check_env_id("CartPole-v1")
        check_env_id("CartPole-v1")
        assert made == ["CartPole-v1"]  # cached: Tune grids and repeated validation do not re-create it

        def missing_dependency(env_id, **kwargs):
            raise gym.error.DependencyNotInstalled("MuJoCo is not installed, run `pip install gymnasium[mujoco]`")

        monkeypatch.setattr(gym, "make", missing_dependency)
        with pytest.raises(ConfigError, match="not installed") as info:
            check_env_id("Hopper-v5")
        assert info.value.option == "--env" and "\n" not in str(info.value)

        def broken(env_id, **kwargs):
            raise RuntimeError("no display\nsecond line")

        monkeypatch.setattr(gym, "make", broken)
        with pytest.raises(ConfigError, match="cannot create Walker2d-v5: RuntimeError: no display$"):
            check_env_id("Walker2d-v5")
    finally:
        config_module._env_facts.cache_clear()  # drop the faked results


def test_eval_of_missing_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.pt" in err


def test_eval_of_corrupt_policy_is_one_line(tmp_path, capsys):
    (tmp_path / "policy.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.pt" in err, err


def test_eval_of_a_policy_whose_environment_cannot_be_made_names_the_environment(tmp_path, capsys):
    import torch

    torch.save({"env": "NoSuchEnv-v0", "hidden": [8], "log_std_init": 0.0, "theta": [0.0]}, tmp_path / "policy.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NoSuchEnv-v0" in err and "corrupt" not in err, err


def test_console_script_fails_before_ray_starts():
    proc = subprocess.run(
        [sys.executable, "-m", "afedpg_ray.cli", "train", "--env", "Nope-v0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--env" in proc.stderr


@pytest.mark.usefixtures("ray_session")
def test_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--env",
            "CartPole-v1",
            "--agents",
            "2",
            "--hetero",
            "straggler:2",
            "--samples",
            "1200",
            "--batch",
            "200",
            "--num-envs",
            "2",
            "--out",
            str(out),
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "done: return" in printed.out
    # with the progress bar on, the run says where to watch it: the status command for this cluster
    import ray

    assert f"afedpg status --address {ray.get_runtime_context().gcs_address}" in printed.out + printed.err
    config = json.loads((out / "config.json").read_text())
    assert config["agents"] == 2 and config["hetero"] == "straggler:2" and config["seed"] == 3
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_env_table_applies_unless_overridden():
    from afedpg_ray.cli import build_parser, config_from_args

    parser = build_parser()
    swimmer = config_from_args(parser.parse_args(["train", "--env", "Swimmer-v5"]))
    assert swimmer.estimator.gamma == 0.999
    override = config_from_args(parser.parse_args(["train", "--env", "Swimmer-v5", "--gamma", "0.95"]))
    assert override.estimator.gamma == 0.95
    assert config_from_args(parser.parse_args(["train", "--algo", "pg"])).agents == 1
    assert config_from_args(parser.parse_args(["train"])).eta0 == 0.01  # CartPole-v1's table entry
    hopper = config_from_args(parser.parse_args(["train", "--env", "Hopper-v5"]))
    assert (hopper.schedule, hopper.eta0) == ("linear", 0.03)  # the table's schedule, the global eta0
    cheetah = config_from_args(parser.parse_args(["train", "--env", "HalfCheetah-v5"]))
    assert (cheetah.schedule, cheetah.eta0) == ("linear", 0.1)
    constant = config_from_args(parser.parse_args(["train", "--env", "HalfCheetah-v5", "--schedule", "constant"]))
    assert (constant.schedule, constant.eta0) == ("constant", 0.1)


def test_ray_client_connect_retries_a_failed_server_start(monkeypatch):
    from afedpg_ray import address, connection

    calls = []

    def flaky_init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) < address.CLIENT_CONNECT_ATTEMPTS:
            raise ConnectionAbortedError("Initialization failure from server:\n")

    monkeypatch.setattr(connection.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(connection.ray, "init", flaky_init)
    monkeypatch.setattr(connection, "probe_address", lambda _address: None)
    monkeypatch.setattr(address.time, "sleep", lambda seconds: None)
    connection.connect("ray://head:10001")
    assert calls == ["ray://head:10001"] * address.CLIENT_CONNECT_ATTEMPTS
    calls.clear()

    def always_fails(**kwargs):
        calls.append(kwargs["address"])
        raise ConnectionAbortedError("Initialization failure from server:\n")

    monkeypatch.setattr(connection.ray, "init", always_fails)
    with pytest.raises(connection.RunError, match="cannot connect to Ray at 'ray://head:10001'"):
        connection.connect("ray://head:10001")
    assert len(calls) == address.CLIENT_CONNECT_ATTEMPTS
    calls.clear()
    with pytest.raises(connection.RunError):  # a plain address is not retried: ray.init waits there itself
        connection.connect("head:6379")
    assert len(calls) == 1


def finished_run(tmp_path, foreign: bool = False):
    """A run directory as a finished 5000-sample CartPole run leaves it (no training needed); with
    ``foreign``, its checkpoint is another run's (a policy with other hidden sizes)."""
    from afedpg_ray.checkpoint import save_checkpoint
    from afedpg_ray.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(out=str(run), samples=5000)
    config.save(run / "config.json")
    saved_by = TrainConfig(hidden=(32, 32)) if foreign else config
    save_checkpoint(run, server_state(saved_by, version=5, samples_total=5000, progress_rows=1))
    # one row as afedpg writes it: a resume refuses a progress.csv in another format
    header = "update,wall_time,agent,delay,samples_total,episodes_total,return_mean,accepted,reason,alpha,eta"
    (run / "progress.csv").write_text(
        f"{header},grad_norm,agent_iteration_seconds\n5,9.5,0,0,5000,40,21.0,True,,1,0.01,2,1\n"
    )
    (run / "policy.pt").write_bytes(b"")  # written last: its presence is what marks the run finished
    return run


def snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != "driver.lock"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{run}"], "already holds a run"),  # a fresh run would overwrite it
        (["--resume", "{run}", "--samples", "4000"], "already trained 5000 samples"),
        (["--resume", "{run}"], "already trained 5000 samples"),  # finished: nothing left to do
        # interrupted (no policy.pt) with a budget below what it trained: it "finished" without an update
        (["--resume", "{run}", "--samples", "4000", "@no-policy"], "already trained 5000 samples"),
        (["--resume", "{run}", "--samples", "9000", "@foreign"], "belongs to another run"),
        (["--resume", "{run}", "--samples", "9000", "@list-config"], "expected a JSON object"),
    ],
)
def test_a_refused_train_leaves_the_run_directory_as_it_was(argv, message, tmp_path, capsys, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError(f"{argv} passed its checks and would start Ray")

    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    run = finished_run(tmp_path, foreign="@foreign" in argv)
    if "@list-config" in argv:
        (run / "config.json").write_text("[]")
    if "@no-policy" in argv:
        (run / "policy.pt").unlink()
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *[a.format(run=run) for a in argv if not a.startswith("@")], "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert snapshot(run) == before


def test_a_run_stopped_after_its_final_checkpoint_resumes_to_write_its_policy(tmp_path, monkeypatch, capsys):
    # Ctrl-C between the final checkpoint and policy.pt: the budget is spent, the policy not saved. The resume
    # writes what the run's end writes without starting an agent (a smaller cluster could not place them all)
    from afedpg_ray.train import load_policy

    def no_ray(*args, **kwargs):
        raise AssertionError("started Ray or agents for a run with nothing left to train")

    monkeypatch.setattr("afedpg_ray.train.connect", no_ray)
    monkeypatch.setattr("afedpg_ray.train.RayRunner", no_ray)
    run = finished_run(tmp_path)
    (run / "policy.pt").unlink()
    assert main(["train", "--resume", str(run), "--no-progress", "--no-tensorboard"]) == 0
    assert "done: return 21.0 after 5000 samples, 5 updates" in capsys.readouterr().out
    assert load_policy(run)[2] == "CartPole-v1"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["updates"], summary["samples_total"], summary["resumed_at_update"]) == (5, 5000, 5)
    assert summary["session_wall_time"] == 0.0  # nothing trained in this session


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_trained_again(tmp_path, monkeypatch):
    # e.g. its agents could not be placed: config.json, progress.csv and events.csv, nothing to resume
    def ray_started(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", ray_started)
    run = tmp_path / "run"
    run.mkdir()
    for name, text in [("config.json", "{}"), ("progress.csv", "update\n"), ("events.csv", "kind\n")]:
        (run / name).write_text(text)
    with pytest.raises(RuntimeError, match="passed the checks"):
        main(["train", "--out", str(run), "--no-progress"])


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(target), "--no-progress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot use" in err and "--out" in err, err


def test_eval_refuses_a_negative_seed(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path), "--seed", "-1"])
    assert exit_info.value.code == 2 and "--seed" in capsys.readouterr().err


def test_benchmark_number_types_refuse_zero_negative_and_nan():
    import argparse

    from afedpg_ray.cli import non_negative_int, positive_float, positive_int

    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_float("0.5") == 0.5
    for parse, text in [(positive_int, "0"), (positive_int, "x"), (non_negative_int, "-1"), (positive_float, "nan")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got '{text}'"):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match="positive number"):
        positive_float("inf")


def test_local_ray_start_failure_is_one_line(monkeypatch):
    from afedpg_ray import connection

    def times_out(**kwargs):  # what ray.init raises when the local node's agents start too slowly
        raise Exception("The current node timed out during startup. This could happen because some of the ...\n")

    monkeypatch.setattr(connection.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(connection.ray, "init", times_out)
    with pytest.raises(connection.RunError) as info:
        connection.connect(None)
    message = str(info.value)
    assert message.startswith("could not start a local Ray instance: The current node timed out during startup")
    assert "\n" not in message and "--address" in message


@pytest.mark.parametrize("checkpointed", [True, False])
def test_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch, checkpointed):
    from afedpg_ray.checkpoint import CHECKPOINT_FILE
    from afedpg_ray.train import TrainingInterrupted

    run = tmp_path / "run"
    run.mkdir()
    if checkpointed:
        (run / CHECKPOINT_FILE).write_bytes(b"")

    def interrupted(config, name_prefix="afedpg", resume=False):
        raise TrainingInterrupted(run)

    monkeypatch.setattr("afedpg_ray.train.train", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "CartPole-v1", "--samples", "1000", "--out", str(run / "new")])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip()
    expected = f"afedpg train --resume {run}" if checkpointed else "interrupted before the first checkpoint"
    assert len(err.splitlines()) == 1 and expected in err, err
    assert isinstance(TrainingInterrupted(run), KeyboardInterrupt)  # callers that catch Ctrl-C still do


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """A Ctrl-C in the first fraction of a second (imports, building the parser) exits 130 with one line."""
    from importlib.abc import MetaPathFinder

    from afedpg_ray import cli, entry

    class CtrlCOnImport(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "afedpg_ray.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "afedpg_ray.cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlCOnImport(), *sys.meta_path])
    assert entry.main() == entry.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "afedpg: error: interrupted\n"

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train"])
    assert exit_info.value.code == entry.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "afedpg: error: interrupted\n"


def test_first_line_of_an_error():
    from afedpg_ray.config import first_line

    assert first_line(ValueError("\n  \x1b[31mbad thing\x1b[0m  \nsecond line")) == "bad thing"
    assert first_line(OSError()) == "OSError"  # no message: its type


def test_last_line_of_an_error():
    from afedpg_ray.config import last_line

    assert last_line(ValueError("Traceback ...\n  \x1b[31mRunError: boom\x1b[0m  \n\n")) == "RunError: boom"
    assert last_line(RuntimeError("  \n")) == "RuntimeError"  # no message: its type


def test_discrete_actions_not_numbered_from_zero_are_refused(capsys):
    import gymnasium as gym

    class ShiftedActions(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
        action_space = gym.spaces.Discrete(3, start=1)  # the policy would send 0..2: off by one

    gym.register("AfedpgShiftedActions-v0", entry_point=ShiftedActions)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--env", "AfedpgShiftedActions-v0"])
    finally:
        gym.registry.pop("AfedpgShiftedActions-v0")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--env" in err and "from 1" in err, err


@pytest.mark.parametrize(
    ("sweep", "hidden", "kept"),
    [("sample-efficiency", "--samples", "--samples-per-agent"), ("speedup", "--algo", "--algos")],
)
def test_sweeps_leave_the_options_they_refuse_out_of_their_help(sweep, hidden, kept, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", sweep, "--help"])
    words = capsys.readouterr().out.replace("[", " ").replace("]", " ").split()
    assert kept in words and hidden not in words


def test_eval_of_a_policy_file_without_an_environment_id_calls_it_corrupt(tmp_path, capsys):
    import torch

    torch.save({"env": 5, "hidden": [8], "log_std_init": 0.0, "theta": [0.0]}, tmp_path / "policy.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt" in err, err


def test_the_done_line_says_why_a_run_has_no_return(tmp_path, monkeypatch, capsys):
    # a 1000-step task on a tiny budget finishes no episode: "done: return nan" read like a bug
    from afedpg_ray.train import TrainResult

    result = TrainResult(str(tmp_path), float("nan"), 6, 6000, 9.0, 3.0, 0.5, {}, {}, [], startup_seconds=7.0)
    monkeypatch.setattr("afedpg_ray.train.train", lambda config, **kwargs: result)
    assert main(["train", "--env", "Swimmer-v5", "--samples", "6000", "--out", str(tmp_path / "run")]) == 0
    done = capsys.readouterr().out.splitlines()[0]
    assert done.startswith("done: return n/a (no episode has finished yet: give more --samples) after 6000 samples")
    assert "6 updates in 9s (start-up 7s, then 3.0 upd/s; mean delay 0.50)" in done


@pytest.mark.parametrize(("text", "steps"), [("1e6", 1_000_000), ("2.5e5", 250_000), ("1_000_000", 1_000_000)])
def test_budgets_are_accepted_as_researchers_write_them(text, steps):
    from afedpg_ray.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--samples", text])
    assert config_from_args(args).samples == steps


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("HalfCheetha-v5", "HalfCheetah-v5"),
        ("Swimer-v5", "Swimmer-v5"),
        ("Hoper-v5", "Hopper-v5"),
        ("cartpole-v1", "CartPole-v1"),
        ("Hopper-v9", "Hopper-v5"),
    ],
)
def test_an_env_typo_is_answered_with_the_id_meant(typo, meant, capsys):
    # only a shared prefix was matched: a typo inside the name got the generic "(e.g. CartPole-v1, Hopper-v5)"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", typo, "--no-progress"])
    assert exit_info.value.code == 2
    assert f"unknown gymnasium environment {typo!r} (did you mean {meant}" in capsys.readouterr().err


def test_resuming_a_run_whose_driver_is_still_starting_names_that_driver(tmp_path, capsys):
    # the driver holds the lock before it writes config.json: "no config.json (is DIR a run directory?)" misled
    import os
    import socket

    from afedpg_ray import runlock

    run = tmp_path / "run"
    lock = runlock.acquire(run)  # as a starting driver holds it
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--resume", str(run), "--no-progress"])
    finally:
        runlock.release(lock)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f"afedpg: error: {run} is being trained by process {os.getpid()} on host {socket.gethostname()}; "
        "wait for that run to end or stop it\n"
    )
    with pytest.raises(SystemExit) as exit_info:  # the lock released: a directory without a run, as before
        main(["train", "--resume", str(run), "--no-progress"])
    assert exit_info.value.code == 2 and "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "same",
    [
        ["--agents", "4"],
        ["--hidden", "64,64", "--critic", "true", "--env", "CartPole-v1"],
        ["--eta0", "0.03"],  # parsed as a float, as saved
        ["--out", "{run}"],
        ["--agent-resources", "{{}}"],
    ],
)
def test_a_resume_accepts_options_restating_the_runs_config(same, tmp_path, monkeypatch):
    # "--resume DIR --agents 4" with the run's own 4 was refused "a resumed run keeps its config; drop --agents"
    def passed(*args, **kwargs):
        raise RuntimeError("passed the checks")

    monkeypatch.setattr("afedpg_ray.train.connect", passed)
    run = finished_run(tmp_path)
    argv = ["train", "--resume", str(run), "--samples", "9000", *[a.format(run=run) for a in same]]
    with pytest.raises(RuntimeError, match="passed the checks"):
        main([*argv, "--no-progress", "--no-tensorboard"])


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (["--agents", "2"], "which has --agents 4; drop --agents 2"),
        (["--hidden", "32,32"], "which has --hidden 64,64; drop --hidden 32,32"),
        (["--critic", "false"], "which has --critic true; drop --critic false"),  # a False value slipped through
        (["--out", "{run}-copy"], "drop --out"),
    ],
)
def test_a_resume_refuses_options_changing_the_runs_config(changed, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("afedpg_ray.train.connect", no_ray_here)
    run = finished_run(tmp_path)
    argv = ["train", "--resume", str(run), "--samples", "9000", *[a.format(run=run) for a in changed]]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("afedpg: error: --resume: a resumed run keeps its config, ") and message in err, err


def no_ray_here(*args, **kwargs):
    raise AssertionError("a changed option passed the resume's checks")


@pytest.mark.parametrize(("out", "why"), [("a-file", "(it is a file)"), ("a-file/run", "({tmp}/a-file is a file)")])
def test_out_in_the_way_of_a_file_says_it_is_a_file(out, why, tmp_path, capsys):
    # "(File exists)" / "(Not a directory)" did not say what was wrong
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / out), "--no-progress"])
    assert exit_info.value.code == 1
    why = why.format(tmp=tmp_path)
    expected = f"afedpg: error: cannot use {tmp_path / out} as a run directory {why}; choose another --out\n"
    assert capsys.readouterr().err == expected


def test_a_budget_beyond_the_counters_is_too_large_not_fractional(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--samples", "1e99"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "afedpg: error: argument --samples: too large: at most 9223372036854775807 (about 9.2e18) environment "
        "steps; got '1e99'\n"
    )


def test_argparse_errors_start_like_every_other_error(capsys):
    # a subcommand's parser printed "afedpg train: error: ...", everything else "afedpg: error: ..."
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--agents", "two"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "afedpg: error: argument --agents: invalid int value: 'two'\n"
