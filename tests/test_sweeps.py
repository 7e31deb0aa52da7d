"""Ray Tune sweeps: a tiny sample-efficiency sweep end to end, the speedup arithmetic, bad input, plots."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from afedpg_ray.cli import main
from afedpg_ray.config import ConfigError, TrainConfig
from tune_sweeps.plots import mean_curve, t_critical
from tune_sweeps.speedup import Timing, default_target, summarize, theoretical_ratio, time_ratio, time_to_target
from tune_sweeps.trainable import merged_train_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- end to end through real Ray Tune ---------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_sample_efficiency_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "se"
    budget = 1000
    code = main(
        [
            "sweep",
            "sample-efficiency",
            "--env",
            "CartPole-v1",
            "--agents",
            "1,2",
            "--seeds",
            "1",
            "--samples-per-agent",
            str(budget),
            "--batch",
            "250",
            "--num-envs",
            "2",
            "--hetero",
            "none",
            "--agent-cpus",
            "0.4",
            "--max-concurrent",
            "1",
            "--no-tensorboard",
            "--verbose",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == [
        "trial_id",
        "algo",
        "agents",
        "seed",
        "update",
        "samples_total",
        "samples_per_agent",
        "return_mean",
        "wall_time",
    ]
    by_n = {n: [r for r in rows if int(r["agents"]) == n] for n in (1, 2)}
    assert by_n[1] and by_n[2], rows
    assert {r["algo"] for r in by_n[1]} == {"pg"} and {r["algo"] for r in by_n[2]} == {"afedpg"}
    for n, group in by_n.items():
        # each trial runs to its own budget (N times the per-agent one) and stops there: at most every
        # agent's in-flight batch of 250 steps lands after the budget is reached
        spent = max(float(r["samples_per_agent"]) for r in group)
        assert budget <= spent <= budget + 250, (n, spent)
    assert all(math.isfinite(float(r["return_mean"])) and float(r["wall_time"]) >= 0 for r in rows)
    assert_png(out / "sample_efficiency.png")
    # Tune's experiment lives under the default storage (the output directory), each trial's run
    # directory (named by its trial and start, so that a rerun keeps its own) inside it
    assert (out / "sample_efficiency").is_dir()
    trial_runs = sorted((out / "sample_efficiency").glob("*/run-*-2*/progress.csv"))
    assert len(trial_runs) == 2, sorted(p.name for p in (out / "sample_efficiency").rglob("run-*"))
    assert "results.csv" in capsys.readouterr().out

    # --resume of a finished sweep keeps its trials and rewrites the outputs without rerunning them: the
    # command comes from the sweep's record, so that no option needs repeating and none may differ
    (out / "results.csv").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "sample-efficiency", "--seeds", "2", "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("afedpg: error: --seeds: the sweep in") and "started with --seeds 1;" in err, err
    code = main(["sweep", "sample-efficiency", "--out", str(out), "--resume", "--agents", "1,2"])
    assert code == 0
    resumed = read_csv(out / "results.csv")
    # the same trials' reports, not a rerun's (which would report at new wall times)
    assert [(r["trial_id"], r["wall_time"]) for r in resumed] == [(r["trial_id"], r["wall_time"]) for r in rows]
    assert len(sorted((out / "sample_efficiency").glob("*/run-*-2*/progress.csv"))) == 2


@pytest.mark.usefixtures("ray_session")
def test_speedup_sweep_end_to_end(tmp_path, capsys):
    """Two rules side by side through real Tune: the rows, the figure, and a summary whose times leave
    the actors' start-up out and whose theoretical ratio is the padding's."""
    out = tmp_path / "sp"
    argv = ["sweep", "speedup", "--env", "CartPole-v1", "--algos", "afedpg,fedpg", "--agents", "2", "--seeds", "1"]
    argv += ["--samples", "6000", "--batch", "250", "--num-envs", "2", "--hetero", "linear:2"]
    argv += ["--iteration-time", "0.05", "--agent-cpus", "0.4", "--no-tensorboard", "--verbose", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = read_csv(out / "speedup.csv")
    assert {r["algo"] for r in rows} == {"afedpg", "fedpg"} and all(int(r["agents"]) == 2 for r in rows)
    assert_png(out / "speedup.png")
    summary = {r["algo"]: r for r in read_csv(out / "speedup_summary.csv")}
    assert set(summary) == {"afedpg", "fedpg"}
    for row in summary.values():
        budget, startup = float(row["budget_time_s"]), float(row["startup_s"])
        last = max(float(r["wall_time"]) for r in rows if r["algo"] == row["algo"])
        assert 0 < startup and 0 < budget < last  # the budget's time at the steady rate, start-up apart
    # iterations padded to 0.05 and 0.1 s: (t_max / N) * sum(1 / t_i) = (0.1 / 2) * (20 + 10) = 1.5
    ratios = [float(r["theoretical_ratio"]) for r in summary.values() if r["theoretical_ratio"] not in ("", "nan")]
    assert ratios and ratios == pytest.approx([1.5] * len(ratios)), summary
    assert "speedup_summary.md" in capsys.readouterr().out
    # a new sweep started into it without --resume is refused, not run beside its trials
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--out", str(out), "--agents", "2", "--algos", "afedpg,fedpg"])
    assert exit_info.value.code == 2 and "already holds a speedup sweep" in capsys.readouterr().err


# --- speedup summary arithmetic ---------------------------------------------------------------------


def test_time_to_target_interpolates_inside_the_crossing_segment():
    times, returns = [0.0, 10.0, 20.0, 30.0], [0.0, 40.0, 60.0, 100.0]
    assert time_to_target(times, returns, 50.0) == pytest.approx(15.0)
    assert time_to_target(times, returns, 100.0) == pytest.approx(30.0)
    assert math.isnan(time_to_target(times, returns, 0.0))  # already there at the first report: not timed
    assert math.isnan(time_to_target(times, returns, 101.0))
    assert math.isnan(time_to_target([], [], 1.0))


def test_ratios_against_hand_computed_numbers():
    assert time_ratio(30.0, 12.0) == pytest.approx(2.5)
    assert math.isnan(time_ratio(math.nan, 12.0)) and math.isnan(time_ratio(30.0, math.nan))
    # linear:4 with N = 4: slowdowns 1, 2, 3, 4 -> (4 / 4) * (1 + 1/2 + 1/3 + 1/4) = 25/12.
    assert theoretical_ratio("linear:4", 4) == pytest.approx(25 / 12)
    # N = 8: slowdowns 1 + 3i/7 -> (4 / 8) * sum(7 / (7 + 3i)).
    assert theoretical_ratio("linear:4", 8) == pytest.approx(0.5 * sum(7 / (7 + 3 * i) for i in range(8)))
    assert theoretical_ratio("none", 4) == pytest.approx(1.0)
    # --iteration-time 1 --comm-delay 1: iterations of 2, 3, 4, 5 s -> (5 / 4) * (1/2 + 1/3 + 1/4 + 1/5)
    assert theoretical_ratio("linear:4", 4, 0, 1.0, (1.0,)) == pytest.approx(1.25 * (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    # per-agent delays: slowdowns 1 and 4 with delays 0 and 3 s -> iterations of 1 and 7 s
    assert theoretical_ratio("linear:4", 2, 0, 1.0, (0.0, 3.0)) == pytest.approx(7 / 2 * (1 + 1 / 7))
    # lognormal profiles differ per seed: a sweep's ratio is the mean over the seeds that ran
    per_seed = [theoretical_ratio("lognormal:1", 4, seed) for seed in (0, 1, 2)]
    assert len(set(per_seed)) == 3
    assert Timing("lognormal:1").ratio(4, [0, 1, 2]) == pytest.approx(sum(per_seed) / 3)
    padded = Timing("linear:4", 1.0, (1.0,))  # what cmd_speedup builds from the trials' config
    assert padded.ratio(4, [0, 1]) == pytest.approx(1.25 * (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    assert default_target([10.0, 0.0], [50.0, 100.0]) == pytest.approx(82.0)  # from the highest start
    assert default_target([-1000.0], [-200.0]) == pytest.approx(-360.0)


def test_summarize_reads_times_off_the_mean_curves():
    def rows(algo, seed, times, returns):
        return [
            {"algo": algo, "agents": 4, "seed": seed, "wall_time": t, "return_mean": r}
            for t, r in zip(times, returns, strict=True)
        ]

    data = (
        rows("afedpg", 0, [0, 10, 20], [0, 50, 100])
        + rows("afedpg", 1, [0, 10, 20], [0, 30, 100])  # mean: 0, 40, 100 -> 60 at t = 10 + 20/60 * 10
        + rows("fedpg", 0, [0, 30, 60], [0, 60, 90])  # 60 at t = 30
    )
    table, how = summarize(data, "linear:4", target=60.0)
    by_algo = {row.algo: row for row in table}
    padded, _ = summarize(data, Timing("linear:4", 1.0, (1.0,)), target=60.0)
    assert padded[0].theoretical_ratio == pytest.approx(1.25 * (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    assert by_algo["afedpg"].time_to_target_s == pytest.approx(10 + 10 / 3)
    assert by_algo["fedpg"].time_to_target_s == pytest.approx(30.0)
    assert by_algo["afedpg"].measured_ratio_fedpg_over_afedpg == pytest.approx(30 / (10 + 10 / 3))
    assert by_algo["afedpg"].theoretical_ratio == pytest.approx(25 / 12)
    assert by_algo["afedpg"].seeds == 2 and by_algo["afedpg"].final_return == pytest.approx(100.0)
    assert "--target" in how
    # Default target: 80% of the way from the lowest start (0) to the best final mean (100).
    table, how = summarize(data, "linear:4")
    assert table[0].target == pytest.approx(80.0) and "80%" in how


def test_t_critical_matches_the_textbook_table():
    # two-sided 95% Student-t quantiles from a printed table; past 30 df the approximation is within 0.005
    for df, quantile in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000)]:
        assert t_critical(df) == pytest.approx(quantile, abs=0.005), df
    assert t_critical(120) == pytest.approx(1.980, abs=0.005)
    with pytest.raises(ValueError):
        t_critical(0)


def test_mean_curve_t_interval():
    x = np.array([0.0, 1.0, 2.0])
    grid, mean, low, high = mean_curve([(x, np.array([0.0, 2.0, 4.0])), (x, np.array([2.0, 4.0, 6.0]))])
    assert np.allclose(grid, x) and np.allclose(mean, [1.0, 3.0, 5.0])
    half = 12.706 * math.sqrt(2.0) / math.sqrt(2)  # t(0.975, 1 df) from the table; sample std of {0, 2} is sqrt(2)
    assert np.allclose(high - mean, half) and np.allclose(mean - low, half)
    grid, mean, low, high = mean_curve([(x, np.array([1.0, 1.0, 1.0]))])
    assert np.allclose(low, mean) and np.allclose(high, mean)
    # curves with no x in common have no mean (np.interp would clamp: a flat, made-up segment)
    apart = mean_curve([(np.array([0.0, 1.0]), np.array([10.0, 20.0])), (np.array([2.0, 3.0]), np.array([30.0, 50.0]))])
    assert all(len(part) == 0 for part in apart)


# --- bad input: one line naming the option, exit 2, before Ray starts -----------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["sample-efficiency", "--agents", "", "--samples-per-agent", "100"], "--agents"),
        (["sample-efficiency", "--agents", "0,2", "--samples-per-agent", "100"], "--agents"),
        (["sample-efficiency", "--agents", "2,2", "--samples-per-agent", "100"], "--agents"),  # ran once
        (["sample-efficiency", "--seeds", "0", "--samples-per-agent", "100"], "--seeds"),
        (["sample-efficiency", "--algo", "ppo", "--samples-per-agent", "100"], "--algo"),
        (["sample-efficiency", "--samples-per-agent", "0"], "--samples-per-agent"),
        (["sample-efficiency", "--samples-per-agent", "500", "--batch", "1000"], "--samples-per-agent"),
        (
            ["sample-efficiency", "--samples-per-agent", "1500", "--algo", "rennala", "--collect", "2"]
            + ["--agents", "1,2"],
            "--samples-per-agent: 1500 gives the 1-agent trial 1500 steps, less than one update (2 x --batch 1000",
        ),
        (["sample-efficiency", "--agents", "1,x", "--samples-per-agent", "100"], "--agents"),
        (["sample-efficiency", "--env", "Nope-v0", "--samples-per-agent", "1000"], "--env"),
        (["speedup", "--algos", "afedpg,ppo"], "--algos"),
        (["speedup", "--agents", ""], "--agents"),
        (["speedup", "--max-concurrent", "-1"], "--max-concurrent"),
        (["hyper", "--grid", "no_such_option=1,2"], "--grid"),
        (["hyper", "--grid", "eta0=abc"], "--grid"),
        (["hyper", "--grid", "eta0=uniform:0.001:0.1"], "--grid"),
        (["hyper", "--grid", "alpha0=0.1,1.5"], "--alpha0"),
        (["hyper", "--grid", "eta0=,"], "--grid"),
        (["hyper", "--grid", "critic=uniform:false:true", "--random", "2"], "--grid"),
        (["hyper", "--grid", "env=CartPole-v1,Hopper-v5"], "--grid: env: sweep one environment at a time"),
        (["hyper", "--grid", "batch=uniform:1000:2000", "--random", "4"], "--grid: batch: must be a multiple"),
        (["speedup", "--target", "nan"], "--target"),
        (["speedup", "--address", "nonsense"], "--address"),
        (["hyper", "--grid", "eta0=0.01,0.01"], "--grid: eta0: each value may be listed once"),
        (["hyper", "--grid", "eta0=0.01", "--storage", ""], "--storage: give a path or URI"),
        (["hyper", "--grid", "eta0=0.01", "--storage", "file://"], "--storage: give a path after file://"),
        (["hyper", "--grid", "eta0=0.01", "--seed", "4294967295", "--seeds", "2"], "--seeds: --seed 4294967295"),
        (["speedup", "--agents", "4,8", "--agent-resources", '{"6-8": {"num_cpus": 1}}'], "6-8 is outside 0-7"),
        (["speedup", "--algos", "afedpg,afedpg"], "--algos: each rule may be listed once"),
        (["speedup", "--algos", "afedpg,vanilla", "--lr", "0.01"], "--lr: only a3c"),  # ignored by every trial
        (["hyper", "--grid", "log_std_init=-1,0"], "--log-std-init"),  # CartPole: the whole axis does nothing
        (["hyper", "--grid", "gae_lambda=0.9,0.95", "--critic", "false"], "--gae-lambda"),
        (["hyper", "--grid", "schedule=constant,theory", "--algo", "a3c"], "--schedule"),
        (["sample-efficiency", "--agents", "1,2"], "--samples-per-agent: required"),
        (["sample-efficiency", "--samples-per-agent", "1000", "--target", "inf"], "--target"),
        # a swept option given too: the grid's values won and the option was silently ignored
        (["hyper", "--grid", "eta0=0.1", "--eta0", "0.2"], "--eta0: eta0 is also swept by --grid; give it in one"),
        (["hyper", "--grid", "critic=true,false", "--critic", "false"], "--critic: critic is also swept by --grid"),
        (["hyper", "--grid", "num-envs=2,4", "--num-envs", "2"], "--num-envs: num_envs is also swept by --grid"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2(argv, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err, err


@pytest.mark.parametrize("kind", ["sample-efficiency", "speedup", "hyper"])
def test_sweep_help_states_the_sweep_defaults(kind, capsys):
    """Found in a user walkthrough: --help gave train's --agent-cpus default (95% of the CPUs shared evenly;
    a sweep packs the largest trial's bundles onto the nodes), and --algo's afedpg for N = 1 (which runs pg)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", kind, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert exit_info.value.code == 0
    assert "--agent-cpus AGENT_CPUS CPUs per agent (default: the largest share, 0.01-1 in hundredths, at which" in text
    assert "95%" not in text
    if kind == "sample-efficiency":
        assert "(default pg for N = 1, else afedpg)" in text and "(default afedpg)" not in text


