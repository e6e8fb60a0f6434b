"""What to train next: the runs that shrink the interval of the answer most per FLOP.

Why here (decide/) and not in plan/: the chooser reads a *fitted* law and its bootstrap ensemble, so
it comes after fit/ in the one-way order (config -> data -> plan -> train -> records -> fit ->
decide), while plan/ stays pure and earlier than any fit. "What to run next" is a decision made from
the fit, like the recommendation itself. The sweep (pipeline/sweep/adaptive.py) calls it between
rounds and turns its (N, D) choices into planned runs; `python -m pipeline.fit ... next=K` calls it on
any table, imported runs included.

The quantity the user bets on is log N_opt at the target budget (the law's closed form, Chinchilla
eq. 4, C = 6 N D). With `target=<metric>` it is the log of the N the fit recommends for that target: the
N on the budget line that minimises the metric's law (maximises an accuracy; step 2's sigmoid falls
with bits per byte, so that is step 1's N_opt, the same closed form on the metric's law), and the
ensemble is the target's own bootstrap rows (pipeline/fit/targets.py), each candidate observing the
metric with the metric's noise sd (`decision_quantity` names it). Its uncertainty is the fit's own ensemble: the rows (E, A, B, alpha, beta) of the
fit's bootstrap (pipeline/fit/candidates.py: every run's loss redrawn from the fitted law with the
noise model's sd, refitted). Each candidate run x is an observation y = log L(x) + noise (sd sigma).
Conditioning the ensemble's joint Gaussian approximation of (q = log N_opt, f(x) = log L(x)) on y
(the ensemble Kalman update, Evensen 2003; the same linear-Gaussian expected information as in
sequential design, e.g. Chaloner & Verdinelli 1995) gives the expected variance after the run:

    Var(q | y) = Var(q) - Cov(q, f(x))^2 / (Var(f(x)) + sigma^2)

which needs no refit per candidate. Runs are picked greedily by that reduction per FLOP, each pick
conditioning the ensemble's covariance before the next (so a second run where the first already
answered is worth less), until K runs or the FLOPs left are used. The expected 90% width after is the
ensemble's percentile width scaled by sqrt(Var after / Var now).

Candidates (`isoflop_candidates`): every existing IsoFLOP budget and new budgets `budget_ratio` below
the smallest and above the largest (up to two steps), each with sizes centred on the current law's
optimum at that budget (so Approach 2's parabolas stay centred, arXiv 2603.22339), plus a repeat
(another seed) of every run already trained.

Whole profiles (`sweep.min_profiles` > 0, off by default): a budget that enters with one or two sizes gives
Approach 2 no parabola, so the approaches cannot be compared there (the adaptive demo ends with Approach 2 on
two profiles, its interval 1000x wide). With `profiles`, a new budget's PROFILE_SIZES central sizes are one
unit, chosen together or not at all, valued by the variance its runs remove jointly, c' (S + sigma^2 I)^-1 c
(c their covariances with q, S among them), per FLOP of all of them; and while fewer than `min_profiles`
budgets have a profile (`profiled_budgets`) a round starts with the best new budget's profile
(`profile_first`). Per FLOP a profile rarely beats a single run, so this buys the approaches' cross-check
with Approach 3's precision (measured in docs/adaptive_design.md).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN, ParametricLaw

Z90 = 1.6448536269514722          # the 95th percentile of the standard normal: a 90% interval is +-Z90 sd
ENSEMBLE_TRIM = (1.0, 99.0)       # members beyond these percentiles of log N_opt are left out of the
                                  # covariances: a few resamples that ran off would otherwise dominate them
MIN_ENSEMBLE = 8
# A new budget enters as this many sizes around the law's optimum, chosen together: a parabola through them gives
# Approach 2 a profile, so it can check Approach 3's answer (one or two sizes at a budget give it nothing).
PROFILE_SIZES = 3


@dataclass(frozen=True)
class Candidates:
    """Runs that could be trained next: N, D, the FLOPs each costs, its IsoFLOP budget (nan: none) and kind."""

    n: np.ndarray
    d: np.ndarray
    flops: np.ndarray
    budget: np.ndarray
    kind: tuple[str, ...]       # "new budget", "new size" or "seed"
    unit: np.ndarray | None = None   # candidates with one unit id are chosen together (None: each alone)

    def __len__(self) -> int:
        return len(self.n)

    def units(self) -> np.ndarray:
        return np.arange(len(self)) if self.unit is None else np.asarray(self.unit)

    def subset(self, keep: np.ndarray) -> Candidates:
        keep = np.asarray(keep)
        return Candidates(self.n[keep], self.d[keep], self.flops[keep], self.budget[keep],
                          tuple(np.asarray(self.kind, dtype=object)[keep]), self.units()[keep])


def log_n_opt(samples: np.ndarray, target_flops: float) -> np.ndarray:
    """log N_opt at `target_flops` for each row (E, A, B, alpha, beta): Chinchilla eq. 4, C = 6 N D."""
    _, A, B, alpha, beta = np.asarray(samples, dtype=float).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_g = (np.log(alpha * A) - np.log(beta * B)) / (alpha + beta)
        return log_g + beta / (alpha + beta) * np.log(target_flops / TRAIN_FLOPS_PER_PARAM_TOKEN)


def log_loss_at(samples: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(members, points): each member's log L(N, D)."""
    E, A, B, alpha, beta = (c[:, None] for c in np.asarray(samples, dtype=float).T)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.log(E + A / np.asarray(n)[None, :] ** alpha + B / np.asarray(d)[None, :] ** beta)


