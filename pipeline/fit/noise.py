"""The noise model of the fit: how much a run's final loss moves between seeds, measured not assumed.

* Measured: runs that repeat the same (N, D) with different seeds (`sweep.seeds`) give the pooled
  within-point standard deviation of log loss (one-way ANOVA's within-group mean square: sum of
  squared deviations from each point's mean over sum of (n_i - 1)).
* Otherwise: the residual standard deviation of log loss about the Approach-3 law, with the law's 5
  parameters taken off the degrees of freedom. It includes any misfit of the form, so it is an
  upper estimate of the seed noise (at CPU scale docs/cooldown_reuse.md measured 0.011-0.11 nats,
  0.3-3% of the loss, between seeds).

The bootstraps of Approaches 1 and 2 draw their noise from this model, and `minimum_resolution`
says, per IsoFLOP budget, whether the lowest loss beats its neighbours by more than the noise.
"""

from __future__ import annotations

import numpy as np

from pipeline.fit.laws import ParametricLaw
from pipeline.fit.table import RunsTable

MIN_SEED_DOF = 2          # a pooled sd from fewer degrees of freedom is not used alone
# Below this sd of log loss no table of real final losses has been seen: CPU pilots measure 0.0055-0.0067 between
# seeds, Chinchilla's points scatter 0.005-0.006 about the law where they are tightest (docs/adaptive_design.md);
# a mean of 10 seeds would still be ~0.002. A table this close to its law holds smoothed, averaged or predicted
# losses, and the parametric bootstrap, which redraws the losses with this sd, then gives intervals of ~zero width.
IMPLAUSIBLE_SD_LOG = 5e-4
RESOLVE_Z = 2.0           # a minimum is resolved when it beats both neighbours by 2 sd of the difference
# A zigzag is flagged beyond 3 sd: a study has up to one per interior size (the demo 9, a 5-budget x 7-size
# design 25), and near a flat minimum noise alone makes small bumps; 2 sd would flag some in most studies.
ZIGZAG_Z = 3.0


def point_keys(table: RunsTable) -> np.ndarray:
    """An integer per distinct (N, D) point; repeats (seeds) share it. D is matched to 0.5%."""
    keys = np.round(np.log(table.n) * 1e3).astype(np.int64) * 10**7 + np.round(np.log(table.tokens) * 200)
    return np.unique(keys, return_inverse=True)[1]


def seed_noise(table: RunsTable) -> dict | None:
    """Pooled within-point sd of log loss over points trained with 2+ seeds; None when there are none."""
    keys = point_keys(table)
    log_loss = np.log(table.loss)
    counts = np.bincount(keys)
    means = np.bincount(keys, weights=log_loss) / counts
    dof = int(np.sum(counts - 1))
    if dof < 1:
        return None
    ss = float(np.sum((log_loss - means[keys]) ** 2))
    return {"sd_log": float(np.sqrt(ss / dof)), "dof": dof, "n_points_repeated": int(np.sum(counts > 1)),
            "source": f"seed-to-seed spread of {int(np.sum(counts > 1))} repeated points ({dof} degrees of freedom)"}


def residual_noise(table: RunsTable, law: ParametricLaw | None) -> dict | None:
    if law is None or len(table) <= 6:
        return None
    resid = np.log(table.loss) - np.log(law.loss(table.n, table.tokens))
    dof = len(table) - 5
    return {"sd_log": float(np.sqrt(np.sum((resid - resid.mean()) ** 2) / dof)), "dof": dof,
            "source": f"residuals about the Approach-3 law ({dof} degrees of freedom; includes misfit)"}


def noise_model(table: RunsTable, law: ParametricLaw | None) -> dict | None:
    """{"sd_log", "dof", "source", ...}: measured seed noise when it has MIN_SEED_DOF, else the law's
    residuals (the larger of the two when both exist: misfit is error the pilots cannot average away)."""
    seeds, resid = seed_noise(table), residual_noise(table, law)
    if seeds and seeds["dof"] >= MIN_SEED_DOF:
        if resid and resid["sd_log"] > seeds["sd_log"]:
            return {**resid, "seed_sd_log": seeds["sd_log"], "seed_dof": seeds["dof"],
                    "note": "law residuals exceed the measured seed noise: the form misfits the runs"}
        return {**seeds, "residual_sd_log": resid["sd_log"] if resid else None}
    return resid or seeds


