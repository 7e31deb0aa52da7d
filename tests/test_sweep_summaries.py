"""Sweep summary arithmetic against hand-computed numbers (pure functions, no Ray).

Seeds that end at different times, targets a curve starts at, and budget times without start-up.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from tune_sweeps import sample_efficiency, speedup
from tune_sweeps.plots import mean_curve
from tune_sweeps.speedup import (
    SUMMARY_COLUMNS,
    SpeedupRow,
    Timing,
    default_target,
    sample_rate,
    startup_time,
    summarize,
    summary_markdown,
    target_warning,
    time_to_target,
)


def wall_rows(algo, seed, points, agents=4):
    """Speedup report rows from ``(wall_time, return)`` or ``(wall_time, samples_total, return)`` points."""
    rows = []
    for point in points:
        t, s, y = point if len(point) == 3 else (point[0], None, point[1])
        row = {"algo": algo, "agents": agents, "seed": seed, "wall_time": t, "return_mean": y}
        if s is not None:
            row["samples_total"] = s
        rows.append(row)
    return rows


def sample_rows(algo, agents, seed, points):
    return [{"algo": algo, "agents": agents, "seed": seed, "samples_per_agent": x, "return_mean": y} for x, y in points]


# --- 1. seeds that end at different times ------------------------------------------------------------

# seed 0 reaches 10 at 50 s and ends at 60 s (10.5); seed 1 reaches 10 at 70 s and ends at 80 s (13.5)
SEED_0 = [(0.0, 0.0), (50.0, 10.0), (60.0, 10.5)]
SEED_1 = [(0.0, 0.0), (60.0, 5.0), (70.0, 10.0), (80.0, 13.5)]


def test_mean_curve_holds_an_ended_seed_at_its_last_return():
    curves = [tuple(np.array(c) for c in zip(*seed, strict=True)) for seed in (SEED_0, SEED_1)]
    grid, mean, low, high = mean_curve(curves, hold_last=True)
    assert np.allclose(grid, [0, 50, 60, 70, 80])
    # at 50 s seed 1 is at 50/60 * 5; from 60 s on seed 0 stays at 10.5
    assert np.allclose(mean, [0, (10 + 50 / 60 * 5) / 2, (10.5 + 5) / 2, (10.5 + 10) / 2, (10.5 + 13.5) / 2])
    assert np.allclose(high - mean, mean - low)
    cut, _, _, _ = mean_curve(curves)  # without hold_last: only the range both seeds cover
    assert np.allclose(cut, [0, 50, 60])
    # disjoint curves: the first holds 20 over the second's whole range
    grid, mean, _, _ = mean_curve(
        [(np.array([0.0, 1.0]), np.array([10.0, 20.0])), (np.array([2.0, 3.0]), np.array([30.0, 50.0]))], hold_last=True
    )
    assert np.allclose(grid, [2, 3]) and np.allclose(mean, [25, 35])


def test_speedup_times_a_target_every_seed_reaches_past_the_first_seed_s_end():
    data = wall_rows("afedpg", 0, SEED_0) + wall_rows("afedpg", 1, SEED_1)
    (row,), _ = summarize(data, "linear:4", target=10.0)
    assert row.final_return == pytest.approx(12.0)
    # mean 7.75 at 60 s, 10.25 at 70 s: 10 at 60 + (10 - 7.75) / 2.5 * 10 = 69 s (the old cut-off at 60 s: NaN)
    assert row.time_to_target_s == pytest.approx(69.0)


def test_sample_efficiency_mean_curve_is_not_cut_at_the_first_seed_to_end():
    # N = 1 reaches 10 with its budget; N = 4's seeds end at 25 and 30 samples/agent (overshoot differs)
    data = sample_rows("pg", 1, 0, [(10.0, 0.0), (100.0, 10.0)])
    data += sample_rows("afedpg", 4, 0, [(2.5, 0.0), (20.0, 9.0), (25.0, 10.5)])
    data += sample_rows("afedpg", 4, 1, [(2.5, 0.0), (25.0, 9.0), (30.0, 12.0)])
    table = {r["agents"]: r for r in sample_efficiency.speedup_summary(data)}
    assert table[1]["target"] == 10.0 and table[1]["samples_per_agent_to_target"] == 100.0
    # mean 9.75 at 25, (10.5 + 12) / 2 = 11.25 at 30: 10 at 25 + 0.25 / 1.5 * 5 = 25.83 (cut off at 25: NaN)
    assert table[4]["final_return"] == 11.25
    assert table[4]["samples_per_agent_to_target"] == pytest.approx(25.8)
    assert table[4]["ratio_to_base"] == pytest.approx(0.258)


# --- 2. a target a curve starts at is no time to target -----------------------------------------------


def test_time_to_target_is_nan_for_a_curve_that_starts_at_or_above_it():
    times, returns = [7.1, 8.0, 9.0], [20.0, 21.0, 18.0]
    assert math.isnan(time_to_target(times, returns, 18.2))  # the old code gave the first report's 7.1 s
    assert math.isnan(time_to_target(times, returns, 20.0))
    assert time_to_target(times, returns, 20.5) == pytest.approx(7.55)


def test_default_target_lies_above_every_start_or_is_refused():
    # 80% of the way from the highest start (20) to the best final (30); from the lowest (10) it was 26
    assert default_target([10.0, 20.0], [30.0, 25.0]) == pytest.approx(28.0)
    with pytest.raises(ValueError, match=r"no variant's final mean return \(best 19.75\) is above .* \(20.00\)"):
        default_target([20.0, 14.0], [19.0, 19.75])


def test_speedup_without_improvement_has_no_target():
    # afedpg 20 -> 19, fedpg 14 -> 19.75: the old default target 14 + 0.8 * 5.75 = 18.6 was below afedpg's start
    # and "reached" at its first report (7.1 s)
    data = wall_rows("afedpg", 0, [(7.1, 20.0), (7.13, 19.0)]) + wall_rows("fedpg", 0, [(9.0, 14.0), (12.0, 19.75)])
    table, how = summarize(data, "linear:4")
    assert all(math.isnan(row.target) and math.isnan(row.time_to_target_s) for row in table)
    assert how.startswith("no target return:") and "give --target" in how
    warning = target_warning(table)
    assert "(best 19.75)" in warning and "(20.00)" in warning and "give --target" in warning
    assert "\n" not in warning
    assert "| n/a |" in summary_markdown(table, how, "linear:4")


def test_speedup_given_target_below_a_start_times_only_the_others():
    data = wall_rows("afedpg", 0, [(7.1, 20.0), (8.0, 21.0), (9.0, 18.0)])
    data += wall_rows("fedpg", 0, [(9.0, 14.0), (12.0, 19.0)])
    table, _ = summarize(data, "linear:4", target=18.2)
    by_algo = {row.algo: row for row in table}
    assert math.isnan(by_algo["afedpg"].time_to_target_s)  # the old code: 7.1 s, and a ratio of 11.52 / 7.1
    assert by_algo["fedpg"].time_to_target_s == pytest.approx(9.0 + 4.2 / 5 * 3)
    assert math.isnan(by_algo["afedpg"].measured_ratio_fedpg_over_afedpg)
    assert by_algo["afedpg"].start_return == 20.0
    warning = target_warning(table)
    assert warning == (
        "target return 18.20 is not above the starting mean return of afedpg N=4 (20.00): no time to target for it; "
        "give a higher --target"
    )
    assert target_warning(summarize(data, "linear:4", target=20.5)[0]) == ""


def test_speedup_write_outputs_warns_in_one_line(tmp_path, capsys):
    data = wall_rows("afedpg", 0, [(7.1, 0, 20.0), (9.0, 100, 18.0)])
    data += wall_rows("fedpg", 0, [(9.0, 400, 14.0), (12.0, 800, 19.0)])
    for row in data:
        row.update(trial_id=f"t-{row['algo']}", update=1, samples_per_agent=row["samples_total"] / 4)
    text = speedup.write_outputs(data, tmp_path, Timing("linear:4"), target=18.2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("afedpg: warning: target return 18.20 is not above"), err
    assert "afedpg | 4 | 1 | 20.00 | 18.00 | n/a |" in text
    with (tmp_path / "speedup_summary.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == SUMMARY_COLUMNS


def test_sample_efficiency_without_learning_shows_no_speedup():
    # N=1: 20 -> 21 -> 18, N=4: 20 -> 19 -> 17: the old summary gave ratio_to_base 0.25, the "ideal" 1/4
    data = sample_rows("pg", 1, 0, [(10.0, 20.0), (50.0, 21.0), (100.0, 18.0)])
    data += sample_rows("afedpg", 4, 0, [(2.5, 20.0), (12.5, 19.0), (25.0, 17.0)])
    table = sample_efficiency.speedup_summary(data)
    for row in table:
        assert math.isnan(row["target"]) and math.isnan(row["samples_per_agent_to_target"])
        assert math.isnan(row["ratio_to_base"])
    assert sample_efficiency.target_warning(table) == (
        "no target return: N=1's final mean return (18.00) is not above its starting mean return (20.00), "
        "so no samples to target or ratio is reported; give --target to count one"
    )


def test_sample_efficiency_without_a_target_says_so(tmp_path, capsys):
    """Found in a user walkthrough: each line read 'samples/agent to nan: n/a  ratio to N=1: n/a'."""
    data = sample_rows("pg", 1, 0, [(10.0, 20.0), (100.0, 18.0)])
    data += sample_rows("afedpg", 2, 0, [(5.0, 20.0), (50.0, 19.0)])
    for row in data:
        row.update(trial_id=f"t{row['agents']}", update=1, samples_total=row["samples_per_agent"] * row["agents"])
    sample_efficiency.write_summary(data, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "N=1   pg       final    18.00  no target return to count samples to (give --target)",
        "N=2   afedpg   final    19.00  no target return to count samples to (give --target)",
    ], lines


def two_sample_curves() -> list[dict]:
    """Sample-efficiency report rows: N=1 from 10 to 20 over 10-100 samples/agent, N=4 the same over 2.5-25."""
    data = sample_rows("pg", 1, 0, [(10.0, 10.0), (100.0, 20.0)])
    data += sample_rows("afedpg", 4, 0, [(2.5, 10.0), (25.0, 20.0)])
    for row in data:
        row.update(trial_id=f"t{row['agents']}", update=1, samples_total=row["samples_per_agent"] * row["agents"])
    return data


def test_sample_efficiency_counts_samples_to_the_target_given(tmp_path, capsys):
    """``--target``: N=1 crosses 15 halfway between its reports at 10 and 100 samples/agent, N=4 between
    2.5 and 25: ratio 13.75 / 55 = 0.25."""
    sample_efficiency.write_outputs(two_sample_curves(), tmp_path, target=15.0)
    summary = {int(r["agents"]): r for r in csv.DictReader((tmp_path / sample_efficiency.SUMMARY_CSV).open())}
    assert float(summary[1]["target"]) == 15.0 and float(summary[1]["samples_per_agent_to_target"]) == 55.0
    assert float(summary[4]["samples_per_agent_to_target"]) == pytest.approx(13.75, abs=0.051)  # rounded to 0.1
    assert float(summary[4]["ratio_to_base"]) == pytest.approx(0.25, abs=0.005)


def test_a_sample_efficiency_redraw_keeps_the_target_the_sweep_counted_to(tmp_path, capsys):
    """``afedpg plot`` on a sweep run with ``--target 15`` redraws its figure and leaves its summary at 15
    (it recounted to the default, N=1's final return 20); a sweep without a summary gets one at the default."""
    sample_efficiency.write_outputs(two_sample_curves(), tmp_path, target=15.0)
    summary_path, figure = tmp_path / sample_efficiency.SUMMARY_CSV, tmp_path / sample_efficiency.FIGURE
    summary = summary_path.read_text()
    figure.unlink()
    assert sample_efficiency.redraw(tmp_path) == figure and figure.is_file()
    assert summary_path.read_text() == summary
    summary_path.unlink()
    sample_efficiency.redraw(tmp_path)
    assert {float(row["target"]) for row in csv.DictReader(summary_path.open())} == {20.0}


def test_sample_efficiency_curve_that_starts_above_the_target_gets_none(tmp_path, capsys):
    data = sample_rows("pg", 1, 0, [(10.0, 0.0), (100.0, 10.0)])
    data += sample_rows("afedpg", 4, 0, [(2.5, 12.0), (25.0, 15.0)])  # above N=1's final from its first report
    data += sample_rows("afedpg", 2, 0, [(5.0, 0.0), (50.0, 10.0)])
    table = {r["agents"]: r for r in sample_efficiency.speedup_summary(data)}
    assert math.isnan(table[4]["samples_per_agent_to_target"]) and math.isnan(table[4]["ratio_to_base"])
    assert table[2]["ratio_to_base"] == 0.5
    for row in data:
        row.update(trial_id=f"t{row['agents']}", update=1, samples_total=row["samples_per_agent"] * row["agents"])
    sample_efficiency.write_summary(data, tmp_path)
    out, err = capsys.readouterr()
    assert err.strip() == (
        "afedpg: warning: target return 10.00 is not above the starting mean return of N=4 (12.00): "
        "no samples to target for it; give a higher --target"
    )
    assert "N=4   afedpg   final    15.00  samples/agent to 10.0:        n/a  ratio to N=1: n/a" in out


# --- 3. budget times without start-up -----------------------------------------------------------------

# FedPG, N = 4, 100 samples an agent iteration, t_max = 4 s, 7 s of start-up: a round of 400 samples every 4 s
FEDPG = [(11.0, 400, 1.0), (15.0, 800, 2.0), (19.0, 1200, 3.0), (23.0, 1600, 4.0), (27.0, 2000, 5.0)]
# AFedPG at 200 samples/s: its first update after the fastest agent's 1 s iteration
AFEDPG_0 = [(8.0, 100, 1.0), (12.5, 1000, 3.0), (17.5, 2000, 5.0)]
AFEDPG_1 = [(9.0, 100, 1.0), (19.0, 2100, 5.0)]  # a later start-up and an overshoot of one batch


def test_sample_rate_and_startup_by_hand():
    times, samples = [p[0] for p in FEDPG], [p[1] for p in FEDPG]
    assert sample_rate(times, samples) == pytest.approx(100.0)  # 1600 samples in 16 s
    assert startup_time(times, samples) == pytest.approx(7.0)  # 27 s - 2000 / 100
    times, samples = [p[0] for p in AFEDPG_0], [p[1] for p in AFEDPG_0]
    assert sample_rate(times, samples) == pytest.approx(200.0)  # 1900 samples in 9.5 s
    assert startup_time(times, samples) == pytest.approx(7.5)  # 17.5 s - 2000 / 200: start-up plus pipeline fill
    assert math.isnan(sample_rate([8.0], [100])) and math.isnan(startup_time([8.0], [100]))
    assert math.isnan(sample_rate([8.0, 8.0], [100, 200]))


def test_speedup_budget_time_excludes_startup():
    data = wall_rows("fedpg", 0, FEDPG) + wall_rows("afedpg", 0, AFEDPG_0) + wall_rows("afedpg", 1, AFEDPG_1)
    table, _ = summarize(data, "linear:4", target=4.0)
    by_algo = {row.algo: row for row in table}
    # budget: the median of the trials' last sample counts (2000, 2000, 2100) = 2000
    assert by_algo["fedpg"].budget_time_s == pytest.approx(20.0)  # 2000 / 100; the old code: 27 s
    assert by_algo["afedpg"].budget_time_s == pytest.approx(10.0)  # 2000 / 200 for both seeds; old: 18.25 s
    assert by_algo["afedpg"].budget_ratio_fedpg_over_afedpg == pytest.approx(2.0)  # old: 27 / 18.25 = 1.48
    assert by_algo["fedpg"].startup_s == pytest.approx(7.0)
    assert by_algo["afedpg"].startup_s == pytest.approx((7.5 + 8.5) / 2)  # seed 1: 19 - 2100 / 200
    text = summary_markdown(table, "target return 4.00 (given by --target)", "linear:4")
    assert "| fedpg | 4 | 1 | 1.00 | 5.00 | 23.0 | 20.0 | 7.0 |" in text


def test_a_time_to_target_that_is_mostly_start_up_says_so():
    """Found in a small speedup sweep: fedpg's time to target held 19.7 s of start-up, afedpg's 12.5 s, and
    3-7 s of training; the table showed the times as if they measured learning."""

    def row(algo, to_target, startup):
        return SpeedupRow(algo, 4, 1, 50.0, 40.0, to_target, math.nan, 1.0, 5.0, math.nan, 10.0, startup)

    table = [row("fedpg", 25.0, 19.7), row("afedpg", 30.0, 12.5), row("vanilla", math.nan, 19.7)]
    text = summary_markdown(table, "target return 40.00 (given by --target)", "linear:4")
    assert "| fedpg | 4 | 1 | 10.00 | 50.00 | 25.0 (mostly start-up) | 5.0 | 19.7 |" in text
    assert "| afedpg | 4 | 1 | 10.00 | 50.00 | 30.0 | 5.0 | 12.5 |" in text  # 12.5 s of 30: learning counts
    assert "| vanilla | 4 | 1 | 10.00 | 50.00 | not reached | 5.0 | 19.7 |" in text
    assert speedup.MOSTLY_STARTUP_NOTE in text
    assert speedup.MOSTLY_STARTUP_NOTE not in summary_markdown(table[1:], "target", "linear:4")
