"""Synthetic pilot runs drawn from a known law, shared by the fit tests (and checked here).

An IsoFLOP design as the planner makes it: per budget C, sizes N placed `ratio` apart around the
law's optimum (optionally shifted), D = C / F(N) with F = EXACT_OVER_6N * 6 N exact FLOPs per token
(attention's share, Chinchilla App. F), loss = law(N, D) times log-normal noise.
"""

from __future__ import annotations

import numpy as np

from pipeline.fit.laws import ParametricLaw
from pipeline.fit.table import RunsTable
from pipeline.records import append_jsonl, write_record

TRUE_LAW = ParametricLaw(1.7, 400.0, 1200.0, 0.34, 0.30, name="synthetic")
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)
EXACT_OVER_6N = 1.1          # exact FLOPs per token / 6N
NON_EMBEDDING_SHARE = 0.8    # non-embedding N = 0.8 total N: a constant factor leaves the exponents alone


def isoflop_design(budgets=BUDGETS, sizes: int = 7, ratio: float = 1.6, shift: float = 0.0, noise: float = 0.003,
                   seed: int = 0, law: ParametricLaw = TRUE_LAW) -> list[dict]:
    """Rows {run_id, n, tokens, flops_exact, flops_6n, budget, loss}; `shift` moves the grid (in steps)."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        n_star = law.optimal_allocation(budget)[0]
        for k in np.arange(sizes) - (sizes - 1) / 2 + shift:
            n = float(n_star * ratio**k)
            tokens = budget / (EXACT_OVER_6N * 6 * n)
            loss = float(law.loss(n, tokens) * np.exp(rng.normal(0.0, noise)))
            rows.append({"run_id": f"c{budget:.0e}-n{n:.3g}", "n": n, "tokens": tokens, "budget": budget,
                         "flops_exact": budget, "flops_6n": 6 * n * tokens, "loss": loss})
    return rows


def table_from_design(rows: list[dict], flop_method: str = "exact") -> RunsTable:
    n = np.array([r["n"] for r in rows])
    return RunsTable(run_id=tuple(r["run_id"] for r in rows),
                     params={"total": n, "non_embedding": NON_EMBEDDING_SHARE * n},
                     tokens=np.array([r["tokens"] for r in rows]), loss=np.array([r["loss"] for r in rows]),
                     flops={"exact": np.array([r["flops_exact"] for r in rows]),
                            "6n": np.array([r["flops_6n"] for r in rows])},
                     budget_flops=np.array([r["budget"] for r in rows]), flop_method=flop_method,
                     source="synthetic")


def write_sweep(results_dir, rows: list[dict], n_evals: int = 12, law: ParametricLaw = TRUE_LAW) -> None:
    """Run records plus eval.jsonl curves. A curve point at t tokens has loss law(N, t): as if each
    point had its own schedule (the ideal Approach 1 assumes; see fit_envelope's caveat)."""
    for r in rows:
        run_dir = results_dir / "sweep" / "runs" / r["run_id"]
        n = int(round(r["n"]))
        write_record(run_dir, {
            "run_id": r["run_id"], "status": "ok", "final_val_loss": r["loss"], "convention": "total",
            "tokens": int(round(r["tokens"])), "shape": {"vocab_size": 512, "seq_len": 128},
            "params": {"total": n, "non_embedding": int(NON_EMBEDDING_SHARE * n), "embedding": n // 10,
                       "head": n // 10},
            "flops": {"exact": r["flops_exact"], "6n": r["flops_6n"]}, "target": {"budget_flops": r["budget"]}})
        for t in np.geomspace(r["tokens"] / 30, r["tokens"], n_evals):
            append_jsonl(run_dir / "eval.jsonl", {
                "step": int(t), "tokens": float(t), "flops_exact": EXACT_OVER_6N * 6 * r["n"] * t,
                "flops_6n": 6 * r["n"] * t, "val_loss": float(law.loss(r["n"], t))})


def profile_optimum(budget: float, law: ParametricLaw = TRUE_LAW) -> float:
    """The true minimum over N of law(N, C / F(N)) with F = EXACT_OVER_6N * 6N: the 6ND optimum at C / 1.1."""
    return float(law.optimal_allocation(budget / EXACT_OVER_6N)[0])


def test_design_is_an_isoflop_design_around_the_true_optimum():
    rows = isoflop_design(noise=0.0)
    assert len(rows) == 35
    for r in rows:
        assert abs(r["tokens"] * EXACT_OVER_6N * 6 * r["n"] / r["budget"] - 1) < 1e-12
    middle = [r for r in rows if r["budget"] == 1e18][3]
    assert abs(middle["n"] / TRUE_LAW.optimal_allocation(1e18)[0] - 1) < 1e-12
    # the profile's true minimum, found by brute force, is the closed form at C / 1.1
    grid = np.geomspace(1e6, 1e9, 200_001)
    brute = grid[np.argmin(TRUE_LAW.loss(grid, 1e18 / (EXACT_OVER_6N * 6 * grid)))]
    assert abs(brute / profile_optimum(1e18) - 1) < 1e-4
