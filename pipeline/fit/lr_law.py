"""The LR probe's fit: the best LR per probed size, then a power law in N and D (the calibrated rule).

    python -m pipeline.fit.lr_law results/<probe sweep>        # writes <dir>/fit/lr_law.json, lr_probe.png, lr_probe.md

Per size (one model shape, one token count): a parabola in x = ln LR,  loss = L* + k (x - x*)^2,
fitted by least squares to the lowest finished run and up to two grid points on each side of it
(diverged runs excluded). Its vertex x* is the best LR, resolved only when the lowest run is not at
the edge of the probed LRs and k > 0; k / L* is the relative loss per (ln LR)^2, so an LR off by a
factor f costs about k ln(f)^2 / L* (a 2x miss: k * 0.48 / L*).
Then ln lr* = ln a + b ln N + c ln D by least squares over the resolved sizes, N in the base rule's
convention (non-embedding for Step Law). When every probe run trained the same token count, c cannot
be separated from b: it is held at the base rule's D exponent (Step Law: 0.307), stated in the file.
The calibrated rule keeps the base rule's batch; its data range is the probe's N and D.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fit import worker
from pipeline.plan.lr_rules import HparamRule, PowerLaw, Scale
from pipeline.records import FINISHED_STATUS, atomic_write_json, atomic_write_text, load_records

MISS_FACTOR = 2.0
WINDOW = 2   # grid points on each side of the lowest run that the parabola uses


def fit_parabola(lrs: list[float], losses: list[float]) -> dict:
    """Best LR of one loss-vs-LR curve (module doc). lrs need not be sorted."""
    order = np.argsort(lrs)
    x, y = np.log(np.asarray(lrs, float)[order]), np.asarray(losses, float)[order]
    best = int(np.argmin(y))
    lo, hi = max(0, best - WINDOW), min(len(x), best + WINDOW + 1)
    edge = best in (0, len(x) - 1)
    if hi - lo < 3:
        return {"resolved": False, "why": "fewer than 3 finished runs around the lowest loss", "lr_opt": float(math.exp(x[best])),
                "loss_opt": float(y[best]), "curvature": None}
    c2, c1, c0 = np.polyfit(x[lo:hi], y[lo:hi], 2)
    if c2 <= 0:
        return {"resolved": False, "why": "the losses around the lowest run do not curve upwards",
                "lr_opt": float(math.exp(x[best])), "loss_opt": float(y[best]), "curvature": None}
    x_opt = -c1 / (2 * c2)
    loss_opt = c0 - c1 * c1 / (4 * c2)
    resolved = not edge and x[0] <= x_opt <= x[-1]
    return {"resolved": bool(resolved), "why": "" if resolved else "the lowest loss is at the edge of the probed LRs",
            "lr_opt": float(math.exp(x_opt)), "loss_opt": float(loss_opt), "curvature": float(c2 / loss_opt)}


def miss_cost(curvature: float | None, factor: float = MISS_FACTOR) -> float | None:
    return None if curvature is None else curvature * math.log(factor) ** 2


def probe_curves(records: list[dict]) -> list[dict]:
    """One curve per (shape, tokens): every run's LR, loss and status, sorted by LR."""
    curves: dict[tuple, dict] = {}
    for rec in records:
        if rec.get("role", "run") != "run":
            continue
        key = (json.dumps(rec["shape"], sort_keys=True), rec["tokens"])
        rule = (rec.get("hparams") or {}).get("rule_law") or {}
        curve = curves.setdefault(key, {"shape": rec["shape"], "tokens": rec["tokens"], "params": rec["params"],
                                        "flops": rec["flops"]["exact"], "rule": rule, "points": []})
        curve["points"].append({"lr": rec["hparams"]["lr"], "status": rec["status"],
                                "loss": rec.get("final_val_loss") if rec["status"] == FINISHED_STATUS else None})
    out = sorted(curves.values(), key=lambda c: (c["params"]["total"], c["tokens"]))
    for curve in out:
        curve["points"].sort(key=lambda p: p["lr"])
    return out


