"""The recommendation (pipeline.decide.recommend): seed figures, intervals, the concrete run and its config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from models.accounting import count_params, palm_mfu_flops_per_token, training_flops_per_token
from models.shape import ModelShape
from pipeline.decide.budget import resolve_budget
from pipeline.decide.recommend import recommend, sample_intervals, write_full_run_config
from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw, published_law

EPOCH = published_law("epoch")
VOCAB, SEQ = 50304, 2048


@pytest.fixture(scope="module")
def h100_two_weeks():
    budget = resolve_budget({"gpu": "h100_sxm", "gpus": 32, "days": 14})
    return recommend(EPOCH, budget, vocab_size=VOCAB, seq_len=SEQ, inference_tokens=2e12, unique_tokens=1e11,
                     pilot={"n_runs": 15, "total_flops": 1.5e20, "max_run_flops": 3e19})


def test_seed_figure_1e23_flops_under_epoch_law_is_29b():
    rec = recommend(EPOCH, resolve_budget({"flops": 1e23}), vocab_size=VOCAB, seq_len=SEQ,
                    pilot={"n_runs": 9, "total_flops": 5e19, "max_run_flops": 2e19})
    assert any("5000x the largest pilot budget" in w for w in rec["warnings"])
    assert rec["n_opt"] == pytest.approx(2.94e10, rel=0.01)
    # D = C / PaLM count of the shape (attention and the head charged): 18.1 tokens/param, not 6ND's 19.2
    assert rec["tokens_per_param"] == pytest.approx(18.1, abs=0.2)
    rule = {r["name"]: r for r in rec["published"]}["20_tokens_per_param"]
    assert rule["n_params"] == pytest.approx(2.89e10, rel=0.01) and rule["tokens"] == pytest.approx(5.77e11, rel=0.01)
    # no hardware: GPU-days quoted on the reference H100 at 40% MFU, 1e23 / (989e12 x 0.4) s
    assert rec["model"]["compute"]["gpu_days"] == pytest.approx(2926, rel=1e-3)


def test_seed_figure_32_h100_two_weeks_is_11b_on_223b_tokens(h100_two_weeks):
    rec = h100_two_weeks
    assert rec["budget"]["flops"] == pytest.approx(1.53e22, rel=0.01)
    # Under C = 6 N D it was 11.3B on 227B tokens; the PaLM count the launch is timed with charges attention
    assert rec["n_opt"] == pytest.approx(1.10e10, rel=0.01)
    assert rec["d_opt"] == pytest.approx(2.23e11, rel=0.01)
    assert rec["predicted_loss"] == pytest.approx(2.1196, abs=1e-4)
    assert rec["model"]["compute"]["gpu_days"] == 448 and rec["model"]["compute"]["wall_clock_days"] == 14
    assert rec["intervals"] is None and any("no intervals" in w for w in rec["warnings"])
    assert rec["pilot"]["extrapolation_factor"] == pytest.approx(510.4, abs=0.1)
    assert not any("largest pilot budget" in w for w in rec["warnings"])  # 510x: below the 1000x warning
    assert rec["pilot"]["share_of_budget"] == pytest.approx(1.5e20 / 1.5313e22, rel=1e-3)


def test_concrete_model_is_exactly_counted_and_spends_the_budget(h100_two_weeks):
    model = h100_two_weeks["model"]
    shape = ModelShape.from_dict(model["shape"])
    assert model["params"] == count_params(shape)
    assert model["params"]["total"] == pytest.approx(1.10e10, rel=0.05)
    exact = training_flops_per_token(shape, SEQ, "exact")
    assert model["flops_per_token"]["exact"] == exact > model["flops_per_token"]["6n"]  # attention counted
    # A published law's budget line is the full run's PaLM count (the dry run's), so the run's D is the budget /
    # the PaLM FLOPs per token of THIS shape (whole batches), its FLOPs under it are the budget within half a
    # batch, and it says so.
    assert h100_two_weeks["count"]["name"] == "palm" and "published" in h100_two_weeks["count"]["why"]
    palm = palm_mfu_flops_per_token(shape, SEQ)
    assert model["count_flops_per_token"] == model["flops_per_token"]["palm"] == palm
    assert abs(model["tokens"] - h100_two_weeks["budget"]["flops"] / palm) <= model["batch_tokens"] / 2
    assert abs(model["flops"] - h100_two_weeks["budget"]["flops"]) <= palm * model["batch_tokens"] / 2
    assert h100_two_weeks["d_opt"] == model["tokens"]
    assert h100_two_weeks["predicted_loss"] == pytest.approx(float(EPOCH.loss(model["params"]["total"], model["tokens"])))
    assert model["tokens"] % model["batch_tokens"] == 0 and model["steps"] == model["tokens"] // model["batch_tokens"]
    # pipeline.plan.hparams at C = 1.53e22: lr 0.3118 C^-0.125, batch 0.292 C^0.3271 tokens, beta2 0.95 above 2^20
    # Without pilots, the default rule (Step Law, Li et al. 2025) at the run's non-embedding N and its D:
    assert model["lr"] == pytest.approx(1.79 * model["params"]["non_embedding"] ** -0.713 * model["tokens"] ** 0.307,
                                        rel=1e-3)
    assert model["rule_batch_tokens"] == pytest.approx(0.58 * model["tokens"] ** 0.571, rel=1e-3)
    assert model["hparam_rule"] == "steplaw2025" and model["lr_extrapolation_decades"] > 0.9   # ~1e10 non-embedding vs <= 1.1e9
    assert "not measured" in model["lr_sensitivity"]
    # ... the batch rounded to the nearest multiple of micro-batch x 32 GPUs (pipeline/plan/launch.py), and said so
    launch = model["launch"]
    unit = launch["micro_batch_size"] * launch["world_size"] * SEQ
    assert launch["world_size"] == 32 and model["batch_tokens"] % unit == 0
    assert abs(model["batch_tokens"] - model["rule_batch_tokens"]) <= unit * launch["grad_accum_steps"] / 2
    assert "rounded to" in model["hparam_sources"]["batch_source"]
    assert model["beta2"] == 0.95 and model["warmup_tokens"] == model["params"]["total"]
    assert model["memory"]["parallelism"] == "fsdp" and model["memory"]["shards"] == 4


def test_tradeoff_sections_and_strict_json(h100_two_weeks):
    rec = h100_two_weeks
    assert len(rec["deviation"]["rows"]) == 7
    inf = rec["inference_aware"]
    assert {"n_opt", "d_opt", "total_flops", "saving_fraction", "compute_optimal_total_flops"} <= set(inf)
    assert inf["n_opt"] < rec["n_opt"] and 0 < inf["saving_fraction"] < 0.5
    assert rec["data_constrained"]["epochs"] == pytest.approx(2.22, abs=0.01)
    assert {r["name"] for r in rec["published"]} == {"chinchilla", "chinchilla_unrounded", "epoch", "kaplan",
                                                     "20_tokens_per_param"}
    json.dumps(rec, allow_nan=False)  # strict JSON: no NaN/inf, no numpy types


def test_intervals_from_law_samples_bracket_the_point_estimate():
    rng = np.random.default_rng(0)
    base = np.array([EPOCH.E, EPOCH.A, EPOCH.B, EPOCH.alpha, EPOCH.beta])
    samples = base * (1 + 0.02 * rng.standard_normal((400, 5)))
    samples[0, 3] = -1.0  # a broken refit is dropped, not propagated
    intervals = sample_intervals(samples, 1e22)
    assert intervals["dropped_samples"] == 1 and "percentile 5-95 over 399" in intervals["method"]
    n_opt, _ = EPOCH.optimal_allocation(1e22)
    lo, hi = intervals["n_opt"]
    assert lo < n_opt < hi and hi / lo > 1.1
    rec = recommend(EPOCH, resolve_budget({"flops": 1e22}), law_samples=samples, vocab_size=VOCAB, seq_len=SEQ)
    assert rec["intervals"]["predicted_loss"][0] < rec["predicted_loss"] < rec["intervals"]["predicted_loss"][1]
    # the loss interval is the sample laws' loss at the launched (N, D), the run the headline's loss is for
    n_run, d_run = rec["model"]["params"]["total"], rec["d_opt"]
    at_run = [ParametricLaw(*row).loss(n_run, d_run) for row in samples[1:]]
    assert rec["intervals"]["predicted_loss"] == pytest.approx(np.percentile(at_run, [5, 95]))
    assert "launched run" in rec["intervals"]["predicted_loss_at"]


def test_kaplan_frontier_sizes_by_non_embedding_and_skips_loss_analyses():
    rec = recommend(published_law("kaplan"), resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ,
                    inference_tokens=1e12)
    assert rec["convention"] == "non_embedding" and rec["predicted_loss"] is None
    assert rec["model"]["params"]["non_embedding"] == pytest.approx(rec["n_opt"], rel=0.1)
    assert rec["deviation"] is None and rec["inference_aware"] is None


@pytest.mark.parametrize("kwargs, fragment", [
    ({"inference_tokens": -5.0}, "inference.tokens=-5.0"),
    ({"unique_tokens": 0}, "data.unique_tokens=0"),
])
def test_bad_tradeoff_inputs_raise_one_line_user_errors(kwargs, fragment):
    with pytest.raises(UserError) as err:
        recommend(EPOCH, resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_full_run_config_parses_with_every_key(h100_two_weeks, tmp_path):
    data = {"name": "stdlib", "vocab_size": 512}
    path = write_full_run_config(h100_two_weeks, tmp_path, {"data": data, "train": {"seed": 3, "lr": 99.0}})
    text = path.read_text()
    assert path == tmp_path / "experiment" / "full_run.yaml" and text.startswith("# @package _global_\n")
    for loaded in (yaml.safe_load(text), OmegaConf.to_container(OmegaConf.load(path))):
        model, train = loaded["model"], loaded["train"]
        shape = h100_two_weeks["model"]["shape"]
        assert {k: model[k] for k in ("n_layer", "d_model", "n_heads", "d_ff", "seq_len")} == {
            k: shape[k] for k in ("n_layer", "d_model", "n_heads", "d_ff", "seq_len")}
        assert train["tokens"] == h100_two_weeks["model"]["tokens"]
        assert train["lr"] == pytest.approx(h100_two_weeks["model"]["lr"])  # ours wins over the pilots' lr
        assert isinstance(train["lr"], float) and isinstance(loaded["budget_flops"], float)
        assert train["schedule"] == "cosine" and train["precision"] == "bf16" and train["seed"] == 3
        assert loaded["sweep_name"] == "full_run" and loaded["data"] == data
    assert "Step Law" in text and "sizing rule" in text


def test_full_run_takes_the_pilots_wsd_schedule_and_the_config_accepts_it(tmp_path):
    wsd = {"name": "wsd", "min_lr_ratio": 0.0, "cooldown_fraction": 0.2}
    rec = recommend(EPOCH, resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ, pilot_schedule=wsd)
    assert rec["model"]["schedule"] == {**wsd, "source": "the pilots' schedule"}
    path = write_full_run_config(rec, tmp_path)
    train = yaml.safe_load(path.read_text())["train"]
    assert (train["schedule"], train["min_lr_ratio"], train["cooldown_fraction"]) == ("wsd", 0.0, 0.2)
    assert "Hägele et al. 2024" in path.read_text()
    # Unknown pilots (a CSV, a published law): Chinchilla's cosine to 10%, said so.
    default = recommend(EPOCH, resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ)["model"]["schedule"]
    assert (default["name"], default["min_lr_ratio"]) == ("cosine", 0.1) and "not known" in default["source"]


def test_a_fit_without_bootstrap_is_told_to_bootstrap_not_called_a_published_law():
    """A fitted law of the "chinchilla" form shares the published law's name; without samples its warning says
    how to get intervals, and only a law without pilots is 'a published law'."""
    fitted = ParametricLaw(1.9, 500.0, 2000.0, 0.35, 0.37, name="chinchilla", source="candidate chinchilla fitted")
    rec = recommend(fitted, resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ,
                    pilot={"runs": 20, "total_flops": 1e19})
    assert any("fit with bootstrap > 0" in w for w in rec["warnings"])
    assert not any("published law is a point estimate" in w for w in rec["warnings"])
    published = recommend(published_law("chinchilla"), resolve_budget({"flops": 1e21}), vocab_size=VOCAB, seq_len=SEQ)
    assert any("published law is a point estimate" in w for w in published["warnings"])


def test_a_law_no_budget_makes_data_hungry_enough_loses_the_data_constrained_plan_not_the_answer():
    # A degenerate fit (beta 1.6: D_opt grows as C^0.13) on a 3.5e11-token corpus: no budget's optimum needs that
    # much data. The search for one used to grow the family's FLOPs table towards N ~ 1e30 (16 GB, no return);
    # now the table stops at its cap and the plan is left out with a warning, the recommendation stands.
    law = ParametricLaw(2.3705, 478.04, 7.1444e12, 0.23332, 1.5988)
    rec = recommend(law, resolve_budget({"flops": 3e20}), vocab_size=50257, seq_len=2048, unique_tokens=3.5e11)
    assert rec["data_constrained"] is None and rec["n_opt"] > 0
    assert any(w.startswith("no data-constrained plan: no budget makes 3.5e+11 tokens compute-optimal")
               for w in rec["warnings"])


def test_the_family_flops_table_stops_growing_at_its_cap():
    from pipeline.decide.allocation import FAMILY_TABLE_MAX_N, FamilyFlopsPerToken

    family = FamilyFlopsPerToken(50257, 2048, "total")
    rho_cap = float(family(np.array([FAMILY_TABLE_MAX_N]))[0]) / FAMILY_TABLE_MAX_N
    anchors = len(family._anchors)
    huge = float(family(np.array([1e30]))[0])          # beyond the cap: rho held, nothing more built
    assert len(family._anchors) == anchors and huge / 1e30 == pytest.approx(rho_cap, rel=2e-3)
    assert 6.0 < rho_cap < 6.01