def decision_quantity(target_flops: float, target: str = "loss", higher_is_better: bool = False) -> tuple[str, str]:
    """(short label, full text) of the quantity the chooser shrinks: N_opt, or the target's recommended N."""
    if target == "loss":
        return "N_opt", f"log N_opt at {target_flops:.3g} FLOPs (C = 6 N D)"
    best = "maximises" if higher_is_better else "minimises"
    return (f"{target}'s optimal N", f"log of the N that {best} {target} on the {target_flops:.3g}-FLOP budget line "
            "(C = 6 N D), the N the fit recommends for the target (closed form of its law's optimum)")


def interval_width(q: np.ndarray) -> float:
    """High/low ratio of the 5-95% percentile interval of exp(q)."""
    lo, hi = np.percentile(q, [5.0, 95.0])
    return float(np.exp(hi - lo))


def isoflop_candidates(law: ParametricLaw, done_n, done_d, done_budget, *, sizes_per_budget: int = 5,
                       size_ratio: float = 2.0, budget_ratio: float = 3.0, new_budgets: int = 2,
                       max_run_flops: float | None = None, min_budget: float | None = None,
                       profiles: bool = False) -> Candidates:
    """IsoFLOP budgets (existing ones, `new_budgets` steps above the largest, one below the smallest but not
    below `min_budget`) with sizes centred on `law`'s optimum there (C = 6 N D), plus a repeat of every
    distinct run done. `min_budget` keeps the design from walking down to budgets too small to follow a
    law (at CPU scale below ~1e12 FLOPs the smallest model always wins, docs/adaptive_design.md). `profiles`: a new
    budget is one unit of its PROFILE_SIZES central sizes (module doc); otherwise each of its sizes alone."""
    done_n, done_d = np.asarray(done_n, dtype=float), np.asarray(done_d, dtype=float)
    known = np.unique(np.asarray(done_budget, dtype=float)[np.isfinite(done_budget)])
    if known.size == 0:
        raise UserError("no run has an IsoFLOP budget to place candidates around: group the runs (RunsTable.budget_groups)")
    budgets = [*known, known.min() / budget_ratio, *(known.max() * budget_ratio ** (k + 1) for k in range(new_budgets))]
    budgets = [b for b in budgets if min_budget is None or b >= min_budget * (1 - 1e-9)]
    n, d, c, budget, kind, unit = [], [], [], [], [], []
    ids = itertools.count()
    half = (sizes_per_budget - 1) / 2
    for b in budgets:
        centre = float(law.optimal_allocation(b)[0])
        is_new = not np.any(np.isclose(known, b, rtol=1e-3))
        as_profile = profiles and is_new
        profile = next(ids)   # with `profiles`, a new budget: only its PROFILE_SIZES central sizes, as one unit
        for k in range(sizes_per_budget):
            if as_profile and abs(k - half) > (PROFILE_SIZES - 1) / 2:
                continue          # its outer sizes are candidates ("new size") once the budget has its profile
            size = centre * size_ratio ** (k - half)
            n.append(size), d.append(b / (TRAIN_FLOPS_PER_PARAM_TOKEN * size)), c.append(b), budget.append(b)
            kind.append("new budget" if is_new else "new size")
            unit.append(profile if as_profile else next(ids))
    done_budget = np.asarray(done_budget, dtype=float)
    _, first = np.unique(np.column_stack([done_n, done_d]), axis=0, return_index=True)
    for i in sorted(first):
        n.append(done_n[i]), d.append(done_d[i]), c.append(TRAIN_FLOPS_PER_PARAM_TOKEN * done_n[i] * done_d[i])
        budget.append(done_budget[i]), kind.append("seed"), unit.append(next(ids))
    cands = Candidates(np.array(n), np.array(d), np.array(c), np.array(budget), tuple(kind), np.array(unit))
    if max_run_flops is not None:
        cands = cands.subset(cands.flops <= max_run_flops)
    return cands


