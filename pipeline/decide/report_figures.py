"""The report's two decision figures, beside report.md: the deviation penalty and the inference-aware trade-off.

Drawn with matplotlib's object API (pipeline/fit/plots.py: save_figure), never pyplot, by the fit command's figure
workers (pipeline/fit/worker.py): the command itself never imports this module or matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pipeline.fit.plots import save_figure, set_margins


def report_figures(rec: dict, out_dir) -> list[Path]:
    """The decision's two figures beside report.md, those the recommendation has data for."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = [plot_deviation(rec, out / "deviation.png"), plot_inference(rec, out / "inference_aware.png")]
    return [p for p in drawn if p is not None]


def plot_deviation(rec: dict, path: Path) -> Path | None:
    """Loss penalty of N = f * N_opt at the fixed budget (the flat bottom is the margin for error)."""
    dev = rec.get("deviation")
    if not dev:
        return None
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
    set_margins(fig, left=0.8, bottom=0.6, top=0.35, right=0.2)
    return save_figure(fig, path)


def plot_inference(rec: dict, path: Path) -> Path | None:
    """Iso-loss curve D_train(N) and total (training + inference) FLOPs along it."""
    inf = rec.get("inference_aware")
    if not inf:
        return None
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
    set_margins(fig, left=0.85, bottom=0.6, top=0.5, right=0.2, wspace=0.3)
    return save_figure(fig, path)
