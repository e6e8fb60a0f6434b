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


# --- the SLURM tests: not in the default run; say why, and how to run them -----------------------------
@pytest.hookimpl(tryfirst=True)  # before `-m 'not slurm'` deselects them
def pytest_collection_modifyitems(config, items):
    config._slurm_tests = sum(1 for item in items if item.get_closest_marker("slurm"))


def pytest_terminal_summary(terminalreporter, config):
    """`make test` leaves out the tests that submit to a cluster (tests/test_slurm_cluster.py): say so."""
    selected = config.getoption("markexpr") or ""
    count = getattr(config, "_slurm_tests", 0)
    if not count or "not slurm" not in selected:
        return
    import shutil
    import subprocess

    if os.environ.get("SLURM_CONF"):
        why = f"a cluster is reachable (SLURM_CONF={os.environ['SLURM_CONF']}), but they submit jobs"
    elif shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0:
        why = "a cluster is reachable (sinfo answers), but they submit jobs"
    else:
        why = "no SLURM cluster is reachable (SLURM_CONF unset, `sinfo` absent or not answering)"
    terminalreporter.write_line(f"slurm: {count} tests not run: {why}. `make test-slurm` runs them (on the cluster "
                                "SLURM_CONF or sinfo points at, else on a throwaway one-node cluster it starts and "
                                "stops; slurm/README.md)")
