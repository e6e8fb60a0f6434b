"""The planner: IsoFLOP arithmetic, grid completeness, bad designs rejected before any compute."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from pipeline.config.schema import Design, Study, SweepConfig
from pipeline.errors import UserError
from pipeline.plan.design import pilot_budgets, plan_sweep, plan_table

VOCAB = 512


def isoflop_study(**sweep) -> Study:
    base = Study()
    sweep = {"design": Design.isoflop, "budgets_flops": [1e12, 3e12, 6e12], "sizes_per_budget": 5,
             "size_ratio": 1.6, "tokens_per_param_guess": 30.0, **sweep}
    return replace(base, sweep=SweepConfig(**sweep))


def test_isoflop_runs_spend_their_budget_within_one_step():
    runs = plan_sweep(isoflop_study(), VOCAB)
    assert len(runs) == 15
    for run in runs:
        spec = run.spec
        step_flops = spec.batch_tokens * spec.flops_per_token["exact"]
        # D = C / exact FLOPs-per-token(N), rounded to whole steps
        assert abs(spec.tokens * spec.flops_per_token["exact"] - spec.budget_flops) <= step_flops / 2 + 1e-6
        assert spec.tokens % spec.batch_tokens == 0


def test_isoflop_sizes_bracket_the_expected_optimum_and_grow_with_budget():
    runs = plan_sweep(isoflop_study(), VOCAB)
    by_budget = {}
    for r in runs:
        by_budget.setdefault(r.spec.budget_flops, []).append(r.spec.n_params)
    for budget, sizes in by_budget.items():
        centre = (budget / (6 * 30.0)) ** 0.5
        assert min(sizes) < centre < max(sizes)
        assert len(set(sizes)) == len(sizes)
    medians = [sorted(v)[2] for _, v in sorted(by_budget.items())]
    assert medians == sorted(medians)


def test_grid_is_the_complete_product():
    study = replace(Study(), sweep=SweepConfig(design=Design.grid, sizes=["60k", "132k", "261k"],
                                               tokens=[1e6, 2e6], tokens_per_param=[]))
    runs = plan_sweep(study, VOCAB)
    pairs = {(r.job.model.size, r.job.train.tokens) for r in runs}
    assert pairs == set(itertools.product(["60k", "132k", "261k"], [1_000_000, 2_000_000]))
    for r in runs:  # rounded to whole batches of the size's batch rule
        assert abs(r.spec.tokens - r.job.train.tokens) <= r.spec.batch_tokens / 2


def test_pilot_share_spends_that_share():
    sweep = SweepConfig(pilot_share=0.1, n_budgets=3, budget_ratio=3.0)
    budgets = pilot_budgets(sweep, full_budget_flops=1e15, runs_per_budget=5)
    assert sum(budgets) * 5 == pytest.approx(0.1 * 1e15)
    assert budgets[1] / budgets[0] == pytest.approx(3.0)


@pytest.mark.parametrize("sweep, fragment", [
    ({"budgets_flops": [1e9]}, "IsoFLOP budget 1e+09"),
    ({"sizes": ["60k", "60k"]}, "twice"),
    ({"budgets_flops": [], "pilot_share": 1.5}, "pilot_share=1.5"),
    ({"budgets_flops": [-1e12]}, "positive"),
    ({"budgets_flops": [1e12, 1e12]}, "twice"),
])
def test_bad_designs_fail_with_one_line(sweep, fragment):
    study = isoflop_study(**sweep)
    study = replace(study, budget=replace(study.budget, flops=1e15))
    with pytest.raises(UserError) as err:
        plan_sweep(study, VOCAB)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_plan_table_lists_every_run_and_the_total():
    runs = plan_sweep(isoflop_study(), VOCAB)
    table = plan_table(runs)
    for r in runs:
        assert r.run_id in table
    assert "15 runs" in table


def test_run_ids_are_deterministic_and_semantic():
    a = plan_sweep(isoflop_study(), VOCAB)
    b = plan_sweep(isoflop_study(), VOCAB)
    assert [r.run_id for r in a] == [r.run_id for r in b]
    lr_changed = replace(isoflop_study(), train=replace(Study().train, lr=1e-3))
    assert plan_sweep(lr_changed, VOCAB)[0].run_id != a[0].run_id
    tags_changed = replace(isoflop_study(), tracking=replace(Study().tracking, tags=["x"]))
    assert plan_sweep(tags_changed, VOCAB)[0].run_id == a[0].run_id


def test_centre_seeds_repeat_only_each_budgets_centre_size():
    study = isoflop_study()
    one = plan_sweep(study, VOCAB)
    two = plan_sweep(replace(study, sweep=replace(study.sweep, centre_seeds=2)), VOCAB)
    budgets = sorted({r.spec.budget_flops for r in one})
    assert len(two) == len(one) + len(budgets) and len({r.run_id for r in two}) == len(two)
    for budget in budgets:
        mine = sorted((r for r in one if r.spec.budget_flops == budget), key=lambda r: r.spec.n_params)
        centre = mine[len(mine) // 2].spec
        repeats = [r for r in two if r.spec.budget_flops == budget and r.spec.n_params == centre.n_params]
        assert sorted(r.job.train.seed for r in repeats) == [study.train.seed, study.train.seed + 1]
        assert {r.spec.tokens for r in repeats} == {centre.tokens}
        others = [r for r in two if r.spec.budget_flops == budget and r.spec.n_params != centre.n_params]
        assert {r.job.train.seed for r in others} == {study.train.seed}


def test_seeds_repeat_every_run_with_its_own_seed_and_identity():
    study = isoflop_study()
    one = plan_sweep(study, VOCAB)
    three = plan_sweep(replace(study, sweep=replace(study.sweep, seeds=3)), VOCAB)
    assert len(three) == 3 * len(one) and len({r.run_id for r in three}) == len(three)
    first = three[:3]
    assert [r.job.train.seed for r in first] == [study.train.seed + k for k in range(3)]
    assert len({(r.spec.n_params, r.spec.tokens) for r in first}) == 1      # same point, three seeds


@pytest.mark.parametrize("sweep, message", [
    ({"centre_seeds": 0}, "centre_seeds=0 must be >= 1"),
    ({"centre_seeds": 2, "seeds": 2}, "set only one of them"),
    ({"centre_seeds": 2, "cooldown_reuse": True}, "centre_seeds > 1 with sweep.cooldown_reuse"),
])
def test_centre_seeds_conflicts_are_refused_in_one_line(sweep, message):
    from pipeline.config.validate import validate_study
    with pytest.raises(UserError, match=message) as info:
        validate_study(isoflop_study(**sweep))
    assert "\n" not in str(info.value)


def test_centre_seeds_are_ignored_by_designs_without_budgets():
    from pipeline.config.validate import validate_study
    study = isoflop_study(centre_seeds=2)
    for over in ({"seeds": 2}, {"cooldown_reuse": True}):
        grid = replace(study, sweep=replace(study.sweep, design=Design.grid, sizes=["46k"], tokens=[1e6], **over))
        validate_study(grid)                     # the preset's centre seeds do not block a grid study