def profiled_budgets(n, budget) -> int:
    """How many budgets have PROFILE_SIZES or more distinct sizes: the profiles Approach 2 can fit a parabola to."""
    n, budget = np.asarray(n, dtype=float), np.asarray(budget, dtype=float)
    return sum(np.unique(np.round(np.log(n[budget == b]), 6)).size >= PROFILE_SIZES
               for b in np.unique(budget[np.isfinite(budget)]))


def profile_rule(n, budget, min_profiles: int) -> str | None:
    """Why a round starts with a new budget's profile (choose_next's `profile_first`), or None when enough
    budgets already have one (sweep.min_profiles; the sweep and scripts/compare_designs.py share the rule)."""
    profiled = profiled_budgets(n, budget)
    if profiled >= min_profiles:
        return None
    return f"Approach 2 has {profiled} profiled budget{'s' * (profiled != 1)}, sweep.min_profiles={min_profiles}"


def _unit_gains(cov: np.ndarray, noise_var: np.ndarray, units: list[np.ndarray], single: np.ndarray,
                eligible: np.ndarray) -> np.ndarray:
    """Var(q) each eligible unit removes by observing its runs jointly: c'(S + noise)^-1 c (module doc).

    A single run's is the scalar cov(q, f)^2 / (var f + noise), for all of them at once; only a profile's
    few runs need a solve."""
    gain = np.zeros(len(units))
    ones = np.flatnonzero(eligible & single)
    if ones.size:
        cols = np.array([units[u][0] for u in ones])
        gain[ones] = cov[0, cols + 1] ** 2 / (cov[cols + 1, cols + 1] + noise_var[cols])
    for u in np.flatnonzero(eligible & ~single):
        cols = units[u] + 1
        gain[u] = cov[0, cols] @ np.linalg.solve(cov[np.ix_(cols, cols)] + np.diag(noise_var[units[u]]),
                                                 cov[0, cols])
    return gain


def _ensemble(samples: np.ndarray, target_flops: float) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=float).reshape(-1, 5)
    q = log_n_opt(samples, target_flops)
    ok = np.isfinite(q)
    if ok.sum() < MIN_ENSEMBLE:
        raise UserError(f"the fit's bootstrap has {int(ok.sum())} usable samples: the chooser needs at least "
                        f"{MIN_ENSEMBLE}; raise bootstrap")
    lo, hi = np.percentile(q[ok], ENSEMBLE_TRIM)
    keep = ok & (q >= lo) & (q <= hi)
    return samples[keep], q[keep]