def minimum_resolution(profiles: list[dict], sd_log: float | None) -> list[dict]:
    """Per IsoFLOP budget: does the lowest mean loss beat both neighbours beyond the noise?

    The difference of two points' mean log losses has sd sd_log * sqrt(1/n_best + 1/n_neighbour)
    (n = seeds at each point); resolved when the smaller gap exceeds RESOLVE_Z times it. Budgets with
    fewer than 3 sizes are no profile (a grid design's budgets) and are not judged.
    """
    out = []
    for prof in profiles:
        loss, counts = np.asarray(prof["loss"]), np.asarray(prof.get("counts") or [1] * len(prof["loss"]))
        if loss.size < 3:
            continue
        entry = {"budget_flops": prof["budget_flops"], "resolved": False}
        best = int(np.argmin(loss)) if loss.size else 0
        if sd_log is None or best in (0, loss.size - 1):
            entry["reason"] = "no noise estimate" if sd_log is None else "the minimum is not interior"
            out.append(entry)
            continue
        gaps = [np.log(loss[j] / loss[best]) / (sd_log * np.sqrt(1 / counts[best] + 1 / counts[j]))
                for j in (best - 1, best + 1)]
        entry.update(gap_in_sd=float(min(gaps)), resolved=bool(min(gaps) > RESOLVE_Z),
                     gap_nats=float(min(loss[best - 1], loss[best + 1]) - loss[best]))
        out.append(entry)
    return out


def profile_zigzags(table: RunsTable, noise: dict | None) -> dict | None:
    """Does loss against N within each budget zigzag, or is it one U (or one slope) as a law can follow?

    A law's IsoFLOP profile is unimodal in N: it falls to one minimum and rises. Per budget, sizes sorted by
    N (seeds of one size averaged), a zigzag is an interior size that breaks that: a bump (above both
    neighbours) or a second dip (below both, but not the budget's lowest). Its size is the log-loss gap to
    the nearer neighbour, in sd of the difference of the two (s sqrt(1/n_i + 1/n_j), n = seeds); beyond
    ZIGZAG_Z it is flagged. s is the measured seed noise when the runs repeat seeds, else the noise model's
    sd (the law's residuals: an upper estimate). A unimodal profile has no zigzag, however the law misfits it.
    """
    if noise is None:
        return None
    seeds = seed_noise(table)
    measured = seeds is not None and seeds["dof"] >= MIN_SEED_DOF
    sd = seeds["sd_log"] if measured else noise["sd_log"]
    groups, log_loss = table.budget_groups(), np.log(table.loss)
    checked, found = 0, []
    for budget in np.unique(groups):
        rows = np.flatnonzero(groups == budget)
        size_of = np.round(np.log(table.n[rows]), 3)
        sizes = np.unique(size_of)
        if sizes.size < 3:
            continue
        mean = np.array([log_loss[rows][size_of == k].mean() for k in sizes])
        counts = np.array([np.sum(size_of == k) for k in sizes])
        lowest = int(np.argmin(mean))
        for i in range(1, sizes.size - 1):
            checked += 1
            left, right = mean[i - 1] - mean[i], mean[i + 1] - mean[i]
            if left < 0 and right < 0:                       # a bump: above both neighbours
                j = i - 1 if mean[i - 1] > mean[i + 1] else i + 1
                kind, gap = "bump", mean[i] - mean[j]
            elif left > 0 and right > 0 and i != lowest:     # a second dip
                j = i - 1 if mean[i - 1] < mean[i + 1] else i + 1
                kind, gap = "dip", mean[j] - mean[i]
            else:
                continue
            z = gap / (sd * np.sqrt(1 / counts[i] + 1 / counts[j]))
            found.append({"budget_flops": float(budget), "n": float(np.exp(sizes[i])), "kind": kind,
                          "gap_log": float(gap), "z": float(z)})
    source = seeds["source"] if measured else f"no seed repeats: {noise['source']}, an upper estimate"
    return {"checked": checked, "zigzags": found, "largest": max(found, key=lambda e: e["z"], default=None),
            "flagged": [e for e in found if e["z"] > ZIGZAG_Z], "sd_log": float(sd), "sd_source": source,
            "measured": measured}


def implausible_noise_warning(noise: dict | None) -> str | None:
    """A warning when the measured noise is below what real runs show (IMPLAUSIBLE_SD_LOG), else None."""
    if not noise or noise["sd_log"] >= IMPLAUSIBLE_SD_LOG:
        return None
    return (f"the noise measured on these runs is sd {noise['sd_log']:.2g} of log loss ({noise['source']}), below any "
            f"real run's seed noise ({IMPLAUSIBLE_SD_LOG:g} and up): the intervals carry only that noise and read as "
            "near certainty; if these are smoothed, averaged or predicted losses, fit the runs' own final losses")
