"""The report's learning-rate section: the rule the pilots used, its probe (loss against LR per probed size,
the fitted optimum, the cost of a 2x miss) and whether the pilots' tuning distorts the law."""

from __future__ import annotations

from pathlib import Path

from pipeline.fit import worker
from pipeline.fit.lr_law import law_of_rule, markdown


def lr_section(rec: dict, fit_result: dict | None, out_dir: Path) -> list[str]:
    model = rec.get("model") or {}
    rule = model.get("hparam_rule_law") or {}
    check = (fit_result or {}).get("hparams") or {}
    law = law_of_rule(rule) if rule else None
    lines: list[str] = []
    if law:   # drawn by name: matplotlib stays out of the fit command's own process (pipeline/fit/worker.py)
        figure = worker.run("pipeline.fit.lr_plot:plot_probe", law, Path(out_dir) / "lr_probe.png")
        lines += markdown(law, figure.name).splitlines()
    else:
        lines += ["## Learning rate", "", f"The pilots' LR and batch came from {rule.get('name', 'the default rule')} "
                  f"(fitted on {model.get('hparam_rule_range') or 'an unstated range'}); no LR probe measured them at "
                  "this scale (sweep.design=lr_probe, docs/hparams.md)."]
    if check:
        lines += ["", f"Pilots: up to {check['extrapolation_decades']:.1f} decades beyond the rule's data."]
        if check.get("max_penalty") is not None:
            lines.append(f"Their LRs' expected loss penalty: at most {check['max_penalty']:.2%}, differing by up to "
                         f"{check['budget_spread']:.2%} between sizes of one budget.")
        lines.append(check.get("warning") or check.get("note") or "Within the noise: the tuning does not distort the law.")
    lines += ["", f"Full run: lr {model.get('lr', float('nan')):.3g} from the same rule at its N and D, "
              f"{model.get('lr_extrapolation_decades', 0):.1f} decades beyond the rule's data; "
              f"sensitivity: {model.get('lr_sensitivity', 'not recorded')}.", ""]
    return lines