def test_unreachable_remote_storage_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    import tune_sweeps.cli as sweep_cli

    def unreachable(*args, **kwargs):  # what pyarrow raises for an s3:// bucket it cannot reach
        raise OSError("When resolving region for bucket 'x': AWS Error NETWORK_CONNECTION\nmore detail")

    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_default_agent_cpus", lambda max_agents: 0.5)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 4.0}])
    monkeypatch.setattr(sweep_cli, "run_tuner", unreachable)
    argv = ["sweep", "hyper", "--env", "CartPole-v1", "--grid", "eta0=0.01", "--storage", "s3://x/tune"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == "afedpg: error: --storage: cannot use 's3://x/tune' (When resolving region for bucket 'x': AWS "
        "Error NETWORK_CONNECTION)"
    ), err


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_sweep_names_its_tensorboard_files_and_verbose_0_quiets_tunes_snapshot_warning(
    verbose, tmp_path, capsys, monkeypatch
):
    """Found in a user walkthrough: Tune's TensorBoard hint named /tmp/ray/session_.../driver_artifacts (its
    staging copy of its own metrics, not the trials' runs), and --verbose 0 still showed Tune's 3-line
    "snapshotting has been triggered multiple times" warning, which Tune turns off with an environment variable."""
    import ray.tune

    import tune_sweeps.cli as sweep_cli

    threshold = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"  # Tune's name for it
    monkeypatch.delenv(threshold, raising=False)
    seen = {}

    class Tuner:  # Tune reads the threshold when fit() starts its controller
        def __init__(self, *args, **kwargs):
            pass

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            seen["threshold"] = os.environ.get(threshold)
            raise OSError("stop before Tune")

    monkeypatch.setattr(ray.tune, "Tuner", Tuner)
    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_default_agent_cpus", lambda max_agents: 0.5)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 4.0}])
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["sweep", *SWEEP_ARGV["hyper"], "--out", str(out), "--verbose", str(verbose)])
    assert f"TensorBoard: tensorboard --logdir {out.resolve() / 'hyper'}  (each trial's run" in capsys.readouterr().out
    assert seen["threshold"] == ("0" if verbose == 0 else None)
    assert threshold not in os.environ  # the setting ends with the sweep


