"""`python -m pipeline.fit`: runs -> a fitted law -> the (N, D) recommendation and its report.

    python -m pipeline.fit experiment=cpu_tiny                      # the demo sweep's runs
    python -m pipeline.fit runs=my_runs.csv budget.flops=1e23       # params,tokens,loss[,flops] from elsewhere
    python -m pipeline.fit runs=wandb:entity/project budget.gpu=h100_sxm budget.gpus=32 budget.days=14
    python -m pipeline.fit law=epoch budget.flops=1e23              # a published law instead of a fit

Writes <out_dir>/recommendation.json, report.md, the plots and experiment/full_run.yaml, and prints
a few-line summary. Options: bootstrap=N (0 skips the intervals), outliers=auto|default|none,
law_fit.candidate=chinchilla|overtrain|fixed_E, law_fit.fixed_E=1.7, convention=non_embedding,
inference.tokens=T, data.unique_tokens=U, all_runs=true (every record in the folder, not only plan.json's),
keep_duplicates=true (fit exact duplicate rows each time; by default a repeated row counts once),
full_run_preset=study (without pilots: size the full run for this config's tokenizer instead of gpt2-2048),
target=<metric> | <task>:acc (docs/downstream.md), predict.params=[...] predict.tokens=[...],
serving.max_params=N, next=K (the K runs that would shrink N_opt's interval most per FLOP, written to
next_runs.json; docs/adaptive_design.md), columns.params=<column> (also tokens, loss, flops, run_id, status, step),
steps=<dir of per-step CSVs>. With two cores or more the command forks worker processes for half of each large fit
batch and for its figures (pipeline/fit/worker.py); PIPELINE_FIT_WORKER=0 keeps everything in this process.

One FLOP count runs through the decision (pipeline/decide/allocation.py): with pilots from a sweep, the exact
count of their family at their vocabulary and sequence length (what their IsoFLOP budgets used); for a
published law or runs from a file or W&B (no shape), the full run's own PaLM count, the one its launch is timed
with (an L(N, D) law holds whatever count it was fitted with; Kaplan's frontier keeps 6 N D for N_opt). A budget of
GPUs x days is PaLM FLOPs, so with pilots it is sized on the PaLM line of their family (full_run.budget_line_count):
the launched run's days are the budget's. The output names the count and why.
"""

from __future__ import annotations

import gc
import json
import shlex
from pathlib import Path

from pipeline.cli import load_study, run_main
from pipeline.config.load import as_dict
from pipeline.config.schema import Study
from pipeline.decide.allocation import exact_count
from pipeline.decide.budget import resolve_budget
from pipeline.decide.full_run import budget_line_count, full_run_count, target_from_pilots, target_from_preset
from pipeline.decide.full_run_yaml import write_full_run_config
from pipeline.decide.litgpt_export import write_litgpt_config
from pipeline.decide.predict import loss_model, predictions_only, target_sections
from pipeline.decide.recommend import recommend
from pipeline.decide.report import render_report
from pipeline.decide.rounds import design_summary, propose_next
from pipeline.decide.summary import terminal_summary
from pipeline.decide.target_report import target_summary
from pipeline.errors import UserError
from pipeline.fit import worker
from pipeline.fit.checks import form_spread
from pipeline.fit.fit_all import fit_all, law_from_fit
from pipeline.fit.identifiability import require_identifiable
from pipeline.fit.laws import ParametricLaw, published_law
from pipeline.fit.sources import columns_from_config, load_runs
from pipeline.fit.targets import Target, check_target_signal, fit_metric, fit_targets, parse_target
from pipeline.records import atomic_write_json, check_writable_dir, writable_dir_error

USAGE = __doc__
# The figures this command writes beside report.md; a fit into a folder first removes the previous fit's copies.
FIT_FIGURES = ("isoflop_profiles.png", "frontier.png", "parametric_fit.png")   # pipeline/fit/plots.py: plot_fit
REPORT_FIGURES = ("deviation.png", "inference_aware.png")                      # pipeline/decide/report_figures.py
METRIC_FIGURES = "metric_*.png"                                               # pipeline/decide/target_figures.py


def output_dir(study: Study) -> Path:
    return Path(study.out_dir) if study.out_dir else Path(study.results_dir) / study.sweep_name / "fit"


def runs_source(study: Study) -> str:
    return study.runs or str(Path(study.results_dir) / study.sweep_name)


