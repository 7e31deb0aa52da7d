"""The learning benchmark runs end to end in its quick mode (so it cannot rot).

benchmarks/chaos.py has no test here: its kills need a run long enough for Ray to notice each
death (seconds), which is too long for CI; the fault tests in test_faults.py cover each mechanism.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, out: Path | None, *extra: str, cwd: Path = ROOT) -> None:
    """``benchmarks/<name> --quick`` (into ``out``, or without ``--out``: the script's default, from ``cwd``)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / name), "--quick", *extra]
    cmd += [] if out is None else ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_learning_quick(tmp_path):
    # without --out a quick check goes to its own directory: in the real grid's default one, it made the
    # README's next command refuse to mix budgets
    work, tmp_path = tmp_path, tmp_path / "benchmarks" / "results" / "learning-quick"
    quick = functools.partial(run_script, cwd=work)  # the rows' run_dir are relative to it
    quick("learning.py", None)
    assert sorted(p.name for p in (work / "benchmarks" / "results").iterdir()) == ["learning-quick"]
    lines = (tmp_path / "learning.csv").read_text().splitlines()
    assert lines[0].startswith("env,algo,agents,seed") and len(lines) == 3
    assert (tmp_path / "learning_CartPole-v1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = (tmp_path / "curves.csv").read_text().splitlines()
    assert curves[0] == "env,algo,agents,seed,samples,return_mean" and len(curves) == 1 + 2 * 100
    evals = (tmp_path / "eval.csv").read_text().splitlines()
    assert evals[0].startswith("env,algo,agents,seed,episodes,eval_return") and len(evals) == 3
    summary = (tmp_path / "summary.md").read_text()
    assert "### CartPole-v1" in summary and "| afedpg | 2 | 1 |" in summary and "| a3c | 2 | 1 |" in summary
    assert "P(afedpg > a3c) = " in summary  # the ordering statistic of the pair both ran
    assert "Ordering along the run (at 5%/10%/20%/30%/50% of the budget): P(afedpg > a3c) " in summary
    assert "median seed (seeds reaching)" in summary
    assert "- Return averaged over the whole run (area under the curve / budget): means a3c " in summary
    # a second invocation finds both runs done: it trains nothing and keeps their rows, and keeps the
    # evaluations it already has (marked here so that a re-evaluation would show)
    marked = evals[1].split(",")
    marked[5] = "-123.0"
    (tmp_path / "eval.csv").write_text("\n".join([evals[0], ",".join(marked), *evals[2:]]) + "\n")
    quick("learning.py", tmp_path)
    assert (tmp_path / "learning.csv").read_text().splitlines() == lines
    assert ",".join(marked) in (tmp_path / "eval.csv").read_text().splitlines()
    summary = (tmp_path / "summary.md").read_text()
    # --report rebuilds the summary and plots from learning.csv alone, training nothing
    (tmp_path / "summary.md").unlink()
    (tmp_path / "learning_CartPole-v1.png").unlink()
    quick("learning.py", tmp_path, "--report", "--eval-episodes", "0")
    assert (tmp_path / "summary.md").read_text() == summary
    assert (tmp_path / "learning_CartPole-v1.png").exists()
    assert (tmp_path / "learning.csv").read_text().splitlines() == lines


def test_report_in_a_fresh_checkout_reads_the_saved_curves(tmp_path):
    # run directories are not committed: without them --report must rebuild the same tables from curves.csv
    finals = {"afedpg": [40.0, 60.0, 80.0], "vanilla": [10.0, 20.0, 90.0]}
    name = "Swimmer-v5-{algo}-n8-s{seed}"  # learning.py's own run directory names
    out = write_fake_learning_dir(tmp_path / "grid", finals, 1_000_000, points=200, run_name=name, wiggle=1.0)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--report", "--out", str(out), "--eval-episodes"]
    assert subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=120, cwd=ROOT).returncode == 0
    with_runs = (out / "summary.md").read_text()
    curves = (out / "curves.csv").read_text()
    shutil.rmtree(out / "runs")
    proc = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    without_runs = (out / "summary.md").read_text()
    orderings = [line for line in with_runs.splitlines() if line.startswith("- ")]
    assert len(orderings) >= 3 and "Ordering along the run" in "".join(orderings)
    assert orderings == [line for line in without_runs.splitlines() if line.startswith("- ")]
    assert (out / "curves.csv").read_text() == curves  # rebuilt from itself, unchanged
    assert (out / "learning_Swimmer-v5.png").exists()


def load_script(name: str):
    """Import benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reach_statistics_by_hand():
    learning = load_script("learning")
    grid = np.array([10.0, 20.0, 30.0, 40.0])
    assert learning.first_crossing(np.array([1.0, 2.0, 5.0, 3.0]), grid, 2.0) == 20.0  # first, not last
    assert np.isnan(learning.first_crossing(np.array([np.nan, 1.0, 1.5, 1.9]), grid, 2.0))
    assert learning.median_reach([10.0, 30.0, float("nan")]) == (30.0, 2)  # never = slowest
    median, reached = learning.median_reach([10.0, float("nan"), float("nan")])
    assert np.isnan(median) and reached == 1  # most seeds never reach: no median time


def test_noise_ratio_by_hand_and_by_sampling():
    noise = load_script("gradient_noise")
    # g1 = (1, 1), g2 = (1, 0): mean pairwise product 1 (signal), mean power 1.5: ratio sqrt(0.5)
    ratio, cosine = noise.noise_ratio(np.array([[1.0, 1.0], [1.0, 0.0]]))
    assert ratio == pytest.approx(np.sqrt(0.5)) and cosine == pytest.approx(1 / np.sqrt(2))
    assert noise.noise_ratio(np.array([[2.0, 0.0], [0.0, 2.0]]))[0] == float("inf")  # no common direction
    rng = np.random.default_rng(0)
    mu = np.zeros(50)
    mu[0] = 1.0
    draws = mu + 3.0 * rng.normal(size=(400, 50)) / np.sqrt(50)  # noise norm 3 x the signal's
    assert noise.noise_ratio(draws)[0] == pytest.approx(3.0, rel=0.1)


def test_gradient_noise_quick(tmp_path):
    run_script("gradient_noise.py", tmp_path, "--trained", f"late={tmp_path}/no-run-{{env}}")
    rows = (tmp_path / "noise.csv").read_text().splitlines()
    assert rows[0].startswith("env,point,batch,gradients,noise_ratio") and rows[1].startswith("CartPole-v1,initial,")
    assert "| CartPole-v1 | initial |" in (tmp_path / "summary.md").read_text()


def test_lookahead_lag_matches_the_formula():
    bias = load_script("lookahead_bias")
    one = {algo: bias.simulate(algo, agents=1, alpha=0.2, noise=0.0, seed=0) for algo in ("afedpg", "vanilla")}
    assert one["afedpg"]["lag"] < 0.01 and one["afedpg"]["cosine"] > 0.9999
    assert one["vanilla"]["lag"] == pytest.approx(4.0, rel=0.05)  # (1 - a)/a
    four = {algo: bias.simulate(algo, agents=4, alpha=0.2, noise=0.0, seed=0) for algo in ("afedpg", "vanilla")}
    delay = four["afedpg"]["delay"]
    assert delay == pytest.approx(3.0, abs=0.2)  # N - 1 other agents' updates per gradient
    assert four["afedpg"]["lag"] == pytest.approx(delay, rel=0.05)  # staleness is not removed
    assert four["vanilla"]["lag"] == pytest.approx(delay + 4.0, rel=0.05)
    assert bias.predicted_lag(0.2, 3.0, lookahead=False) == pytest.approx(7.0)


def test_lookahead_bias_quick(tmp_path):
    run_script("lookahead_bias.py", tmp_path)
    rows = (tmp_path / "lookahead_bias.csv").read_text().splitlines()
    assert rows[0] == "algo,agents,alpha,noise,seed,delay,lag,predicted_lag,cosine,gap,measured" and len(rows) == 5
    assert (tmp_path / "lookahead_bias.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 4 | 0.2 | 0 |" in (tmp_path / "summary.md").read_text()
    run_script("lookahead_bias.py", tmp_path, "--anneal")
    table = (tmp_path / "anneal.md").read_text()
    assert "| 0.2 fixed |" in table and "| 0.2 -> 0.1 |" in table and "| 0.2 -> 0.05 |" in table


def test_delay_compensated_lookahead_shortens_the_lag_in_the_model(tmp_path):
    bias = load_script("lookahead_bias")
    plain = bias.simulate("afedpg", agents=4, alpha=0.2, noise=0.0, seed=0)
    compensated = bias.simulate("afedpg", agents=4, alpha=0.2, noise=0.0, seed=0, delay_lookahead=1.0)
    assert compensated["lag"] < 0.75 * plain["lag"]  # staleness's share of the lag shrinks
    run_script("lookahead_bias.py", tmp_path, "--delay-compensation")
    table = (tmp_path / "delay_compensation.md").read_text()
    assert "| 0 | vanilla | - |" in table and "| 0 | afedpg | 1 |" in table
    run_script("lookahead_bias.py", tmp_path, "--staleness")
    table = (tmp_path / "staleness.md").read_text()
    assert "| 0 | vanilla | 0.5 |" in table and "| 0 | afedpg | 0 |" in table
    # the weight lengthens the momentum's memory: its lag grows
    weighted = bias.simulate("vanilla", agents=4, alpha=0.2, noise=0.0, seed=0, staleness_power=0.5)
    assert weighted["lag"] > bias.simulate("vanilla", agents=4, alpha=0.2, noise=0.0, seed=0)["lag"]


def test_simulated_alpha_anneal_follows_the_schedule_and_reports_the_gap():
    bias = load_script("lookahead_bias")
    # no noise, a long run: both rules close almost all of the objective's gap, and the last arrival
    # (issued a version or two before the end of the 800-update horizon) is weighted at about alpha_end
    for algo in ("afedpg", "vanilla"):
        r = bias.simulate(algo, agents=2, alpha=0.2, noise=0.0, seed=0, updates=800, schedule="linear", alpha_end=0.05)
        assert r["gap"] < 0.05
        assert r["last_alpha"] == pytest.approx(0.05, rel=0.01)
        fixed = bias.simulate(algo, agents=2, alpha=0.2, noise=0.0, seed=0, updates=800, schedule="linear")
        assert fixed["last_alpha"] == pytest.approx(0.2)
    # growing noise leaves more of the gap than none does
    quiet = bias.simulate("afedpg", agents=2, alpha=0.2, noise=0.0, seed=1, schedule="linear")
    loud = bias.simulate("afedpg", agents=2, alpha=0.2, noise=1.0, seed=1, schedule="linear", noise_end=6.0)
    assert loud["gap"] > quiet["gap"]


def test_learning_refuses_to_mix_budgets(tmp_path):
    (tmp_path / "learning.csv").write_text(
        "env,algo,agents,seed,samples,final_return,wall_time,updates,mean_delay,run_dir\n"
        f"CartPole-v1,afedpg,2,0,300000,100.0,1.0,300,1.0,{tmp_path}/runs/x\n"
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--out", str(tmp_path), "--samples", "4000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith("holds runs of [300000] samples; one budget per --out directory")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0,,1"], "--seeds: expected comma-separated integers"),
        (["--envs", "CartPole-v1,Nope-v0"], "--envs: unknown gymnasium environment 'Nope-v0'"),  # before run 1
        (["--algos", "afedpg,ppo"], "--algos: unknown algorithm 'ppo'"),  # this script's option, not train's
        (["--train-args", "--alg a3c"], "--train-args: it sets --algo"),  # the row would say afedpg
        (["--train-args", "--agents 3"], "--train-args: --agents is set by this script"),
        (["--train-args", "--bogus 1"], "'--bogus 1' is not an afedpg train option"),
        (["--train-args", "--batch x"], "--train-args: argument --batch: invalid int value: 'x'"),  # one line
        (["--train-args", "--eta0 '0.1"], "--train-args: cannot split"),
        (["--seeds", "0,0"], "--seeds: each seed may be listed once"),  # would run one seed, not two
        (["--algos", "afedpg,afedpg"], "--algos: each name may be listed once"),
        (["--report"], "--report: no learning.csv in"),
    ],
)
def test_learning_checks_the_whole_grid_before_training(extra, message, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--out", str(tmp_path), "--envs", "CartPole-v1"]
    cmd += ["--algos", "afedpg", "--samples", "1000", "--agents", "2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # nothing trained


@pytest.mark.parametrize(
    ("script", "extra", "message"),
    [
        ("learning.py", ["--eval-episodes", "-1"], "argument --eval-episodes: must be a non-negative integer"),
        ("learning.py", ["--samples", "0"], "argument --samples: must be a positive integer, got '0'"),
        ("learning.py", ["--agents", "nan"], "argument --agents: must be a positive integer, got 'nan'"),
        ("learning.py", ["--train-args", "--no-tensorboard"], "join options that start with '-' with '='"),
        ("compare_variants.py", ["--variant", "a=x", "--bogus"], "unrecognized arguments: --bogus"),  # no usage
        ("chaos.py", ["--iteration-time", "nan"], "argument --iteration-time: must be a positive number"),
        ("chaos.py", ["--agents", "2"], "--agents: the script kills agents 0, 1 and 2"),
        ("chaos.py", ["--samples", "1000"], "--samples: need at least 10 x --batch"),  # no slice to kill in
        ("chaos.py", ["--env", "Nope-v0"], "--env: unknown gymnasium environment 'Nope-v0'"),
        ("scale.py", ["--agents", "0,8"], "argument --agents: give agent counts of at least 1"),
        ("update_rate.py", ["--profiles", "linear:4,bogus"], "argument --profiles: unknown profile 'bogus'"),
        ("server_overhead.py", ["--repeats", "0"], "argument --repeats: must be a positive integer"),
        ("sampling.py", ["--batch", "2", "--num-envs", "4"], "--batch: must be at least --num-envs"),
        ("gradient_noise.py", ["--envs", "CartPole-v1,Nope-v0"], "unknown gymnasium environment 'Nope-v0'"),
        ("lookahead_bias.py", ["--alphas", "0,0.2"], "--alphas in (0, 1]"),
    ],
)
def test_benchmark_scripts_refuse_bad_numbers_in_one_line(script, extra, message, tmp_path):
    """Checked before Ray starts or anything runs: one line on stderr, a non-zero exit."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *extra, "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_benchmark_options_all_have_help():
    for script in (
        "learning",
        "compare_variants",
        "chaos",
        "scale",
        "update_rate",
        "sampling",
        "server_overhead",
        "tune_report",
    ):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        assert not options_without_help(proc.stdout), script


def options_without_help(text: str) -> list[str]:
    """Options of an argparse ``--help`` text that have no help string: a line holding only the option (and
    its metavar) that no indented help line continues."""
    lines = text.split("options:")[1].splitlines()
    bare = []
    for i, line in enumerate(lines):
        words = line.split()
        only_option = line.startswith("  -") and (len(words) == 1 or (len(words) == 2 and words[1].isupper()))
        continued = i + 1 < len(lines) and lines[i + 1].startswith(" " * 8)
        if only_option and not continued:
            bare.append(words[0])
    return bare


def test_chaos_passes_its_seed_and_pacing_to_both_runs(tmp_path):
    import argparse

    chaos = load_script("chaos")
    args = argparse.Namespace(env="CartPole-v1", agents=4, samples=200_000, batch=500, seed=1, iteration_time=0.2)
    cmd = chaos.train_cmd(args, tmp_path, "127.0.0.1:6379")
    assert cmd[cmd.index("--seed") + 1] == "1"  # it used to run seed 0 whatever --seed said
    assert cmd[cmd.index("--iteration-time") + 1] == "0.2"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage\nfoo\n", "no 'env' column"),
        ("env,algo,agents,seed,samples,final_return,run_dir\nCartPole-v1,afedpg,2,0,abc,1.0,x\n", "line 2: agents"),
        ("env,algo,agents,seed,samples,final_return,run_dir\nCartPole-v1,afedpg,2,0,1,1.0,/nowhere\n", "no /nowhere"),
    ],
)
def test_bad_learning_csv_is_one_line_for_report_and_compare(content, message, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "learning.csv").write_text(content)
    good = write_fake_learning_dir(tmp_path / "good", {"afedpg": [1.0]})
    commands = [
        [str(ROOT / "benchmarks" / "learning.py"), "--report", "--out", str(tmp_path / "bad")],
        [str(ROOT / "benchmarks" / "compare_variants.py"), "--variant", f"a={good}", "--variant"]
        + [f"b={tmp_path / 'bad'}", "--out", str(tmp_path / "out")],
    ]
    for cmd in commands:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]


