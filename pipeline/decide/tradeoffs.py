"""How the compute-optimal answer moves: off-optimal sizes, inference traffic, scarce data, other laws.

Every function takes a `ParametricLaw` L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla eq. 2), a training
budget C and the FLOP count C = F(N) D the recommendation uses (pipeline/decide/allocation.py: the exact
count of the pilots' family, or the full run's PaLM count for published laws and imported runs; 6 N D when
none is given), so
every plan here spends the same C as the headline and the launched run. Returns plain JSON-able dicts.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.decide.allocation import FlopCount, optimal_allocation, six_nd_count
from pipeline.errors import UserError
from pipeline.fit.laws import (
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    KaplanFrontier,
    ParametricLaw,
    elementwise,
    minimise_log,
    published_law,
    tokens_per_param_rule,
)

K = TRAIN_FLOPS_PER_PARAM_TOKEN
DEVIATION_FACTORS = (1 / 4, 1 / 2, 1 / 1.5, 1.0, 1.5, 2.0, 4.0)
# Inference costs 2 FLOPs per parameter per token (a forward pass), Sardana & Frankle 2023 sec. 2.
INFERENCE_FLOPS_PER_PARAM_TOKEN = 2.0
# Muennighoff et al. 2023 sec. 3: fitted "half-life" of repeated data (R*_D) and of excess parameters
# (R*_N), in repetitions beyond the first epoch.
R_STAR_DATA = 15.387756
R_STAR_PARAMS = 5.309743
PUBLISHED_FOR_COMPARISON = ("chinchilla", "chinchilla_unrounded", "epoch", "kaplan")


def _count(law, count: FlopCount | None) -> FlopCount:
    return count or six_nd_count("no count given: C = 6 N D", getattr(law, "convention", "total"))


def _fpt(count: FlopCount, n) -> np.ndarray:
    return count.flops_per_token(np.asarray(n, dtype=float))


# --- deviating from N_opt at a fixed budget -------------------------------------------------------------
def tokens_for_loss(law: ParametricLaw, n_params, target_loss: float):
    """Training tokens D with L(N, D) = target (the iso-loss curve); inf where N alone cannot reach it."""
    n = np.asarray(n_params, dtype=float)
    room = target_loss - law.E - law.A / n**law.alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(room > 0, (law.B / np.where(room > 0, room, 1.0)) ** (1.0 / law.beta), np.inf)
    return tokens


def deviation_penalty(law: ParametricLaw, budget_flops: float, factors=DEVIATION_FACTORS,
                      count: FlopCount | None = None) -> dict:
    """Loss of N = f * N_opt trained on the rest of the budget, and the compute it would need to match L_opt.

    D = C / F(N) under the count; the 'compute to match' column solves L(N, D') = L(N_opt, D_opt) for D'
    and reports F(N) D' / C.
    """
    count = _count(law, count)
    best_alloc = optimal_allocation(law, budget_flops, count)
    n_opt, best = best_alloc.n, best_alloc.loss
    rows = []
    for f in factors:
        n = f * n_opt
        fpt = float(_fpt(count, n))
        d = budget_flops / fpt
        loss = float(law.loss(n, d))
        d_match = float(tokens_for_loss(law, n, best))
        rows.append({"factor": f, "n_params": n, "tokens": d, "tokens_per_param": d / n, "loss": loss,
                     "delta_loss": loss - best, "delta_pct": 100 * (loss - best) / best,
                     "compute_to_match": fpt * d_match / budget_flops if math.isfinite(d_match) else None})
    curve_factors = np.exp(np.linspace(math.log(1 / 8), math.log(8), 61))
    curve_n = curve_factors * n_opt
    curve_loss = law.loss(curve_n, budget_flops / _fpt(count, curve_n)) - best
    return {"n_opt": n_opt, "loss_opt": best, "rows": rows, "count": count.name,
            "curve": {"factor": curve_factors.tolist(), "delta_loss": np.asarray(curve_loss).tolist()}}


# --- inference-aware sizing (Sardana & Frankle 2023) -------------------------------------------------
def inference_aware(law: ParametricLaw, budget_flops: float, inference_tokens: float,
                    count: FlopCount | None = None) -> dict:
    """The (N, D_train) reaching the compute-optimal loss at the least F(N) D_train + F(N)/3 D_inference.

    F is the training count (6 N, or the exact count); a forward pass is a third of it (2 N under 6 N D).

    Sardana & Frankle 2023 ("Beyond Chinchilla-Optimal"), sec. 2: fix the quality (loss) of
    the compute-optimal model, move along its iso-loss curve D_train(N) (L(N, D_train) = L*) and
    minimise total FLOPs. Inference pulls N below N_opt, so we search N in (N_min, N_opt], with
    N_min the size whose loss floor E + A/N^alpha already equals L*.
    """
    if (isinstance(inference_tokens, bool) or not isinstance(inference_tokens, (int, float))
            or not math.isfinite(inference_tokens) or inference_tokens < 0):
        raise UserError(f"inference.tokens={inference_tokens!r} must be a number >= 0: give the expected lifetime "
                        "inference tokens, e.g. inference.tokens=2e12, or leave it unset")
    count = _count(law, count)
    best_alloc = optimal_allocation(law, budget_flops, count)
    n_opt, d_opt, target = best_alloc.n, best_alloc.d, best_alloc.loss
    n_min = (law.A / (target - law.E)) ** (1.0 / law.alpha)
    forward_share = INFERENCE_FLOPS_PER_PARAM_TOKEN / K   # forward = 1/3 of training (2 N of 6 N)

    def train_flops(n, d):
        return _fpt(count, n) * d

    def total_flops(n: float) -> float:
        fpt = float(_fpt(count, n))
        return fpt * float(tokens_for_loss(law, n, target)) + forward_share * fpt * inference_tokens

    compute_optimal_total = total_flops(n_opt)
    n_best = n_opt if inference_tokens == 0 else minimise_log(elementwise(total_flops), n_min * (1 + 1e-6), n_opt)
    d_best = float(tokens_for_loss(law, n_best, target))
    best_total = total_flops(n_best)

    # The plotted stretch: from a few times below the best size (not down to N_min, where D_train
    # diverges and would flatten the plot) to 4x the compute-optimal size.
    curve_n = np.exp(np.linspace(math.log(max(n_min * 1.05, n_best / 4)), math.log(n_opt * 4), 60))
    curve_d = tokens_for_loss(law, curve_n, target)
    curve_total = train_flops(curve_n, curve_d) + forward_share * _fpt(count, curve_n) * inference_tokens
    best_train = float(train_flops(n_best, d_best))
    return {
        "inference_tokens": float(inference_tokens), "target_loss": target, "count": count.name,
        "n_opt": n_best, "d_opt": d_best, "tokens_per_param": d_best / n_best,
        "training_flops": best_train, "total_flops": best_total,
        "compute_optimal_n": n_opt, "compute_optimal_d": d_opt,
        "compute_optimal_total_flops": compute_optimal_total,
        "saving_fraction": 1.0 - best_total / compute_optimal_total,
        "extra_training_fraction": best_train / budget_flops - 1.0,
        "curve": {"n_params": curve_n.tolist(), "train_tokens": curve_d.tolist(), "total_flops": curve_total.tolist()},
    }


# --- data-constrained scaling (Muennighoff et al. 2023) ----------------------------------------------
def effective_count(unique: float, total: float, r_star: float) -> float:
    """U + U R* (1 - exp(-R/R*)), R = total/U - 1 repetitions (Muennighoff et al. 2023, sec. 3, eq. 5).

    U is what is actually used: min(unique, total), so a single partial epoch counts at face value.
    """
    unique = min(unique, total)
    repetitions = total / unique - 1.0
    return unique + unique * r_star * (1.0 - math.exp(-repetitions / r_star))


def params_for_unique_tokens(law: ParametricLaw, unique_tokens: float, count: FlopCount | None = None) -> float:
    """U_N: the size for which U_D tokens are compute-optimal.

    Under 6 N D the closed form D_opt = (C/6)^b / G, inverted; under another count, the budget C_U whose
    D_opt is U_D is found by bisection in log C (D_opt grows with C) and U_N = N_opt(C_U).
    """
    if count is None or count.name == "6nd":
        c_over_k = (unique_tokens * law.G) ** (1.0 / law.b)
        return law.G * c_over_k**law.a
    def d_opt(log_c: float) -> float:
        """D_opt at budget e^log_c; 0 where the optimum lies below the family's smallest model (small budgets)."""
        try:
            return optimal_allocation(law, math.exp(log_c), count).d
        except UserError:
            return 0.0

    lo = hi = math.log(unique_tokens * 6.0)
    for _ in range(100):  # up to e^200 x: D_opt grows with C, so this brackets U_D from above
        if d_opt(hi) >= unique_tokens:
            break
        hi += 2.0
    else:
        raise UserError(f"no budget makes {unique_tokens:.3g} tokens compute-optimal under law {law.name}")
    lo = hi - 2.0
    while lo > 0 and d_opt(lo) > unique_tokens:
        lo -= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if d_opt(mid) < unique_tokens:
            lo = mid
        else:
            hi = mid
    return optimal_allocation(law, math.exp(hi), count).n


def constrained_loss(law: ParametricLaw, n_params: float, tokens: float, unique_tokens: float,
                     u_n: float | None = None) -> float:
    """L(N', D') with both the data and the parameter discount (Muennighoff et al. 2023, sec. 3)."""
    d_eff = effective_count(unique_tokens, tokens, R_STAR_DATA)
    u_n = min(params_for_unique_tokens(law, unique_tokens) if u_n is None else u_n, n_params)
    n_eff = effective_count(u_n, n_params, R_STAR_PARAMS)
    return float(law.loss(n_eff, d_eff))


def data_constrained(law: ParametricLaw, budget_flops: float, unique_tokens: float,
                     count: FlopCount | None = None) -> dict:
    """What repeating U unique tokens costs the compute-optimal plan, and the plan that minimises it.

    Muennighoff et al. 2023: repeated tokens are worth less, D' = U_D + U_D R*_D (1 - exp(-R_D/R*_D)),
    and parameters beyond the size U_D can feed are worth less, N' = U_N + U_N R*_N (1 - exp(-R_N/R*_N)).
    Both terms are modelled, with their fitted R*_D and R*_N applied to this law's E, A, B, alpha, beta.
    """
    if (isinstance(unique_tokens, bool) or not isinstance(unique_tokens, (int, float))
            or not math.isfinite(unique_tokens) or unique_tokens <= 0):
        raise UserError(f"data.unique_tokens={unique_tokens!r} must be a positive number of tokens: "
                        "e.g. unique_tokens=1e11, or leave it unset")
    count = _count(law, count)
    best_alloc = optimal_allocation(law, budget_flops, count)
    n_opt, d_opt, loss_unconstrained = best_alloc.n, best_alloc.d, best_alloc.loss
    u_n = params_for_unique_tokens(law, unique_tokens, count)
    loss_repeated = constrained_loss(law, n_opt, d_opt, unique_tokens, u_n)

    def loss_at(n: float) -> float:
        return constrained_loss(law, n, budget_flops / float(_fpt(count, n)), unique_tokens, u_n)

    lo = max(n_opt / 100, count.n_min)
    n_best = minimise_log(elementwise(loss_at), lo, n_opt * 100) if d_opt > unique_tokens else n_opt
    d_best = budget_flops / float(_fpt(count, n_best))
    loss_best = loss_at(n_best)
    return {
        "unique_tokens": float(unique_tokens), "terms": "data (R*_D) and parameters (R*_N)", "count": count.name,
        "r_star_data": R_STAR_DATA, "r_star_params": R_STAR_PARAMS,
        "epochs": d_opt / unique_tokens,
        "effective_tokens": effective_count(unique_tokens, d_opt, R_STAR_DATA),
        "loss_unconstrained": loss_unconstrained, "loss_with_repetition": loss_repeated,
        "n_opt": n_best, "d_opt": d_best, "tokens_per_param": d_best / n_best,
        "adjusted_epochs": d_best / unique_tokens, "adjusted_loss": loss_best,
        "penalty_vs_unique": loss_best - loss_unconstrained,
    }


# --- what the published laws say for the same budget -----------------------------------------------
def published_comparison(budget_flops: float) -> list[dict]:
    """N_opt, D_opt and tokens/param for the same budget under each published law and the 20x rule.

    Predicted losses are in each law's own units (its data and tokenizer): compare the allocations,
    not the losses. Kaplan's N counts non-embedding parameters.
    """
    rows = []
    for name in PUBLISHED_FOR_COMPARISON:
        law = published_law(name)
        n, d = (float(v) for v in law.optimal_allocation(budget_flops))
        loss = float(law.loss(n, d)) if isinstance(law, ParametricLaw) else None
        note = "non-embedding N; fixed LR schedule" if isinstance(law, KaplanFrontier) else ""
        rows.append({"name": name, "n_params": n, "tokens": d, "tokens_per_param": d / n,
                     "convention": law.convention, "predicted_loss": loss, "source": law.source, "note": note})
    n, d = (float(v) for v in tokens_per_param_rule(budget_flops))
    rows.append({"name": "20_tokens_per_param", "n_params": n, "tokens": d, "tokens_per_param": 20.0,
                 "convention": "total", "predicted_loss": None,
                 "source": "rule of thumb from Hoffmann et al. 2022, Table 3", "note": ""})
    return rows

