"""The tiny real run every fault test injects its fault into (shared by the fault test files)."""

from __future__ import annotations

from pipeline.config.load import load_config
from pipeline.config.schema import Study

STEPS = 40
FAULT_RUN = ["model.size=23k", f"train.tokens={STEPS * 1024}", "train.batch_tokens=1024", "train.threads=1",
             "train.log_interval_steps=1", "train.evals_per_run=2", "train.checkpoint_interval_s=0",
             "train.progress=false"]


def fault_job(corpus_overrides, *extra) -> Study:
    return load_config("study", Study, [*corpus_overrides, *FAULT_RUN, *extra])
