"""The Markdown report, report.md, with its figures: every section of the answer and how it was computed.

It reads only the JSON-able dicts of `pipeline.decide.recommend.recommend` and of the fit, so a report can be
re-rendered from recommendation.json alone. Its number formats and the terminal summary are
pipeline/decide/summary.py; its two decision figures pipeline/decide/report_figures.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.decide.convention_report import convention_lines
from pipeline.decide.lr_report import lr_section
from pipeline.decide.recommend import schedule_text
from pipeline.decide.rounds import design_section
from pipeline.decide.summary import (
    band,
    compute_phrase,
    count,
    count_lines,
    launch_text,
    loss_phrase,
    md_escape,
    range_line,
    sci,
    table,
)
from pipeline.decide.target_report import target_lines
from pipeline.fit.noise import ZIGZAG_Z
from pipeline.records import atomic_write_text

REPORT_NAME = "report.md"


# --- the report's sections -------------------------------------------------------------------------
def _headline(rec: dict) -> list[str]:
    model, conv = rec["model"], rec["convention"]
    lead = [f"**{line}**" for line in (range_line(rec),) if line] + (
        [f"Verdict: {rec['verdict']}", ""] if rec.get("verdict") else [])
    return [
        "# Recommendation", "", *lead,
        f"**Train {count(model['params'][conv])} parameters ({conv}) on {count(model['tokens'])} tokens "
        f"({model['tokens_per_param']:.1f} tokens per parameter).**", "",
        f"- {loss_phrase(rec)}",
        f"- {compute_phrase(model['compute'])}" + (f", about ${model['compute']['cost_usd']:,.0f}"
                                                     if model["compute"].get("cost_usd") else ""),
        f"- shape: {model['describe']}",
        f"- law optimum: N_opt {count(rec['n_opt'])}{_interval_text(rec, 'n_opt')}, D_opt {count(rec['d_opt'])}"
        f"{_interval_text(rec, 'd_opt')} ({rec['allocation_rule']})",
        f"- launch: {md_escape(launch_text(model['launch']))}",
        *count_lines(rec, "- "), "",
    ]


def _interval_text(rec: dict, key: str) -> str:
    interval = (rec.get("intervals") or {}).get(key)
    if not interval:
        return ""
    lo, hi = interval
    return f" [{count(lo)}, {count(hi)}]"


def _budget_section(rec: dict) -> list[str]:
    b = rec["budget"]
    lines = ["## Budget", "", f"- {md_escape(b['conversion'])}", f"- MFU: {b['mfu']:.2f}, {b['mfu_source']}"]
    if b.get("peak_source"):
        lines.append(f"- peak: {md_escape(b['peak_source'])}")
    pilot = rec.get("pilot")
    if pilot and pilot.get("share_of_budget") is not None:
        lines.append(f"- pilots: {pilot['n_runs']} runs, {pilot['total_flops']:.3g} FLOPs = "
                     f"{pilot['share_of_budget']:.2%} of the budget")
    return lines + [""]


def _full_run_section(rec: dict) -> list[str]:
    m, mem = rec["model"], rec["model"]["memory"]
    params = m["params"]
    rows = [["parameters (total / non-embedding / embedding / head)",
             " / ".join(f"{params[k]:,}" for k in ("total", "non_embedding", "embedding", "head"))],
            ["training FLOPs per token (exact / PaLM / 6N)",
             " / ".join(f"{m['flops_per_token'][k]:.4g}" for k in ("exact", "palm", "6n") if k in m["flops_per_token"])],
            ["tokens", f"{m['tokens']:,} ({m['tokens_rule']})"],
            ["learning rate", f"{m['lr']:.3g} ({m['hparam_sources']['lr_source']})"],
            ["batch", f"{m['batch_tokens']:,} tokens ({m['hparam_sources']['batch_source']})"],
            ["LR rule's reach", f"{m.get('lr_extrapolation_decades', 0):.1f} decades beyond its data "
                                f"({m.get('hparam_rule_range') or 'range not stated'})"],
            ["LR sensitivity (+-2x)", m.get("lr_sensitivity", "not recorded")],
            ["warmup", f"{m['warmup_tokens']:,} tokens, {m['warmup_steps']:,} steps"],
            ["AdamW beta2", f"{m['beta2']} ({m['hparam_sources']['beta2_source']})"],
            ["steps / schedule", f"{m['steps']:,}, {schedule_text(m['schedule'])} ({m['schedule']['source']})"],
            ["model states per replica", f"{mem['model_states_gb']:.1f} GB ({mem['states_convention']})"],
            ["activations, micro-batch 1 (none / full checkpointing)",
             f"{mem['activations_gb']['no_checkpointing']:.2f} / {mem['activations_gb']['checkpointing']:.2f} GB"],
            ["parallelism", mem["summary"]],
            ["launch", launch_text(m["launch"])]]
    lines = (["## The full run", "", "Launch with `python -m pipeline.train --config-dir <this directory> "
              "experiment=full_run` (written to `experiment/full_run.yaml`).", ""] + table(["", "value"], rows))
    diffs = rec.get("differences") or []
    if diffs:
        lines += ["What differs from the pilots, and why:", ""]
        lines += table(["setting", "pilots", "full run", "why"],
                       [[d["setting"], d["pilots"], d["full_run"], d["why"]] for d in diffs])
    return lines


def _fit_section(fit: dict | None) -> list[str]:
    if not fit:
        return ["## Fit", "", "No fit: the recommendation uses a published law.", ""]
    lines = ["## Fit", ""]
    approaches = fit.get("approaches") or {}
    if approaches:
        rows = []
        for name, a in approaches.items():
            a = a if isinstance(a, dict) else {"note": str(a)}
            rows.append([name, count(a.get("n_opt")), count(a.get("d_opt")), sci(a.get("a")), sci(a.get("b")),
                         band(a.get("n_opt_interval") or (a.get("intervals") or {}).get("n_opt")).strip() or "-",
                         md_escape(a.get("note") or a.get("status") or "")])
        lines += table(["approach", "N_opt", "D_opt", "a (N ∝ C^a)", "b (D ∝ C^b)", "N_opt interval", "note"], rows)
        if fit.get("allocation_rule"):   # the runs' own count; the headline's is the FLOP count line above
            lines += [f"The approaches' N_opt and D_opt: {fit['allocation_rule']}, C as the runs count it.", ""]
    lines += _selection_lines(fit)
    excluded = fit.get("excluded") or []
    lines.append(f"Excluded runs: {len(excluded)}." if excluded else "Excluded runs: none.")
    for item in excluded:
        if isinstance(item, dict):
            lines.append(f"- {md_escape(item.get('run_id', item.get('id', '?')))}: {md_escape(item.get('reason', ''))}")
        else:
            lines.append(f"- {md_escape(item)}")
    return lines + [""]


def _selection_lines(fit: dict) -> list[str]:
    """The law candidates with their backtest, the outlier rule either way, the noise and the minima."""
    sel = fit.get("selection") or {}
    lines = []
    if sel.get("candidates"):
        chosen = sel.get("chosen") or {}
        lines += ["### Law chosen by prediction", "",
                  f"Each candidate refitted without the largest-compute runs ({', '.join(f['label'] for f in sel['folds'])}) "
                  f"and scored on them ({sel['score']}); rule: {sel.get('rule', '')}. Chosen: "
                  f"**{chosen.get('candidate', '-')}**, outlier rule {chosen.get('outliers', '-')}.", ""]
        pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
        rows = []
        for r in sel["candidates"]:
            iv = r.get("intervals") or {}
            rows.append([("**" + r["candidate"] + "**") if r.get("chosen") else r["candidate"], r["n_free"],
                         pct(r.get("backtest_error")), pct(r.get("top_budget_error")),
                         pct(r.get("expected_error_at_target")), count(r.get("n_opt")),
                         band(iv.get("n_opt")).strip() or "-",
                         "-" if r.get("predicted_loss") is None else f"{r['predicted_loss']:.4f}",
                         band(iv.get("predicted_loss")).strip() or r.get("error", "-")])
        lines += table(["candidate", "free params", "backtest error", "top-budget error", "expected error at target",
                        "N_opt", "N_opt interval", "predicted loss", "loss interval"], rows)
        other = [r for r in sel.get("rows", []) if r["outliers"] != chosen.get("outliers")]
        if other:
            lines += ["Backtest error with the outlier rule " + (other[0]["outliers"]) + ": "
                      + ", ".join(f"{r['candidate']} {pct(r['score'])}" for r in other), ""]
    out = fit.get("outliers") or {}
    dropped = out.get("dropped") or []
    would = out.get("would_drop")
    if dropped:
        lines.append(f"Outlier rule ({out.get('setting', '')}): dropped " + ", ".join(
            f"{md_escape(d['run_id'])} (loss {d['loss']:.4g})" for d in dropped) + ".")
    elif out and would is None:          # fit_all sets would_drop only when the rule was off
        lines.append(f"Outlier rule ({out.get('setting', '')}): dropped nothing"
                     + (f" ({md_escape(out['note'])})" if out.get("note") else "") + ".")
    elif would is not None:
        lines.append("Outlier rule off; it would have dropped: " + (", ".join(
            f"{md_escape(d['run_id'])} (loss {d['loss']:.4g})" for d in would) or "nothing") + ".")
    below = out.get("below_fit") or []
    if below:
        lines.append("Far below the law, kept (a failure cannot lower a loss; check their evaluation): " + ", ".join(
            f"{md_escape(d['run_id'])} (loss {d['loss']:.4g}, {d['z']:.1f} robust sd)" for d in below) + ".")
    noise = fit.get("noise")
    if noise:
        lines.append(f"Noise model: sd of log loss {noise['sd_log']:.3g} ({noise['source']}).")
    minima = fit.get("minima") or []
    if minima:
        lines.append("IsoFLOP minima resolved beyond the noise: " + ", ".join(
            f"{m['budget_flops']:.2g} {'yes' if m['resolved'] else 'no'}"
            + (f" ({m['gap_in_sd']:.1f} sd)" if "gap_in_sd" in m else "") for m in minima) + ".")
    zig = fit.get("zigzags")
    if zig:
        noise_text = f"the noise {zig['sd_log']:.3g} ({md_escape(zig['sd_source'])})"
        w = zig["largest"]
        lines.append("Loss against N within each budget (the IsoFLOP plot's error bars): " + (
            f"unimodal at every budget ({zig['checked']} interior sizes checked; no bump above both neighbours, no "
            f"second dip), against {noise_text}." if w is None else
            f"largest zigzag a {w['kind']} of {w['gap_log']:.2%} at N {w['n']:.3g}, {w['budget_flops']:.2g} FLOPs = "
            f"{w['z']:.1f} sd of {noise_text}; {len(zig['zigzags'])} of {zig['checked']} interior sizes break the U, "
            f"{len(zig['flagged'])} beyond {ZIGZAG_Z:g} sd."))
    return lines + [""] if lines else []


def _warnings_section(rec: dict, fit: dict | None) -> list[str]:
    warnings = list(dict.fromkeys([*((fit or {}).get("warnings") or []), *(rec.get("warnings") or [])]))
    return ["## Warnings", ""] + ([f"- {md_escape(w)}" for w in warnings] or ["None."]) + [""]


def _tradeoff_sections(rec: dict) -> list[str]:
    lines = []
    dev = rec.get("deviation")
    if dev:
        rows = [[f"{r['factor']:.3g}", count(r["n_params"]), count(r["tokens"]), f"{r['tokens_per_param']:.1f}",
                 f"{r['loss']:.4f}", f"+{r['delta_loss']:.4f} ({r['delta_pct']:.2f}%)",
                 "unreachable" if r["compute_to_match"] is None else f"{r['compute_to_match']:.2f}x"]
                for r in dev["rows"]]
        lines += ["## Deviating from N_opt at the same budget", ""]
        lines += table(["N / N_opt", "N", "D", "tokens/param", "loss", "penalty", "compute to match L_opt"], rows)
    inf = rec.get("inference_aware")
    if inf:
        lines += ["## Inference-aware size (Sardana & Frankle 2023)", "",
                  f"With {inf['inference_tokens']:.3g} lifetime inference tokens, the model reaching the same loss "
                  f"({inf['target_loss']:.4f}) at the least training + inference compute has {count(inf['n_opt'])} "
                  f"parameters trained on {count(inf['d_opt'])} tokens ({inf['tokens_per_param']:.0f} tokens/param): "
                  f"{inf['total_flops']:.3g} FLOPs in all vs {inf['compute_optimal_total_flops']:.3g} for the "
                  f"compute-optimal model, a saving of {inf['saving_fraction']:.1%} (training costs "
                  f"{inf['extra_training_fraction']:+.1%}).", ""]
    dc = rec.get("data_constrained")
    if dc:
        lines += ["## Limited unique data (Muennighoff et al. 2023)", "",
                  f"{count(dc['unique_tokens'])} unique tokens: the compute-optimal plan needs {dc['epochs']:.2f} epochs "
                  f"(effective data {count(dc['effective_tokens'])}), loss {dc['loss_with_repetition']:.4f} vs "
                  f"{dc['loss_unconstrained']:.4f} with unique data. Best plan under repetition: "
                  f"{count(dc['n_opt'])} parameters on {count(dc['d_opt'])} tokens ({dc['adjusted_epochs']:.2f} epochs), "
                  f"loss {dc['adjusted_loss']:.4f}. Modelled: {dc['terms']}.", ""]
    return lines


def _published_section(rec: dict) -> list[str]:
    rows = [[p["name"], count(p["n_params"]), count(p["tokens"]), f"{p['tokens_per_param']:.1f}", p["convention"],
             p["note"] or "", p["source"]] for p in rec["published"]]
    return (["## What the published laws say for this budget", "",
             "Losses of other laws are in their own data's units, so only the allocations are compared.", ""]
            + table(["law", "N", "D", "tokens/param", "N counts", "note", "source"], rows))


METHODS = """## How these numbers are computed