def choose_next(samples: np.ndarray, sd_log: float, candidates: Candidates, target_flops: float, *,
                max_runs: int | None = None, flops_left: float = np.inf, discrepancy_per_decade: float = 0.0,
                quantity: tuple[str, str] | None = None, profile_first: str | None = None,
                width_now: float | None = None) -> dict:
    """Greedy picks by expected variance reduction of log N_opt at `target_flops` per FLOP (module doc); the
    rows of `samples` are the law of the metric the quantity is on (a target's own), `quantity` its
    (label, text) from `decision_quantity` (default: the loss's N_opt).

    `profile_first` (why, e.g. "Approach 2 has 2 profiled budgets, sweep.min_profiles=3"): the first pick is the
    best new budget's whole profile, when one fits, so that Approach 2 can check Approach 3; the rest as usual.
    `discrepancy_per_decade` adds a model-discrepancy sd (Kennedy & O'Hagan 2001) to each candidate's noise,
    growing with the decades of compute between it and the target: where the law's form may be off, a run
    far from the target says less about it than the noise alone implies (0, the default, trusts the form).
    `width_now` replaces the ensemble's own 5-95% width as the width the expected ones scale from (a round across
    law forms states the span of the forms' intervals, rounds.across_forms).
    Returns {"quantity", "label", "width_now", "expected_width_after", "picks": [{index, n, d, flops, budget,
    kind, shrink_per_flop, expected_width_after}], "spent_flops", "stopped": why the picking ended}.
    """
    if not (np.isfinite(sd_log) and sd_log > 0):
        raise UserError(f"noise sd {sd_log!r} must be a positive number (sd of log loss)")
    members, q = _ensemble(samples, target_flops)
    width_now = interval_width(q) if width_now is None else float(width_now)
    f = log_loss_at(members, candidates.n, candidates.d)
    usable = np.all(np.isfinite(f), axis=0) & (candidates.flops > 0)
    z = np.column_stack([q, f[:, usable]])
    cov = np.cov(z, rowvar=False)
    index = np.flatnonzero(usable)
    cost = candidates.flops[usable]
    decades = np.log10(target_flops / np.maximum(candidates.flops[usable], 1e-300))
    noise_var = sd_log**2 + (discrepancy_per_decade * np.maximum(decades, 0.0)) ** 2
    var0 = cov[0, 0]
    unit_of = candidates.units()[usable]
    units = [np.flatnonzero(unit_of == u) for u in np.unique(unit_of)]   # columns of each unit, chosen together
    unit_cost = np.array([cost[m].sum() for m in units])
    unit_size = np.array([len(m) for m in units])
    picks, spent, stopped = [], 0.0, "no candidate fits the FLOPs left"
    taken = np.zeros(len(units), dtype=bool)   # one pick per unit a round (a repeat is its own candidate)
    while max_runs is None or len(picks) < max_runs:
        slots = np.inf if max_runs is None else max_runs - len(picks)
        fits = (spent + unit_cost <= flops_left) & ~taken
        if not fits.any():
            stopped = ("every candidate is chosen" if taken.all() else
                       "the FLOPs left are spent" if picks else stopped)
            break
        eligible = fits & (unit_size <= slots)
        forced = bool(profile_first) and not picks and (eligible & (unit_size > 1)).any()
        if forced:
            eligible &= unit_size > 1
        if not eligible.any():
            stopped = f"{len(picks)} runs chosen; a new budget's profile needs {PROFILE_SIZES}"
            break
        gain = _unit_gains(cov, noise_var, units, unit_size == 1, eligible)
        score = np.where(eligible, gain / unit_cost, -np.inf)
        u = int(np.argmax(score))
        if not forced and not gain[u] > 1e-12 * max(var0, 1e-300):
            stopped = "no candidate shrinks the interval further"
            break
        cols = units[u] + 1
        gain_cols = np.linalg.solve(cov[np.ix_(cols, cols)] + np.diag(noise_var[units[u]]), cov[cols, :])
        cov = cov - cov[:, cols] @ gain_cols
        spent += unit_cost[u]
        taken[u] = True
        after = float(width_now ** np.sqrt(max(cov[0, 0], 0.0) / var0))
        for j in units[u]:
            i = index[j]
            picks.append({"index": int(i), "n": float(candidates.n[i]), "d": float(candidates.d[i]),
                          "flops": float(candidates.flops[i]),
                          "budget": float(candidates.budget[i]) if np.isfinite(candidates.budget[i]) else None,
                          "kind": candidates.kind[i], "shrink_per_flop": float(gain[u] / unit_cost[u]),
                          "unit_size": int(len(units[u])), "expected_width_after": after,
                          **({"profile_first": profile_first} if forced else {})})
    else:
        stopped = f"{max_runs} runs chosen"
    after = width_now ** np.sqrt(max(cov[0, 0], 0.0) / var0)
    label, text = quantity or decision_quantity(target_flops)
    return {"quantity": text, "label": label, "width_now": width_now,
            "expected_width_after": float(after), "picks": picks, "spent_flops": float(spent), "stopped": stopped,
            "ensemble": int(len(q)), "sd_log": float(sd_log),
            "rule": f"greedy by expected variance reduction of log {label} per FLOP (ensemble Kalman update)"}


