"""The learning and chaos benchmarks run end to end in their quick modes (they cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, out: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_learning_quick(tmp_path):
    run_script("learning.py", tmp_path)
    lines = (tmp_path / "learning.csv").read_text().splitlines()
    assert lines[0].startswith("env,algo,agents,seed") and len(lines) == 3
    assert (tmp_path / "learning_CartPole-v1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chaos_quick(tmp_path):
    run_script("chaos.py", tmp_path)
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert [k["killed"] for k in result["kills"]][-2:] == ["driver", "afedpg-agent-0"]
    assert result["events"].get("server_restored") == 1 and result["events"].get("resumed") == 1
    assert result["chaos_summary"]["samples_total"] >= result["undisturbed_summary"]["samples_total"]
