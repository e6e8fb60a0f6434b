"""What a runs table can tell before any law is fitted to it: is L(N, D) identified by these runs?

The law L = E + A/N^alpha + B/D^beta (Chinchilla eq. 2) has five parameters; on a table it is only
identified when the runs pull N and D apart. Checked on the (N, D) layout alone, before any fit:

* sizes: at least MIN_DISTINCT distinct N (runs within DISTINCT_RATIO of each other are one size).
  With fixed D, E + A/N^alpha has three parameters, so two sizes leave it free (a 2 x 2 grid fits
  every law of a one-parameter family equally well); every run at one N leaves alpha and A free.
* token counts: the same for D.
* N and D not tied: log D must not be a linear function of log N. Runs on one IsoFLOP budget
  (D = C / 6N), runs at a fixed tokens-per-parameter (D = 20 N) or any D = k N^p lie on a line in
  (log N, log D), along which only a one-dimensional slice of the law is seen: N_opt is then not
  identified (issue 26: tokens = N/100 gave N_opt 218M [114M, 238M] for a true 1.82B). Measured as
  the spread of the points off their principal line (the smaller principal standard deviation of
  (log10 N, log10 D)); below MIN_OFF_LINE_DECADES the runs are tied.
* runs: more runs than the law's free parameters (a law through every point has no residual, so
  no noise estimate and no interval). Below RUNS_PER_PARAMETER runs per parameter the fit runs, but
  the verdict never says "size the run from them": the backtest then holds out runs the fit cannot spare.

A table failing a hard condition is refused with one line that says what to add (exit 2), before any
compute; one failing only the soft one is fitted and the verdict says why it cannot decide.
`law_fit.fixed_E` at or above the lowest pilot loss is refused too: E is the loss of an infinite model
on infinite data, and no finite run can go below it.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.table import RunsTable

MIN_DISTINCT = 3
DISTINCT_RATIO = 1.02          # N (or D) within 2% are one size: seeds and shape rounding, not a new point
MIN_OFF_LINE_DECADES = 0.03    # ~7% off the principal line in N or D; a 2-budget IsoFLOP 1.5x apart has ~0.06
RUNS_PER_PARAMETER = 2
LAW_PARAMETERS = 5             # E, A, B, alpha, beta of the free form


def distinct_values(values: np.ndarray) -> int:
    """How many distinct values, runs within DISTINCT_RATIO of their sorted neighbour counting as one."""
    logs = np.sort(np.log(np.asarray(values, dtype=float)))
    return int(1 + np.sum(np.diff(logs) > np.log(DISTINCT_RATIO))) if logs.size else 0


def off_line_decades(n: np.ndarray, d: np.ndarray) -> float:
    """The smaller principal standard deviation of (log10 N, log10 D): 0 when D = k N^p for every run."""
    points = np.column_stack([np.log10(n), np.log10(d)])
    if len(points) < 3:
        return 0.0
    return float(np.sqrt(max(np.linalg.eigvalsh(np.cov(points, rowvar=False))[0], 0.0)))


def identifiability(table: RunsTable, n_free: int = LAW_PARAMETERS) -> dict:
    """{"identified", "sufficient", "problems": [...], "note", counts}: see the module doc."""
    n, d = table.n, table.tokens
    sizes, token_counts = distinct_values(n), distinct_values(d)
    spread = off_line_decades(n, d)
    problems = []
    if sizes < MIN_DISTINCT:
        problems.append(f"{sizes} distinct model size{'s' if sizes != 1 else ''} (the N term E + A/N^alpha needs "
                        f"{MIN_DISTINCT}+): add runs at other sizes")
    if token_counts < MIN_DISTINCT:
        problems.append(f"{token_counts} distinct token count{'s' if token_counts != 1 else ''} (the D term needs "
                        f"{MIN_DISTINCT}+): add runs with other token counts")
    if sizes >= MIN_DISTINCT and token_counts >= MIN_DISTINCT and spread < MIN_OFF_LINE_DECADES:
        problems.append(f"N and D move together (D = k N^p within {spread:.3f} decades: one IsoFLOP budget or a fixed "
                        "tokens per parameter), so their effects cannot be told apart: add a second budget, or runs "
                        "with other tokens per parameter")
    if len(table) <= n_free:
        problems.append(f"{len(table)} runs for a {n_free}-parameter law: add runs (at least {n_free + 1}, better "
                        f"{RUNS_PER_PARAMETER * n_free})")
    sufficient = not problems and len(table) >= RUNS_PER_PARAMETER * n_free
    out = {"identified": not problems, "sufficient": sufficient, "problems": problems, "n_runs": len(table),
           "distinct_sizes": sizes, "distinct_tokens": token_counts, "off_line_decades": spread,
           "n_range": float(n.max() / n.min()), "d_range": float(d.max() / d.min()),
           "rule": (f"{MIN_DISTINCT}+ sizes and {MIN_DISTINCT}+ token counts (within {DISTINCT_RATIO - 1:.0%} = one), "
                    f"N and D not on one power-law line (spread > {MIN_OFF_LINE_DECADES} decades), more runs than "
                    f"the law's {n_free} parameters; {RUNS_PER_PARAMETER} runs per parameter to size a run")}
    if problems:
        out["note"] = f"the runs do not identify L(N, D): {problems[0]}"
    elif not sufficient:
        out["note"] = (f"{len(table)} runs for a {n_free}-parameter law (fewer than {RUNS_PER_PARAMETER} per "
                       "parameter): the law is fitted, but too few runs remain to check it")
    return out


def require_identifiable(table: RunsTable, fixed_E: float | None = None) -> dict:
    """identifiability(table), or a one-line UserError when the table cannot identify the law or
    `fixed_E` is at or above the lowest loss (see the module doc)."""
    if fixed_E is not None:
        lowest = float(np.min(table.loss))
        if not fixed_E < lowest:
            raise UserError(f"law_fit.fixed_E={fixed_E:g} is not below the lowest pilot loss ({lowest:.4g}): E is the "
                            "loss of an infinite model on infinite data; give an E below every run's loss, or unset it")
    report = identifiability(table)
    if not report["identified"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise UserError(f"{report['note']}{more}; {len(table)} runs in {table.source or 'the table'}")
    return report
