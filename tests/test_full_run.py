"""The recommendation's launchable config: `pipeline.fit` writes it, `pipeline.train` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.records import load_record
from pipeline.train.run import execute

REPO = Path(__file__).resolve().parents[1]
# Shrink the recommended model to CPU scale: every other key of the generated file stays as written.
SHRINK = ["model.n_layer=1", "model.d_model=32", "model.n_heads=4", "model.d_ff=96", "model.seq_len=128",
          "data.tokenizer=bpe", "train.tokens=20480", "train.batch_tokens=1024", "train.warmup_tokens=1024", "train.precision=fp32",
          "train.device=cpu", "train.compile=false", "train.micro_batch_size=null", "train.world_size=null",
          "train.eval_batch_size=null", "train.parallelism=ddp",
          "train.threads=1", "train.progress=false", "tracking.mode=disabled"]


def test_generated_full_run_config_trains_for_a_few_steps(corpus_overrides, tmp_path):
    fit_dir = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "pipeline.fit", "law=epoch", "budget.flops=1e21",
                           f"out_dir={fit_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((fit_dir / "recommendation.json").read_text())
    assert rec["n_opt"] > 0 and rec["d_opt"] > 0
    assert (fit_dir / "experiment" / "full_run.yaml").exists()

    # As the README says: python -m pipeline.train --config-dir <fit dir> experiment=full_run
    full = load_config("study", Study, [f"hydra.searchpath=[file://{fit_dir}]", "experiment=full_run"])
    assert full.model.d_model == rec["model"]["shape"]["d_model"]
    assert full.train.tokens == rec["model"]["tokens"] and full.train.precision.value == "bf16"

    job = load_config("study", Study, [f"hydra.searchpath=[file://{fit_dir}]", "experiment=full_run",
                                       *corpus_overrides, *SHRINK, f"run_dir={tmp_path / 'run'}"])
    record = execute(job)
    assert record["status"] == "ok" and record["steps"] == 20
    assert load_record(tmp_path / "run")["sweep"] == "full_run"