- Loss law: L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2); compute-optimal allocation
  under C = 6 N D by the closed form G = (alpha A / (beta B))^(1/(alpha+beta)), N_opt = G (C/6)^(beta/(alpha+beta)),
  D_opt = (C/6)/N_opt (Hoffmann et al. 2022, eq. 4 and App. D.2).
- Parameter convention: {convention} parameters (embedding, head and non-embedding counts are listed for the shape).
- FLOP count: one count from the law's optimum to the launched run (pipeline/decide/allocation.py). With pilots
  from a sweep it is the exact training FLOPs per token of the family's shape, 3 x the forward count of Hoffmann
  et al. 2022, App. F (attention included), as their IsoFLOP budgets: N_opt minimises L(N, C / F(N)) and the run
  trains D = C / F(shape). For a published law or runs without a shape, F is the full run's PaLM count
  (Chowdhery et al. 2022, App. B), the one its launch is timed with, so a budget in GPU-days launches that many.
- Budget: GPUs x dense bf16 peak x MFU x seconds; MFU as defined by Chowdhery et al. 2022 (PaLM, App. B).
- Intervals: 5-95 percentiles of N_opt, D_opt and the loss over bootstrap refits of the law (Besiroglu et al. 2024).
- Hyperparameters: learning rate and batch from DeepSeek-AI 2024 (DeepSeek LLM, eq. 1); warmup of N tokens and
  beta2 by batch size from Porian et al. 2024 -- the same rule the pilots used; cosine to 10% (Hoffmann et al. 2022).
