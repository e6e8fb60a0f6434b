"""One FLOP count from pilots to full run (issue 14): the answer is the run you launch, from comparable runs only.

The end-to-end test trains a real tiny IsoFLOP sweep, fits it, and checks that the printed headline,
recommendation.json and full_run.yaml state the same N, D and loss, under the exact count the pilots used.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.accounting import count_params, palm_mfu_flops_per_token, training_flops_per_token
from models.shape import ModelShape
from models.sizing import shape_for_params
from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.decide.allocation import exact_count, optimal_allocation, palm_count, pick_shape, six_nd_count
from pipeline.decide.budget import resolve_budget
from pipeline.decide.recommend import recommend
from pipeline.errors import UserError
from pipeline.fit import __main__ as fit_command
from pipeline.fit.laws import ParametricLaw, published_law
from pipeline.fit.parametric import fit_parametric
from pipeline.fit.sources import load_runs, load_table_file
from pipeline.sweep import __main__ as sweep_command

REPO = Path(__file__).resolve().parents[1]
CHINCHILLA = REPO.parent / "shared" / "data" / "chinchilla_fig4_epoch.csv"
EPOCH = published_law("epoch")
# A real sweep small enough to run in about a minute: 3 sizes of 23K-86K parameters x 3 token counts (the law needs 3+ of each), one LR
# for all (at these few hundred steps the LR rule's rates leave the larger models behind, so L would not fall
# with N and the parametric fit would rightly refuse).
TINY = ["sweep.design=grid", "sweep.sizes=[23k,46k,93k]", "sweep.tokens=[131072,262144,393216]", "train.lr=0.003",
        "train.batch_tokens=1024", "train.warmup_tokens=4096", "train.threads=1", "train.progress=false",
        "train.evals_per_run=2", "tracking.mode=disabled", "sweep_name=onecount"]
FIT = ["budget.flops=1e13", "bootstrap=30"]


# --- the allocation itself ---------------------------------------------------------------------------------
def test_exact_count_optimum_is_the_brute_force_argmin_and_differs_from_6nd():
    count = exact_count(50257, 2048)
    best = optimal_allocation(EPOCH, 1.5e22, count)
    grid = np.exp(np.linspace(math.log(best.n / 3), math.log(best.n * 3), 20001))
    brute = grid[np.argmin(EPOCH.loss(grid, 1.5e22 / count.flops_per_token(grid)))]
    # Within 0.3%: F(N) interpolates between the family chain's per-width anchors (models/sizing.py), whose
    # kinks leave the fine search's parabola up to ~0.25% off the brute-force argmin on a flat bottom; the
    # loss there is the minimum's to 1e-6.
    assert best.n == pytest.approx(brute, rel=3e-3)
    assert float(EPOCH.loss(best.n, best.d)) == pytest.approx(
        float(EPOCH.loss(brute, 1.5e22 / count.flops_per_token(np.asarray(brute)))), rel=1e-6)
    assert best.d == pytest.approx(1.5e22 / count.flops_per_token(np.asarray(best.n)))
    assert best.loss == pytest.approx(float(EPOCH.loss(best.n, best.d)))
    # The exact count charges attention and the embeddings: F(N) > 6N, so fewer tokens than under 6ND.
    n6, d6 = EPOCH.optimal_allocation(1.5e22)
    assert best.d < d6 and best.flops_per_token > 6 * best.n
    # The family's F(N) is the exact count of the family's shape there (within the sizing step's spread).
    shape = shape_for_params(1e9, 50257, 2048)
    n = count_params(shape)["total"]
    assert float(count.flops_per_token(np.asarray(float(n)))) == pytest.approx(training_flops_per_token(shape, 2048),
                                                                               rel=0.03)


def test_palm_count_is_the_dry_runs_count_of_the_family_and_below_the_exact_one():
    """The full run's count without pilots (published laws, shapeless tables): PaLM's, as the dry run times it."""
    count = palm_count(50257, 2048)
    shape = shape_for_params(5.5e9, 50257, 2048)
    n = float(count_params(shape)["total"])
    assert count.of_shape(shape) == palm_mfu_flops_per_token(shape, 2048)
    assert float(count.flops_per_token(np.asarray(n))) == pytest.approx(palm_mfu_flops_per_token(shape, 2048), rel=0.03)
    # the exact count also charges the input lookup as a one-hot matmul (6 V d): ~3% more at 5.5B, V = 50,257
    assert 1.02 < training_flops_per_token(shape, 2048) / count.of_shape(shape) < 1.05
    best = optimal_allocation(EPOCH, 3.83e21, count)
    assert best.d == pytest.approx(3.83e21 / float(count.flops_per_token(np.asarray(best.n))))


def test_6nd_count_reproduces_the_closed_form_for_any_law_with_a_loss():
    class LossOnly:  # a law that only offers .loss (another law form): the numeric search gives eq. 4's answer
        def loss(self, n, d):
            return EPOCH.loss(n, d)

    numeric = optimal_allocation(LossOnly(), 1e23, six_nd_count("test"))
    n6, d6 = EPOCH.optimal_allocation(1e23)
    assert numeric.n == pytest.approx(float(n6), rel=1e-5) and numeric.d == pytest.approx(float(d6), rel=1e-5)


def test_picked_shape_is_the_lowest_loss_neighbour():
    count = exact_count(512, 128)
    best = optimal_allocation(EPOCH, 1e15, count)
    shape = pick_shape(EPOCH, 1e15, best.n, count, vocab_size=512, seq_len=128)
    n = count_params(shape)["total"]
    assert abs(math.log(n / best.n)) < math.log(1.35)
    nearest = shape_for_params(best.n, 512, 128, tolerance=0.35)
    loss = float(EPOCH.loss(n, 1e15 / training_flops_per_token(shape, 128)))
    loss_nearest = float(EPOCH.loss(count_params(nearest)["total"], 1e15 / training_flops_per_token(nearest, 128)))
    assert loss <= loss_nearest + 1e-12


@pytest.mark.skipif(not CHINCHILLA.exists(), reason="public Chinchilla points not available")
def test_chinchilla_points_give_70b_under_their_6nd_count_and_launch_on_the_full_runs_line():
    table = load_table_file(CHINCHILLA, columns={"Model Size": "params", "Training FLOP": "flops"})
    highest = np.argsort(np.argsort(-table.loss)) < 5    # dropped by Besiroglu et al. 2024, as test_fit_parametric
    table = table.subset(~highest, reason="one of the 5 highest losses")
    fit = fit_parametric(table.n, table.tokens, table.loss)
    assert (fit.E, fit.alpha, fit.beta) == pytest.approx((1.8172, 0.3473, 0.3672), rel=0.01)  # Epoch's refit
    law = fit.law()
    study = load_config("study", Study, [f"runs={CHINCHILLA}", "budget.flops=5.76e23"])
    target, count, _, _ = fit_command.decision_inputs(study, table)
    assert float(law.optimal_allocation(5.76e23)[0]) == pytest.approx(7.3e10, rel=0.03)  # Chinchilla's 70B, 6ND
    # The decision: no shape in the table, so the budget line is the full run's (GPT-2 vocabulary, T=2048) under
    # the PaLM count its launch is timed with; attention at T=2048 costs ~3% more per token than 6N there.
    assert count.name == "palm" and "no shape" in count.why and target["vocab_size"] == 50257
    rec = recommend(law, resolve_budget({"flops": 5.76e23}), target=target, count=count)
    assert rec["n_opt"] == pytest.approx(7.3e10, rel=0.05) and rec["d_opt"] < float(law.optimal_allocation(5.76e23)[1])
    assert rec["count"]["name"] == "palm" and abs(rec["model"]["flops"] / 5.76e23 - 1) < 1e-3


# --- full-run target and data reuse without pilots --------------------------------------------------------
def test_h100_preset_full_run_has_gpt2_vocabulary_and_counts_its_embeddings(tmp_path):
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "pipeline.fit", "experiment=h100_pilot", "law=epoch", f"out_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "recommendation.json").read_text())
    shape = ModelShape.from_dict(rec["model"]["shape"])
    assert shape.vocab_size == 50257 and shape.seq_len == 2048 and rec["target"]["tokenizer"] == "gpt2"
    assert rec["model"]["params"] == count_params(shape) and rec["model"]["params"]["embedding"] == 50257 * shape.d_model
    text = (out / "experiment" / "full_run.yaml").read_text()
    full = yaml.safe_load(text)
    assert full["data"]["tokenizer"] == "gpt2" and full["model"]["d_model"] == shape.d_model
    assert f"{rec['model']['params']['total']:,} total parameters exactly" in text
    assert full["train"]["tokens"] == rec["d_opt"] == rec["model"]["tokens"]
    # 40B tokens of FineWeb-Edu (the preset's cap) against a ~230B-token plan: epochs stated, warned, and
    # the data-constrained plan computed without data.unique_tokens being set by hand.
    assert rec["data"]["unique_tokens"] == 4e10 and rec["data"]["epochs"] > 4
    assert any("epochs" in w and "Muennighoff" in w for w in rec["warnings"])
    dc = rec["data_constrained"]
    assert dc["unique_tokens"] == 4e10 and dc["count"] == "palm"
    assert dc["adjusted_loss"] <= dc["loss_with_repetition"] + 1e-12
    assert [d["setting"] for d in rec["differences"]] == ["tokenizer, vocabulary, sequence length, precision"]
    assert "preset gpt2-2048" in rec["target"]["source"]


def test_dry_run_plans_from_the_config_alone(tmp_path):
    cache = tmp_path / "cache"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "experiment=h100_pilot", "sweep.dry_run=true",
                           f"results_dir={tmp_path}", f"data.cache_dir={cache}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                       "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "vocabulary 50,257 (gpt2 (tabled)); no data prepared" in proc.stdout and "20 runs" in proc.stdout
    assert not cache.exists() and "data: preparing" not in proc.stderr
    print(f"dry run of h100_pilot: {seconds:.1f} s")  # measured, not asserted (shared CPUs)


# --- the real tiny sweep ------------------------------------------------------------------------------------
def _headline(out: str) -> tuple[float, float]:
    match = re.search(r"\): ([\d.]+)([KMB]?) parameters on ([\d.]+)([KMB]?) tokens", out)
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}
    return float(match.group(1)) * scale[match.group(2)], float(match.group(3)) * scale[match.group(4)]


@pytest.mark.slow
def test_tiny_sweep_headline_json_and_full_run_agree_and_stale_runs_are_not_mixed(corpus_overrides, tmp_path, capsys):
    overrides = [*corpus_overrides, *TINY, f"results_dir={tmp_path}"]
    assert sweep_command.main(overrides, {}) == 0
    fit_dir = tmp_path / "fit"
    capsys.readouterr()
    assert fit_command.main([*overrides, *FIT, f"out_dir={fit_dir}"], {}) == 0
    printed_n, printed_d = _headline(capsys.readouterr().out)
    rec = json.loads((fit_dir / "recommendation.json").read_text())
    full = yaml.safe_load((fit_dir / "experiment" / "full_run.yaml").read_text())
    model = rec["model"]
    shape = ModelShape.from_dict(model["shape"])
    n_run = count_params(shape)["total"]
    # One count: the pilots' exact count at their vocabulary and sequence length.
    assert rec["count"]["name"] == "exact" and shape.vocab_size == 512 and shape.seq_len == 128
    # N: the launched shape lies within one step of the sizing grid around the law's N_opt.
    lo, hi = (shape_for_params(rec["n_opt"] * f, 512, 128, tolerance=0.5) for f in (1 / 1.35, 1.35))
    assert count_params(lo)["total"] <= n_run <= count_params(hi)["total"]
    assert full["model"]["d_model"] == shape.d_model and full["model"]["n_layer"] == shape.n_layer
    assert printed_n == pytest.approx(n_run, rel=0.01)
    # D: exactly the launched tokens, everywhere.
    assert rec["d_opt"] == model["tokens"] == full["train"]["tokens"]
    assert printed_d == pytest.approx(rec["d_opt"], rel=0.01)
    # Loss: the law at the launched N and D.
    law = ParametricLaw(*(rec["law"][k] for k in ("E", "A", "B", "alpha", "beta")))
    assert rec["predicted_loss"] == pytest.approx(float(law.loss(n_run, rec["d_opt"])), rel=1e-9)
    # FLOPs: the run's exact FLOPs are the budget within one batch.
    exact = training_flops_per_token(shape, 128)
    assert abs(full["train"]["tokens"] * exact - 1e13) <= exact * model["batch_tokens"]
    assert abs(rec["law_optimum"]["d"] * exact / 1e13 - 1) < 0.1
    lo_loss, hi_loss = rec["intervals"]["predicted_loss"]
    assert lo_loss < hi_loss and rec["intervals"]["count"] == "exact"
    assert rec["data"]["epochs"] == pytest.approx(rec["d_opt"] / rec["data"]["unique_tokens"])
    assert "precision" in {d["setting"] for d in rec["differences"]}  # fp32 CPU pilots, bf16 full run

    # Re-sweep with another validation set: the fit uses the new plan and excludes the stale runs, naming why.
    resweep = [*overrides, "data.val_tokens=8192"]
    assert sweep_command.main(resweep, {}) == 0
    table = load_runs(tmp_path / "onecount")
    stale = [e for e in table.excluded if "not in the current plan" in e["reason"]]
    assert len(table) == 9 and len(stale) == 9
    assert all("data.val_tokens (16384 vs 8192)" in e["reason"] for e in stale)
    # Fitting every record mixes two validation sets: refused with one line naming the field.
    with pytest.raises(UserError) as err:
        load_runs(tmp_path / "onecount", all_runs=True)
    assert "differ in data.val_tokens" in str(err.value) and "\n" not in str(err.value)


def test_data_constrained_plan_at_pilot_scale_under_the_exact_count():
    """The demo's own law (1e15 FLOPs, 15M unique tokens, V=512, T=128): U_N is found although small budgets
    put the optimum below the family's smallest model (the bisection once stopped there with an error)."""
    from pipeline.decide.tradeoffs import data_constrained, params_for_unique_tokens

    law = ParametricLaw(2.5229, 12532.76, 8242.33, 0.96120, 0.68428, name="demo")
    count = exact_count(512, 128)
    u_n = params_for_unique_tokens(law, 1.5e7, count)
    assert optimal_allocation(law, 1e15, count).d > 1.5e7 and count.n_min <= u_n < optimal_allocation(law, 1e15, count).n
    plan = data_constrained(law, 1e15, 1.5e7, count=count)
    assert plan["epochs"] == pytest.approx(optimal_allocation(law, 1e15, count).d / 1.5e7, rel=1e-6)
    assert plan["adjusted_loss"] <= plan["loss_with_repetition"] + 1e-12