def test_compare_variants_refuses_a_repeated_label(tmp_path):
    good = write_fake_learning_dir(tmp_path / "good", {"afedpg": [1.0]})
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_variants.py"), "--variant", f"a={good}"]
    cmd += ["--variant", f"a={good}", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --variant a: each label may be used once"


def write_fake_learning_dir(
    root: Path,
    finals: dict[str, list[float]],
    samples: int = 1000,
    points: int = 20,
    run_name: str = "{algo}-s{seed}",
    wiggle: float = 0.0,
) -> Path:
    """A learning.py --out directory for Swimmer-v5: per algorithm, one run per final return (seeds 0..),
    each with a progress.csv of ``points`` rows whose return rises linearly to its final value (plus a
    seed-dependent ``wiggle``, so that seeds cross)."""
    rows = ["env,algo,agents,seed,samples,final_return,wall_time,updates,mean_delay,run_dir"]
    for algo, values in finals.items():
        for seed, final in enumerate(values):
            run = root / "runs" / run_name.format(algo=algo, seed=seed)
            run.mkdir(parents=True)
            lines = ["update,samples_total,return_mean,accepted"]
            rises = [final * k / points + (k % 7) * seed * wiggle for k in range(1, points + 1)]
            lines += [f"{k},{k * samples // points},{value},True" for k, value in enumerate(rises, start=1)]
            (run / "progress.csv").write_text("\n".join(lines) + "\n")
            rows.append(f"Swimmer-v5,{algo},8,{seed},{samples},{final},1.0,{points},7.0,{run}")
    (root / "learning.csv").write_text("\n".join(rows) + "\n")
    return root


def test_compare_variants_by_hand(tmp_path):
    base = write_fake_learning_dir(tmp_path / "a", {"afedpg": [10.0, 20.0], "vanilla": [15.0, 15.0]})
    other = write_fake_learning_dir(tmp_path / "b", {"afedpg": [30.0, 40.0], "vanilla": [5.0, 25.0]})
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_variants.py"), "--variant", f"default={base}"]
    cmd += ["--variant", f"annealed={other}", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "out" / "compare.md").read_text()
    # every point of the run is ahead for annealed afedpg (P = 1); annealed vanilla's seeds straddle 15
    assert "| afedpg | annealed | 2 | 35.0 [30.0, 40.0] | 35.0 | 30.0, 40.0 | " + " / ".join(["1.00"] * 6) in report
    assert "| vanilla | annealed | 2 | 15.0 [5.0, 25.0] | 15.0 | 5.0, 25.0 | " + " / ".join(["0.50"] * 6) in report
    assert "| afedpg | default | 2 | 15.0 [10.0, 20.0] | 15.0 | 10.0, 20.0 | - |" in report
    # default's afedpg resamples {10, 10} / mixed / {20, 20} against a constant 15: P = 0, 0.5, 1 (1:2:1)
    assert "- default: P(afedpg > vanilla) at the end 0.50 [0.00, 1.00] (too few seeds to resolve);" in report
    # two seeds ordered 2:0 give a zero-width percentile interval: marked, not called resolved
    assert "- annealed: P(afedpg > vanilla) at the end 1.00 [1.00, 1.00] (too few seeds to resolve);" in report
    assert (tmp_path / "out" / "compare_Swimmer-v5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_variants_refuses_a_missing_directory(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_variants.py"), "--variant", f"a={tmp_path}"]
    cmd += ["--variant", f"b={tmp_path / 'nowhere'}", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: --variant a: no learning.csv in")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_reach_table_by_hand(tmp_path):
    learning = load_script("learning")
    root = write_fake_learning_dir(tmp_path, {"afedpg": [100.0, 100.0], "pg": [100.0, 50.0]})
    rows = list(learning.read_rows(root / "learning.csv").values())
    for row in rows:
        row["agents"] = 1 if row["algo"] == "pg" else 8
    table = learning.reach_table(rows, "Swimmer-v5", target=80.0, samples=1000)
    assert table[0] == "| samples/agent to return (median seed) | afedpg (N = 8) | pg (N = 1) | pg / afedpg |"
    # returns rise linearly to the final value over 1000 samples: afedpg reaches 20 at 200 total (25 per
    # agent); pg's seeds reach 20 at 200 and 400 (median 300), and its second seed never reaches 60
    assert table[2:] == [
        "| 20 | 25 (2/2) | 300 (2/2) | 12.0x |",
        "| 40 | 50 (2/2) | 600 (2/2) | 12.0x |",
        "| 60 | 75 (2/2) | not reached (1/2) | - |",
        "| 80 | 100 (2/2) | not reached (1/2) | - |",
    ]


def test_run_average_ordering_by_hand(tmp_path):
    learning = load_script("learning")
    root = write_fake_learning_dir(tmp_path, {"afedpg": [100.0, 40.0], "vanilla": [60.0, 80.0]})
    rows = list(learning.read_rows(root / "learning.csv").values())
    # returns rise linearly from final/20 at 50 samples to final at 1000; on the grid 10, 20, ..., 1000
    # the first four points precede the first return, so the average is final * mean(0.05, 0.06, ..., 1.00)
    factor = float(np.mean(np.arange(5, 101) / 100))
    assert factor == pytest.approx(0.525)
    assert learning.run_averages(rows, "Swimmer-v5", "afedpg", 1000) == pytest.approx([100 * factor, 40 * factor])
    line = learning.ordering_by_run_average(rows, "Swimmer-v5", [("afedpg", "vanilla")], 1000)
    # afedpg's resamples {100, 100} / mixed / {40, 40} beat vanilla's 60 and 80 in all, half, none of
    # the pairs (odds 1:2:1), whatever vanilla's resample: the 95% interval of P is [0, 1]
    assert line == (
        "- Return averaged over the whole run (area under the curve / budget): "
        f"means afedpg {70 * factor:.1f}, vanilla {70 * factor:.1f}; P(afedpg > vanilla) = 0.50 [0.00, 1.00] "
        "(too few seeds to resolve)"
    )


def test_paired_line_by_hand(tmp_path):
    learning = load_script("learning")
    root = write_fake_learning_dir(tmp_path, {"afedpg": [100.0, 40.0, 70.0], "vanilla": [60.0, 80.0, 70.0]})
    rows = list(learning.read_rows(root / "learning.csv").values())
    # seeds 0, 1, 2: differences +40, -40, 0 -> one win, one tie, mean 0; resampled means run -40 .. +40
    assert learning.paired_text(rows, "Swimmer-v5", "afedpg", "vanilla") == (
        "afedpg above vanilla in 1 of 3 pairs, 1 tied (sign test p = 1), mean difference +0.0 [-40.0, +40.0]"
    )
    # rows trained in this invocation carry int seeds, rows read back from learning.csv text ones
    mixed = [{**r, "seed": int(r["seed"])} if r["algo"] == "vanilla" else r for r in rows]
    assert learning.paired_text(mixed, "Swimmer-v5", "afedpg", "vanilla").startswith("afedpg above vanilla in 1 of 3")
    # a run that finished no episode has no return: its pair is left out, and the line says so
    no_return = [{**r, "final_return": float("nan")} if (r["algo"], r["seed"]) == ("afedpg", "2") else r for r in rows]
    assert learning.paired_text(no_return, "Swimmer-v5", "afedpg", "vanilla").startswith(
        "afedpg above vanilla in 1 of 2 pairs, 1 without a return left out"
    )
    # a seed only one side ran is left out; below two shared seeds there is no line
    alone = [r for r in rows if not (r["algo"] == "vanilla" and r["seed"] in ("1", "2"))]
    assert learning.paired_text(alone, "Swimmer-v5", "afedpg", "vanilla") == ""


def test_a_run_without_a_return_shows_as_n_a_and_is_left_out_of_the_seed_statistics():
    learning = load_script("learning")
    nan = float("nan")
    assert learning.seed_summary([10.0, nan, 20.0]) == "15.0 [10.0, 20.0] | 15.0 | 10.0, n/a, 20.0"
    assert learning.seed_summary([nan]) == "n/a | n/a | n/a"
    # counted as a loss against every seed, the NaN would have given 2/3 here
    assert learning.improvement_text([1.0, 2.0, nan], [0.0, 0.0, 0.0]) == (
        "1.00 [1.00, 1.00] (too few seeds to resolve) (1 run without a return left out)"
    )
    assert learning.improvement_text([nan], [0.0]) == "n/a (1 run without a return left out)"


def test_familywise_widens_each_interval_for_the_number_of_comparisons(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports learning.py, as a script beside it does
    familywise = load_script("familywise")
    apart = write_fake_learning_dir(tmp_path / "apart", {"afedpg": [10.0 + s for s in range(6)], "vanilla": [0.0] * 6})
    close = write_fake_learning_dir(
        tmp_path / "close", {"afedpg": [1.0, 3.0, 5.0, 7.0, 9.0, float("nan")], "vanilla": [0.0, 2.0, 4.0, 6.0, 8.0]}
    )
    found = familywise.comparisons([apart, close], [("afedpg", "vanilla"), ("vanilla", "a3c")])
    assert [(env, x, y, left_out) for env, x, y, _, _, left_out in found] == [
        ("Swimmer-v5 (apart)", "afedpg", "vanilla", 0),
        ("Swimmer-v5 (close)", "afedpg", "vanilla", 1),  # no a3c ran: one pair each; the NaN run is left out
    ]
    text = familywise.table(found, alpha=0.05)
    assert text.startswith("2 comparisons; family-wise level 95%: each interval at 97.50% (Bonferroni).")
    rows = [line for line in text.splitlines() if line.startswith("| Swimmer")]
    # every afedpg seed above every vanilla seed in every resample: P = 1 at any level
    assert rows[0] == (
        "| Swimmer-v5 (apart) | afedpg > vanilla | 6 / 6 | 1.00 | [1.00, 1.00] | [1.00, 1.00] | afedpg > vanilla |"
    )
    # 5 vs 5 interleaved: P = (5 + 4 + 3 + 2 + 1) / 25 = 0.6, unresolved
    assert rows[1].startswith("| Swimmer-v5 (close) | afedpg > vanilla | 5 / 5 (1 without a return) | 0.60 |")
    assert rows[1].endswith("| no |")
    lo95, hi95 = (float(v) for v in rows[1].split("|")[5].strip(" []").split(","))
    lo, hi = (float(v) for v in rows[1].split("|")[6].strip(" []").split(","))
    assert lo <= lo95 and hi >= hi95  # the family-wise interval is the wider one
    cmd = [sys.executable, str(ROOT / "benchmarks" / "familywise.py"), "--pairs", "afedpg", str(apart)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "familywise.py: error: --pairs wants X:Y[,X:Y...] with two different algorithms, got 'afedpg'"
    ]


def test_a_retrained_run_loses_its_old_evaluation(tmp_path):
    learning = load_script("learning")
    path = tmp_path / "eval.csv"
    header = "env,algo,agents,seed,episodes,eval_return,eval_min,eval_max"
    path.write_text(
        f"{header}\nHopper-v5,afedpg,8,0,10,2000.0,1900.0,2100.0\nHopper-v5,vanilla,8,0,10,1500.0,1.0,2.0\n"
    )
    learning.forget_evaluations(path, {("Hopper-v5", "afedpg", "1")})  # not evaluated: nothing changes
    assert len(path.read_text().splitlines()) == 3
    learning.forget_evaluations(path, {("Hopper-v5", "afedpg", "0")})
    assert path.read_text().splitlines() == [header, "Hopper-v5,vanilla,8,0,10,1500.0,1.0,2.0"]
    learning.forget_evaluations(path, {("Hopper-v5", "vanilla", "0")})
    assert not path.exists()


def test_a_grid_directory_keeps_one_setting(tmp_path):
    learning = load_script("learning")
    settings = {"agents": 8, "hetero": "linear:4", "train_args": ["--schedule", "theory"]}
    learning.check_settings(tmp_path, settings, {})  # first use: recorded
    learning.check_settings(tmp_path, dict(settings), {})  # the same again: fine
    with pytest.raises(learning.GridError, match=r"holds runs made with --hetero 'linear:4', not --hetero 'none'"):
        learning.check_settings(tmp_path, {**settings, "hetero": "none"}, {})
    with pytest.raises(learning.GridError, match=r"--train-args \['--schedule', 'theory'\], not --train-args \[\]"):
        learning.check_settings(tmp_path, {**settings, "train_args": []}, {})
    # a directory from before grid.json: its rows' agents are checked (pg's single agent aside)
    older = tmp_path / "older"
    older.mkdir()
    rows = {
        ("Hopper-v5", "afedpg", "0"): {"algo": "afedpg", "agents": 8},
        ("Hopper-v5", "pg", "0"): {"algo": "pg", "agents": 1},
    }
    with pytest.raises(learning.GridError, match="--agents 8, not --agents 4"):
        learning.check_settings(older, {**settings, "agents": 4}, rows)
    assert not (older / learning.GRID_FILE).exists()
    learning.check_settings(older, settings, rows)
    assert (older / learning.GRID_FILE).is_file()


def test_resummarize_sweeps_rewrites_the_summary_not_the_rows(tmp_path):
    # afedpg: 1000 samples/s from its first report at 4 s (3 s of start-up); fedpg: 500/s from 2 s (none);
    # both climb 0 -> 40. Integers written as "2", which the sweeps' write_rows would turn into "2.0"
    lines = ["trial_id,algo,agents,seed,update,samples_total,samples_per_agent,return_mean,wall_time"]
    for algo, first, step in (("afedpg", 4, 1), ("fedpg", 2, 2)):
        for seed in (0, 1):
            for i in range(1, 6):
                lines.append(
                    f"t{algo}{seed},{algo},2,{seed},{i},{1000 * i},{500 * i}.0,{10 * i - 10},{first + step * i - step}"
                )
    rows_csv = tmp_path / "speedup.csv"
    rows_csv.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "resummarize_sweeps.py"), str(tmp_path), "--hetero", "linear:4"]
    proc = subprocess.run([*cmd, "--iteration-time", "1.0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows_csv.read_text() == "\n".join(lines) + "\n"  # byte for byte
    assert (tmp_path / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {row["algo"]: row for row in csv.DictReader((tmp_path / "speedup_summary.csv").open())}
    # target 0 + 0.8 * (40 - 0) = 32: afedpg at 7 + 0.2 s, fedpg at 8 + 0.2 * 2 s; budget 5000 samples
    assert float(summary["afedpg"]["target"]) == pytest.approx(32.0)
    assert float(summary["afedpg"]["time_to_target_s"]) == pytest.approx(7.2)
    assert float(summary["fedpg"]["time_to_target_s"]) == pytest.approx(8.4)
    assert float(summary["afedpg"]["budget_time_s"]) == pytest.approx(5.0)  # not 8 s: start-up left out
    assert float(summary["afedpg"]["startup_s"]) == pytest.approx(3.0)
    assert float(summary["fedpg"]["budget_ratio_fedpg_over_afedpg"]) == pytest.approx(2.0)
    assert float(summary["fedpg"]["theoretical_ratio"]) == pytest.approx(2.5)  # (4 / 2) * (1 + 1 / 4)
    assert "| 2 | 1.17 | 2.00 | 2.50 |" in (tmp_path / "speedup_summary.md").read_text()
    # --dry-run prints a summary with another target and writes nothing
    before = (tmp_path / "speedup_summary.md").read_text()
    proc = subprocess.run([*cmd, "--target", "20", "--dry-run"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "target return 20.00 (given by --target)" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "speedup_summary.md").read_text() == before


def test_a_quick_check_has_its_own_default_directory():
    # the committed results/<name>/result.json are full-size measurements: --quick must not overwrite them
    common = load_script("common")
    assert common.default_out("update_rate") == ROOT / "benchmarks" / "results" / "update_rate"
    assert common.default_out("update_rate", quick=True) == ROOT / "benchmarks" / "results" / "update_rate-quick"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "benchmarks/results/update_rate-quick/result.json"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0  # and git leaves them out
