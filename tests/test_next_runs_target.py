"""The chooser with `target=`: runs ranked by the expected shrinkage of the target's recommended N
(pipeline/decide/rounds.py: target_ensemble, decision_ensemble), not the loss's N_opt."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_next_runs import TARGET, TRUTH, isoflop_table

from pipeline.decide.next_runs import decision_quantity, isoflop_candidates, log_loss_at, log_n_opt
from pipeline.decide.rounds import adaptive_round, design_section, propose_next, target_ensemble
from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.targets import Sigmoid, fit_metric, parse_target

# The task's bits per byte follows a law whose optimum sits ~5x below the loss's at TARGET
# (data-hungry: beta << alpha), so its recommended N, and the runs that pin it down, are elsewhere.
TASK_BPB = ParametricLaw(0.6, 500.0, 50.0, 0.45, 0.22)
STEP2 = Sigmoid(0.25, 0.9, 6.0, 1.4)


def table_with_task(seed: int = 0):
    table = isoflop_table(budgets=(1e17, 3e17, 9e17), seed=seed)
    rng = np.random.default_rng([seed, 7])
    bpb = TASK_BPB.loss(table.n, table.tokens) * np.exp(rng.normal(0, 0.01, len(table)))
    acc = STEP2(bpb) + rng.normal(0, 0.005, len(table))
    return replace(table, metrics={"hellaswag_bpb": bpb, "hellaswag_acc": acc})


@pytest.fixture(scope="module")
def task_table():
    return table_with_task()


@pytest.fixture(scope="module")
def task_model(task_table):
    return fit_metric(task_table, parse_target("hellaswag:acc", task_table), bootstrap=40, seed=1)


def test_the_quantity_is_the_targets_recommended_n_from_its_own_bootstrap(task_model):
    ens = target_ensemble(task_model, TARGET)
    assert ens["samples"] is task_model.law_samples and ens["sd_log"] == task_model.bootstrap["sd_log"] > 0
    label, text = ens["quantity"]
    assert label == "hellaswag:acc's optimal N" and "maximises hellaswag:acc" in text
    # the accuracy's best N on the budget line is step 1's closed-form optimum (the sigmoid falls with bpb)
    line = np.geomspace(ens["n_opt"] / 30, ens["n_opt"] * 30, 2001)
    best = line[np.argmax(task_model.value(line, TARGET / (6 * line)))]
    assert best == pytest.approx(ens["n_opt"], rel=0.01)
    lo, hi = ens["interval"]
    assert lo < ens["n_opt"] < hi
    assert decision_quantity(TARGET)[0] == "N_opt"


def test_a_targets_next_run_differs_from_the_losses_and_is_its_best_per_flop(task_table, task_model):
    by_loss = propose_next(task_table, TARGET, 1, seed=1, bootstrap=40)
    by_task = propose_next(task_table, TARGET, 1, seed=1, target=task_model)
    loss_pick, task_pick = by_loss["picks"][0], by_task["picks"][0]
    assert (task_pick["n"], task_pick["d"]) != pytest.approx((loss_pick["n"], loss_pick["d"]), rel=0.05)
    assert by_task["label"] == "hellaswag:acc's optimal N" and "hellaswag:acc" in by_task["quantity"]
    assert "shrinks hellaswag:acc's optimal N's interval most per FLOP" in task_pick["reason"]
    assert "N_opt" in by_loss["quantity"] and "hellaswag" not in by_loss["quantity"]
    # brute force with the target's samples: the pick removes most of its quantity's variance per FLOP
    cands = isoflop_candidates(task_model.law, task_table.n, task_table.tokens, task_table.budget_groups())
    members = task_model.law_samples
    q = log_n_opt(members, TARGET)
    lo, hi = np.percentile(q[np.isfinite(q)], [1, 99])
    keep = np.isfinite(q) & (q >= lo) & (q <= hi)
    f = log_loss_at(members[keep], cands.n, cands.d)
    sd = task_model.bootstrap["sd_log"]
    alone = [j for j in range(len(cands)) if np.sum(cands.units() == cands.units()[j]) == 1]  # next=1: one run
    per_flop = {j: np.cov(q[keep], f[:, j])[0, 1] ** 2 / (np.var(f[:, j], ddof=1) + sd**2) / cands.flops[j]
                for j in alone}
    assert task_pick["index"] == max(per_flop, key=per_flop.get)
    assert by_task["expected_width_after"] < by_task["width_now"]


def test_an_adaptive_round_with_a_target_records_its_quantity(task_table):
    spent = float(task_table.c.sum())
    result = adaptive_round(task_table, TARGET, pilot_flops=10 * spent, stop_width=1.01, rounds_done=0, max_rounds=4,
                            round_runs=2, bootstrap=40, seed=1, target="hellaswag:acc")
    assert result["stop"] is None and result["picks"]
    assert result["fit"]["label"] == "hellaswag:acc's optimal N" and "hellaswag:acc" in result["fit"]["quantity"]
    assert all("hellaswag:acc's optimal N's interval" in p["reason"] for p in result["picks"])
    design = {"rounds": [{"round": 1, "fit": result["fit"], "picks": result["picks"],
                          "expected_width_after": result["expected_width_after"]}], "stopped": None}
    text = "\n".join(design_section(design))
    assert result["fit"]["quantity"] in text and "hellaswag:acc's optimal N's 90% interval" in text


def test_fit_next_k_with_a_target_writes_and_prints_the_targets_quantity(tmp_path, capsys):
    from pipeline.fit.__main__ import main

    table = table_with_task(seed=2)
    csv = tmp_path / "runs.csv"
    rows = zip(table.n, table.tokens, table.loss, table.metrics["hellaswag_bpb"], table.metrics["hellaswag_acc"], strict=True)
    csv.write_text("params,tokens,loss,hellaswag_bpb,hellaswag_acc\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    code = main([f"runs={csv}", "budget.flops=1e21", "bootstrap=20", "next=2", "target=hellaswag:acc",
                 f"out_dir={tmp_path / 'fit'}"], {"cfg": False, "debug": False})
    assert code == 0
    out = capsys.readouterr().out
    proposal = json.loads((tmp_path / "fit" / "next_runs.json").read_text())
    assert len(proposal["picks"]) == 2 and "maximises hellaswag:acc" in proposal["quantity"]
    assert proposal["ensemble_source"] == "the bootstrap of hellaswag:acc's fit"
    assert f"the quantity: {proposal['quantity']}" in out and proposal["picks"][0]["reason"] in out
    rec = json.loads((tmp_path / "fit" / "recommendation.json").read_text())
    assert rec["next_runs"]["quantity"] == proposal["quantity"]
    # the proposal's N is the one the recommendation names for the target
    n_star = np.exp(log_n_opt(np.array([[rec["target_metric"]["fit"]["law"][k] for k in ("E", "A", "B", "alpha", "beta")]]),
                              1e21))[0]
    assert n_star == pytest.approx(rec["target_metric"]["optimum"]["params"], rel=0.02)


def test_a_target_without_a_noise_estimate_is_refused_with_what_to_do(task_model):
    with pytest.raises(UserError, match="noise estimate"):
        target_ensemble(replace(task_model, bootstrap={**task_model.bootstrap, "sd_log": None}), TARGET)


def test_the_truth_differs_as_the_test_needs():
    """The premise: the target's optimum is far from the loss's at TARGET (else the test above proves nothing)."""
    assert TASK_BPB.optimal_allocation(TARGET)[0] < TRUTH.optimal_allocation(TARGET)[0] / 3


def test_an_adaptive_sweep_refuses_a_target_its_pilots_do_not_record(tmp_path):
    from test_adaptive_sweep import FLAGS, TINY

    from pipeline.cli import load_study
    from pipeline.plan.adaptive import check_design_target
    from pipeline.sweep.__main__ import main as sweep_main

    with pytest.raises(UserError, match="target=hellaswag:acc: the adaptive design chooses its runs by it"):
        sweep_main([*TINY, "target=hellaswag:acc", f"results_dir={tmp_path}"], FLAGS)
    assert not any(tmp_path.iterdir())
    for target in ("corpus_next_line:acc", "corpus_next_line_bpb", "notes_loss", "loss"):
        check_design_target(load_study([*TINY, f"target={target}", "eval.tasks=[corpus_next_line]",
                                        "eval.val_sets=['notes=stdlib:idlelib/*.txt']"], FLAGS))
