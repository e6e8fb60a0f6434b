"""Issue 26: no confident wrong answer, whatever the runs table holds.

Every table is synthetic, drawn here from a stated law -- Chinchilla's published fit (Hoffmann et al.
2022: E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28), whose truth at 1e21 FLOPs is N_opt 1.82B, loss
2.33 -- in an IsoFLOP design of 4 budgets x 5 sizes with 0.5% log-normal noise, then given one defect.
Each case calls `python -m pipeline.fit` in this process (tests/test_bad_input.py's `call_entry`) and
ends in one of two ways: exit 2 with one `error:` line that says what to change (no traceback, no
file written), or an honest result -- the truth inside the stated 90% interval, or a verdict saying
the table cannot decide. `ADVERSARIAL` is the table of cases; docs/reliability.md counts it.
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from pipeline.cli import run_main
from pipeline.errors import UserError
from pipeline.fit.laws import published_law
from pipeline.records import write_record
from tests.test_bad_input import call_entry
from tests.test_runs_table import record

LAW = published_law("chinchilla")
TARGET = 1e21
TRUE_N_OPT = float(LAW.optimal_allocation(TARGET)[0])           # 1.82e9
BUDGETS = (1e18, 3e18, 1e19, 3e19)


def design(budgets=BUDGETS, sizes: int = 5, ratio: float = 2.0, noise: float = 0.005, seed: int = 0) -> list[dict]:
    """IsoFLOP rows around the law's optimum: N `ratio` apart, D = C / 6N, loss x exp(N(0, noise))."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for k in np.arange(sizes) - (sizes - 1) / 2:
            n = float(LAW.optimal_allocation(c)[0] * ratio**k)
            d = c / (6 * n)
            rows.append({"params": n, "tokens": d, "loss": float(LAW.loss(n, d) * np.exp(rng.normal(0, noise))),
                         "budget_flops": c})
    return rows


def exact(rows: list[dict]) -> list[dict]:
    """The same (N, D) with the law's noiseless loss."""
    return [{**r, "loss": float(LAW.loss(r["params"], r["tokens"]))} for r in rows]


def with_accuracy(value) -> list[dict]:
    """A task whose bpb follows the loss and whose accuracy is value(bpb) (HellaSwag: chance 0.25)."""
    return [{**r, "hellaswag_bpb": 0.4 * r["loss"], "hellaswag_acc": float(value(0.4 * r["loss"]))} for r in design()]


def replaced(index: int, **values) -> list[dict]:
    rows = design()
    rows[index] = {**rows[index], **values}
    return rows


TABLES = {
    "one_budget": lambda: design(budgets=(1e19,)),
    "same_n": lambda: exact([{**r, "params": 1e7, "tokens": r["budget_flops"] / 6e7} for r in design()]),
    "tokens_n_over_100": lambda: exact([{"params": r["params"], "tokens": r["params"] / 100} for r in design()]),
    "grid_2x2_two_seeds": lambda: [{"params": n, "tokens": d, "loss": float(LAW.loss(n, d) * (1 + s))}
                                   for n in (1e8, 4e8) for d in (2e9, 8e9) for s in (0.0, 0.004)],
    "loss_1e308": lambda: replaced(3, loss=1e308),
    "n_1e308": lambda: replaced(3, params=1e308),
    "acc_above_1": lambda: with_accuracy(lambda b: 100 * (0.25 + 0.7 / (1 + np.exp(6 * (b - 1.2))))),
    "acc_below_chance": lambda: with_accuracy(lambda b: 0.1),
    "acc_constant": lambda: with_accuracy(lambda b: 0.5),
}
FIT = ["runs={dir}/base.csv", f"budget.flops={TARGET:g}", "bootstrap=0"]


def runs(table: str) -> list[str]:
    return [f"runs={{dir}}/{table}.csv", f"budget.flops={TARGET:g}", "bootstrap=0"]


