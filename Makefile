# One venv, CPU torch pinned first (an unpinned `torch` pulls a multi-GB CUDA build).
# GPU / cluster installs: see README ("Install on a GPU node").
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-slow test-slurm lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_CPU)"
	$(BIN)/pip install -q -e ".[dev,slurm,trainers]"
	$(BIN)/pip install -q --no-deps "litgpt==0.5.13"   # its huggingface-hub<1.4 pin conflicts with transformers 5 (pyproject.toml)
	touch $(STAMP)

install: $(STAMP)

# The CPU demo: a real adaptive IsoFLOP study (conf/experiment/cpu_tiny_adaptive.yaml: two seed budgets, then
# rounds of runs the fit chooses), then the fit and recommendation. The static 3 x 5 grid: experiment=cpu_tiny.
# Measured side by side (one core each): 18m18s against the static grid's 17m07s, N_opt's 90% interval 6.6x
# wide against 13.6x; with the rounds across law forms (one more round, 22 runs, 15m06s idle): the free form's
# 6.2x, the span across the forms 11.1x (docs/adaptive_design.md).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline.sweep experiment=cpu_tiny_adaptive
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline.fit experiment=cpu_tiny_adaptive

test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow

# The SLURM tests (tests/test_slurm_cluster.py) against the cluster SLURM_CONF or `sinfo` points at, or else a
# throwaway one-node cluster scripts/slurm_cluster.py starts (root on Debian: installs slurm-wlm, munge,
# slurmdbd, mariadb-server if missing) and stops afterwards, also on failure. slurm/README.md.
test-slurm: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "slurm or lock" \
		tests/test_slurm_cluster.py tests/test_lock.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline models scripts tests

clean:
	rm -rf results outputs multirun wandb .cache