def test_unwritable_storage_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["sweep", "sample-efficiency", "--samples-per-agent", "1000", "--out", str(tmp_path / "out")]
            + ["--storage", str(blocker / "tune")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--storage" in err, err


def test_a_resume_from_an_unreadable_storage_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    _record(out, "sample_efficiency", ["sweep", "sample-efficiency", "--samples-per-agent", "1000"])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "sample-efficiency", "--storage", "bogus://x", "--resume", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("afedpg: error: --storage: cannot read 'bogus://x'"), err


def test_resume_without_a_sweep_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--out", str(tmp_path / "out"), "--resume"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err, err


SWEEP_ARGV = {
    "sample_efficiency": ["sample-efficiency", "--env", "CartPole-v1", "--agents", "1,2"]
    + ["--samples-per-agent", "1000"],
    "speedup": ["speedup", "--env", "CartPole-v1", "--agents", "2", "--algos", "afedpg,fedpg"],
    "hyper": ["hyper", "--env", "CartPole-v1", "--grid", "eta0=0.1,0.2"],
}
"""A small valid command of each kind of sweep, by its Tune experiment name."""
HELD = {"sample_efficiency": "results.csv", "speedup": "speedup.csv", "hyper": "hyper.csv"}


def _stop_at_ray(monkeypatch) -> None:
    """Exit 7 where a sweep would start Ray (every check before it has passed)."""

    def connect(address):
        raise SystemExit(7)

    monkeypatch.setattr("afedpg_ray.connection.connect", connect)


@pytest.mark.parametrize("name", list(SWEEP_ARGV))
@pytest.mark.parametrize("held", ["record", "results", "experiment"])
def test_a_new_sweep_into_a_sweep_of_its_kind_is_refused_before_ray(name, held, tmp_path, capsys, monkeypatch):
    """Found by starting a speedup sweep into a finished one's --out: it overwrote the record and tables
    and ran its trials beside the old ones in Tune's directory."""
    _stop_at_ray(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    path = {"record": f"{name}_command.json", "results": HELD[name], "experiment": f"{name}/tuner.pkl"}[held]
    (out / path).parent.mkdir(exist_ok=True)
    (out / path).write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV[name], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    kind = name.replace("_", "-")
    assert err.startswith(f"afedpg: error: --out {out} already holds a {kind} sweep ("), err
    assert err.endswith("continue it with --resume or choose another --out"), err


def test_a_sweep_tune_could_not_start_leaves_no_record_that_would_refuse_its_rerun(tmp_path, capsys, monkeypatch):
    """A storage Tune cannot write (a typo in an s3:// bucket) stops the sweep before its experiment exists:
    no record is left to refuse the corrected command, which --resume could not continue either."""
    import ray.tune

    import tune_sweeps.cli as sweep_cli

    class Unwritable:
        can_restore = staticmethod(lambda path: False)

        def __init__(self, *args, **kwargs):  # Tuner() writes tuner.pkl to the storage
            raise OSError("When resolving region for bucket 'x': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(ray.tune, "Tuner", Unwritable)
    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_default_agent_cpus", lambda max_agents: 0.5)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 4.0}])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV["hyper"], "--out", str(out), "--storage", "s3://x/tune"])
    assert exit_info.value.code == 1 and "--storage: cannot use 's3://x/tune'" in capsys.readouterr().err
    assert not (out / "hyper_command.json").exists()
    _stop_at_ray(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV["hyper"], "--out", str(out), "--storage", str(tmp_path / "tune")])
    assert exit_info.value.code == 7


def test_a_new_sweep_into_the_storage_of_a_sweep_of_its_kind_is_refused(tmp_path, capsys, monkeypatch):
    _stop_at_ray(monkeypatch)
    storage = tmp_path / "tune"
    (storage / "hyper").mkdir(parents=True)
    (storage / "hyper" / "tuner.pkl").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV["hyper"], "--out", str(tmp_path / "new"), "--storage", str(storage)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err == (
        f"afedpg: error: --storage {storage} already holds a hyper sweep ({storage / 'hyper'}); continue it "
        "with --resume or choose another --storage"
    ), err


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_driver_on_a_sweeps_out_is_refused_naming_the_first(resume, tmp_path, capsys, monkeypatch):
    """Found by resuming a speedup sweep while it ran: the second driver started its own Ray, reran the
    unfinished trial beside the first's, and both wrote the summary."""
    from afedpg_ray import runlock

    _stop_at_ray(monkeypatch)
    out = tmp_path / "out"
    _record(out, "speedup", ["sweep", *SWEEP_ARGV["speedup"], "--out", str(out)])
    (out / "speedup").mkdir()
    (out / "speedup" / "tuner.pkl").write_text("")  # Tune's experiment: the resume gets as far as Ray
    held = runlock.acquire(out / "speedup")  # the first driver (flock: another open file conflicts in-process too)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["sweep", *SWEEP_ARGV["speedup"], "--out", str(out), *(["--resume"] if resume else [])])
    finally:
        runlock.release(held)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"afedpg: error: --out: {out / 'speedup'} is being trained by process {os.getpid()}"), err
    # another kind of sweep may share the --out meanwhile, and the sweep runs once the first driver is gone
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV["hyper"], "--out", str(out)])
    assert exit_info.value.code == 7
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--out", str(out), "--resume"])
    assert exit_info.value.code == 7


def test_a_refused_sweep_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV["speedup"], "--seeds", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert not out.exists()


def test_a_resume_of_an_out_without_the_sweeps_record_is_refused(tmp_path, capsys, monkeypatch):
    """Found by resuming a 1-trial speedup sweep before it had written its record: the resume ran with
    the default options and reported "23 of 24 trials unfinished"."""
    _stop_at_ray(monkeypatch)
    out = tmp_path / "out"
    (out / "speedup").mkdir(parents=True)
    (out / "speedup" / "tuner.pkl").write_text("")  # Tune's experiment exists, the record not yet
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err == (
        f"afedpg: error: --resume: {out} holds no speedup sweep to resume (no speedup_command.json); "
        "start it without --resume"
    ), err


@pytest.mark.parametrize("name", list(SWEEP_ARGV))
def test_sweeps_of_different_kinds_share_an_out(name, tmp_path, monkeypatch):
    """Each kind writes its own files and Tune directory: the others' do not stop it."""
    _stop_at_ray(monkeypatch)
    out = tmp_path / "out"
    for other in set(SWEEP_ARGV) - {name}:
        (out / other).mkdir(parents=True)
        for path in (f"{other}_command.json", HELD[other], f"{other}/tuner.pkl"):
            (out / path).write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP_ARGV[name], "--out", str(out)])
    assert exit_info.value.code == 7


def test_hyper_grid_parsing_and_ranking():
    from tune_sweeps.hyper import Axis, option_parser, parse_axis, rank

    parser = option_parser()
    assert parse_axis("eta0=0.003,0.01", parser) == Axis("eta0", (0.003, 0.01))
    assert parse_axis("--num-envs=2,4", parser) == Axis("num_envs", (2, 4))
    assert parse_axis("hidden=64,64;32", parser) == Axis("hidden", ((64, 64), (32,)))
    assert parse_axis("hidden=64,64", parser) == Axis("hidden", ((64, 64),))  # one two-layer value, as documented
    assert parse_axis("critic=true,false", parser) == Axis("critic", (True, False))
    assert parse_axis("eta0=loguniform:0.001:0.1", parser) == Axis("eta0", (0.001, 0.1), "loguniform")
    # JSON values hold commas: only ';' separates them, and each becomes the groups a trial config takes
    axis = parse_axis('agent_resources={"0-1": {"num_cpus": 0.5}, "2": {"num_cpus": 1}};{"0-2": {}}', parser)
    assert [[(g["first"], g["last"], g["num_cpus"]) for g in value] for value in axis.values] == [
        [(0, 1, 0.5), (2, 2, 1)],
        [(0, 2, None)],
    ]
    with pytest.raises(ConfigError, match="--grid: agent_resources=1,2: --agent-resources: not valid JSON"):
        parse_axis("agent_resources=1,2", parser)
    from tune_sweeps.trainable import trial_train_config

    trial = trial_train_config({"train": {"agents": 3}, "agent_resources": axis.values[0], "seed": 0})
    assert [(g.first, g.last, g.num_cpus) for g in trial.agent_resources] == [(0, 1, 0.5), (2, 2, 1)]
    rows = [
        {"trial_id": tid, "config": {"eta0": eta0, "seed": seed}, "return_mean": ret, "wall_time": 1.0}
        for tid, eta0, seed, ret in [
            ("a", 0.01, 0, 5.0),
            ("a", 0.01, 0, 10.0),
            ("b", 0.01, 1, 20.0),
            ("c", 0.1, 0, 12.0),
        ]
    ]
    # trial a's final return is its last row (10); eta0=0.01 averages trials a and b (two seeds): 15.
    table = rank(rows, ["eta0"])
    assert [(r["rank"], r["eta0"], r["final_return"], r["seeds"]) for r in table] == [
        (1, 0.01, 15.0, 2),
        (2, 0.1, 12.0, 1),
    ]


