"""A short run of scripts/load.py: frame streams, questions, a churning client and a slow reader at once;
nothing lost, memory, loop lag and file descriptors bounded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_frames_and_questions_under_load_are_all_accounted_for(tiny_vision_model):
    result = subprocess.run([sys.executable, "scripts/load.py", "--model", str(tiny_vision_model), "--duration", "3",
                             "--frame-clients", "4", "--text-clients", "2", "--frame-size", "320", "240",
                             "--max-lag-p99", "0.25", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0 and summary["problems"] == [], result.stdout + result.stderr[-3000:]
    assert summary["frames_sent"] == 4 * 90
    assert summary["frames_answered"] > 0 and summary["frames_answered"] + sum(
        summary["frames_dropped"].values()) == summary["frames_sent"]
    assert summary["questions_asked"] == summary["questions_answered"] > 0
    assert summary["loop_lag_samples"] > 0
    assert summary["connects"] > 0 and summary["slow_answers"] > 0
    assert summary["fds_after"] == summary["fds_baseline"]
