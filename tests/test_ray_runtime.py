"""Real-Ray integration: arrival order, heterogeneity, delays, FedPG's barrier, agent crashes."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from afedpg_ray.config import TrainConfig
from afedpg_ray.train import train

pytestmark = pytest.mark.usefixtures("ray_session")


def rows(run_dir: str) -> list[dict[str, str]]:
    with (Path(run_dir) / "progress.csv").open() as handle:
        return list(csv.DictReader(handle))


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(
        env="CartPole-v1",
        agents=4,
        batch=64,
        num_envs=2,
        samples=3200,
        progress=False,
        tensorboard=False,
        out=str(tmp_path / "run"),
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_linear4_fast_agents_deliver_more_and_delays_are_recorded(tmp_path):
    result = train(tiny(tmp_path, hetero="linear:4", iteration_time=0.08))
    progress = rows(result.out_dir)
    counts = Counter(int(r["agent"]) for r in progress)
    assert counts[0] > counts[3] * 2  # agent 0 is 4x faster than agent 3
    assert counts[0] >= counts[1] >= counts[2] >= counts[3] - 1
    delays = [int(r["delay"]) for r in progress]
    assert max(delays) > 0
    # The recorded delay is the number of updates applied since the agent's point was issued:
    # an agent is issued version v when the server finishes the update v it sent (0 at start).
    issued = {i: 0 for i in range(4)}
    for r in progress:
        agent, update = int(r["agent"]), int(r["update"])
        assert int(r["delay"]) == (update - 1) - issued[agent]
        issued[agent] = update
    assert [int(r["update"]) for r in progress] == list(range(1, len(progress) + 1))
    assert result.samples_total >= 3200 and result.mean_delay > 0


def test_replies_ready_together_are_applied_in_the_order_they_were_sent(tmp_path, monkeypatch):
    # Agents 0-3 are dispatched in that order at the start, but agent i's reply leaves it after a modelled
    # communication delay of 3 - i seconds. The first record the driver logs holds it for 4 s, so several
    # replies are ready together when it looks again, and ray.wait lists them in dispatch order. Each batch
    # the loop orders is recorded; the rows must follow the agents' send times within it.
    import time

    from afedpg_ray import runtime

    batches: list[list[tuple[float, int]]] = []
    order = runtime.in_arrival_order

    def recorded(arrivals):
        batches.append([(meta.sent_at, meta.agent_id) for meta, *_ in arrivals])
        return order(arrivals)

    monkeypatch.setattr(runtime, "in_arrival_order", recorded)
    held = []

    def hold_once(record):
        if not held:
            held.append(record.agent)
            time.sleep(4.0)

    # budget: agent 3 may send several replies before the first record is logged
    config = tiny(tmp_path, hetero="none", comm_delay=(3.0, 2.0, 1.0, 0.0), samples=64 * 16)
    agents = [int(r["agent"]) for r in rows(train(config, on_record=hold_once).out_dir)]
    reordered = [batch for batch in batches if batch != sorted(batch)]
    assert reordered, batches  # the hold made replies ready together out of their send order
    for batch in reordered:
        sent_order = [agent for _, agent in sorted(batch)]
        assert any(agents[i : i + len(batch)] == sent_order for i in range(len(agents))), (sent_order, agents)


def test_staleness_power_weighs_each_arrival_by_its_recorded_delay(tmp_path):
    result = train(tiny(tmp_path, algo="vanilla", hetero="linear:4", iteration_time=0.05, staleness_power=1.0))
    progress = rows(result.out_dir)
    assert max(int(r["delay"]) for r in progress) > 0
    # the momentum weight logged per update is alpha0 / (delay + 1), from the first arrival on
    for r in progress:
        assert float(r["alpha"]) == pytest.approx(0.2 / (int(r["delay"]) + 1))


def test_rennala_steps_once_per_collect_fresh_gradients(tmp_path):
    config = tiny(tmp_path, algo="rennala", collect=3, hetero="linear:4", iteration_time=0.05, samples=3200)
    result = train(config)
    progress = rows(result.out_dir)
    used = [r for r in progress if r["accepted"] == "True"]
    superseded = [r for r in progress if r["reason"] == "superseded"]
    assert len(used) + len(superseded) == len(progress) and superseded  # the slow agents' work goes stale
    assert all(int(r["delay"]) == 0 for r in used) and all(int(r["delay"]) > 0 for r in superseded)
    # rows of update u: the collection that produced it ends with the row whose version moved to u
    versions = [int(r["update"]) for r in used]
    steps = [i for i in range(len(versions)) if versions[i] == (versions[i - 1] if i else 0) + 1]
    assert [versions[i] for i in steps] == list(range(1, result.updates + 1))
    assert all(b - a == 3 for a, b in zip([-1, *steps[:-1]], steps, strict=True))  # 3 fresh gradients per step
    assert all(v == versions[i - 1] for i, v in enumerate(versions) if i and i not in steps)
    counts = Counter(int(r["agent"]) for r in used)
    assert counts[0] > counts[3]  # the fastest agent contributes most
    assert result.samples_total >= 3200  # superseded samples count against the budget
    assert result.superseded == len(superseded)  # and summary.json / the done line say how many


def test_fedpg_takes_exactly_one_gradient_per_agent_per_round(tmp_path):
    result = train(tiny(tmp_path, algo="fedpg", agents=3, hetero="linear:2", iteration_time=0.05, samples=1600))
    progress = rows(result.out_dir)
    by_round: dict[int, list[int]] = {}
    for r in progress:
        by_round.setdefault(int(r["update"]), []).append(int(r["agent"]))
        assert int(r["delay"]) == 0
    assert len(by_round) == result.updates >= 3
    assert all(sorted(agents) == [0, 1, 2] for agents in by_round.values())


def test_outputs_and_summary(tmp_path):
    result = train(tiny(tmp_path, agents=2, samples=640, tensorboard=True))
    out = Path(result.out_dir)
    for name in ("config.json", "progress.csv", "events.csv", "policy.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    header = (out / "progress.csv").read_text().splitlines()[0].split(",")
    for column in ("update", "wall_time", "agent", "delay", "samples_total", "episodes_total", "return_mean"):
        assert column in header
    summary = json.loads((out / "summary.json").read_text())
    # the rate is the training loop's: from the first dispatch (after the actors started) to the last update
    last_update = [r for r in rows(result.out_dir) if r["accepted"] == "True"][-1]
    first_dispatch = float(last_update["wall_time"]) - result.updates / result.updates_per_second
    assert summary["startup_seconds"] == pytest.approx(result.startup_seconds) and result.startup_seconds > 0
    assert first_dispatch == pytest.approx(result.startup_seconds, abs=1e-6)
    assert result.updates_per_second > result.updates / result.wall_time


def test_records_are_logged_once_in_order_and_checkpoints_match_the_log(tmp_path):
    # The loop logs the server's records without waiting for each one; none may be lost, duplicated
    # or reordered, and the final checkpoint must be at the version of the last logged update.
    from afedpg_ray.checkpoint import load_checkpoint

    result = train(tiny(tmp_path, agents=3, samples=2560, checkpoint_every=3))
    progress = rows(result.out_dir)
    accepted = [int(r["update"]) for r in progress if r["accepted"] == "True"]
    assert accepted == list(range(1, len(accepted) + 1)) and len(accepted) == result.updates
    assert [int(r["samples_total"]) for r in progress] == sorted(int(r["samples_total"]) for r in progress)
    assert 2560 <= result.samples_total < 2560 + 3 * 64 + 1  # stops once the budget is applied
    checkpoint = load_checkpoint(Path(result.out_dir))
    assert int(checkpoint["rule_state"]["version"]) == accepted[-1]
    # the run's identity, in config.json and on its checkpoints: a resume refuses another run's
    run_id = json.loads((Path(result.out_dir) / "config.json").read_text())["run_id"]
    assert checkpoint["run_id"] == run_id and len(run_id) == 32


def test_each_checkpoint_is_written_after_the_rows_it_counts_are_fsynced(tmp_path, monkeypatch):
    # A power loss after a checkpoint must not leave progress.csv shorter than the rows the checkpoint
    # counts (a resume refuses that): every save follows an fsync of progress.csv holding those rows.
    from afedpg_ray import checkpoint
    from afedpg_ray.runlog import RunLog

    calls: list[tuple[str, int]] = []
    sync, save = RunLog.sync_progress, checkpoint.save_checkpoint

    def recorded_sync(self):
        sync(self)
        calls.append(("fsync", self.rows))

    saved: list[tuple[int, int]] = []

    def recorded_save(run_dir, state):
        calls.append(("save", state["progress_rows"]))
        saved.append((int(state["rule_state"]["version"]), state["progress_rows"]))
        return save(run_dir, state)

    monkeypatch.setattr(RunLog, "sync_progress", recorded_sync)
    monkeypatch.setattr(checkpoint, "save_checkpoint", recorded_save)
    result = train(tiny(tmp_path, agents=2, samples=1280, checkpoint_every=4))
    saves = [i for i, (kind, _) in enumerate(calls) if kind == "save"]
    assert len(saves) >= 4  # the first, every 4 updates, the final one
    for i in saves:
        assert calls[i - 1][0] == "fsync" and calls[i - 1][1] >= calls[i][1], calls
    # 1280 samples of 64 end at update 20, a periodic checkpoint: the final one is not written a second time
    assert result.updates == 20 and saved[-1][0] == 20, saved
    assert len(set(saved)) == len(saved), saved


def test_an_unplaceable_agent_is_reported_early_then_fails_at_the_timeout(tmp_path, monkeypatch):
    from afedpg_ray import runtime
    from afedpg_ray.errors import RunError

    monkeypatch.setattr(runtime, "PLACEMENT_NOTICE_S", 0.5)
    config = tiny(tmp_path, agents=2, agent_cpus=1000.0, placement_timeout=3.0)
    with pytest.raises(
        RunError, match=r"^agent \d could not be placed within 3s \(--placement-timeout\): requested CPU=1000"
    ):
        train(config)
    with (Path(config.out) / "events.csv").open() as handle:
        events = list(csv.DictReader(handle))
    # the notice comes before the timeout, names the request and why no node meets it
    assert [e["kind"] for e in events] == ["placement_waiting"], events
    notice = events[0]
    assert (
        "requested CPU=1000; no single node has that much of it all (the most a node has: CPU=2); 2 of 2 agents wait"
        in notice["message"]
    )


def test_a_run_whose_files_cannot_be_written_stops_with_one_line_and_keeps_its_checkpoint(tmp_path, monkeypatch):
    # a full disk mid-run: the row write fails; the run names the failure, which checkpoint stands and how to
    # go on, instead of a traceback from the driver loop
    import errno

    from afedpg_ray.checkpoint import load_checkpoint
    from afedpg_ray.errors import RunError
    from afedpg_ray.runlog import RunLog

    write_row = RunLog.write_row

    def full_disk(self, record):
        if self.rows >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_row(self, record)

    monkeypatch.setattr(RunLog, "write_row", full_disk)
    config = tiny(tmp_path, agents=2, checkpoint_every=2)
    with pytest.raises(RunError) as failed:
        train(config)
    message = str(failed.value)
    assert "\n" not in message, message
    assert re.match(
        rf"^cannot write {re.escape(config.out)}: No space left on device; the last checkpoint, at update (\d+), "
        rf"stands - free space or fix the directory, then continue with afedpg train --resume {re.escape(config.out)}$",
        message,
    ), message
    standing = int(re.search(r"at update (\d+)", message).group(1))
    assert load_checkpoint(Path(config.out))["rule_state"]["version"] == standing <= 6