def describe_pick(pick: dict, label: str = "N_opt", across_forms: bool = False) -> str:
    """One line: what the run is and why it was chosen (`across_forms`: it narrows `label`'s range across the law
    forms, when a round reads them, rounds.across_forms, not one form's interval)."""
    interval = "range across the law forms" if across_forms else "interval"
    if pick.get("profile_first"):
        return (f"budget {pick['budget']:.3g} added as a {pick['unit_size']}-size profile: N {pick['n']:.3g}, D "
                f"{pick['d']:.3g} ({pick['flops']:.3g} FLOPs); {pick['profile_first']}, and of the new budgets' "
                f"profiles this one shrinks {label}'s {interval} most per FLOP (expected width "
                f"{pick['expected_width_after']:.3g}x after it)")
    if pick["kind"] == "new budget" and pick.get("unit_size", 1) > 1:
        what = f"budget {pick['budget']:.3g} added as a {pick['unit_size']}-size profile (Approach 2 can fit it)"
    elif pick["kind"] == "new budget":
        what = f"budget {pick['budget']:.3g} added"
    elif pick["kind"] == "new size":
        what = f"new size at budget {pick['budget']:.3g}" if pick["budget"] else "new size"
    else:
        what = "another seed"
    return (f"{what}: N {pick['n']:.3g}, D {pick['d']:.3g} ({pick['flops']:.3g} FLOPs) shrinks {label}'s {interval} "
            f"most per FLOP (expected width {pick['expected_width_after']:.3g}x after it)")


def stop_reason(width: float, stop_width: float | None, spent_flops: float, pilot_flops: float,
                cheapest_flops: float, rounds: int, max_rounds: int, width_of: str = "N_opt's 90% interval") -> str | None:
    """Why the adaptive design stops now, or None to run another round (`width_of`: what `width` measures)."""
    if stop_width is not None and width <= stop_width:
        return f"{width_of} is {width:.3g}x wide, within sweep.stop_width={stop_width:g}x"
    if spent_flops + cheapest_flops > pilot_flops:
        return (f"pilot compute spent: {spent_flops:.3g} of {pilot_flops:.3g} FLOPs, "
                + (f"the cheapest candidate needs {cheapest_flops:.3g}" if np.isfinite(cheapest_flops) else
                   f"no candidate run fits the {max(pilot_flops - spent_flops, 0.0):.3g} left"))
    if rounds >= max_rounds:
        return f"sweep.max_rounds={max_rounds} rounds ran"
    return None

