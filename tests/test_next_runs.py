"""The adaptive design's chooser (pipeline/decide/next_runs.py, rounds.py): picks, stop rules, next=K, bias check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.decide.next_runs import (
    Candidates,
    choose_next,
    describe_pick,
    isoflop_candidates,
    log_loss_at,
    log_n_opt,
    profiled_budgets,
    stop_reason,
)
from pipeline.decide.rounds import across_forms, adaptive_round, design_section, fit_ensemble
from pipeline.fit.isoflop import GRID_BIAS_WARN, fit_isoflop, grid_bias
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.table import RunsTable

TRUTH = ParametricLaw(1.8172, 482.01, 2085.43, 0.3478, 0.3658)   # Besiroglu et al. 2024
SD_LOG = 0.013
TARGET = 3e20


def isoflop_table(budgets=(1e17, 3e17), sizes=5, ratio=1.6, seed=0, law=TRUTH, sd=SD_LOG) -> RunsTable:
    rng = np.random.default_rng(seed)
    n, d, c = [], [], []
    for budget in budgets:
        centre = np.sqrt(budget / 120)
        for k in np.arange(sizes) - (sizes - 1) / 2:
            n.append(centre * ratio**k), d.append(budget / (6 * centre * ratio**k)), c.append(budget)
    n, d, c = map(np.array, (n, d, c))
    loss = law.loss(n, d) * np.exp(rng.normal(0, sd, n.size)) if sd else law.loss(n, d)
    return RunsTable(run_id=tuple(f"r{i}" for i in range(n.size)), params={"total": n}, tokens=d, loss=loss,
                     flops={"exact": 6 * n * d, "6n": 6 * n * d}, budget_flops=c, source="simulated")


@pytest.fixture(scope="module")
def seed_fit():
    table = isoflop_table()
    return table, fit_ensemble(table, TARGET, bootstrap=40, seed=1)


def test_log_n_opt_is_the_closed_form():
    samples = np.array([[TRUTH.E, TRUTH.A, TRUTH.B, TRUTH.alpha, TRUTH.beta]])
    assert np.exp(log_n_opt(samples, 1e23))[0] == pytest.approx(TRUTH.optimal_allocation(1e23)[0], rel=1e-10)
    assert np.exp(log_loss_at(samples, np.array([1e9]), np.array([2e10])))[0, 0] == pytest.approx(TRUTH.loss(1e9, 2e10))


def unit_values(fit: dict, cands: Candidates) -> dict[int, float]:
    """Brute force: per unit of candidates, the variance of log N_opt its runs remove jointly, per FLOP."""
    members = fit["samples"]
    q = log_n_opt(members, TARGET)
    lo, hi = np.percentile(q, [1, 99])
    keep = (q >= lo) & (q <= hi)
    f = log_loss_at(members[keep], cands.n, cands.d)
    values = {}
    for u in np.unique(cands.units()):
        cols = np.flatnonzero(cands.units() == u)
        z = np.cov(np.column_stack([q[keep], f[:, cols]]), rowvar=False)
        c, s = z[0, 1:], z[1:, 1:] + fit["sd_log"] ** 2 * np.eye(cols.size)
        values[int(u)] = float(c @ np.linalg.solve(s, c) / cands.flops[cols].sum())
    return values


def test_the_chooser_picks_what_shrinks_the_interval_most_per_flop(seed_fit):
    table, fit = seed_fit
    cands = isoflop_candidates(fit["law"], table.n, table.tokens, table.budget_flops, profiles=True)
    values = unit_values(fit, cands)
    size = {u: int(np.sum(cands.units() == u)) for u in values}
    # one run: the best single candidate (a new budget's profile needs 3 runs); without profiles every size is one
    pick = choose_next(fit["samples"], fit["sd_log"], cands, TARGET, max_runs=1)["picks"][0]
    assert cands.units()[pick["index"]] == max((u for u in values if size[u] == 1), key=values.get)
    # three runs: the best unit first, a whole new-budget profile counted as its joint value per FLOP
    choice = choose_next(fit["samples"], fit["sd_log"], cands, TARGET, max_runs=3)
    first = choice["picks"][0]
    assert cands.units()[first["index"]] == max(values, key=values.get)
    assert first["shrink_per_flop"] == pytest.approx(max(values.values()), rel=1e-6)
    assert choice["expected_width_after"] < choice["width_now"]
    # extrapolating 1000x, a run at a budget larger than the seed's is worth its price: the pick is not a seed repeat
    assert pick["kind"] in ("new budget", "new size")


def test_a_new_budget_enters_as_a_whole_profile_centred_on_the_optimum(seed_fit):
    """With profiles (sweep.min_profiles > 0) Approach 2 gets a parabola at every budget: a new budget's candidates
    are its 3 central sizes, one unit; without, each size alone."""
    table, fit = seed_fit
    cands = isoflop_candidates(TRUTH, table.n, table.tokens, table.budget_flops, sizes_per_budget=5, profiles=True)
    new = np.array(cands.kind) == "new budget"
    for budget in np.unique(cands.budget[new]):
        at = new & (cands.budget == budget)
        assert at.sum() == 3 and np.unique(cands.units()[at]).size == 1
        assert np.exp(np.mean(np.log(cands.n[at]))) == pytest.approx(TRUTH.optimal_allocation(budget)[0], rel=1e-9)
    assert np.unique(cands.units()[~new]).size == (~new).sum()        # every other candidate alone
    singles = isoflop_candidates(TRUTH, table.n, table.tokens, table.budget_flops, sizes_per_budget=5)
    assert np.unique(singles.units()).size == len(singles) and singles.kind.count("new budget") == 5 * new.sum() // 3
    picks = choose_next(fit["samples"], fit["sd_log"], cands, TARGET, max_runs=3)["picks"]
    by_budget = {}
    for p in picks:
        by_budget.setdefault(p["budget"], []).append(p)
    for p in picks:
        if p["kind"] == "new budget":
            assert len(by_budget[p["budget"]]) == 3 and "3-size profile" in describe_pick(p)


def test_the_same_run_at_a_lower_price_wins_and_a_repeat_is_worth_less(seed_fit):
    _, fit = seed_fit
    n, d = np.array([2e7, 2e7]), np.array([4e9, 4e9])
    cands = Candidates(n, d, np.array([4.8e17, 1.2e17]), np.array([4.8e17, 4.8e17]), ("new budget", "new budget"))
    choice = choose_next(fit["samples"], fit["sd_log"], cands, TARGET, max_runs=2)
    first, second = choice["picks"]
    assert first["index"] == 1 and second["index"] == 0                 # the cheaper copy first
    assert second["shrink_per_flop"] < first["shrink_per_flop"] / 4      # 4x the price and already half-answered
    assert choice["picks"][1]["expected_width_after"] < choice["picks"][0]["expected_width_after"] < choice["width_now"]


def test_the_chooser_spends_no_more_than_it_is_given(seed_fit):
    table, fit = seed_fit
    cands = isoflop_candidates(fit["law"], table.n, table.tokens, table.budget_flops)
    choice = choose_next(fit["samples"], fit["sd_log"], cands, TARGET, flops_left=1e18)
    assert 0 < choice["spent_flops"] <= 1e18 and choice["stopped"] in ("the FLOPs left are spent", "every candidate is chosen")


def test_candidates_are_centred_on_the_current_optimum_and_include_repeats():
    table = isoflop_table()
    cands = isoflop_candidates(TRUTH, table.n, table.tokens, table.budget_flops, sizes_per_budget=5, min_budget=1e17)
    for budget in np.unique(cands.budget[np.array(cands.kind) != "seed"]):
        sizes = cands.n[(cands.budget == budget) & (np.array(cands.kind) != "seed")]
        assert np.exp(np.mean(np.log(sizes))) == pytest.approx(TRUTH.optimal_allocation(budget)[0], rel=1e-9)
    assert cands.budget.min() >= 1e17 and cands.kind.count("seed") == len(table)
    assert {"new budget", "new size"} <= set(cands.kind)


def test_stop_rules():
    assert "stop_width=3" in stop_reason(2.5, 3.0, 1e18, 1e19, 1e17, 1, 6)
    assert stop_reason(5.0, 3.0, 1e18, 1e19, 1e17, 1, 6) is None
    assert "pilot compute spent" in stop_reason(5.0, 3.0, 9.5e18, 1e19, 1e18, 1, 6)
    assert "no candidate run fits the 5e+17 left" in stop_reason(5.0, 3.0, 9.5e18, 1e19, np.inf, 1, 6)
    assert "max_rounds=6" in stop_reason(5.0, None, 1e18, 1e19, 1e17, 6, 6)


def test_a_round_stops_when_narrow_enough_or_spent_and_otherwise_says_why_it_chose(seed_fit):
    table, _ = seed_fit
    spent = float(table.c.sum())
    common = dict(rounds_done=0, max_rounds=6, round_runs=3, bootstrap=40, seed=1)
    narrow = adaptive_round(table, TARGET, pilot_flops=10 * spent, stop_width=1e9, **common)
    assert narrow["picks"] == [] and "within sweep.stop_width" in narrow["stop"]
    spent_out = adaptive_round(table, TARGET, pilot_flops=spent * 1.01, stop_width=None, **common)
    assert spent_out["picks"] == [] and "pilot compute spent" in spent_out["stop"]
    go = adaptive_round(table, TARGET, pilot_flops=10 * spent, stop_width=1.5, **common)
    assert go["stop"] is None and 1 <= len(go["picks"]) <= 3
    assert sum(p["flops"] for p in go["picks"]) <= 9 * spent
    # two budgets leave the forms apart here (rounds.across_forms): the reasons name what the round measured
    narrowed = "range across the law forms" if go["fit"].get("forms") else "interval"
    assert all(f"shrinks N_opt's {narrowed} most per FLOP" in p["reason"] for p in go["picks"])
    assert go["expected_width_after"] < go["fit"]["width"]


def test_a_round_reads_the_law_forms_disagreement_and_does_not_stop_on_one_forms_interval():
    # alpha far from beta: the alpha = beta form puts N_opt ~10x from the free form's, whose own interval is
    # 1.7x wide. The round must measure the span of both forms' intervals (as the final fit's range line does,
    # pipeline/fit/checks.py: form_spread), so a stop width the free form alone meets does not stop it.
    table = isoflop_table(budgets=(1e17, 3e17, 9e17), law=ParametricLaw(1.8, 400.0, 2000.0, 0.22, 0.45), sd=0.005,
                          seed=2)
    one = fit_ensemble(table, TARGET, bootstrap=40, seed=1)
    both = across_forms(one, table, TARGET, bootstrap=40, seed=1)
    lo, hi = one["interval"]
    assert hi / lo < 3 and not (lo <= both["forms"]["overtrain"]["n_opt"] <= hi)
    assert both["interval"] == [min(lo, both["forms"]["overtrain"]["interval"][0]),
                                max(hi, both["forms"]["overtrain"]["interval"][1])]
    tied = np.isclose(both["samples"][:, 3], both["samples"][:, 4])      # the alpha = beta form's draws
    assert len(both["samples"]) == 2 * min(len(one["samples"]), tied.sum()) and tied.sum() == (~tied).sum()
    spent = float(table.c.sum())
    r = adaptive_round(table, TARGET, pilot_flops=10 * spent, stop_width=3.0, rounds_done=0, max_rounds=6,
                       round_runs=3, bootstrap=40, seed=1)
    assert r["stop"] is None and r["picks"] and r["fit"]["width"] > 10
    assert r["fit"]["width_of"].startswith("N_opt's range across the law forms' 90% intervals (chinchilla ")
    assert r["expected_width_after"] < r["fit"]["width"]
    assert all("shrinks N_opt's range across the law forms most per FLOP" in p["reason"] for p in r["picks"])
    old = {k: v for k, v in r["fit"].items() if k != "width_of"}    # a round recorded before width_of existed
    text = "\n".join(design_section({"rounds": [{"round": 1, "fit": r["fit"], "picks": r["picks"]},
                                                {"round": 2, "fit": old, "picks": r["picks"]}], "stopped": None}))
    assert "round 1: N_opt's range across the law forms' 90% intervals (chinchilla " in text
    assert f"round 2: N_opt's 90% interval {old['width']:.3g}x wide" in text
    # forms that agree (Besiroglu et al.'s alpha ~ beta): the round's ensemble is the free form's alone
    table = isoflop_table(budgets=(1e17, 3e17, 9e17), sd=0.005, seed=2)
    alone = fit_ensemble(table, TARGET, bootstrap=40, seed=1)
    agreed = across_forms(alone, table, TARGET, bootstrap=40, seed=1)
    assert "forms" not in agreed and agreed["interval"] == alone["interval"]


def test_the_grid_bias_check_warns_with_the_size_only_for_a_wide_or_off_centre_grid():
    centred = isoflop_table(budgets=(1e17, 3e17, 9e17), ratio=1.6, sd=0)
    iso = fit_isoflop(centred, 1e21, bootstrap=0)
    rows, warnings = grid_bias(centred, iso["budgets"], TRUTH)
    assert rows and warnings == [] and max(abs(r["n_opt_bias"]) for r in rows) < GRID_BIAS_WARN
    wide = isoflop_table(budgets=(1e17, 3e17, 9e17), ratio=5.0, sd=0)
    iso = fit_isoflop(wide, 1e21, bootstrap=0)
    rows, warnings = grid_bias(wide, iso["budgets"], TRUTH)
    assert warnings and "biases N_opt by -" in warnings[0] and "spans 625x" in warnings[0]
    assert all(r["n_opt_bias"] < -GRID_BIAS_WARN for r in rows)


def test_fit_next_k_prints_and_writes_the_runs_with_the_expected_width(tmp_path, capsys):
    from pipeline.fit.__main__ import main

    table = isoflop_table(budgets=(1e17, 3e17, 9e17))
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{loss}\n" for n, d, loss in
                                                    zip(table.n, table.tokens, table.loss, strict=True)))
    code = main([f"runs={csv}", "budget.flops=1e21", "bootstrap=20", "next=2", f"out_dir={tmp_path / 'fit'}"],
                {"cfg": False, "debug": False})
    assert code == 0
    out = capsys.readouterr().out
    proposal = json.loads((tmp_path / "fit" / "next_runs.json").read_text())
    assert len(proposal["picks"]) == 2 and proposal["expected_width_after"] < proposal["width_now"]
    assert f"expected {proposal['expected_width_after']:.3g}x after them" in out
    assert proposal["picks"][0]["reason"] in out
    assert json.loads((tmp_path / "fit" / "recommendation.json").read_text())["next_runs"]["picks"]


def test_fit_next_k_aims_at_the_law_forms_spread_when_the_fit_reports_one(tmp_path, capsys):
    # the table of the round test above: the fit reports the forms ~10x apart, so next=K proposes what a sweep's round
    # would (both forms' draws), and says so, instead of narrowing the chosen form's own interval
    from pipeline.fit.__main__ import main

    table = isoflop_table(budgets=(1e17, 3e17, 9e17), law=ParametricLaw(1.8, 400.0, 2000.0, 0.22, 0.45), sd=0.005,
                          seed=2)
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{loss}\n" for n, d, loss in
                                                    zip(table.n, table.tokens, table.loss, strict=True)))
    assert main([f"runs={csv}", "budget.flops=3e20", "bootstrap=20", "next=2", f"out_dir={tmp_path / 'fit'}"],
                {"cfg": False, "debug": False}) == 0
    out = capsys.readouterr().out
    proposal = json.loads((tmp_path / "fit" / "next_runs.json").read_text())
    assert "Chinchilla and alpha = beta forms" in proposal["ensemble_source"]
    assert proposal["width_of"].startswith("N_opt's range across the law forms' 90% intervals")
    assert f"{proposal['width_of']} now {proposal['width_now']:.3g}x wide" in out
    assert all("shrinks N_opt's range across the law forms most per FLOP" in p["reason"] for p in proposal["picks"])


def test_too_few_profiles_make_the_round_start_with_a_new_budgets_profile(seed_fit):
    """Two profiled budgets and sweep.min_profiles=3: the round's first picks are a new budget's whole profile,
    the best of them per FLOP, with the rule in its reason; with min_profiles met the per-FLOP rule alone picks."""
    table, _ = seed_fit
    assert profiled_budgets(table.n, table.budget_flops) == 2
    spent = float(table.c.sum())
    common = dict(pilot_flops=10 * spent, stop_width=None, rounds_done=0, max_rounds=6, round_runs=4, bootstrap=40,
                  seed=1)
    forced = adaptive_round(table, TARGET, min_profiles=3, **common)
    first = forced["picks"][:3]
    assert {p["kind"] for p in first} == {"new budget"} and len({p["budget"] for p in first}) == 1
    assert "Approach 2 has 2 profiled budgets, sweep.min_profiles=3" in first[0]["reason"]
    assert all("profile_first" not in p for p in forced["picks"][3:])
    free = adaptive_round(table, TARGET, min_profiles=2, **common)
    assert all("profile_first" not in p for p in free["picks"])
    off = adaptive_round(table, TARGET, **common)                     # the default, 0: the per-FLOP rule alone
    assert all("profile_first" not in p and p.get("unit_size") == 1 for p in off["picks"])
