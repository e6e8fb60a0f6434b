"""The report's Markdown sections for target metrics (their figures: pipeline/decide/target_figures.py)."""

from __future__ import annotations


def _fmt(value, interval) -> str:
    text = f"{value:.4g}"
    return text + (f" [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "")


def target_lines(rec: dict) -> list[str]:
    """Markdown: the target's optimum beside the loss-optimal run, serving, predictions, every metric."""
    t = rec.get("target_metric")
    if not t:
        return []
    opt, at_loss = t["optimum"], t["at_loss_optimum"]
    better = "maximises" if t["higher_is_better"] else "minimises"
    lines = [f"## Target: {t['name']}", "",
             f"The (N, D) on the budget line ({t['budget_line']}) that {better} {t['name']}, beside the "
             "loss-optimal one (intervals: 5-95% over the bootstrap pairs, carried through both steps for "
             "an accuracy).", "",
             "| | N | D | " + t["name"] + " | validation loss |", "|---|---|---|---|---|",
             f"| {t['name']}-optimal | {opt['params']:.4g} | {opt['tokens']:.4g} | {_fmt(opt['value'], opt['interval'])} "
             f"| {opt['loss']:.4f} |",
             f"| loss-optimal | {at_loss['params']:.4g} | {at_loss['tokens']:.4g} | "
             f"{_fmt(at_loss['value'], at_loss['interval'])} | {at_loss['loss']:.4f} |", ""]
    if t.get("kind") == "loss":  # the target is the loss itself: the two rows are one optimum, found twice
        lines = [f"## Target: {t['name']}", "", "The target is the validation loss: the recommendation above is its "
                 "optimum. Every other recorded metric at the recommended run:", ""]
    fit = t.get("fit") or {}
    boot = fit.get("bootstrap")
    if boot:      # every draw accounted for: the ones whose refit was no law are dropped, and said so
        lines += [f"Bootstrap: {boot['used']} of {boot['draws']} draws used, {boot['dropped']} dropped (their refit "
                  f"was no law); step 1 {boot['unit']}" + (f"; step 2 {boot['step2_unit']}" if boot.get("step2_unit")
                                                           else "") + ".", ""]
    if fit.get("step2"):
        s = fit["step2"]
        lines += [f"Two-step prediction (Bhagia et al. 2024; Dubey et al. 2024): step 1 {fit['metric']} = "
                  f"{fit['law']['E']:.4g} + {fit['law']['A']:.4g}/N^{fit['law']['alpha']:.3f} + "
                  f"{fit['law']['B']:.4g}/D^{fit['law']['beta']:.3f}; step 2 {s['form']} with chance "
                  f"{s['chance']:.3g}, top {s['top']:.3g}, k {s['k']:.3g}, b0 {s['b0']:.3g} on {s['n_points']} points.", ""]
    serving = rec.get("serving")
    if serving:
        st, sl = serving["target"], serving["loss"]
        lines += ["### Serving cap", "",
                  f"N <= {serving['max_params']:.4g}: " + ("the cap binds. " if serving["binding"] else "the cap does not bind. ")
                  + f"Best under it for {t['name']}: N {st['params']:.4g}, D {st['tokens']:.4g}, "
                  f"{_fmt(st['value'], st['interval'])} (worse by {st['cost']:.4g}); for the loss: N {sl['params']:.4g}, "
                  f"D {sl['tokens']:.4g}, loss {sl['value']:.4f} (worse by {sl['cost']:.4f}). {serving['rule']}.", ""]
    preds = rec.get("predictions") or []
    if preds:
        lines += ["### Predictions", "", "| N | D | target | value [5-95%] |", "|---|---|---|---|"]
        lines += [f"| {p['params']:.4g} | {p['tokens']:.4g} | {p['target']} | {_fmt(p['value'], p['interval'])} |"
                  for p in preds]
        lines.append("")
    metrics = (rec.get("metrics") or {}).get("values") or {}
    if metrics:
        at = rec["metrics"]["at"]
        lines += [f"### Every metric at the recommended run (N {at['params']:.4g}, D {at['tokens']:.4g})", "",
                  "| metric | predicted [5-95%] |", "|---|---|"]
        lines += [f"| {name} | {_fmt(m['value'], m['interval'])} |" for name, m in metrics.items()]
        for name, why in (rec.get("metric_fit_failures") or {}).items():
            lines.append(f"| {name} | not fitted: {why} |")
        lines.append("")
    return lines


def target_summary(rec: dict) -> str:
    """Terminal lines: the target's optimum beside the loss-optimal run, the cap, the predictions."""
    t = rec.get("target_metric")
    if not t:
        return ""
    opt, at_loss = t["optimum"], t["at_loss_optimum"]
    lines = [] if t.get("kind") == "loss" else [  # a loss target is the recommendation above
        f"  target {t['name']}: {_fmt(opt['value'], opt['interval'])} at N {opt['params']:.3g}, D {opt['tokens']:.3g} "
        f"(at the loss-optimal N {at_loss['params']:.3g}: {_fmt(at_loss['value'], at_loss['interval'])})"]
    serving = rec.get("serving")
    if serving:
        st = serving["target"]
        lines.append(f"  serving cap N <= {serving['max_params']:.3g}: N {st['params']:.3g}, D {st['tokens']:.3g}, "
                     f"{t['name']} {_fmt(st['value'], st['interval'])} (worse by {st['cost']:.3g}), "
                     f"loss worse by {serving['loss']['cost']:.4f}")
    for p in rec.get("predictions") or []:
        lines.append(f"  predict N {p['params']:.3g}, D {p['tokens']:.3g}: {p['target']} {_fmt(p['value'], p['interval'])}")
    return "\n".join(lines)