def test_a_random_draw_runs_on_every_seed():
    """Random search with several seeds: each draw of the random options is one configuration run on
    every seed (Tune's default would draw afresh per seed, leaving every configuration with one seed)."""
    from ray.tune.experiment import Experiment

    from tune_sweeps.hyper import Axis, param_space, rank
    from tune_sweeps.trainable import variant_generator

    space = param_space({"env": "CartPole-v1"}, [Axis("eta0", (1e-3, 1e-1), "loguniform")], [0, 1, 2], True)
    generator = variant_generator()
    generator.add_configurations([Experiment(name="draws", run=lambda config: None, config=space, num_samples=2)])
    trials = iter(generator.next_trial, None)
    pairs = [(t.config["eta0"], t.config["seed"]) for t in trials]
    assert [seed for _, seed in pairs] == [0, 1, 2, 0, 1, 2]
    draws = [eta0 for eta0, _ in pairs]
    assert len(set(draws[:3])) == 1 and len(set(draws[3:])) == 1 and draws[0] != draws[3]
    assert variant_generator(4).max_concurrent == 4  # Tune ignores TuneConfig's limit once a generator is given
    # two draws of tune.choice landing on the same value make one configuration: 2 seeds, 3 runs
    rows = [
        {"trial_id": tid, "config": {"eta0": 0.01, "seed": seed}, "return_mean": 1.0, "wall_time": 1.0}
        for tid, seed in [("a", 0), ("b", 1), ("c", 0)]
    ]
    assert [(r["seeds"], r["runs"]) for r in rank(rows, ["eta0"])] == [(2, 3)]


def test_trial_bundles_reserve_what_each_agent_asks_for():
    from afedpg_ray.config import AgentResources, TrainConfig
    from tune_sweeps.trainable import TRIAL_CPUS, trial_bundles

    groups = (AgentResources(0, 1, 0, None, {}), AgentResources(2, 3, 0.5, 2_000_000, {"fast_node": 1}))
    config = TrainConfig(env="CartPole-v1", agents=4, agent_resources=groups)
    # agents 0-1 ask for nothing: no bundle (Ray refuses an all-zero one); agents 2-3 get theirs
    assert trial_bundles(config) == [
        {"CPU": TRIAL_CPUS},
        {"CPU": 0.5, "fast_node": 1.0, "memory": 2_000_000.0},
        {"CPU": 0.5, "fast_node": 1.0, "memory": 2_000_000.0},
    ]
    assert trial_bundles(TrainConfig(env="CartPole-v1", agents=2, agent_cpus=0.25))[1:] == [{"CPU": 0.25}] * 2


def test_background_sender_returns_while_a_send_is_held_and_delivers_everything_in_order():
    import threading

    from tune_sweeps.trainable import BackgroundSender

    release, sent = threading.Event(), []

    def slow_send(payload):
        release.wait()  # Tune's controller has not fetched the result yet
        sent.append(payload)

    sender = BackgroundSender(slow_send)
    for i in range(5):
        sender(i)  # would hang here if the call waited for the send
    assert sent == []
    release.set()
    sender.close()
    assert sent == [0, 1, 2, 3, 4]


def test_background_sender_close_reraises_the_first_send_error_and_stops_sending():
    from tune_sweeps.trainable import BackgroundSender

    sent = []

    def send(payload):
        if payload == 1:
            raise SystemExit(0)  # how tune.report ends a trial Tune has stopped
        sent.append(payload)

    sender = BackgroundSender(send)
    for i in range(3):
        sender(i)
    with pytest.raises(SystemExit):
        sender.close()
    assert sent == [0]

    quiet = BackgroundSender(send)
    quiet(1)
    quiet.close(reraise=False)  # the trial's own error is the one shown


def test_a_trial_tune_stopped_ends_at_the_next_report_of_its_own_thread():
    """Tune ends a stopped trial with SystemExit inside tune.report: the sender's thread gets it, and the
    trial's loop must get it too at its next report, or train() would run on after the stop."""
    from tune_sweeps.trainable import BackgroundSender

    def stopped(payload):
        raise SystemExit(0)

    sender = BackgroundSender(stopped)
    sender(0)
    deadline = time.monotonic() + 30
    while sender._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(SystemExit):
        sender(1)
    sender.close(reraise=False)


def _fake_tune_trial(monkeypatch, tmp_path, report, train, trial_storage: Path | None = None) -> None:
    """Stand in for what run_trial takes from Tune (trial id "t0", no checkpoint to restore, ``report``, the
    trial's directory in storage: ``trial_storage``, default none) and for ``train``; run from ``tmp_path``
    as Tune runs a trial from its working directory."""
    import pyarrow.fs
    import ray.tune

    from afedpg_ray import train as train_module

    class Storage:
        storage_filesystem = pyarrow.fs.LocalFileSystem()
        trial_fs_path = str(trial_storage or tmp_path / "no-trial-storage")

    class Context:
        def get_trial_id(self):
            return "t0"

        def get_storage(self):
            return Storage()

    monkeypatch.setattr(ray.tune, "get_context", lambda: Context())
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.tune, "report", report)
    monkeypatch.setattr(train_module, "train", train)
    monkeypatch.chdir(tmp_path)


def test_run_trial_reports_through_tune_before_it_returns_with_the_reserved_agent_cpus(tmp_path, monkeypatch):
    """run_trial's wiring without Ray: the config train() gets, and every report delivered by return."""
    from afedpg_ray.config import TrainConfig
    from afedpg_ray.messages import UpdateRecord
    from tune_sweeps.trainable import run_trial, trial_bundles

    reported, seen = [], {}

    def slow_report(metrics):
        time.sleep(0.05)  # Tune's controller takes its time; run_trial must still wait for every report
        reported.append(metrics)

    def fake_train(config, name_prefix, on_record, resume=False):
        seen["config"] = config
        for samples in (100, 200, 300, 400):
            on_record(UpdateRecord(samples // 100, 0.0, 0, 0, samples, 0, 1.0, True))

    _fake_tune_trial(monkeypatch, tmp_path, slow_report, fake_train)
    base = TrainConfig(env="CartPole-v1", agents=4, samples=400, batch=100, num_envs=2).to_dict()
    run_trial({"train": base, "variants": {}, "seed": 0})
    assert [r["samples_total"] for r in reported] == [100, 200, 300, 400]
    reserved = [bundle["CPU"] for bundle in trial_bundles(TrainConfig(env="CartPole-v1", agents=4))[1:]]
    assert seen["config"].agent_cpus == reserved[0] == 0.2375


def test_a_trial_reports_a_checkpoint_per_run_checkpoint_and_a_rerun_resumes_from_it(tmp_path, monkeypatch):
    """run_trial's checkpoint wiring without Ray: a report carries a snapshot of the run directory whenever
    the run wrote a newer checkpoint (never the last report); a trial Tune restores resumes from one."""
    import ray.tune
    from _checkpoint_util import server_state

    from afedpg_ray import train as train_module
    from afedpg_ray.checkpoint import load_checkpoint, save_checkpoint
    from afedpg_ray.messages import UpdateRecord
    from tune_sweeps.trainable import run_trial

    config = TrainConfig(env="CartPole-v1", agents=2, samples=500, batch=100, num_envs=2)
    reported, calls = [], []
    monkeypatch.setattr("tune_sweeps.trainable.TRIAL_CHECKPOINT_MIN_S", 0.0)  # ThrottledReporter's own test

    def report(metrics, checkpoint=None):
        held = None
        if checkpoint is not None:
            with checkpoint.as_directory() as saved:
                held = (sorted(p.name for p in Path(saved).iterdir()), load_checkpoint(Path(saved))["samples_total"])
        reported.append((metrics["samples_total"], metrics["resumed_from_samples"], held))

    def fake_train(config, name_prefix, on_record, resume=False):
        run = Path(config.out)
        calls.append((resume, sorted(p.name for p in run.iterdir()) if resume else None))
        run.mkdir(parents=True, exist_ok=True)
        (run / "progress.csv").write_text("update\n")
        for samples in (100, 200, 300, 400, 500):
            if samples in (100, 300, 500):  # the run's own checkpoints, before these records are reported
                save_checkpoint(run, server_state(config, version=samples // 100, samples_total=samples))
                # as if written within one tick of the kernel's file clock (it happened): the same mtime
                os.utime(run / "checkpoint.pt", ns=(1_700_000_000_000_000_000,) * 2)
            on_record(UpdateRecord(samples // 100, 0.0, 0, 0, samples, 0, 1.0, True))

    _fake_tune_trial(monkeypatch, tmp_path, report, fake_train)
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})
    files = ["checkpoint.pt", "progress.csv"]
    nan = reported[0][1]
    assert math.isnan(nan) and calls == [(False, None)]
    assert [(s, held) for s, _, held in reported] == [
        (100, (files, 100)),
        (200, None),
        (300, (files, 300)),
        (400, None),
        (500, None),
    ]
    # Tune restores the trial from its checkpoint: the rerun unpacks it and resumes, saying from where
    saved = tmp_path / "saved"
    saved.mkdir()
    save_checkpoint(saved, server_state(config, version=3, samples_total=300))
    (saved / "progress.csv").write_text("update\n")
    reported.clear()
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint.from_directory(str(saved)))
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})
    assert calls[-1] == (True, files)
    assert {resumed for _, resumed, _ in reported} == {300}

    # restored from a checkpoint taken as its run ended, train() only finishes the run and logs no record:
    # the trial still reports its result at the budget, or it would never count as finished
    class Finished:
        updates, samples_total, return_mean, wall_time = 5, 500, 42.0, 9.0

    def finishing_train(config, name_prefix, on_record, resume=False):
        return Finished()

    reported.clear()
    monkeypatch.setattr(train_module, "train", finishing_train)
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})
    assert [(s, resumed, held) for s, resumed, held in reported] == [(500, 300, None)]


