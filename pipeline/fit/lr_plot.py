"""The LR probe's figure: loss against LR per probed size, each with its parabola and best LR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.fit.plots import save_figure, set_margins


def plot_probe(law: dict, path: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, s in enumerate(law["sizes"]):
        colour = colours[i % len(colours)]
        done = [p for p in s["points"] if p["loss"] is not None]
        label = f"N {s['n']:.3g} non-emb. ({s['n_total']:.3g} total), D {s['d']:.3g}"
        ax.plot([p["lr"] for p in done], [p["loss"] for p in done], "o", color=colour, label=label)
        for p in s["points"]:
            if p["status"] == "diverged":
                ax.axvline(p["lr"], color=colour, ls=":", lw=1)
        if s["curvature"] is not None:
            k = s["curvature"] * s["loss_opt"]
            x = np.linspace(np.log(s["lr_opt"]) - 1.6, np.log(s["lr_opt"]) + 1.6, 50)
            ax.plot(np.exp(x), s["loss_opt"] + k * (x - np.log(s["lr_opt"])) ** 2, "-", color=colour, lw=1)
            marker = "*" if s["resolved"] else "x"
            ax.plot([s["lr_opt"]], [s["loss_opt"]], marker, color=colour, ms=12)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("LR probe: best LR per size (*), parabola in ln LR; a 2x miss costs "
                 f"{law['cost_2x_median']:.2%}", fontsize=9)
    ax.legend(fontsize=7)
    set_margins(fig, left=0.75, bottom=0.6, top=0.35, right=0.2)
    return save_figure(fig, path)