def decision_inputs(study: Study, table) -> tuple[dict, object, float | None, str | None]:
    """Before any file is written: what the full run is sized for (tokenizer, vocabulary, sequence length,
    precision), the FLOP count, and the unique tokens with where that number comes from."""
    convention = study.convention if study.law is None else None
    pilots = table is not None and table.vocab_size and table.seq_len and table.flop_method == "exact"
    if pilots:
        setup = table.setup or {}
        tied = setup.get("tie_embeddings")
        run_target = target_from_pilots({"tokenizer": setup.get("tokenizer"), "vocab_size": table.vocab_size,
                                         "seq_len": table.seq_len,
                                         "tie_embeddings": study.model.tie_embeddings if tied is None else tied})
        count = exact_count(table.vocab_size, table.seq_len, convention or "total",
                            run_target["architecture"]["tie_embeddings"])
    else:
        run_target = target_from_preset(study.full_run_preset, as_dict(study.data), study.model.seq_len,
                                    why_no_pilots="no pilot records" if study.law is None else f"published law {study.law}")
        run_target["architecture"] = {"tie_embeddings": study.model.tie_embeddings}
        count = full_run_count(run_target, convention or ("non_embedding" if study.law == "kaplan" else "total"),
                               law=study.law, frontier=study.law == "kaplan",
                               runs=runs_source(study) if study.law is None else None)
    unique, source = study.data.unique_tokens, "declared by data.unique_tokens"
    if unique is None and run_target.get("unique_tokens"):  # the preset's corpus, when it trains on its own
        unique, source = float(run_target["unique_tokens"]), run_target["unique_tokens_source"]
    if unique is None and table is not None and (table.setup or {}).get("unique_tokens"):
        unique = float(table.setup["unique_tokens"])
        source = f"the pilots' prepared corpus {table.setup.get('data_fingerprint')} (its manifest)"
    elif unique is None and study.data.max_train_tokens:
        unique = float(study.data.max_train_tokens)
        source = "at most data.max_train_tokens (the corpus is capped there; the prepared count may be lower)"
    return run_target, count, unique, (source if unique is not None else None)


def remove_previous_figures(out_dir: Path) -> None:
    """A fit into a folder replaces the previous fit's figures: only the files the fit itself writes."""
    for name in (*FIT_FIGURES, *REPORT_FIGURES):
        (out_dir / name).unlink(missing_ok=True)
    for path in out_dir.glob(METRIC_FIGURES):  # one per recorded metric
        path.unlink(missing_ok=True)


def predict_without_budget(study: Study, table, out_dir: Path) -> int:
    """`predict.params/tokens` without a budget: fit the target, predict, stop."""
    runs = table.with_convention(study.convention)
    chosen = fit_metric(runs, parse_target(study.target, runs), bootstrap=study.bootstrap, seed=study.seed,
                        outliers=study.outliers)          # the target alone: no decision needs the others
    rec = predictions_only(chosen, list(zip(study.predict.params, study.predict.tokens, strict=True)))
    rec["source"] = {"runs": runs_source(study), "bootstrap": study.bootstrap, "convention": study.convention}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "recommendation.json", rec)
    for p in rec["predictions"]:
        band = f" [{p['interval'][0]:.4g}, {p['interval'][1]:.4g}] (5-95%)" if p["interval"] else ""
        print(f"{p['target']} at N {p['params']:.4g}, D {p['tokens']:.4g}: {p['value']:.4g}{band}")
    print(f"{rec['note']}\npredictions: {out_dir / 'recommendation.json'}")
    return 0