def _run_at(run: Path, config: TrainConfig, run_id: str, updates: int) -> Path:
    """A trial's run directory as Tune syncs it: ``updates`` rows and a checkpoint after them, of run ``run_id``."""
    from _checkpoint_util import server_state, update_record

    from afedpg_ray.checkpoint import save_checkpoint
    from afedpg_ray.runlog import RunLog
    from afedpg_ray.train import save_run_config

    run.mkdir(parents=True)
    save_run_config(run / "config.json", config, run_id)
    log = RunLog(run, config.samples, show_progress=False, tensorboard=False)
    for update in range(1, updates + 1):
        log.record(update_record(update))
    log.close()
    state = server_state(config, version=updates, samples_total=100 * updates, progress_rows=updates)
    save_checkpoint(run, {**state, "run_id": run_id})
    return run


def test_a_stopped_trial_resumes_from_the_run_checkpoint_tune_synced_as_it_stopped_it(tmp_path, monkeypatch):
    """Found by stopping a sweep at update 169 of a run that checkpoints every 5: Tune's latest trial
    checkpoint (they are at least 30 s apart) was at update 115, and the resume restarted there. Tune takes
    no trial checkpoint at a stop, but syncs the trial's run directory to storage: the resume continues
    from its checkpoint, if it belongs to the same run and is intact."""
    import ray.tune

    from afedpg_ray.checkpoint import load_checkpoint
    from tune_sweeps.trainable import run_trial

    config = TrainConfig(env="CartPole-v1", agents=2, samples=2000, batch=100, num_envs=2)
    resumed_at = []

    class Finished:
        updates, samples_total, return_mean, wall_time = 20, 2000, 42.0, 9.0

    def fake_train(config, name_prefix, on_record, resume=False):
        resumed_at.append(load_checkpoint(Path(config.out))["samples_total"] if resume else None)
        return Finished()

    trial = tmp_path / "storage" / "trial"
    (tmp_path / "work").mkdir()
    _fake_tune_trial(monkeypatch, tmp_path / "work", lambda metrics: None, fake_train, trial)
    saved = _run_at(tmp_path / "tune-checkpoint", config, "r1", 3)  # Tune's trial checkpoint
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint.from_directory(str(saved)))
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})  # nothing synced: Tune's checkpoint
    _run_at(trial / "run-t0-20261130-100000", config, "r1", 5)  # the stopped attempt, synced at the stop
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})
    # later attempts: one whose checkpoint the stop cut off mid-copy, one of another run (a failed trial
    # rerun from scratch): neither is resumed from, the latest intact one of the run is
    broken = _run_at(trial / "run-t0-20261130-100100", config, "r1", 7)
    (broken / "checkpoint.pt").write_bytes((broken / "checkpoint.pt").read_bytes()[:100])
    _run_at(trial / "run-t0-20261130-100200", config, "r2", 9)
    run_trial({"train": config.to_dict(), "variants": {}, "seed": 0})
    assert resumed_at == [300, 500, 500]


def test_trial_checkpoints_are_at_least_the_minimum_interval_apart(tmp_path, monkeypatch):
    """Tune snapshots the whole experiment's state with every trial checkpoint: a run checkpointing every
    few updates must not make it do so every few updates."""
    from _checkpoint_util import server_state

    from afedpg_ray.checkpoint import save_checkpoint
    from afedpg_ray.messages import UpdateRecord
    from tune_sweeps.trainable import CHECKPOINT_PAYLOAD_KEY, ThrottledReporter

    clock = [0.0]
    monkeypatch.setattr("tune_sweeps.trainable.time.monotonic", lambda: clock[0])
    config = TrainConfig(env="CartPole-v1", agents=2, samples=1000, batch=100, num_envs=2)
    sent = []
    reporter = ThrottledReporter(config, sent.append, run_dir=tmp_path, checkpoint_every_s=30.0)
    for update, now in enumerate((0.0, 10.0, 20.0, 31.0, 40.0, 70.0), start=1):
        clock[0] = now
        save_checkpoint(tmp_path, server_state(config, version=update, samples_total=100 * update))  # a new one
        reporter(UpdateRecord(update, now, 0, 0, 100 * update, 0, 1.0, True))
    assert [p["samples_total"] for p in sent if p.get(CHECKPOINT_PAYLOAD_KEY)] == [100, 400, 600]


def test_the_end_of_the_budget_is_reported_once():
    """FedPG's last round logs a record per agent, each with the final samples: one report, not one per agent."""
    from afedpg_ray.messages import UpdateRecord
    from tune_sweeps.trainable import ThrottledReporter

    config = TrainConfig(env="CartPole-v1", algo="fedpg", agents=3, samples=600, batch=100, num_envs=2)
    sent = []
    reporter = ThrottledReporter(config, sent.append, fraction=0.5)
    for update in (1, 2):
        for agent in range(3):
            reporter(UpdateRecord(update, 0.1 * update + 0.01 * agent, agent, 0, 300 * update, 0, 1.0, True))
    assert [(p["update"], p["samples_total"]) for p in sent] == [(1, 300), (2, 600)]


def test_a_resumed_trial_joins_its_earlier_reports_up_to_its_checkpoint():
    from tune_sweeps.trainable import collect_rows

    # attempt 1 reached 400 and checkpointed at 300; attempt 2 resumed from 300, reached 500, then was
    # stopped; attempt 3 resumed from attempt 2's checkpoint at 500 and finished
    samples = [100, 200, 300, 400, 400, 500, 600, 600, 700, 800]
    attempts = [1.0] * 4 + [2.0] * 3 + [3.0] * 3
    resumed = [math.nan] * 4 + [300] * 3 + [500] * 3
    result = FakeResult(samples, budget=800, attempts=attempts, resumed_from=resumed)
    rows, _, cut = collect_rows(FakeGrid([result]))
    assert [r["samples_total"] for r in rows] == [100, 200, 300, 400, 500, 600, 700, 800] and cut == 0
    # a trial rerun from scratch (no checkpoint yet) keeps only its last attempt
    fresh = FakeResult(
        [100, 200, 100, 200, 300], budget=300, attempts=[1.0, 1.0, 2.0, 2.0, 2.0], resumed_from=[math.nan] * 5
    )
    assert [r["samples_total"] for r in collect_rows(FakeGrid([fresh]))[0]] == [100, 200, 300]


