"""Config composition: every preset composes; bad input stops with one line before any compute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import CONF_DIR, Study
from pipeline.errors import UserError

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    study = load_config("study", Study, [f"experiment={preset}"])
    assert study.experiment == preset


def test_overrides_reach_the_schema_typed():
    study = load_config("study", Study, ["experiment=cpu_tiny", "train.lr=0.003", "sweep.budgets_flops=[1e12,2e12]"])
    assert study.train.lr == 0.003
    assert study.sweep.budgets_flops == [1e12, 2e12]


@pytest.mark.parametrize("overrides, fragment", [
    (["experiment=no_such_preset"], "unknown preset experiment=no_such_preset"),
    (["model.sizee=1e5"], "sizee"),
    (["+model.dropuot=0.1"], "dropuot"),
    (["train.lr=fast"], "train.lr"),
    (["budget_flops=-1e12"], "budget_flops=-1e+12 must be positive"),
    (["train.tokens=100", "train.flops=1e12"], "give the horizon one way only"),
    (["train.schedule=linear"], "schedule"),
    (["train.batch_tokens=1000"], "multiple of model.seq_len"),
])
def test_bad_overrides_raise_one_line(overrides, fragment):
    with pytest.raises(UserError) as err:
        load_config("study", Study, overrides)
    message = str(err.value)
    assert fragment in message, message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2_without_traceback(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", "experiment=cpu_tny"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cpu_tiny" in lines[0], proc.stderr