# (case, arguments, fragment of the one error line). Each ends in exit 2, before any fit or file.
ADVERSARIAL = [
    ("one budget only (5 runs)", runs("one_budget"), "N and D move together"),
    ("every run at the same N", runs("same_n"), "1 distinct model size"),
    ("tokens = N/100 (N and D proportional)", runs("tokens_n_over_100"), "N and D move together"),
    ("2 x 2 grid with two seeds", runs("grid_2x2_two_seeds"), "2 distinct model sizes"),
    ("fixed_E above every loss", [*FIT, "law_fit.candidate=fixed_E", "law_fit.fixed_E=5"],
     "law_fit.fixed_E=5 is not below the lowest pilot loss"),
    ("fixed_E = 1e308", [*FIT, "law_fit.fixed_E=1e308"], "law_fit.fixed_E=1e+308 is not below the lowest pilot loss"),
    ("one loss of 1e308", runs("loss_1e308"), "line 5: loss=1e+308 is above 100"),
    ("one N of 1e308", runs("n_1e308"), "line 5: params=1e+308 is above 1e+15"),
    ("accuracy above 1", [*runs("acc_above_1"), "target=hellaswag:acc"], "is not an accuracy in [0, 1]"),
    ("accuracy below chance everywhere", [*runs("acc_below_chance"), "target=hellaswag:acc"],
     "no signal in hellaswag_acc: every run is at or below chance"),
    ("constant accuracy", [*runs("acc_constant"), "target=hellaswag:acc"], "no signal in hellaswag_acc: 0.5-0.5"),
    ("budget 1e40 FLOPs, published law", ["law=chinchilla", "budget.flops=1e40"], "is above 1e+30 FLOPs"),
    ("budget 1e300 FLOPs, published law", ["law=chinchilla", "budget.flops=1e300"], "is above 1e+30 FLOPs"),
    ("budget 1e300 FLOPs, fitted law", [*FIT[:1], "budget.flops=1e300"], "is above 1e+30 FLOPs"),
]


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    write_csv(root / "base.csv", design())
    write_csv(root / "doubled.csv", design() + design())
    write_csv(root / "few.csv", design(budgets=BUDGETS[1:], sizes=3))
    for name, make in TABLES.items():
        write_csv(root / f"{name}.csv", make())
    return root


