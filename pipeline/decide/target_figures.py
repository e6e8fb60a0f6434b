"""The target metrics' figures, one per fitted metric (metric_<name>.png beside report.md).

Plot of a metric: its runs (points) against training compute C = 6 N D, the fitted law along the
metric's own compute-optimal frontier from the smallest run to the budget (with the 5-95% band of the
bootstrap pairs at those (N, D)), and the prediction at the budget's optimum with its interval. An
accuracy gets a second panel: step 2, accuracy against bits per byte (all the points it was fitted on),
the sigmoid, its band, the chance floor and the predicted point. Drawn by the fit command's figure workers
(pipeline/fit/worker.py); the Markdown is pipeline/decide/target_report.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.decide.predict import optimum_on_budget
from pipeline.fit.intervals import percentile_band
from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN
from pipeline.fit.plots import save_figure, set_margins
from pipeline.fit.targets import MetricModel

MAX_PLOTS = 8          # the target, then other metrics in name order up to this many


def _frontier(model: MetricModel, c_grid: np.ndarray, n_center: float):
    best = [optimum_on_budget(model, c, n_center=n_center * np.sqrt(c / c_grid[-1])) for c in c_grid]
    return np.array([b["params"] for b in best]), np.array([b["tokens"] for b in best])


def plot_metric(model: MetricModel, budget_flops: float, n_center: float, path: Path) -> Path:
    pts = model.points or {}
    step2 = model.sigmoid is not None
    fig = Figure(figsize=(11 if step2 else 6.5, 4.2))
    axes = fig.subplots(1, 2) if step2 else [fig.subplots()]
    ax = axes[0]
    c_pts = TRAIN_FLOPS_PER_PARAM_TOKEN * np.asarray(pts["n"]) * np.asarray(pts["d"])
    c_grid = np.geomspace(c_pts.min(), max(budget_flops, c_pts.max()), 30)
    n_f, d_f = _frontier(model, c_grid, n_center)
    step1 = model.law.loss(n_f, d_f)
    ax.scatter(c_pts, pts["value"], s=14, color="C0", label="runs")
    ax.plot(c_grid, step1, color="C0", label=f"{model.target.metric} law, compute-optimal")
    samples = model.samples(n_f, d_f)
    if samples is not None:
        s1 = model.law_samples
        e, a, b, al, be = (s1[:, i:i + 1] for i in range(5))
        with np.errstate(over="ignore"):
            band = percentile_band(e + a / n_f**al + b / d_f**be)
        ax.fill_between(c_grid, *band, color="C0", alpha=0.2, label="5-95% bootstrap")
    best = optimum_on_budget(model, budget_flops, n_center=n_center)
    y_budget = float(model.law.loss(best["params"], best["tokens"]))
    ax.scatter([budget_flops], [y_budget], marker="*", s=160, color="k", zorder=4, label="at the budget")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6 N D (FLOPs)")
    ax.set_ylabel(model.target.metric)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    if step2:
        ax2 = axes[1]
        sig = model.sigmoid
        ax2.scatter(pts["bpb"], pts["acc"], s=6, alpha=0.5, color="C1", label="fitted points")
        lo = min(float(np.min(pts["bpb"])), y_budget) - 0.05
        x = np.linspace(lo, float(np.max(pts["bpb"])) + 0.05, 200)
        ax2.plot(x, sig(x), color="C1", label="step 2 sigmoid")
        if model.sigmoid_samples:
            ax2.fill_between(x, *percentile_band(np.stack([s(x) for s in model.sigmoid_samples])), color="C1",
                             alpha=0.2, label="5-95% bootstrap")
        ax2.axhline(sig.chance, color="grey", ls="--", lw=0.8, label=f"chance {sig.chance:.2f}")
        interval = best["interval"]
        yerr = None if not interval else [[best["value"] - interval[0]], [interval[1] - best["value"]]]
        ax2.errorbar([y_budget], [best["value"]], yerr=yerr, fmt="*", ms=12, color="k", label="at the budget")
        ax2.set_xlabel(model.target.metric)
        ax2.set_ylabel(model.target.accuracy)
        ax2.legend(fontsize=7)
        ax2.grid(True, alpha=0.3)
    fig.suptitle(f"{model.name}: {best['value']:.4g}"
                 + (f" [{best['interval'][0]:.4g}, {best['interval'][1]:.4g}]" if best["interval"] else "")
                 + f" at {budget_flops:.3g} FLOPs")
    set_margins(fig, left=0.75, bottom=0.6, top=0.5, right=0.2, wspace=0.3)
    return save_figure(fig, path)


def plot_targets(models: dict[str, MetricModel], target_name: str, budget_flops: float, n_center: float,
                 out_dir) -> list[Path]:
    names = [n for n in models if n == target_name] + sorted(n for n in models if n != target_name)
    names = [n for n in names if models[n].points]          # a published law has no runs to draw
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = {n: "metric_" + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in n) + ".png" for n in names}
    return [plot_metric(models[n], budget_flops, n_center, out / safe[n]) for n in names[:MAX_PLOTS]]