class FakeResult:
    """What collect_rows and _done read of a Tune ``Result``: its error, reports and config."""

    def __init__(
        self,
        samples: list[int],
        budget: int = 400,
        attempts: list[float] | None = None,
        error=None,
        resumed_from: list[float] | None = None,
    ):
        import pandas as pd

        self.error, self.path = error, "/tune/trial"
        self.config = {"train": TrainConfig(env="CartPole-v1", samples=budget, batch=100).to_dict(), "seed": 0}
        frame = {"samples_total": samples, "return_mean": [10.0 + i for i in range(len(samples))]}
        frame.update(algo="afedpg", agents=2, seed=0, update=1, samples_per_agent=0.0, wall_time=1.0, trial_id="t")
        if attempts is not None:
            frame["attempt"] = attempts
        if resumed_from is not None:
            frame["resumed_from_samples"] = resumed_from
        self.metrics_dataframe = pd.DataFrame(frame)


class FakeGrid(list):
    """A ``ResultGrid``: Tune counts every trial a stop cut off as TERMINATED, as it does a finished one."""

    @property
    def num_terminated(self) -> int:
        return sum(1 for result in self if result.error is None)

    @property
    def num_errors(self) -> int:
        return sum(1 for result in self if result.error is not None)


def test_interrupted_sweep_exits_130(capsys):
    from tune_sweeps.cli import _done

    resume = "afedpg sweep speedup --resume --out 'my sweeps/x'"
    done, cut = FakeResult([100, 400]), FakeResult([100, 200])
    assert _done(FakeGrid([done]), 0, resume) == 0 and _done(FakeGrid([done]), 1, resume) == 0
    # stopped mid-trial (Tune says TERMINATED); or before two trials started
    for grid, expected in ((FakeGrid([done, cut]), 0), (FakeGrid([done]), 3)):
        with pytest.raises(SystemExit) as exit_info:
            _done(grid, expected, resume)
        assert exit_info.value.code == 130
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.endswith(f"the outputs are partial - continue with: {resume}"), err
    assert "2 of 3 trials unfinished" in err


def test_a_sweep_stopped_before_any_report_says_it_wrote_nothing(capsys):
    """Found by stopping a sweep in its first seconds: "the outputs are partial", though it wrote none."""
    from tune_sweeps.cli import _done

    with pytest.raises(SystemExit) as exit_info:
        _done(FakeGrid([FakeResult([])]), 2, "afedpg sweep hyper --resume --out x", wrote=False)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        "afedpg: error: interrupted with 2 of 2 trials unfinished; no outputs written - continue with: "
        "afedpg sweep hyper --resume --out x"
    ), err


def test_tunes_restore_advice_and_its_note_on_trials_without_reports_are_dropped():
    """Tune advised "Tuner.restore(path=..., trainable=...)" after a stop (afedpg's resume is a command),
    and every resume logged "Failed to fetch metrics ... FileNotFoundError" for trials that had not reported."""
    import logging

    from tune_sweeps.trainable import quiet_tune_advice

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    quiet_tune_advice()
    tune_log = logging.getLogger("ray.tune.tune")
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    kept = Kept()
    # an earlier test's ray.init or sweep may have raised these loggers' levels (verbose 0): the filters are
    # what is tested here, so the level is set for the test and restored after it
    saved = [(logger.level, logger.disabled) for logger in (tune_log, analysis_log)]
    for logger in (tune_log, analysis_log):
        logger.setLevel(logging.WARNING)
        logger.disabled = False
        logger.addHandler(kept)  # a logger's filters decide before its handlers see a record
    try:
        tune_log.warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/x/speedup", trainable=...)'
        )
        tune_log.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
        missing = "- run_trial_c99ed_00000: FileNotFoundError('Could not fetch metrics for run_trial_c99ed_00000')"
        analysis_log.warning(f"Failed to fetch metrics for 2 trial(s):\n{missing}\n{missing}")
        damaged = "- run_trial_c99ed_00001: JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"
        analysis_log.warning(f"Failed to fetch metrics for 2 trial(s):\n{missing}\n{damaged}")
    finally:
        for logger, (level, disabled) in zip((tune_log, analysis_log), saved, strict=True):
            logger.removeHandler(kept)
            logger.setLevel(level)
            logger.disabled = disabled
    assert [m.splitlines()[0] for m in kept.messages] == [
        "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.",
        "Failed to fetch metrics for 2 trial(s):",
    ]


def test_only_finished_trials_reach_the_tables():
    from tune_sweeps.trainable import collect_rows

    done = FakeResult([100, 400])
    cut = FakeResult([100, 200])  # stopped by a Ctrl-C at half its budget
    rerun = FakeResult([100, 400, 100, 300], attempts=[1.0, 1.0, 2.0, 2.0])  # its last attempt was cut
    failed = FakeResult([100], error=RuntimeError("agent 0 died\nRunError: boom"))
    rows, errors, left_out = collect_rows(FakeGrid([done, cut, rerun, failed]))
    assert [r["samples_total"] for r in rows] == [100, 400] and left_out == 2
    assert errors == ["trial at /tune/trial failed: RunError: boom"]
    # an error without a message is named by its type
    _, errors, _ = collect_rows(
        FakeGrid([FakeResult([100], error=RuntimeError("")), FakeResult([100], error=OSError())])
    )
    assert errors == ["trial at /tune/trial failed: RuntimeError", "trial at /tune/trial failed: OSError"]


def _a_checkpoint_reached_tune(experiment: Path) -> bool:
    """Whether Tune's controller has processed a report with a checkpoint (it writes result.json; the
    checkpoint directory appears in storage before the controller knows of it, and a stop then loses it)."""
    for path in experiment.glob("*/result.json"):
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("checkpoint_dir_name"):
                    return True
            except ValueError:  # a line being written
                continue
    return False


@pytest.mark.usefixtures("ray_session")
def test_sigterm_stops_a_sweep_gracefully_and_its_resume_continues_trials_from_their_checkpoints(tmp_path):
    import ray
    from ray import tune

    from tune_sweeps.trainable import collect_rows, make_trainable

    out, address = tmp_path / "out", ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "afedpg_ray.cli", "sweep", "hyper", "--address", address, "--out", str(out)]
    sweep = ["--env", "CartPole-v1", "--grid", "eta0=0.01,0.02", "--samples", "100000", "--batch", "200"]
    sweep += ["--num-envs", "2", "--agents", "2", "--iteration-time", "0.05", "--checkpoint-every", "5"]
    # both trials at once: a stop leaves every running trial TERMINATED in Tune's records, as if it had finished
    sweep += ["--agent-cpus", "0.3", "--max-concurrent", "2", "--no-tensorboard", "--verbose", "0"]
    with (tmp_path / "first.err").open("wb") as err_file:  # a file, not a pipe: Ray may write a lot
        proc = subprocess.Popen(cmd + sweep, stdout=subprocess.DEVNULL, stderr=err_file)
        deadline = time.time() + 180
        while time.time() < deadline and not _a_checkpoint_reached_tune(out / "hyper"):
            assert proc.poll() is None, (tmp_path / "first.err").read_text()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # a trial is running and Tune has registered a checkpoint of it
        proc.wait(timeout=120)
    text = (tmp_path / "first.err").read_text()
    assert proc.returncode == 143, text[-2000:]
    # the CLI's own last line (Ray may forward a worker's output after it)
    last = [line for line in text.splitlines() if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=\d+", line)][-1]
    assert last.startswith("afedpg: error: terminated (SIGTERM) with 2 of 2 trials unfinished"), last
    assert last.endswith(f"continue with: afedpg sweep hyper --resume --out {out}"), last
    assert "Tuner.restore" not in text and "Failed to fetch metrics" not in text  # Tune's advice and note
    assert "SIGTERM received" not in text  # Ray's handler (a stack dump and abort) did not run

    # the resume needs no option but where the sweep is; it finishes both trials, a checkpointed one from
    # its checkpoint, and the tables join its reports before the checkpoint with the resumed run's
    with (tmp_path / "resume.err").open("wb") as err_file:
        resumed = subprocess.run(cmd + ["--resume"], stdout=subprocess.DEVNULL, stderr=err_file, timeout=300)
    assert resumed.returncode == 0, (tmp_path / "resume.err").read_text()[-2000:]
    assert "Checkpoint successfully created" not in (tmp_path / "resume.err").read_text()  # quiet at --verbose 0
    assert len(read_csv(out / "hyper.csv")) == 2
    events = [e for path in out.glob("hyper/*/run-*/events.csv") for e in read_csv(path)]
    runs = sorted(str(p.relative_to(out)) for p in out.glob("hyper/*/run-*"))
    assert any(e["kind"] == "resumed" for e in events), (runs, events)
    rows, errors, cut = collect_rows(tune.Tuner.restore(str(out / "hyper"), trainable=make_trainable()).get_results())
    assert not errors and cut == 0
    for trial in {r["trial_id"] for r in rows}:
        samples = [int(r["samples_total"]) for r in rows if r["trial_id"] == trial]
        assert samples == sorted(set(samples)) and samples[0] <= 400 and samples[-1] >= 100000, samples


def test_agent_resource_ranges_number_the_largest_trials_agents(tmp_path, capsys, monkeypatch):
    import tune_sweeps.cli as sweep_cli
    from tune_sweeps.trainable import groups_within

    fast, slow = {"first": 0, "last": 3, "num_cpus": 1.0}, {"first": 4, "last": 7, "num_cpus": 0.25}
    assert groups_within([fast, slow], 8) == [fast, slow]
    assert groups_within([fast, slow], 4) == [fast]
    assert groups_within([fast, slow], 2) == [{**fast, "last": 1}]
    # the paper's sweep with fast and slow agents pinned: every trial validates (it refused N = 4 before)
    seen: list[list[list[dict]]] = []

    def capture(sweep, space, num_samples=1, created=None):
        from tune_sweeps.trainable import trial_bundles, trial_train_config

        for variant in space["variants"]:
            trial = {"train": space["train"], "variants": space["variants"], "variant": variant, "seed": 0}
            seen.append(trial_bundles(trial_train_config(trial)))
        raise OSError("stop before Tune")

    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 16.0}])
    monkeypatch.setattr(sweep_cli, "run_tuner", capture)
    argv = ["sweep", "speedup", "--env", "CartPole-v1", "--agents", "4,8", "--algos", "afedpg"]
    argv += ["--agent-resources", '{"0-3": {"num_cpus": 1}, "4-7": {"num_cpus": 0.25}}', "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1 and "stop before Tune" in capsys.readouterr().err
    cpus = sorted([bundle["CPU"] for bundle in bundles[1:]] for bundles in seen)
    assert cpus == [[1.0] * 4, [1.0] * 4 + [0.25] * 4]


def test_an_option_some_trials_use_is_kept(tmp_path, capsys, monkeypatch):
    """``--schedule theory`` does nothing for a3c but drives afedpg: a sweep of both keeps it (it was refused
    or accepted depending on which rule --algos listed first)."""
    import tune_sweeps.cli as sweep_cli

    def stop(*args, **kwargs):
        raise OSError("stop before Tune")

    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 16.0}])
    monkeypatch.setattr(sweep_cli, "run_tuner", stop)
    for algos in ("a3c,afedpg", "afedpg,a3c"):
        argv = ["sweep", "speedup", "--env", "CartPole-v1", "--algos", algos, "--schedule", "theory"]
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--agent-cpus", "0.5", "--out", str(tmp_path)])
        assert exit_info.value.code == 1 and "stop before Tune" in capsys.readouterr().err


