"""The human-readable output: a Markdown report with plots, and a few-line terminal summary.

Both read only the JSON-able dicts of `pipeline.decide.recommend.recommend` and of the fit, so a report can
be re-rendered from recommendation.json alone. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.decide.convention_report import convention_lines
from pipeline.decide.lr_report import lr_section
from pipeline.decide.recommend import schedule_text
from pipeline.decide.rounds import design_section
from pipeline.decide.target_report import target_lines
from pipeline.fit.checks import form_spread
from pipeline.fit.noise import ZIGZAG_Z
from pipeline.fit.plots import save_figure
from pipeline.records import atomic_write_text

REPORT_NAME = "report.md"
REPORT_FIGURES = ("deviation.png", "inference_aware.png")  # written beside report.md by render_report


# --- formatting ------------------------------------------------------------------------------------
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")



def launch_text(launch: dict) -> str:
    """One line on how the full run launches (pipeline/plan/launch.py)."""
    return (f"{launch['world_size']} GPUs ({launch['parallelism']}), micro-batch {launch['micro_batch_size']} x "
            f"{launch['grad_accum_steps']} accumulation, {launch['peak_memory_gb_per_gpu']:.1f} GB per GPU; "
            f"batch: {launch['batch_note']}")

def md_escape(value) -> str:
    """Text that came from input (run ids, statuses, reasons and warnings quoting them, GPU names) as
    inert Markdown: one line, `&` and `<` HTML-escaped (no tags, scripts, autolinks or entities; a lone
    `>` opens nothing and stays readable, as in "loss 25773 > 2.0 x best"), and the brackets
    of links and images, emphasis, code spans and table bars backslash-escaped, so that no
    `[x](javascript:...)` link, `![](http://...)` remote image or `|` cell break can form."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text.replace("&", "&amp;").replace("<", "&lt;"))


def count(value) -> str:
    """1.12e10 -> '11.2B', 2.1e11 -> '210B', 5e4 -> '50.0K' (parameters, tokens)."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def sci(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def band(interval) -> str:
    return "" if not interval else f" [{interval[0]:.4g}, {interval[1]:.4g}]"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


# --- headline --------------------------------------------------------------------------------------
def _days(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _compute_phrase(compute: dict) -> str:
    if compute.get("gpus"):
        return (f"{_days(compute['gpu_days'])} GPU-days ({compute['gpus']} x {compute['gpu']} for "
                f"{compute['wall_clock_days']:.1f} days at MFU {compute['mfu']:.2f}, {compute.get('mfu_source', 'given')})")
    return f"{_days(compute['gpu_days'])} GPU-days ({compute['basis']})"


def _loss_phrase(rec: dict) -> str:
    if rec.get("predicted_loss") is None:
        return "no predicted loss (the law has no L(N, D))"
    intervals = rec.get("intervals") or {}
    if intervals.get("predicted_loss"):
        method = intervals.get("method", "fit intervals")
        return f"predicted loss {rec['predicted_loss']:.4f}{band(intervals['predicted_loss'])} ({method})"
    reason = "no loss interval" if intervals else "no interval: the law has no samples"
    return f"predicted loss {rec['predicted_loss']:.4f} ({reason})"


def short_schedule(schedule: dict) -> str:
    if schedule["name"] == "wsd":
        return f"wsd, {schedule['cooldown_fraction']:.0%} (1 - sqrt) cooldown to {schedule['min_lr_ratio']:.0%}"
    return f"cosine to {schedule['min_lr_ratio']:.0%}"


def range_line(rec: dict) -> str | None:
    """N, D and loss each with its interval, and the approaches' N_opt: the range leads, not the point."""
    iv = rec.get("intervals") or {}
    if not iv.get("n_opt"):
        return None
    parts = [f"N_opt {count(rec['n_opt'])} [{count(iv['n_opt'][0])}, {count(iv['n_opt'][1])}]"]
    if iv.get("d_opt"):
        parts.append(f"D_opt {count(rec['d_opt'])} [{count(iv['d_opt'][0])}, {count(iv['d_opt'][1])}]")
    if iv.get("predicted_loss") and rec.get("predicted_loss") is not None:
        parts.append(f"loss {rec['predicted_loss']:.3f} [{iv['predicted_loss'][0]:.3f}, {iv['predicted_loss'][1]:.3f}]")
    spread = (rec.get("agreement") or {}).get("n_opt") or {}
    text = "90% range: " + ", ".join(parts)
    if len(spread) > 1:
        text += "; approaches' N_opt " + ", ".join(f"{k} {count(v)}" for k, v in spread.items())
    forms = form_spread(rec)   # another law form that passed its backtest puts N_opt outside this interval
    if forms:
        text += ("; law forms' N_opt " + ", ".join(f"{r['candidate']} {count(r['n_opt'])} [{count(r['intervals']['n_opt'][0])}, "
                                                   f"{count(r['intervals']['n_opt'][1])}]" for r in forms["forms"])
                 + f": across them [{count(forms['span'][0])}, {count(forms['span'][1])}]")
    return text


