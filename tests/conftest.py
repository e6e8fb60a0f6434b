"""Shared fixtures: CPU only, no downloads, W&B off, one small real corpus prepared once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

# 300 standard-library files: real text, ~1.5M tokens, prepared in a few seconds.
SMALL_CORPUS = ["data.source=stdlib", "data.max_documents=300", "data.val_tokens=16384", "data.vocab_size=512"]


@pytest.fixture(scope="session")
def corpus_overrides(tmp_path_factory) -> list[str]:
    """Overrides that point every run at one prepared small corpus (prepared here, once)."""
    from pipeline.config.load import load_config
    from pipeline.config.schema import Study
    from pipeline.data.corpus import prepare_corpus

    cache = tmp_path_factory.mktemp("data-cache")
    overrides = [*SMALL_CORPUS, f"data.cache_dir={cache}"]
    prepare_corpus(load_config("study", Study, overrides).data)
    return overrides


@pytest.fixture(scope="session")
def reference(corpus_overrides, tmp_path_factory) -> dict:
    """The uninterrupted fault run (tests/fault_runs.py) every recovered run must match bit for bit
    (CPU, one thread); trained once per session."""
    from fault_runs import STEPS, fault_job

    from pipeline.train.run import execute

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    record = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert record["status"] == "ok" and record["steps_done"] == STEPS
    return record