def test_placement_watchdog_stops_a_sweep_only_when_trials_wait_and_none_runs(monkeypatch):
    import tune_sweeps.placement_watch as watch

    clock, kills = [100.0], []
    monkeypatch.setattr(watch.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(watch.os, "kill", lambda pid, signum: kills.append(signum))
    monkeypatch.setattr(watch, "STOPPED", [])
    monkeypatch.setattr(watch.PlacementWatchdog, "_reason", lambda self, trial: f"{trial.status} stuck")

    class Trial:
        def __init__(self, status):
            self.status = status

    dog = watch.PlacementWatchdog(timeout_s=10)
    waiting, busy = [Trial("PENDING"), Trial("PENDING")], [Trial("RUNNING"), Trial("PENDING")]
    for step, (seconds, trials) in enumerate([(0, waiting), (9, waiting), (30, busy), (31, waiting), (40, waiting)]):
        clock[0] = 100.0 + seconds
        dog.on_step_begin(step, trials)
    assert kills == [] and watch.STOPPED == []  # a running trial reset the clock at 30 s: waited 9 s only
    clock[0] = 141.0
    dog.on_step_begin(5, waiting)
    assert kills == [signal.SIGINT] and watch.STOPPED == ["PENDING stuck"]
    dog.on_step_begin(6, waiting)
    assert len(kills) == 1  # stops once
    assert watch.PlacementWatchdog.__getstate__(dog) == {"timeout_s": 10, "_waiting_since": None}


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_no_node_can_place_stops_after_the_placement_timeout_naming_why(tmp_path, capsys):
    import ray

    argv = ["sweep", "hyper", "--env", "CartPole-v1", "--grid", "eta0=0.01", "--samples", "2000", "--agents", "2"]
    argv += ["--batch", "200", "--agent-cpus", "0.2", "--agent-resources", '{"1": {"resources": {"no_such_node": 1}}}']
    argv += ["--placement-timeout", "3", "--verbose", "0", "--no-tensorboard"]
    argv += ["--address", ray.get_runtime_context().gcs_address, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("afedpg: warning: a trial asks for") and "no node has 'no_such_node'" in err[0], err
    assert err[-1].startswith("afedpg: error: no trial could start within --placement-timeout 3 s"), err
    assert "no node has 'no_such_node'" in err[-1] and "--resume" in err[-1], err


# --- afedpg plot -----------------------------------------------------------------------------------


def write_csv(path, columns, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def test_plot_redraws_sweep_and_run_figures(tmp_path, capsys):
    columns = ["trial_id", "algo", "agents", "seed", "update", "samples_total", "samples_per_agent"]
    columns += ["return_mean", "wall_time"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = []
    for algo, n in (("pg", 1), ("afedpg", 2)):
        for seed in (0, 1):
            for k in range(1, 6):
                rows.append([f"t{n}{seed}", algo, n, seed, k, 100 * k * n, 100 * k, 10 * k * n + seed, 0.5 * k])
    write_csv(sweep / "results.csv", columns, rows)
    write_csv(sweep / "speedup.csv", columns, [r for r in rows if r[1] == "afedpg"])

    progress_columns = ["update", "wall_time", "agent", "delay", "samples_total", "episodes_total", "return_mean"]
    runs = []
    for name in ("run-a", "run-b"):
        run = tmp_path / name
        run.mkdir()
        write_csv(run / "progress.csv", progress_columns, [[k, 0.1 * k, 0, 0, 50 * k, k, 9.0 + k] for k in range(10)])
        runs.append(run)

    results = (sweep / "results.csv").read_text()
    assert main(["plot", str(sweep), str(runs[0])]) == 0
    assert (sweep / "results.csv").read_text() == results  # the data stays as written (no 1 -> 1.0)
    assert "ratio_to_base" in (sweep / "sample_efficiency_summary.csv").read_text()
    assert_png(sweep / "sample_efficiency.png")
    assert_png(sweep / "speedup.png")
    assert_png(runs[0] / "learning_curve.png")

    overlay = tmp_path / "both.png"
    assert main(["plot", str(runs[0]), str(runs[1]), "--out", str(overlay)]) == 0
    assert_png(overlay)
    capsys.readouterr()

    # a run that has not applied an update yet is skipped with a note, the others are drawn
    fresh = tmp_path / "run-fresh"
    fresh.mkdir()
    write_csv(fresh / "progress.csv", progress_columns, [])
    overlay.unlink()
    assert main(["plot", str(runs[0]), str(fresh), "--out", str(overlay)]) == 0
    assert_png(overlay)
    assert f"{fresh / 'progress.csv'} has no updates yet; skipped" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_sample_efficiency_summary_by_hand():
    from tune_sweeps.sample_efficiency import speedup_summary

    def rows(algo, agents, points):
        return [
            {"algo": algo, "agents": agents, "seed": 0, "samples_per_agent": x, "return_mean": y} for x, y in points
        ]

    # N=1 ends at 10 after 100 samples/agent; N=4 reaches 10 at 25 (interpolated between 20 and 30)
    data = rows("pg", 1, [(0, 0.0), (50, 5.0), (100, 10.0)]) + rows("afedpg", 4, [(0, 0.0), (20, 8.0), (30, 12.0)])
    table = {r["agents"]: r for r in speedup_summary(data)}
    assert table[1]["target"] == 10.0 and table[1]["samples_per_agent_to_target"] == 100.0
    assert table[4]["samples_per_agent_to_target"] == 25.0 and table[4]["ratio_to_base"] == 0.25
    assert table[4]["base_agents"] == 1
    # without N = 1 the ratios are to the smallest N that ran, and say so
    table = {r["agents"]: r for r in speedup_summary(rows("afedpg", 2, [(0, 0.0), (100, 10.0)]) + data[3:])}
    assert table[4]["base_agents"] == 2 and table[4]["ratio_to_base"] == 0.25


def test_speedup_budget_time_ratio_by_hand():
    from tune_sweeps.speedup import summarize

    def rows(algo, points):
        return [
            {"algo": algo, "agents": 4, "seed": 0, "wall_time": t, "samples_total": s, "return_mean": y}
            for t, s, y in points
        ]

    # the same sample budget (600) takes FedPG 150 s and AFedPG 60 s: ratio 2.5
    data = rows("afedpg", [(0.0, 0, 0.0), (60.0, 600, 10.0)]) + rows("fedpg", [(0.0, 0, 0.0), (150.0, 600, 10.0)])
    table, _ = summarize(data, "linear:4", target=5.0)
    by_algo = {row.algo: row for row in table}
    assert by_algo["afedpg"].budget_time_s == 60.0 and by_algo["fedpg"].budget_time_s == 150.0
    assert by_algo["afedpg"].budget_ratio_fedpg_over_afedpg == 2.5
    assert by_algo["fedpg"].time_to_target_s == 75.0 and by_algo["afedpg"].measured_ratio_fedpg_over_afedpg == 2.5


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("update,wall\n1,2\n", [], "progress.csv is not a CSV afedpg wrote (no column 'samples_total')"),
        ("samples_total,wall_time,return_mean\n10,0.5,abc\n", [], "progress.csv is not a CSV afedpg wrote (ValueError"),
        (None, [], "nothing to plot yet: no run has applied an update"),  # a run that has just started
        # one line of garbage has no rows either: it said "has no updates yet; skipped ... plot again once it has"
        ("garbage", [], "progress.csv is not a CSV afedpg wrote (no column 'samples_total')"),
        (None, ["--out", "figure.xyz"], "--out: give a .png"),
    ],
)
def test_bad_plot_input_is_one_line_exit_2(setup, extra, message, tmp_path, capsys):
    (tmp_path / "progress.csv").write_text(setup or "update,wall_time,samples_total,return_mean,accepted\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert "progress.csv" not in message or str(tmp_path / "progress.csv") in err  # the CSV is named by its path


def test_plot_of_a_hyper_sweep_says_it_has_no_figure(tmp_path, capsys):
    """Found in a user walkthrough: it said the directory had no results.csv, speedup.csv or progress.csv."""
    (tmp_path / "hyper.csv").write_text("rank,eta0,final_return\n1,0.1,20.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err == (
        f"afedpg: error: RUN_OR_SWEEP_DIR: {str(tmp_path)!r} holds a hyper sweep, which has no figure; "
        "its table is hyper.csv"
    )


@pytest.mark.parametrize("name", ["speedup.csv", "results.csv"])
@pytest.mark.parametrize("text", ["", "trial_id,algo,agents\n"])
def test_a_sweep_csv_without_rows_is_refused_not_drawn_empty(name, text, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"afedpg: error: RUN_OR_SWEEP_DIR: {tmp_path / name} has no rows to plot")
    assert not list(tmp_path.glob("*.png"))


def test_bad_sweep_csv_is_named(tmp_path, capsys):
    (tmp_path / "speedup.csv").write_text("trial_id,algo\nt1,afedpg\n")  # none of the columns a sweep writes
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"afedpg: error: RUN_OR_SWEEP_DIR: {tmp_path / 'speedup.csv'} is not a CSV afedpg wrote")


def _record(out: Path, name: str, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_command.json").write_text(json.dumps({"argv": argv, "cwd": str(Path.cwd())}))


@pytest.mark.parametrize(
    ("started", "resumed", "message"),
    [
        (
            ["--max-concurrent", "1"],
            ["--max-concurrent", "4"],
            "--max-concurrent: the sweep in {out} started with "
            "--max-concurrent 1; a resumed sweep runs the trials it started with",
        ),
        (
            [],
            ["--verbose", "0"],
            "--verbose: the sweep in {out} started with the default --verbose 1; Tune restores a sweep's "
            "progress output with it",
        ),
        ([], ["--seeds", "2"], "--seeds: the sweep in {out} started with the default --seeds 3;"),
        (
            ["--algos", "afedpg,fedpg"],
            ["--algos", "afedpg"],
            "--algos: the sweep in {out} started with --algos afedpg,fedpg;",
        ),
        ([], ["--eta0", "0.5"], "--eta0: the sweep in {out} started without --eta0;"),
    ],
)
def test_a_resume_refuses_an_option_the_sweep_started_with_another_value_of(
    started, resumed, message, tmp_path, capsys
):
    out = tmp_path / "out"
    _record(out, "speedup", ["sweep", "speedup", "--env", "CartPole-v1", *started, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--env", "CartPole-v1", *resumed, "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("afedpg: error: " + message.format(out=out)), err


def _spy_on_launch(monkeypatch) -> dict:
    """Stop a sweep where it would start Ray; the returned dict gets the args and trials it would run."""
    import tune_sweeps.cli as sweep_cli

    seen: dict = {}

    def launch(args, name, trials, space, num_samples=1):
        seen.update(args=args, trials=trials)
        raise SystemExit(7)

    monkeypatch.setattr(sweep_cli, "_launch", launch)
    return seen


def test_a_resume_runs_the_command_the_sweep_started_with(tmp_path, monkeypatch):
    """Options left out of the resume come from the record; where the sweep lives and its target may be new."""
    seen = _spy_on_launch(monkeypatch)
    out = tmp_path / "out"
    _record(
        out,
        "speedup",
        [
            "sweep",
            "speedup",
            "--env",
            "CartPole-v1",
            "--algos",
            "afedpg,fedpg",
            "--agents",
            "2",
            "--seeds",
            "2",
            "--eta0",
            "0.05",
            "--max-concurrent",
            "1",
        ],
    )
    with pytest.raises(SystemExit):
        main(["sweep", "speedup", "--resume", "--out", str(out), "--target", "30", "--algos", "afedpg,fedpg"])
    args, trials = seen["args"], seen["trials"]
    assert (args.resume, args.out, args.target, args.max_concurrent) == (True, str(out), 30.0, 1)
    ran = sorted((t["variant"], t["seed"], merged_train_dict(t)["eta0"]) for t in trials)
    assert ran == [("afedpg-n2", 0, 0.05), ("afedpg-n2", 1, 0.05), ("fedpg-n2", 0, 0.05), ("fedpg-n2", 1, 0.05)]


def test_a_resume_accepts_the_default_the_sweep_started_with_and_its_relative_storage(tmp_path, monkeypatch):
    seen = _spy_on_launch(monkeypatch)
    started_in = tmp_path / "started"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    out = tmp_path / "out"
    _record(out, "speedup", ["sweep", "speedup", "--env", "CartPole-v1", "--storage", "tune-store"])
    monkeypatch.chdir(tmp_path)  # resumed from elsewhere
    with pytest.raises(SystemExit):
        main(["sweep", "speedup", "--resume", "--out", str(out), "--seeds", "3", "--agents", "4,8"])
    assert seen["args"].storage == str(started_in / "tune-store") and len(seen["trials"]) == 4 * 2 * 3


@pytest.mark.parametrize(("started", "resumed"), [([], ["--verbose", "1"]), (["--verbose", "0"], ["--verbose", "0"])])
def test_a_resume_accepts_the_verbose_the_sweep_runs_with(started, resumed, tmp_path, monkeypatch):
    """Found by `--resume --verbose 1` on a sweep started without --verbose: refused, though 1 is the default."""
    seen = _spy_on_launch(monkeypatch)
    out = tmp_path / "out"
    _record(out, "speedup", ["sweep", "speedup", "--env", "CartPole-v1", *started])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--resume", "--out", str(out), *resumed])
    assert exit_info.value.code == 7 and seen["args"].resume


def test_a_resume_with_an_unreadable_record_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    _record(out, "speedup", ["sweep", "speedup", "--option-of-a-newer-afedpg"])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "speedup", "--resume", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "is not a sweep record this afedpg can read" in err, err


def test_hyper_numbers_agent_resources_by_its_largest_swept_agent_count(tmp_path, capsys, monkeypatch):
    import tune_sweeps.cli as sweep_cli

    def stop(*args, **kwargs):
        raise OSError("stop before Tune")

    monkeypatch.setattr("afedpg_ray.connection.connect", lambda address: None)
    monkeypatch.setattr(sweep_cli, "_alive_nodes", lambda: [{"CPU": 16.0}])
    monkeypatch.setattr(sweep_cli, "run_tuner", stop)
    argv = ["sweep", "hyper", "--env", "CartPole-v1", "--grid", "agents=2,8", "--agent-cpus", "0.5"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--agent-resources", '{"4-7": {"num_cpus": 0.2}}', "--out", str(tmp_path)])
    assert exit_info.value.code == 1 and "stop before Tune" in capsys.readouterr().err


def test_a_trial_snapshot_ends_its_logs_at_the_last_complete_line(tmp_path):
    from tune_sweeps.trainable import snapshot_run

    (tmp_path / "progress.csv").write_bytes(b"update,wall_time\n1,0.5\n2,0.")  # a row being appended
    (tmp_path / "config.json").write_text("{}")
    snapshot = snapshot_run(tmp_path)
    try:
        assert (snapshot / "progress.csv").read_bytes() == b"update,wall_time\n1,0.5\n"
        assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "progress.csv"]
    finally:
        shutil.rmtree(snapshot)
