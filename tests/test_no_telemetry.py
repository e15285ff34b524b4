"""The gateway sends nothing its config does not name: ONNX Runtime's usage telemetry (a device
id under ~/.cache/Microsoft, a session file in the temporary folder, reports to Microsoft's
collector) stays off when the shipped models run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_running_a_shipped_model_leaves_no_telemetry_files(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"))
    score = (
        "from gateway.anomaly.model import OnnxScorer, shipped\n"
        "OnnxScorer(shipped('student'))\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", score],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert list(tmp.iterdir()) == [], "ONNX Runtime wrote its session file"
    assert not (home / ".cache" / "Microsoft").exists(), "ONNX Runtime recorded a device id"
