"""The answer as text: number formats shared by every output, the range line and the terminal summary.

Read only the JSON-able dict of `pipeline.decide.recommend.recommend` (with the fit's keys merged in), so the
summary can be rebuilt from recommendation.json alone. The Markdown report (pipeline/decide/report.py) uses the
same formats.
"""

from __future__ import annotations

import re

from pipeline.fit.checks import form_spread

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
def days_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def compute_phrase(compute: dict) -> str:
    if compute.get("gpus"):
        return (f"{days_text(compute['gpu_days'])} GPU-days ({compute['gpus']} x {compute['gpu']} for "
                f"{compute['wall_clock_days']:.1f} days at MFU {compute['mfu']:.2f}, {compute.get('mfu_source', 'given')})")
    return f"{days_text(compute['gpu_days'])} GPU-days ({compute['basis']})"


def loss_phrase(rec: dict) -> str:
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
    """N, D and loss each with its interval, and the approaches' N_opt: the range leads, not the point.

    When a law form that passed its backtest puts N_opt outside the chosen form's interval (checks.form_spread),
    N_opt's range is the span across the forms' intervals, each form's given beside it: the chosen form's
    own interval would claim a precision the forms do not share (a constrained form's is narrow by construction)."""
    iv = rec.get("intervals") or {}
    if not iv.get("n_opt"):
        return None
    forms = form_spread(rec)
    if forms:
        each = ", ".join(f"{r['candidate']}{' (chosen)' * bool(r.get('chosen'))} {count(r['n_opt'])} "
                         f"[{count(r['intervals']['n_opt'][0])}, {count(r['intervals']['n_opt'][1])}]"
                         for r in forms["forms"])
        lead = (f"N_opt {count(rec['n_opt'])} [{count(forms['span'][0])}, {count(forms['span'][1])}] across the law "
                f"forms ({each})")
    else:
        lead = f"N_opt {count(rec['n_opt'])} [{count(iv['n_opt'][0])}, {count(iv['n_opt'][1])}]"
    parts = [lead]
    if iv.get("d_opt"):
        parts.append(f"D_opt {count(rec['d_opt'])} [{count(iv['d_opt'][0])}, {count(iv['d_opt'][1])}]")
    if iv.get("predicted_loss") and rec.get("predicted_loss") is not None:
        parts.append(f"loss {rec['predicted_loss']:.3f} [{iv['predicted_loss'][0]:.3f}, {iv['predicted_loss'][1]:.3f}]")
    spread = (rec.get("agreement") or {}).get("n_opt") or {}
    text = "90% range: " + ", ".join(parts)
    if len(spread) > 1:
        text += "; approaches' N_opt " + ", ".join(f"{k} {count(v)}" for k, v in spread.items())
    return text


def terminal_summary(rec: dict) -> str:
    """A few lines for the terminal: the answer, its cost and shape, and what to look at next."""
    model, conv = rec["model"], rec["convention"]
    lead = [line for line in (rec.get("verdict") and f"verdict: {rec['verdict']}", range_line(rec)) if line]
    lines = [*lead,
        f"Recommendation ({rec['law'].get('name')} law, {conv} parameters, budget {rec['budget']['flops']:.3g} FLOPs): "
        f"{count(model['params'][conv])} parameters on {count(model['tokens'])} tokens "
        f"({model['tokens_per_param']:.1f} tokens/param)",
        f"  {loss_phrase(rec)}",
        f"  {compute_phrase(model['compute'])}",
        f"  shape {model['describe']}; lr {model['lr']:.3g}, batch {count(model['batch_tokens'])} tokens, "
        f"{model['steps']:,} steps, {short_schedule(model['schedule'])}",
        f"  launch: {launch_text(model['launch'])}",
    ]
    lines[len(lead) + 1:len(lead) + 1] = count_lines(rec, "  ")  # right under the Recommendation line
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


def count_lines(rec: dict, indent: str) -> list[str]:
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