def fit(args: list[str], tables, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(work)
    return call_entry("fit", [*(a.format(dir=tables) for a in args), f"out_dir={work / 'fit'}",
                              f"results_dir={work / 'results'}"], monkeypatch, capsys)


@pytest.mark.parametrize("args, fragment", [c[1:] for c in ADVERSARIAL], ids=[c[0] for c in ADVERSARIAL])
def test_each_defect_is_one_line_and_exit_2_before_any_fit_or_file(args, fragment, tables, tmp_path, monkeypatch,
                                                                   capsys):
    start = time.perf_counter()
    code, lines, out = fit(args, tables, tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out and "{" not in lines[0]     # no traceback, no raw dict
    assert list((tmp_path / "work").rglob("*")) == []          # nothing written
    assert time.perf_counter() - start < 60                    # refused before the fit: no hang (a generous bound)


def result(tmp_path) -> dict:
    return json.loads((tmp_path / "work" / "fit" / "recommendation.json").read_text())


def test_the_clean_table_is_honest_the_truth_inside_the_90_interval(tables, tmp_path, monkeypatch, capsys):
    code, _, out = fit([*FIT[:2], "bootstrap=100"], tables, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    lo, hi = result(tmp_path)["intervals"]["n_opt"]
    assert lo < TRUE_N_OPT < hi


def test_exact_duplicate_rows_are_flagged_and_counted_once(tables, tmp_path, monkeypatch, capsys):
    """Doubling every row (issue 26: intervals shrank x/1.3 -> x/1.2, the truth fell outside) changes nothing
    but the warning; keep_duplicates=true fits every copy, and the interval narrows as it did before the fix."""
    assert fit([*FIT[:2], "bootstrap=40"], tables, tmp_path / "a", monkeypatch, capsys)[0] == 0
    once = result(tmp_path / "a")
    doubled = ["runs={dir}/doubled.csv", FIT[1], "bootstrap=40"]
    assert fit(doubled, tables, tmp_path / "b", monkeypatch, capsys)[0] == 0
    dropped = result(tmp_path / "b")
    assert dropped["intervals"]["n_opt"] == once["intervals"]["n_opt"]
    assert sum("duplicate_of" in e for e in dropped["excluded"]) == 20
    assert any("20 rows are exact duplicates" in w for w in dropped["warnings"])
    assert fit([*doubled, "keep_duplicates=true"], tables, tmp_path / "c", monkeypatch, capsys)[0] == 0
    kept = result(tmp_path / "c")["intervals"]["n_opt"]
    assert kept[1] / kept[0] < once["intervals"]["n_opt"][1] / once["intervals"]["n_opt"][0]


def test_too_few_runs_per_parameter_never_say_size_the_run(tables, tmp_path, monkeypatch, capsys):
    """9 runs (3 budgets x 3 sizes) identify the 5-parameter law, barely: fitted, but the verdict says it
    cannot decide (before: 'pilots pin N_opt within 1.4x ...: usable')."""
    code, _, out = fit(["runs={dir}/few.csv", FIT[1], "bootstrap=0"], tables, tmp_path, monkeypatch, capsys)
    assert code == 0, out
    verdict = result(tmp_path)["verdict"]
    assert verdict.startswith("the table cannot decide N_opt: 9 runs for a 5-parameter law") and "size the run" not in \
        verdict.replace("before sizing a run", "")


# --- comparability and the plan -------------------------------------------------------------------------
def sweep_of(tmp_path, **hparams_b) -> object:
    rows = design()
    for i, r in enumerate(rows):
        hparams = {"weight_decay": 0.1, "grad_clip": 1.0, **(hparams_b if i % 2 else {})}
        write_record(tmp_path / "s" / "runs" / f"r{i}", record(
            f"r{i}", n=int(r["params"]), tokens=int(r["tokens"]), loss=r["loss"], budget=r["budget_flops"],
            hparams=hparams, precision="fp32"))
    return tmp_path / "s"


@pytest.mark.parametrize("setting, fragment", [({"weight_decay": 0.0}, "train.weight_decay (10 runs with 0.1"),
                                               ({"grad_clip": 0.5}, "train.grad_clip")])
def test_runs_with_another_training_setting_are_not_fitted_together(setting, fragment, tmp_path, monkeypatch, capsys):
    folder = sweep_of(tmp_path, **setting)
    code, lines, _ = fit([f"runs={folder}", FIT[1], "bootstrap=0"], tmp_path, tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


def test_a_sweep_folder_without_its_plan_is_refused_not_fitted_whole(tmp_path, monkeypatch, capsys):
    folder = sweep_of(tmp_path)
    (folder / "attempts.json").write_text("{}")                 # a sweep launched here; plan.json is gone
    code, lines, _ = fit([f"runs={folder}", FIT[1], "bootstrap=0"], tmp_path, tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "plan.json is missing, though a sweep ran" in lines[0], lines
    code, _, out = fit([f"runs={folder}", FIT[1], "bootstrap=0", "all_runs=true"], tmp_path, tmp_path / "all",
                       monkeypatch, capsys)
    assert code == 0, out


# --- the small things -----------------------------------------------------------------------------------
class _Manifest:
    vocab_size = 512


def test_the_sweep_rewrites_a_deleted_plan_and_quotes_its_next_command(tmp_path, monkeypatch, capsys):
    """The data stage and the launcher are replaced (no corpus, no training): the launch deletes plan.json
    as a person might mid-sweep, and every run then reads as done."""
    import importlib

    sweep = importlib.import_module("pipeline.sweep.__main__")
    results = tmp_path / "my results"
    plan = results / "cpu_tiny" / "plan.json"
    monkeypatch.setattr(sweep, "prepare_corpus", lambda data: _Manifest())
    monkeypatch.setattr(sweep, "launch", lambda *a, **k: plan.unlink())
    real = sweep.pending_runs
    calls = []

    def pending(study, planned):
        calls.append(1)
        return real(study, planned) if len(calls) == 1 else ([], {r.run_id: "done" for r in planned})
    monkeypatch.setattr(sweep, "pending_runs", pending)
    monkeypatch.setattr("sys.argv", ["pipeline.sweep", "experiment=cpu_tiny", f"results_dir={results}"])
    with pytest.raises(SystemExit) as stop:
        run_main(sweep.main, sweep.USAGE)
    out = capsys.readouterr()
    assert stop.value.code == 0 and plan.is_file()
    assert "was removed during the sweep: rewritten" in out.err
    assert f"next: python -m pipeline.fit experiment=cpu_tiny 'results_dir={results}'" in out.out


def test_only_the_main_process_prints_the_final_line_and_the_error(monkeypatch, capsys):
    import importlib

    train = importlib.import_module("pipeline.train.__main__")
    done = {"run_id": "r", "status": "ok", "final_val_loss": 3.0, "run_dir": "/tmp/r", "exit_code": 0}
    monkeypatch.setattr(train, "check_run", lambda job: None)
    monkeypatch.setattr(train, "execute", lambda job: done)

    def bad(overrides, flags):
        raise UserError("the same bad input on every rank")

    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert train.main(["model=tiny"], {}) == 0
        assert len(capsys.readouterr().out.splitlines()) == lines
        with pytest.raises(SystemExit) as stop:
            run_main(bad, "")
        assert stop.value.code == 2 and len(capsys.readouterr().err.splitlines()) == lines


def test_the_verdict_matches_the_options_given():
    """Issue 26: with bootstrap=200 and no interval, the verdict asked for 'bootstrap > 0'."""
    from pipeline.fit.checks import verdict

    assert verdict({"bootstrap_requested": 0}).endswith("fit with bootstrap > 0")
    line = verdict({"bootstrap_requested": 200})
    assert "the bootstrap gave no interval from its 200 resamples" in line and "bootstrap > 0" not in line


def test_rules_that_state_each_runs_own_value_compare_by_the_rule_not_the_value():
    """The demo's runs differ in batch, so their beta2 rule's text names different batches: one rule, comparable.
    A beta2 given by hand against the rule's is another setting, and refused."""
    from pipeline.fit.comparable import check_comparable

    def record(beta2_source):
        return {"hparams": {"beta2_source": beta2_source, "warmup_source": "Porian et al. 2024: N tokens, <=25% of run"}}

    rule = "Porian et al. 2024: beta2 0.999 for {}-token batches (small batches need beta2 near 1)"
    check_comparable([record(rule.format(1152)), record(rule.format(2304))], "runs")
    with pytest.raises(UserError, match="beta2 rule"):
        check_comparable([record(rule.format(1152)), record("train.beta2=0.98 (given)")], "runs")
