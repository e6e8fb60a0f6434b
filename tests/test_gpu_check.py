"""The prepared GPU check (scripts/gpu_check.sh): what of it runs on a CPU runs here. No GPU was lent, so the
GPU numbers themselves are not tested; the script's sections are, at toy sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


def test_throughput_section_measures_tokens_per_second_on_cpu():
    out = gpu_check.throughput("200k", 2, False, gpu_check.CPU_SMOKE, torch.device("cpu"))
    assert out["tokens_per_s"] > 0 and out["params"] > 1e5 and out["mfu"] is None  # no peak for a CPU


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_and_writes_the_file(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "GPU_CHECK_TIMEOUT": "1700", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["mode"] == "cpu-smoke" and set(sections) == {
        "throughput_200k_eager", "parity_bf16_fp32", "memory_dry_run_vs_measured"}
    assert sections["parity_bf16_fp32"]["bf16"]["steps"] == sections["parity_bf16_fp32"]["fp32"]["steps"] == 12
    assert abs(sections["parity_bf16_fp32"]["relative_gap"]) < 0.05
    memory = sections["memory_dry_run_vs_measured"]
    assert memory["status"] == "ok" and memory["dry_run"]["peak_memory_gb_per_gpu"] > 0