def main(overrides: list[str], flags: dict) -> int:
    study = load_study(overrides, flags)
    if study is None:  # --cfg printed it
        return 0
    out_dir = output_dir(study)
    fit_result, law_samples, table, pilot = None, None, None, None
    if study.law is None:
        table = load_runs(runs_source(study), convention=study.convention, all_runs=study.all_runs,
                          columns=columns_from_config(study.columns), steps=study.steps,
                          keep_duplicates=study.keep_duplicates)
        pilot = table.pilot_summary()
        check_target_signal(table, parse_target(study.target, table))  # an unknown target or one without signal
        require_identifiable(table.with_convention(study.convention), study.law_fit.fixed_E)  # and a table that
        # cannot tell the law (one budget, one size, N and D tied; pipeline/fit/identifiability.py)
    elif study.target != "loss":
        raise UserError(f"target={study.target} needs runs to fit: a published law (law={study.law}) has only the loss")
    if study.next and (study.law is not None or study.next < 0):
        raise UserError(f"next={study.next}: proposing runs needs runs to fit and a positive count, e.g. runs=my.csv next=4")
    if table is not None and study.predict.params and study.budget.flops is None and study.budget.days is None:
        check_writable_dir(out_dir, "out_dir (or results_dir)")
        return predict_without_budget(study, table, out_dir)
    run_target, count, unique_tokens, unique_source = decision_inputs(study, table)
    budget = resolve_budget(study.budget, pilot_flops=pilot.get("total_flops") if pilot else None)
    check_writable_dir(out_dir, "out_dir (or results_dir)")  # before the fit: its results must be savable
    if study.law is not None:
        law = published_law(study.law)
    else:
        fit_result = fit_all(table, budget_flops=budget["flops"], bootstrap=study.bootstrap,
                             outliers=study.outliers, seed=study.seed, convention=study.convention,
                             fixed_E=study.law_fit.fixed_E, candidate=study.law_fit.candidate,
                             # the pilots' own count; a table without shapes keeps its C for Approaches 1-3's fit
                             flops_per_token=count.flops_per_token if count.name == "exact" else None)
        law, law_samples = law_from_fit(fit_result)
        design = adaptive_design(study)
        if design:
            fit_result["design"] = design
            fit_result["verdict"] = f"{fit_result['verdict']}; {design_summary(design)}"
        if study.next and str(study.target).strip() == "loss":   # a target's: target_metric_sections, from its fit
            fit_result["next_runs"] = propose_next(table.with_convention(study.convention), budget["flops"], study.next,
                                                   law=law, samples=law_samples, seed=study.seed,
                                                   sd_log=(fit_result.get("noise") or {}).get("sd_log"),
                                                   forms_apart=form_spread(fit_result) is not None)
    try:
        return write_outputs(study, out_dir, fit_result, law, law_samples, table, pilot, budget,
                             (run_target, budget_line_count(count, budget), unique_tokens, unique_source))
    except OSError as err:  # a read-only or full results folder: one line with the path
        raise writable_dir_error(out_dir, err, "out_dir (or results_dir)") from err


def write_outputs(study: Study, out_dir: Path, fit_result, law, law_samples, table, pilot, budget,
                  inputs: tuple) -> int:
    run_target, count, unique_tokens, unique_source = inputs
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_previous_figures(out_dir)
    # Figures go to the figure workers while this process decides (pipeline/fit/worker.py); their paths, for the
    # report, are collected last. Each names its function: this process never imports matplotlib.
    figures = worker.runner()
    drawing = [figures.submit("figures", "pipeline.fit.plots:plot_fit", fit_result, table, out_dir, names) for names in
               (FIT_FIGURES[:1], FIT_FIGURES[1:])] if fit_result is not None else []   # two at once (the slowest alone)
    rec = recommend(law, budget, law_samples=law_samples, target=run_target, count=count, pilot=pilot,
                    pilot_setup=table.setup if table is not None else None,
                    inference_tokens=study.inference.tokens, unique_tokens=unique_tokens,
                    unique_tokens_source=unique_source,
                    convention=study.convention if study.law is None else None,
                    pilot_schedule=table.schedule if table is not None else None)
    if fit_result is not None:
        # The fit's own headline numbers and intervals (Approach 3 with its bootstrap) lead.
        for key in ("approaches", "excluded", "outliers", "backtest", "sensitivity", "flop_method", "headline",
                    "selection", "noise", "minima", "agreement", "identifiability", "verdict", "next_runs",
                    "design"):
            if key in fit_result:
                rec[key] = fit_result[key]
        rec["law"] = {**rec["law"], **fit_result["law"]}
        # The law parameters' intervals come from the fit; N_opt, D_opt, tokens/param and the loss stay the
        # decision's, each bootstrap sample allocated under the same count as the headline.
        rec["intervals"] = {**fit_result.get("intervals", {}), **(rec.get("intervals") or {})}
        rec["warnings"] = list(dict.fromkeys([*fit_result.get("warnings", []), *rec["warnings"]]))
    if isinstance(law, ParametricLaw):  # target metrics (pipeline/fit/targets.py), their decision (decide/predict.py)
        models, target_name = target_metric_sections(study, rec, table, law, law_samples, budget, count)
        drawing.append(figures.submit("figures", "pipeline.decide.target_figures:plot_targets", models, target_name,
                                      budget["flops"], rec["n_opt"], out_dir))
    drawing.append(figures.submit("figures", "pipeline.decide.report_figures:report_figures", rec, out_dir))
    rec["budget_flops"] = budget["flops"]
    rec["source"] = {"runs": runs_source(study) if study.law is None else None, "law": study.law,
                     "experiment": study.experiment, "bootstrap": study.bootstrap}
    config_path = write_full_run_config(rec, out_dir, base_overrides={"data": as_dict(study.data),
                                                                      "model": {"init_std": study.model.init_std}})
    rec["full_run_config"] = str(config_path)
    rec["litgpt_config"] = str(write_litgpt_config(rec, out_dir))  # or why there is none
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "recommendation.json", rec)
    report = render_report(out_dir, fit_result, rec, [path for job in drawing for path in figures.result(job)])
    print(terminal_summary(rec))
    if target_summary(rec):
        print(target_summary(rec))
    if rec.get("next_runs"):
        print(next_runs_summary(rec["next_runs"], out_dir))
    print(f"recommendation: {out_dir / 'recommendation.json'}\nreport: {report}\nfull run: "
          f"python -m pipeline.train --config-dir {shlex.quote(str(out_dir))} experiment=full_run "
          "(check it first: train.dry_run=true)")
    return 0


