"""Every performance benchmark runs in its ``--quick`` mode and writes its result file.

Only the files and their structure are checked, never timings (CI machines vary too much). The
scripts run side by side, each in its own process with its own local Ray instance, so the module
costs about as long as the slowest of them: about 3 minutes on two busy cores, so the module is in the
slow tier (``pytest -m slow``), out of the default run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
EXPECTED_KEYS = {
    "update_rate": ["profiles", "target_fraction"],
    "sampling": ["single_agent", "whole_system"],
    "server_overhead": ["apply_in_process", "apply_in_ray_actor", "driver_loop"],
    "scale": ["sizes"],
    "tune_report": ["trials", "ways"],
}
TIMEOUT_S = 420

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """Start every benchmark's ``--quick`` run at once; wait for all; their exit code, output and --out."""
    started = {}
    for name in EXPECTED_KEYS:
        out = tmp_path_factory.mktemp(name)
        command = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out", str(out)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[name] = (process, out)
    finished = {}
    for name, (process, out) in started.items():
        try:
            output, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        finished[name] = (process.returncode, output, out)
    return finished


@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("name", list(EXPECTED_KEYS))
def test_quick_mode_writes_its_result(quick_runs: dict[str, tuple[int, str, Path]], name: str) -> None:
    code, output, out = quick_runs[name]
    assert code == 0, output[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["benchmark"] == name
    assert result["command"] and result["machine"]["nproc"] >= 1 and result["machine"]["ray"]
    for key in EXPECTED_KEYS[name]:
        assert key in result, f"{name}: result.json lacks {key!r}"


def test_runs_leave_progress_files(quick_runs: dict[str, tuple[int, str, Path]]) -> None:
    for name in ("update_rate", "scale"):
        _, _, out = quick_runs[name]
        progress = sorted(out.glob("runs/*/progress.csv"))
        assert progress, f"{name}: no runs/*/progress.csv under {out}"
        assert all(len(p.read_text().splitlines()) > 1 for p in progress)


def test_background_tune_reports_all_reach_tune(quick_runs: dict[str, tuple[int, str, Path]]) -> None:
    _, _, out = quick_runs["tune_report"]
    trials = json.loads((out / "result.json").read_text())["trials"]
    assert {t["way"] for t in trials} == {"inline", "background"}
    assert all(t["reports"] > 0 and t["delivered"] == t["reports"] for t in trials), trials