def fit_lr_law(curves: list[dict], name: str) -> dict:
    """Per-size optima and the power law through them: the content of lr_law.json."""
    if len(curves) < 3:
        raise UserError(f"the LR probe has {len(curves)} probed size(s): the LR law needs at least 3 "
                        "(run the probe with sweep.design=lr_probe)")
    rules = {json.dumps(c["rule"], sort_keys=True) for c in curves}
    if len(rules) != 1 or not curves[0]["rule"]:
        raise UserError("the probe's runs were planned under different (or unrecorded) LR rules: probe under one rule")
    base = HparamRule.from_dict(curves[0]["rule"])
    sizes = []
    for curve in curves:
        done = [p for p in curve["points"] if p["loss"] is not None]
        fit = fit_parabola([p["lr"] for p in done], [p["loss"] for p in done]) if len(done) >= 3 else {
            "resolved": False, "why": f"only {len(done)} finished runs", "lr_opt": None, "loss_opt": None, "curvature": None}
        n = float(curve["params"]["non_embedding" if base.n_convention == "non_embedding" else "total"])
        scale = Scale(flops=float(curve["flops"]), n_params=float(curve["params"]["total"]),
                      n_params_non_embedding=float(curve["params"]["non_embedding"]), run_tokens=float(curve["tokens"]))
        sizes.append({"n": n, "n_total": curve["params"]["total"], "d": float(curve["tokens"]), "shape": curve["shape"],
                      "base_lr": base.lr(scale), "points": curve["points"], **fit, "cost_2x": miss_cost(fit["curvature"])})
    used = [s for s in sizes if s["resolved"]]
    if len(used) < 2:
        raise UserError(f"only {len(used)} of {len(sizes)} probed sizes have a resolved best LR (the lowest loss is at the "
                        "edge of the probed LRs): widen sweep.lr_probe_factors and rerun the probe")
    ln_n, ln_d = np.log([s["n"] for s in used]), np.log([s["d"] for s in used])
    ln_lr = np.log([s["lr_opt"] for s in used])
    d_varies = np.ptp(ln_d) > 0.1 and len(used) >= 3 and abs(np.corrcoef(ln_n, ln_d)[0, 1]) < 0.95
    if d_varies:
        (ln_a, b, c), *_ = np.linalg.lstsq(np.stack([np.ones_like(ln_n), ln_n, ln_d], 1), ln_lr, rcond=None)
        c_source = "fitted"
    else:
        c = base.lr_law.exp_d
        (ln_a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(ln_n), ln_n], 1), ln_lr - c * ln_d, rcond=None)
        c_source = f"held at the base rule's ({base.name}): every probe run trained one token count"
    predicted = ln_a + b * ln_n + c * ln_d
    curvature = statistics.median(s["curvature"] for s in used)
    summary = {"base_rule": base.name, "sizes": sizes, "d_exponent": c_source,
               "residual_sd_ln_lr": float(np.std(ln_lr - predicted, ddof=0)),
               "best_over_base_lr": [s["lr_opt"] / s["base_lr"] for s in used], "cost_2x_median": miss_cost(curvature)}
    rule = HparamRule(name=name, citation=f"LR probe {name} (pipeline/fit/lr_law.py)",
                      lr_law=PowerLaw(float(math.exp(ln_a)), exp_n=float(b), exp_d=float(c)),
                      batch_law=base.batch_law, n_convention=base.n_convention,
                      data_range={"N": (min(s["n"] for s in sizes), max(s["n"] for s in sizes)),
                                  "D": (min(s["d"] for s in sizes), max(s["d"] for s in sizes))},
                      lr_curvature=float(curvature), lr_residual_sd=summary["residual_sd_ln_lr"], probe=summary)
    return {"rule": rule.to_dict(), **summary}


def law_of_rule(rule: dict) -> dict | None:
    """The lr_law.json content back from a calibrated rule as recorded in a run (None for published rules)."""
    return {**rule["probe"], "rule": rule} if rule.get("probe") else None


def markdown(law: dict, figure: str | None) -> str:
    """The report's LR section: loss vs LR per probed size, the fitted optimum, the cost of a 2x miss."""
    rule = HparamRule.from_dict(law["rule"])
    lines = ["## Learning rate: the probe and the calibrated rule", "",
             f"Each probed size (and token count) trained at several multiples of the {law['base_rule']} rule's LR; a "
             "parabola in ln LR through the lowest run and its neighbours gives the best LR and the loss a 2x miss costs.",
             "", "| N (non-emb.) | N total | D tokens | LRs probed | losses | best LR | loss at best | 2x miss costs |",
             "|---|---|---|---|---|---|---|---|"]
    for s in law["sizes"]:
        lrs = ", ".join(f"{p['lr']:.3g}" for p in s["points"])
        losses = ", ".join("diverged" if p["status"] == "diverged" else ("-" if p["loss"] is None else f"{p['loss']:.3f}")
                           for p in s["points"])
        best = f"{s['lr_opt']:.3g}" + ("" if s["resolved"] else f" (not resolved: {s['why']})") if s["lr_opt"] else "-"
        cost = f"{s['cost_2x']:.2%}" if s["cost_2x"] is not None else "-"
        loss_opt = f"{s['loss_opt']:.4f}" if s["loss_opt"] else "-"
        lines.append(f"| {s['n']:.3g} | {s['n_total']:.3g} | {s['d']:.3g} | {lrs} | {losses} | {best} | {loss_opt} | {cost} |")
    lines += ["", f"Fitted rule: lr_opt = {rule.lr_law.text()} (N {rule.n_convention.replace('_', '-')}, D tokens; "
              f"D exponent {law['d_exponent']}); residual sd of ln lr_opt {law['residual_sd_ln_lr']:.3f}; "
              f"fitted range {rule.fitted_range}. Batch: {law['base_rule']}'s {rule.batch_law.text()} tokens.",
              f"A 2x miss costs a median {law['cost_2x_median']:.2%} of the loss at the probed sizes."]
    if law["best_over_base_lr"]:
        ratios = ", ".join(f"{r:.2f}" for r in law["best_over_base_lr"])
        lines.append(f"Best LR over the {law['base_rule']} rule's at the probed sizes: {ratios}.")
    if figure:
        lines += ["", f"![loss against LR per probed size]({figure})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit the LR law of an lr_probe sweep")
    parser.add_argument("results", type=Path, help="the probe sweep's results directory, e.g. results/cpu_tiny_lr_probe")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default <results>/fit)")
    parser.add_argument("--name", default=None, help="the calibrated rule's name (default: the directory's name)")
    args = parser.parse_args(argv)
    try:
        records, _ = load_records(args.results)
        if not records:
            raise UserError(f"no run records under {args.results}: run the probe (sweep.design=lr_probe) first")
        law = fit_lr_law(probe_curves(records), args.name or args.results.resolve().name)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.results / "fit"
    out.mkdir(parents=True, exist_ok=True)
    figure = worker.run("pipeline.fit.lr_plot:plot_probe", law, out / "lr_probe.png")   # by name: lr_report imports
    # this module for its text, and the fit command's own process never imports matplotlib (pipeline/fit/worker.py)
    atomic_write_json(out / "lr_law.json", law)
    atomic_write_text(out / "lr_probe.md", markdown(law, figure.name))
    print(markdown(law, None))
    print(f"calibrated rule: {out / 'lr_law.json'} (use it with train.hparam_rule={out / 'lr_law.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
