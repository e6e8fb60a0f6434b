"""The Markdown report and the terminal summary (pipeline.decide.report, pipeline.decide.summary)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decide.budget import resolve_budget
from pipeline.decide.recommend import recommend
from pipeline.decide.report import render_report
from pipeline.decide.report_figures import report_figures
from pipeline.decide.summary import count, terminal_summary
from pipeline.fit.laws import published_law

EPOCH = published_law("epoch")


@pytest.fixture(scope="module")
def rec():
    budget = resolve_budget({"gpu": "h100_sxm", "gpus": 32, "days": 14, "price_per_gpu_hour": 2.0})
    samples = np.array([EPOCH.E, EPOCH.A, EPOCH.B, EPOCH.alpha, EPOCH.beta]) * (
        1 + 0.01 * np.random.default_rng(1).standard_normal((200, 5)))
    return recommend(EPOCH, budget, law_samples=samples, vocab_size=50304, seq_len=2048, inference_tokens=2e12,
                     unique_tokens=5e10, pilot={"n_runs": 15, "total_flops": 1.5e20, "max_run_flops": 3e19})


def test_count_formatting():
    assert [count(1.12e10), count(2.1e11), count(5e4), count(999), count(None)] == ["11.2B", "210B", "50K", "999", "-"]


def test_report_has_headline_first_and_every_section(rec, tmp_path):
    fit_png = tmp_path / "fit" / "isoflop.png"
    fit_png.parent.mkdir()
    fit_png.write_bytes(b"\x89PNG")  # the fit's plot; only linked
    fit = {"approaches": {"isoflop": {"n_opt": 1.1e10, "a": 0.51, "b": 0.49, "n_opt_interval": [9e9, 1.3e10]},
                          "parametric": {"n_opt": 1.13e10, "a": 0.513, "b": 0.487}},
           "excluded": [{"run_id": "n50k-d2M-abc", "reason": "diverged"}], "warnings": ["backtest error 0.02 nats"]}
    own = report_figures(rec, tmp_path / "out")   # drawn by the caller (the fit command: in its worker)
    path = render_report(tmp_path / "out", fit, rec, [fit_png, *own])
    text = path.read_text()
    assert path.name == "report.md"
    # The launched shape is the family chain's nearest to N_opt (models/sizing.py): 11B, hence 223B tokens
    # under the PaLM count the launch is timed with.
    assert text.startswith("# Recommendation\n\n**90% range: N_opt 11B [")       # the range leads
    assert "\n**Train 11B parameters (total) on 223B tokens (20.3 tokens per parameter).**" in text
    assert "predicted loss 2.1196 [" in text and "448 GPU-days (32 x h100_sxm for 14.0 days at MFU 0.40, assumed 0.40" in text
    assert "about $21,504" in text  # 448 GPU-days x 24 h x $2
    for heading in ("## Budget", "## The full run", "## Fit", "## Warnings", "## Deviating from N_opt",
                    "## Inference-aware size", "## Limited unique data", "## What the published laws say",
                    "## Plots", "## How these numbers are computed"):
        assert heading in text
    assert "| isoflop | 11B | - | 0.51 | 0.49 | [9e+09, 1.3e+10] |" in text
    assert "n50k-d2M-abc: diverged" in text and "backtest error 0.02 nats" in text
    assert "32 x 989e12 FLOP/s x 0.40 MFU x 14 d" in text
    assert "Rajbhandari et al. 2020" in text and "Korthikanti et al." in text and "Sardana & Frankle" in text
    assert "![isoflop](../fit/isoflop.png)" in text
    for own in ("deviation.png", "inference_aware.png"):
        assert (tmp_path / "out" / own).read_bytes()[:4] == b"\x89PNG" and f"]({own})" in text


def test_report_for_a_published_law_without_fit(tmp_path):
    plain = recommend(EPOCH, resolve_budget({"flops": 1e21}), vocab_size=512, seq_len=128)
    text = render_report(tmp_path, None, plain, report_figures(plain, tmp_path)).read_text()
    assert "No fit: the recommendation uses a published law." in text
    assert "no interval: the law has no samples" in text
    assert "inference_aware.png" not in text and "deviation.png" in text


def test_terminal_summary_is_a_few_lines(rec):
    summary = terminal_summary(rec)
    lines = summary.splitlines()
    assert 5 <= len(lines) <= 16
    assert lines[0].startswith("90% range: N_opt")
    assert lines[1].startswith("Recommendation (epoch law, total parameters, budget 1.53e+22 FLOPs): 11B parameters")
    assert "saves" in summary and "data-constrained plan" in summary and "32 GPUs (fsdp)" in summary
    assert "FLOP count: PaLM model FLOPs" in summary and "4.46 epochs of 50B unique tokens" in summary  # 223B tokens


def test_fit_intervals_without_a_method_still_render(rec, tmp_path):
    merged = {**rec, "intervals": {"n_opt": [1e10, 1.2e10]}}  # the lead merges the fit's own intervals
    text = render_report(tmp_path, None, merged, []).read_text()
    assert "N_opt 11B [10B, 12B]" in text and "predicted loss 2.1196 (no loss interval)" in text


def test_the_range_line_spans_the_law_forms_when_they_disagree():
    """A narrow chosen form (alpha = beta) and a free form outside its interval: the range says both, and across."""
    from pipeline.decide.summary import range_line

    rows = [{"candidate": "chinchilla", "chosen": False, "n_opt": 7.5e5, "backtest_error": 0.03,
             "intervals": {"n_opt": [2.7e5, 1.8e6]}},
            {"candidate": "overtrain", "chosen": True, "n_opt": 3.1e6, "backtest_error": 0.02,
             "intervals": {"n_opt": [2.7e6, 3.3e6]}}]
    rec = {"n_opt": 3.1e6, "intervals": {"n_opt": [2.7e6, 3.3e6]}, "selection": {"candidates": rows}}
    line = range_line(rec)
    assert line.startswith("90% range: N_opt 3.1M [270K, 3.3M] across the law forms (chinchilla 750K [270K, 1.8M], "
                           "overtrain (chosen) 3.1M [2.7M, 3.3M])")
    rows[0]["n_opt"] = 3.0e6                                   # inside the chosen interval: one range is enough
    assert range_line(rec) == "90% range: N_opt 3.1M [2.7M, 3.3M]"
