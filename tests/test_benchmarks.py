"""Benchmarks that cannot rot: each script's --smoke mode (tiny sizes, seconds) runs here, so
a change that breaks a benchmark fails the tests, not the next person who measures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["admission.py", "after_compute.py", "batch.py", "check_numerics.py", "cold_start.py",
         "compile_budget.py", "event_loop.py", "http_overhead.py", "hvp_http.py",
         "memory_estimate.py", "minimize.py", "mlp.py", "scale_out.py", "session_training.py",
         "training_step.py"]


@pytest.mark.parametrize("script", SMOKE)
def test_benchmark_smoke_mode_runs(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADTAPE_")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    assert "|" in out.stdout, out.stdout[-2000:]  # it printed its table