def terminal_summary(rec: dict) -> str:
    """A few lines for the terminal: the answer, its cost and shape, and what to look at next."""
    model, conv = rec["model"], rec["convention"]
    lead = [line for line in (rec.get("verdict") and f"verdict: {rec['verdict']}", range_line(rec)) if line]
    lines = [*lead,
        f"Recommendation ({rec['law'].get('name')} law, {conv} parameters, budget {rec['budget']['flops']:.3g} FLOPs): "
        f"{count(model['params'][conv])} parameters on {count(model['tokens'])} tokens "
        f"({model['tokens_per_param']:.1f} tokens/param)",
        f"  {_loss_phrase(rec)}",
        f"  {_compute_phrase(model['compute'])}",
        f"  shape {model['describe']}; lr {model['lr']:.3g}, batch {count(model['batch_tokens'])} tokens, "
        f"{model['steps']:,} steps, {short_schedule(model['schedule'])}",
        f"  launch: {launch_text(model['launch'])}",
    ]
    lines[len(lead) + 1:len(lead) + 1] = _count_lines(rec, "  ")  # right under the Recommendation line
    inf = rec.get("inference_aware")
    if inf:
        lines.append(f"  with {inf['inference_tokens']:.3g} inference tokens: {count(inf['n_opt'])} params on "
                     f"{count(inf['d_opt'])} tokens saves {inf['saving_fraction']:.1%} of total FLOPs")
    dc = rec.get("data_constrained")
    if dc and dc["epochs"] > 1:
        lines.append(f"  data-constrained plan (Muennighoff et al. 2023): {count(dc['n_opt'])} params on "
                     f"{count(dc['d_opt'])} tokens ({dc['adjusted_epochs']:.1f} epochs), loss {dc['adjusted_loss']:.4f} "
                     f"vs {dc['loss_with_repetition']:.4f} repeating the plan above")
    for warning in rec.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def _count_lines(rec: dict, indent: str) -> list[str]:
    """Which FLOP count the answer uses and why, what the run is sized for, and its epochs over the data."""
    out = []
    flop_count, target, data = rec.get("count"), rec.get("target"), rec.get("data")
    if flop_count:
        out.append(f"{indent}FLOP count: {flop_count['formula']} ({flop_count['why']}); the run's FLOPs under it "
                   f"{rec['model']['flops']:.4g}")
    if target:
        tokenizer = f"tokenizer {target['tokenizer']}, " if target.get("tokenizer") else ""
        out.append(f"{indent}sized for: {tokenizer}V={target['vocab_size']:,}, "
                   f"T={target['seq_len']:,}, {rec['model'].get('precision', 'bf16')} ({target['source']})")
    if data and data.get("epochs") is not None:
        out.append(f"{indent}data: {data['epochs']:.2f} epochs of {count(data['unique_tokens'])} unique tokens "
                   f"({data['source']})")
    return out


# --- plots -----------------------------------------------------------------------------------------
def plot_deviation(rec: dict, path: Path) -> Path | None:
    """Loss penalty of N = f * N_opt at the fixed budget (the flat bottom is the margin for error)."""
    dev = rec.get("deviation")
    if not dev:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(6, 4))  # the object API: no global pyplot state (as pipeline.fit.plots)
    ax = fig.subplots()
    ax.plot(dev["curve"]["factor"], dev["curve"]["delta_loss"], color="tab:blue")
    ax.scatter([r["factor"] for r in dev["rows"]], [r["delta_loss"] for r in dev["rows"]], color="tab:blue", zorder=3)
    ax.set_xscale("log")
    ticks = [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
    ax.set_xticks(ticks, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model size / N_opt (same budget)")
    ax.set_ylabel("loss above the optimum (nats)")
    ax.set_title(f"Deviation penalty at {rec['budget']['flops']:.3g} FLOPs")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def plot_inference(rec: dict, path: Path) -> Path | None:
    """Iso-loss curve D_train(N) and total (training + inference) FLOPs along it."""
    inf = rec.get("inference_aware")
    if not inf:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    curve = inf["curve"]
    pairs = [(n, d, t) for n, d, t in zip(curve["n_params"], curve["train_tokens"], curve["total_flops"], strict=True)
             if d is not None and t is not None]
    n_vals, d_vals, t_vals = (list(v) for v in zip(*pairs, strict=True))
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(n_vals, d_vals, color="tab:green")
    left.set_ylabel("training tokens for the target loss")
    right.plot(n_vals, t_vals, color="tab:red")
    right.set_ylabel("training + inference FLOPs")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters N")
        ax.axvline(inf["compute_optimal_n"], color="gray", ls="--", label="compute-optimal")
        ax.axvline(inf["n_opt"], color="black", ls=":", label="inference-aware")
        ax.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.suptitle(f"Iso-loss L = {inf['target_loss']:.4f} with {inf['inference_tokens']:.3g} inference tokens")
    return save_figure(fig, path)


# --- the report's sections -------------------------------------------------------------------------
def _headline(rec: dict) -> list[str]:
    model, conv = rec["model"], rec["convention"]
    lead = [f"**{line}**" for line in (range_line(rec),) if line] + (
        [f"Verdict: {rec['verdict']}", ""] if rec.get("verdict") else [])
    return [
        "# Recommendation", "", *lead,
        f"**Train {count(model['params'][conv])} parameters ({conv}) on {count(model['tokens'])} tokens "
        f"({model['tokens_per_param']:.1f} tokens per parameter).**", "",
        f"- {_loss_phrase(rec)}",
        f"- {_compute_phrase(model['compute'])}" + (f", about ${model['compute']['cost_usd']:,.0f}"
                                                     if model["compute"].get("cost_usd") else ""),
        f"- shape: {model['describe']}",
        f"- law optimum: N_opt {count(rec['n_opt'])}{_interval_text(rec, 'n_opt')}, D_opt {count(rec['d_opt'])}"
        f"{_interval_text(rec, 'd_opt')} ({rec['allocation_rule']})",
        f"- launch: {md_escape(launch_text(model['launch']))}",
        *_count_lines(rec, "- "), "",
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
    """Write <out_dir>/report.md (and deviation.png / inference_aware.png beside it); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = [plot_deviation(recommendation, out / "deviation.png"), plot_inference(recommendation, out / "inference_aware.png")]
    images = [Path(p) for p in plots] + [p for p in own if p is not None]
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
