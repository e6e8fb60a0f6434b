"""The decision for any target metric: predictions at any (N, D), the target's optimum, a serving cap.

Given the fitted metric models of pipeline/fit/targets.py (and the loss law, wrapped the same way):
* `metric_predictions`: every recorded metric at one (N, D) with its 5-95% interval;
* `optimum_on_budget`: the (N, D) on the budget line that minimises a loss-like metric or maximises an
  accuracy, optionally with N capped (serving);
* `target_sections`: what recommendation.json gains: `metrics` (every metric at the recommended run),
  `target` (its optimum beside the loss-optimal one), `serving` (the best D under serving.max_params and
  what the cap costs) and `predictions` (the user's predict.params x predict.tokens pairs).

The budget line is D = C / F(N) (`tokens_on_budget`) under the decision's FLOP count
(pipeline/decide/allocation.py: the pilots' exact count, or the full run's PaLM count for published laws and
imported tables), so the target's optimum lies on the same line as the loss-optimal recommendation.
"""

from __future__ import annotations

import numpy as np

from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN, ParametricLaw, elementwise, minimise_log
from pipeline.fit.targets import MetricModel, Target

SEARCH_DECADES = 4.0     # the optimum is searched within 10^4 x either side of the loss-optimal N


def tokens_on_budget(n_params, budget_flops: float, count=None):
    """D such that the run costs `budget_flops`: C = F(N) D under `count` (a FlopCount), else C = 6 N D
    (Kaplan et al. 2020 sec. 2.1)."""
    n = np.asarray(n_params, dtype=float)
    per_token = TRAIN_FLOPS_PER_PARAM_TOKEN * n if count is None else count.flops_per_token(n)
    return budget_flops / per_token


def loss_model(law: ParametricLaw, samples, points: dict | None = None) -> MetricModel:
    """The validation-loss law as a metric model (no step 2); `points` ({"n", "d", "value"}) for its plot."""
    return MetricModel(Target("loss", "loss", "loss"), law,
                       None if samples is None else np.asarray(samples, dtype=float), points=points)


def optimum_on_budget(model: MetricModel, budget_flops: float, n_center: float,
                      n_max: float | None = None, count=None) -> dict:
    """The best (N, D) on the budget line for `model` (max for accuracies, min otherwise), N <= n_max,
    searched over n_center x 10^(+-SEARCH_DECADES) with the decision's one 1-D minimiser
    (pipeline/fit/laws.py: minimise_log; the laws are smooth and unimodal along the line)."""
    sign = -1.0 if model.higher_is_better else 1.0
    lo, hi = n_center * 10.0 ** -SEARCH_DECADES, n_center * 10.0 ** SEARCH_DECADES
    if n_max is not None:
        hi = min(hi, n_max)
        lo = min(lo, hi * (1 - 1e-9))

    def cost(n: float) -> float:
        return sign * float(model.value(n, tokens_on_budget(n, budget_flops, count)))

    n = minimise_log(elementwise(cost), lo, hi)
    d = float(tokens_on_budget(n, budget_flops, count))
    return {"params": n, "tokens": d, "value": float(model.value(n, d)), "interval": model.interval(n, d),
            "capped": bool(n_max is not None and n >= n_max * (1 - 1e-6))}


def metric_predictions(models: dict[str, MetricModel], n: float, d: float) -> dict:
    return {name: {"value": float(m.value(n, d)), "interval": m.interval(n, d),
                   "higher_is_better": m.higher_is_better} for name, m in models.items()}


def target_sections(*, loss: MetricModel, target: MetricModel, models: dict[str, MetricModel],
                    budget_flops: float, recommended: tuple[float, float], loss_optimum: tuple[float, float],
                    max_params: float | None = None, predict_pairs: list[tuple[float, float]] = (), count=None) -> dict:
    """The sections recommendation.json gains (module doc). `recommended` is the concrete run's (N, D),
    `loss_optimum` the loss law's (N_opt, D_opt)."""
    n_rec, d_rec = recommended
    every = {"loss": loss, **models}
    out = {"metrics": {"at": {"params": n_rec, "tokens": d_rec, "what": "the recommended run"},
                       "values": metric_predictions(every, n_rec, d_rec)}}
    n_loss, d_loss = loss_optimum
    best = optimum_on_budget(target, budget_flops, n_center=n_loss, count=count)
    out["target_metric"] = {
        "name": target.name, "kind": target.target.kind, "higher_is_better": target.higher_is_better,
        "budget_line": f"D = C / F(N), {count.formula}" if count is not None else "D = C / (6 N) (Kaplan et al. 2020)",
        "optimum": {**best, "loss": float(loss.value(best["params"], best["tokens"]))},
        "at_loss_optimum": {"params": n_loss, "tokens": d_loss, "value": float(target.value(n_loss, d_loss)),
                            "interval": target.interval(n_loss, d_loss), "loss": float(loss.value(n_loss, d_loss))},
        "fit": target.summary(),
    }
    if max_params is not None:
        capped_target = optimum_on_budget(target, budget_flops, n_center=n_loss, n_max=max_params, count=count)
        capped_loss = optimum_on_budget(loss, budget_flops, n_center=n_loss, n_max=max_params, count=count)
        free_loss = optimum_on_budget(loss, budget_flops, n_center=n_loss, count=count)
        out["serving"] = {
            "max_params": max_params, "binding": capped_target["capped"] or capped_loss["capped"],
            # cost = how much worse the capped run is: accuracy lost, or loss gained (>= 0 either way)
            "target": {**capped_target, "cost": (best["value"] - capped_target["value"]) if target.higher_is_better
                       else capped_target["value"] - best["value"]},
            "loss": {**capped_loss, "cost": capped_loss["value"] - free_loss["value"]},
            "rule": "the best N <= max_params on the budget line (the metric is unimodal along it, so a binding "
                    "cap puts N at the cap and D = C / F(cap))",
        }
    out["predictions"] = prediction_rows(target, predict_pairs)
    return out


def prediction_rows(target: MetricModel, predict_pairs) -> list[dict]:
    """recommendation.json's `predictions`: one {params, tokens, target, value, interval} per pair."""
    return [{"params": float(n), "tokens": float(d), "target": target.name, "value": float(target.value(n, d)),
             "interval": target.interval(n, d)} for n, d in predict_pairs]


def predictions_only(target: MetricModel, predict_pairs) -> dict:
    """Without a budget there is no allocation to decide; the fitted target still answers predict.* pairs."""
    return {"predictions": prediction_rows(target, predict_pairs),
            "target_metric": {"name": target.name, "kind": target.target.kind, "fit": target.summary()},
            "note": "no budget given: predictions only (set budget.flops for the recommendation)"}