def adaptive_design(study: Study) -> dict | None:
    """The adaptive design's rounds and stop reason from the sweep's plan.json (None for other designs or files)."""
    plan = Path(runs_source(study)) / "plan.json"
    if study.runs or not plan.is_file():
        return None
    try:
        return json.loads(plan.read_text()).get("design")
    except (OSError, ValueError, AttributeError):
        return None   # the table loader already says when plan.json is unreadable


def next_runs_summary(proposal: dict, out_dir: Path) -> str:
    """Writes next_runs.json; the lines to print: each proposed run and why, and the width expected after."""
    atomic_write_json(out_dir / "next_runs.json", proposal)
    lines = [f"next {len(proposal['picks'])} runs ({proposal['rule']}; {proposal['width_of']} now "
             f"{proposal['width_now']:.3g}x wide, expected {proposal['expected_width_after']:.3g}x after them; "
             f"the quantity: {proposal['quantity']}):"]
    lines += [f"  {p['reason']}" for p in proposal["picks"]]
    return "\n".join([*lines, f"next runs: {out_dir / 'next_runs.json'}"])


def target_metric_sections(study: Study, rec: dict, table, law, law_samples, budget: dict, count) -> tuple[dict, str]:
    """Every recorded metric at the recommended run, the chosen target's optimum on the budget line (under
    the decision's FLOP count), the serving cap and the predictions; returns the metrics' models to plot (the loss's
    too when it is the target) and the target's name."""
    target, models, failed = (fit_targets(table.with_convention(study.convention), study.target,
                                          bootstrap=study.bootstrap, seed=study.seed, outliers=study.outliers)
                              if table is not None else (Target("loss", "loss", "loss"), {}, {}))
    runs = table.with_convention(study.convention) if table is not None else None
    loss = loss_model(law, law_samples, None if runs is None else {"n": runs.n, "d": runs.tokens, "value": runs.loss})
    rec.update(target_sections(
        loss=loss, target=loss if target.kind == "loss" else models[target.name], models=models,
        budget_flops=budget["flops"], recommended=(rec["model"]["params"][rec["convention"]], rec["model"]["tokens"]),
        loss_optimum=(rec["law_optimum"]["n"], rec["law_optimum"]["d"]),  # the law's own (N, D) pair
        max_params=study.serving.max_params,
        predict_pairs=list(zip(study.predict.params, study.predict.tokens, strict=True)), count=count),
        metric_fit_failures=failed)
    if study.next and target.kind != "loss":   # the chooser on the target's own bootstrap (decide/rounds.py)
        rec["next_runs"] = propose_next(runs, budget["flops"], study.next, seed=study.seed, target=models[target.name])
    return ({"loss": loss, **models} if target.kind == "loss" else models), target.name


if __name__ == "__main__":
    # The imports' objects (matplotlib, Hydra: ~90,000 the collector tracks) live as long as this process: frozen, the
    # collector's full passes no longer walk them (0.05 of its 0.1 s in the command; docs/fit_benchmark.md).
    gc.freeze()
    with worker.started():   # processes for half of each fit batch and for the figures, forked now (pipeline/fit/worker.py)
        run_main(main, USAGE)
