"""scripts/score_hparam_rules.py on a synthetic sweep whose best (LR, batch) is Step Law's own."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "score_hparam_rules.py"
spec = importlib.util.spec_from_file_location("score_hparam_rules", SCRIPT)
score_rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score_rules)


def test_a_rule_at_every_groups_optimum_scores_zero_and_a_wrong_one_does_not(tmp_path, capsys):
    path = tmp_path / "sweep.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["N", "D", "lr", "bs", "smooth loss", "h", "ffnh", "numl"])
        for n, d in [(2e8, 4e9), (2e8, 2e10), (5e8, 1e10), (1e9, 2e10)]:
            lr_opt, bs_opt = 1.79 * n**-0.713 * d**0.307, 0.58 * d**0.571 / 2048
            for i in range(-3, 4):
                for j in range(-2, 3):
                    lr, bs = lr_opt * 2 ** (i / 2), bs_opt * 2 ** (j / 2)
                    loss = 2.5 * (1 + 0.01 * math.log(lr / lr_opt) ** 2 + 0.004 * math.log(bs / bs_opt) ** 2)
                    writer.writerow([n, d, lr, bs, loss, 1024, 2816, 12])
    results = score_rules.score(score_rules.read_groups(path), score_rules.RULES)
    # Step Law's batch is rounded to whole 2,048-token sequences: within 1e-4 of the optimum's loss.
    assert results["steplaw2025"]["median"] == pytest.approx(0.0, abs=1e-4)
    assert results["deepseek2024"]["median"] > 0.002
    assert score_rules.main([str(path)]) == 0 and "steplaw2025" in capsys.readouterr().out
    assert score_rules.main([str(tmp_path / "missing.csv")]) == 2
