"""Figures of a fit: IsoFLOP profiles, the N_opt(C) frontier of every approach, the parametric fit.

Drawn with matplotlib's object API (Figure + Agg canvas), never pyplot, so that no global backend
or figure state changes and it works on headless machines.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, LogFormatterSciNotation, NullLocator

from pipeline.fit.fit_all import bootstrap_samples
from pipeline.fit.intervals import percentile_band
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.table import RunsTable
from pipeline.records import FILE_MODE

_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


class PowerOfTenFormatter(LogFormatter):
    """Log-axis labels 10\u2079, 2\u00d710\u2079 as plain text with Unicode superscripts.

    matplotlib's default (LogFormatterSciNotation) writes them as mathtext, $10^{9}$: parsing each distinct
    label took ~20 ms, about a third of the fit command's figure time (docs/fit_benchmark.md). The same ticks
    are labelled (the base class chooses which, as the default does); only the text is built without mathtext.
    """

    def _num_to_string(self, x, vmin, vmax):
        exponent = math.floor(math.log10(x) + 1e-9)
        coeff = round(x / 10.0 ** exponent)
        power = "10" + str(exponent).translate(_SUPERSCRIPT)
        return power if coeff == 1 else f"{coeff}\u00d7{power}"


# A log axis spanning at least this many decades has a labelled tick per decade and no minor ticks: its 8 minor
# ticks per decade help no reading there, and building them was a third of a figure's time (docs/fit_benchmark.md).
MINOR_TICKS_MAX_DECADES = 3.0
# IsoFLOP profiles name each budget in a legend up to this many budgets; more get a colour bar of C.
LEGEND_MAX_BUDGETS = 12


def _plain_log_labels(fig: Figure) -> None:
    """Every log axis still on matplotlib's mathtext default gets PowerOfTenFormatter (labels set by hand stay);
    one spanning MINOR_TICKS_MAX_DECADES or more loses its minor ticks."""
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim), (ax.yaxis, ax.get_ylim)):
            if axis.get_scale() == "log":
                lo, hi = sorted(limits())
                if lo > 0 and math.log10(hi / lo) >= MINOR_TICKS_MAX_DECADES:
                    axis.set_minor_locator(NullLocator())
            if type(axis.get_major_formatter()) is LogFormatterSciNotation:
                axis.set_major_formatter(PowerOfTenFormatter())
            minor = axis.get_minor_formatter()
            if type(minor) is LogFormatterSciNotation:
                axis.set_minor_formatter(PowerOfTenFormatter(labelOnlyBase=minor.labelOnlyBase))


def set_margins(fig: Figure, *, left: float, bottom: float, top: float, right: float = 0.15, wspace: float | None = None,
                legend=None) -> None:
    """Fixed margins in inches instead of tight_layout, which measures every tick label in a pass as long as a third
    of the drawing (0.2 s of the fit command's three figures, docs/fit_benchmark.md). A legend outside the axes on
    the right is measured (its own texts only) and the right margin widened to hold it."""
    width, height = fig.get_size_inches()
    if legend is not None:   # at most half the figure: a freak label may get cut, the axes never vanish
        right = min(right + legend.get_window_extent().width / fig.dpi, 0.5 * width)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a Figure laid out by `set_margins` (one place, shared with pipeline.decide.report_figures,
    target_figures and fit.lr_plot).

    Atomically, like every result file (pipeline.records): rendered into a temporary file beside it and renamed,
    so a full disk leaves the previous figure or none, never a 0-byte or truncated PNG. PNGs at zlib level 1: 5%
    larger, a third faster to encode.
    """
    path = Path(path)
    _plain_log_labels(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=120, format=fmt, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _legend_outside(ax, n_entries: int, handles: list | None = None):
    """Legends sit right of the axes, never over the data (a 57-budget table has 57 entries)."""
    return ax.legend(**({"handles": handles} if handles else {}), fontsize=6 if n_entries > 12 else 7,
                     loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=max(1, n_entries // 25 + 1))


def plot_isoflop(result: dict, table: RunsTable, path: Path) -> Path:
    return save_figure(isoflop_figure(result, table), path)


def isoflop_figure(result: dict, table: RunsTable) -> Figure:
    """Loss vs N per budget, the parabolas of Approach 2 and their vertices; filled points are the ones
    each parabola used, hollow ones lie outside its window, x marks a run the outlier rule dropped; error bars
    are +-1 sd of the noise the zigzag check reads the profiles against."""
    fig = Figure(figsize=(8.5, 4.5))
    ax = fig.add_subplot()
    groups = table.budget_groups()
    budgets = np.unique(groups)
    palette = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 0.9, 256)))   # no pale yellow end
    norm = LogNorm(budgets.min(), budgets.max()) if budgets.size > 1 else None
    colours = [palette(norm(b) if norm else 0.0) for b in budgets]   # colour by log C: a colour bar can read it
    profiles = {p["planned_budget_flops"]: p for p in result["approaches"]["isoflop"].get("budgets", [])}
    dropped = {d["run_id"] for d in (result.get("outliers") or {}).get("dropped", [])}
    out = np.array([r in dropped for r in table.run_id], dtype=bool)
    zigzags = result.get("zigzags") or {}
    noise_sd = zigzags.get("sd_log")
    # The runs' points and bars are drawn in one call each, coloured per point (a 58-budget table drew 131
    # scatters, most of this figure's time); the legend gets one proxy per budget.
    colour_of = np.array([colours[i] for i in np.searchsorted(budgets, groups)])
    inside = np.zeros(len(table), dtype=bool)
    parabolas, parabola_colours, vertices, vertex_colours = [], [], [], []
    for budget, colour in zip(budgets, colours, strict=True):
        prof = profiles.get(float(budget))
        if prof and prof.get("window_log_n"):
            lo, hi = prof["window_log_n"]
            inside |= (groups == budget) & (np.log(table.n) >= lo - 1e-9) & (np.log(table.n) <= hi + 1e-9)
        if prof and prof.get("parabola"):
            x = np.linspace(*prof["window_log_n"], 50)
            parabolas.append(np.column_stack([np.exp(x), np.polyval(prof["parabola"], x)]))
            parabola_colours.append(colour)
        if prof and prof.get("bracketed"):
            vertices.append((prof["n_opt"], prof["loss_min"]))
            vertex_colours.append(colour)
    # One collection for the parabolas and one for the vertices (not an artist per budget: fewer to draw)
    if parabolas:
        ax.add_collection(LineCollection(parabolas, colors=parabola_colours, linewidths=1.2))
    if vertices:
        ax.scatter(*np.transpose(vertices), c=vertex_colours, marker="*", s=120, edgecolor="k", zorder=2.5)
    kept = ~out
    if noise_sd:   # each run's +-1 sd of the noise, to read a zigzag against (pipeline/fit/noise.py)
        ax.vlines(table.n[kept], table.loss[kept] * (1 - noise_sd), table.loss[kept] * (1 + noise_sd),
                  colors=colour_of[kept], linewidth=0.8, alpha=0.6)
    ax.scatter(table.n[kept & inside], table.loss[kept & inside], c=colour_of[kept & inside], s=18)
    ax.scatter(table.n[kept & ~inside], table.loss[kept & ~inside], facecolors="none",
               edgecolors=colour_of[kept & ~inside], s=18)
    many = budgets.size > LEGEND_MAX_BUDGETS and norm is not None
    handles = [] if many else [Line2D([], [], marker="o", ls="", color=colour, label=f"C = {budget:.2g}")
                               for budget, colour in zip(budgets, colours, strict=True)]
    if many:   # a legend of 58 budgets is unreadable (and was half this figure's time): a colour bar of C instead
        fig.colorbar(ScalarMappable(norm=norm, cmap=palette), ax=ax, pad=0.02,
                     label=f"budget C (FLOPs, {table.flop_method}), {budgets.size} budgets")
    if out.any():
        handles.append(ax.scatter(table.n[out], table.loss[out], marker="x", color="C3", s=30,
                                  label="dropped (outlier rule)"))
    ax.set_xscale("log")
    ax.set_xlabel(f"N ({table.convention} parameters)")
    ax.set_ylabel("final validation loss")
    bars = (f"\nbars: +-1 sd of the noise ({'measured seed noise' if zigzags.get('measured') else 'law residuals'}, "
            f"{noise_sd:.3g} in log loss)") if noise_sd else ""
    ax.set_title("IsoFLOP profiles (Approach 2): filled = in the parabola's window, hollow = outside; stars: vertices"
                 + bars, fontsize=8)
    legend = None
    if handles:
        if many:
            ax.legend(handles=handles, fontsize=7, loc="upper right")
        else:
            legend = _legend_outside(ax, len(handles), handles)
    # a colour bar takes its share of the axes' width (fig.colorbar), its ticks and label need ~0.7 in beside it
    set_margins(fig, left=0.75, bottom=0.6, top=0.5 if bars else 0.35, right=0.7 if many else 0.25, legend=legend)
    return fig


def _frontier_band(result: dict, c_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    samples = bootstrap_samples(result)
    if samples.shape[0] < 2:
        return None
    n_opt = np.array([ParametricLaw(*row).optimal_allocation(c_grid)[0] for row in samples])  # (samples, grid)
    return percentile_band(n_opt, axis=0)


def plot_frontier(result: dict, table: RunsTable, path: Path) -> Path:
    """N_opt(C) of every approach, extrapolated to the target budget, with the bootstrap band."""
    target = result["budget_flops"]
    c_grid = np.geomspace(min(table.c.min(), target), max(table.c.max(), target), 40)
    fig = Figure(figsize=(8.5, 4.5))
    ax = fig.add_subplot()
    law = result.get("law")
    if law:
        fitted = ParametricLaw(law["E"], law["A"], law["B"], law["alpha"], law["beta"])
        ax.plot(c_grid, fitted.optimal_allocation(c_grid)[0], color="C0", label=f"law {law.get('candidate', 'fit')}")
        band = _frontier_band(result, c_grid)
        if band is not None:
            ax.fill_between(c_grid, *band, color="C0", alpha=0.2, label="law, 5-95% bootstrap")
    iso = result["approaches"]["isoflop"]
    if "a" in iso:
        vertices = [p for p in iso["budgets"] if p["bracketed"]]
        ax.scatter([p["budget_flops"] for p in vertices], [p["n_opt"] for p in vertices], color="C1", zorder=3)
        ax.plot(c_grid, iso["k_n"] * c_grid ** iso["a"], color="C1", ls="--", label="Approach 2 (IsoFLOP)")
    env = result["approaches"]["envelope"]
    if "a" in env:
        ax.scatter(env["frontier"]["flops"], env["frontier"]["n"], color="C2", s=10, zorder=3)
        ax.plot(c_grid, env["k_n"] * c_grid ** env["a"], color="C2", ls=":", label="Approach 1 (envelope)")
    ax.axvline(target, color="grey", lw=0.8)
    ax.axvspan(table.c.min(), table.c.max(), color="grey", alpha=0.12, label="fitted range (pilots)")
    if result.get("n_opt"):
        ax.scatter([target], [result["n_opt"]], marker="*", s=160, color="k", zorder=4,
                   label=f"recommended N = {result['n_opt']:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"training compute C (FLOPs, {table.flop_method})")
    ax.set_ylabel(f"compute-optimal N ({table.convention})")
    ax.set_title("Compute-optimal model size: fitted range shaded, the rest is extrapolation", fontsize=9)
    set_margins(fig, left=0.8, bottom=0.6, top=0.35, right=0.25, legend=_legend_outside(ax, 7))
    return save_figure(fig, path)


def plot_parametric(result: dict, table: RunsTable, path: Path) -> Path:
    """Predicted vs observed loss, and the log-space residuals vs compute (outliers marked x)."""
    law = result["law"]
    fitted = ParametricLaw(law["E"], law["A"], law["B"], law["alpha"], law["beta"])
    predicted = fitted.loss(table.n, table.tokens)
    dropped = {d["run_id"] for d in result["outliers"]["dropped"]}
    out = np.array([r in dropped for r in table.run_id], dtype=bool)
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lims = [min(predicted.min(), table.loss.min()), max(predicted.max(), table.loss.max())]
    ax1.plot(lims, lims, color="grey", lw=0.8)
    ax1.scatter(table.loss[~out], predicted[~out], s=12, label="fitted runs")
    if out.any():
        ax1.scatter(table.loss[out], predicted[out], marker="x", color="C3", label="outliers (dropped)")
    ax1.set_xlabel("observed loss")
    ax1.set_ylabel("predicted loss")
    ax1.set_title(f"L = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3f} + {law['B']:.3g}/D^{law['beta']:.3f}",
                  fontsize=9)
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=2)
    resid = np.log(predicted) - np.log(table.loss)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.scatter(table.c[~out], resid[~out], s=12)
    if out.any():
        ax2.scatter(table.c[out], resid[out], marker="x", color="C3")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"training compute C (FLOPs, {table.flop_method})")
    ax2.set_ylabel("log predicted - log observed")
    ax2.set_title("residuals")
    set_margins(fig, left=0.75, bottom=0.85, top=0.35, right=0.2, wspace=0.3)   # the legend sits below the left axes
    return save_figure(fig, path)


def plot_fit(result: dict, table: RunsTable, out_dir: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Write every figure the result supports into `out_dir` (of `names` only, when given); returns their paths.

    `table` is the table given to fit_all (outliers included: they are drawn as x).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table.with_convention(result["convention"])
    drawers = {"isoflop_profiles.png": plot_isoflop, "frontier.png": plot_frontier}
    if result.get("law"):
        drawers["parametric_fit.png"] = plot_parametric
    return [draw(result, table, out_dir / name) for name, draw in drawers.items() if names is None or name in names]
