"""Do the pilots' hyperparameters distort the law? The check behind the verdict's hyperparameter warning.

A run trained off its best LR ends above its loss at the best LR by about  k * ln(lr / lr_opt)^2  (k the
relative curvature the LR probe measured, pipeline/fit/lr_law.py). When that penalty exceeds the noise of
the fit (sd of log loss), or differs between sizes of one IsoFLOP budget by more than it, the law fitted
through those runs measures the tuning as well as the scale (Porian et al. 2024).
- A calibrated rule (the pilots' own probe): penalty of each run = k (ln(lr / rule's lr)^2 + s^2), with s
  the probe's residual sd of ln lr_opt about its law (the rule's own error where it was measured).
- A published rule without a probe: the penalty is not measured; when the pilots lie beyond the rule's
  data, the verdict says the law may be distorted by an unmeasured amount and names the probe.
"""

from __future__ import annotations

import math

from pipeline.plan.lr_rules import HparamRule, Scale

EXTRAPOLATION_WARN_DECADES = 0.5


def _scale(run: dict) -> Scale:
    return Scale(flops=run["flops"], n_params=run["n_total"], n_params_non_embedding=run["n_non_embedding"],
                 run_tokens=run["tokens"])


def hparam_check(setup: dict | None, sd_log: float | None) -> dict | None:
    """{rule, extrapolation_decades, penalties, max_penalty, budget_spread, distorts, warning} or None."""
    setup = setup or {}
    if not setup.get("hparam_rule") or not setup.get("lr_runs"):
        return None
    rule = HparamRule.from_dict(setup["hparam_rule"])
    runs = setup["lr_runs"]
    decades = max(rule.decades_beyond(_scale(r)) for r in runs)
    out = {"rule": rule.name, "rule_range": rule.fitted_range, "extrapolation_decades": decades,
           "cost_2x": rule.lr_loss_cost(2.0), "penalties": None, "max_penalty": None, "budget_spread": None,
           "distorts": None, "warning": None}
    if rule.lr_curvature is None:
        if decades > EXTRAPOLATION_WARN_DECADES:
            out["distorts"] = "unknown"
            out["warning"] = (f"hyperparameters: the pilots' LR and batch come from {rule.name}, up to {decades:.1f} "
                              f"decades beyond its data ({rule.fitted_range}) and no LR probe measured how far off they "
                              "are; they may distort the law (calibrate with sweep.design=lr_probe)")
        return out
    resid = rule.lr_residual_sd or 0.0
    penalties = [rule.lr_curvature * (math.log(r["lr"] / rule.lr(_scale(r))) ** 2 + resid**2) for r in runs]
    by_budget: dict = {}
    for run, penalty in zip(runs, penalties, strict=True):
        if run.get("budget"):
            by_budget.setdefault(run["budget"], []).append(penalty)
    spread = max((max(v) - min(v) for v in by_budget.values() if len(v) > 1), default=0.0)
    out.update(penalties=penalties, max_penalty=max(penalties), budget_spread=spread)
    if sd_log is None:
        return out
    why = []
    if max(penalties) > sd_log:
        why.append(f"the pilots' LR is off the probe's optimum by up to {max(penalties):.2%} of the loss")
    if spread > sd_log:
        why.append(f"sizes within one budget are unequally tuned (penalties differ by {spread:.2%})")
    out["distorts"] = bool(why)
    if why:
        out["warning"] = (f"hyperparameters distort the law: {'; '.join(why)}, more than the noise (sd of log loss "
                          f"{sd_log:.3g}); rerun the pilots under the calibrated rule or widen the probe")
    elif decades > EXTRAPOLATION_WARN_DECADES:
        out["note"] = (f"the calibrated LR rule is used up to {decades:.1f} decades beyond its probe ({rule.fitted_range}); "
                       "within it the tuning penalty is below the noise")
    return out