- Memory: 16 bytes per parameter for bf16 weights and gradients, fp32 master weights and AdamW moments
  (Rajbhandari et al. 2020, ZeRO, sec. 3.1); activations s b h (34 + 5 a s / h) bytes per layer (Korthikanti et al.
  2022, eq. 1) without the attention-score term that fused attention does not store, 2 s b h with full checkpointing.
- Inference-aware: minimise 6 N D_train + 2 N D_inference along the iso-loss curve (Sardana & Frankle 2023, sec. 2).
- Repeated data: D' = U + U R*_D (1 - exp(-R_D/R*_D)), R*_D = 15.4, and the same form for excess parameters with
  R*_N = 5.3 (Muennighoff et al. 2023, sec. 3, eq. 5 and its parameter analogue).
"""


def render_report(out_dir, fit_result: dict | None, recommendation: dict, plots: list[Path]) -> Path:
    """Write <out_dir>/report.md, showing the figures `plots` (drawn by the caller: the fit's, the target metrics',
    pipeline.decide.report_figures.report_figures'); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [Path(p) for p in plots]
    lines = (_headline(recommendation) + _budget_section(recommendation) + _full_run_section(recommendation)
             + target_lines(recommendation) + design_section(recommendation.get("design"))
             + lr_section(recommendation, fit_result, out)
             + _fit_section(fit_result) + convention_lines(recommendation) + _warnings_section(recommendation, fit_result)
             + _tradeoff_sections(recommendation) + _published_section(recommendation))
    if images:
        lines += ["## Plots", ""]
        for image in images:
            lines += [f"![{image.stem}]({Path(os.path.relpath(image.resolve(), out.resolve())).as_posix()})", ""]
    lines.append(METHODS.format(convention=recommendation["convention"]))
    path = out / REPORT_NAME
    atomic_write_text(path, "\n".join(lines))
    return path
