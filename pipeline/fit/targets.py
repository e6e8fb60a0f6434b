"""Laws for any recorded metric, and task accuracy in two steps (`python -m pipeline.fit target=...`).

Targets:
* `loss` (default): the validation loss, as the rest of the fit;
* `<metric>`: any metric of the runs (a column of a runs file, `<set>_loss` or `<task>_bpb` of a sweep)
  gets its own Chinchilla law M(N, D) = E + A/N^alpha + B/D^beta (same Approach-3 fit and bootstrap);
* `<task>:bpb`: the same for `<task>_bpb`;
* `<task>:acc` / `<task>:accuracy` (also `<task>_acc`), `<task>:acc_norm`: the two-step prediction of the
  OLMo ladder (Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient Model
  Ladders", sec. 3) and Llama 3 (Dubey et al. 2024, sec. 3.2.1):
    step 1  bpb(N, D) = E + A/N^alpha + B/D^beta      (the task's bits per byte of the correct answer),
    step 2  acc(bpb)  = chance + (top - chance) / (1 + exp(k (bpb - b0))),  k > 0, chance < top <= 1,
  step 2 fitted by least squares on every (bpb, acc) point of the runs: the final ones and, where the
  runs have them, the intermediate evaluations after the first STEP2_SKIP_SHARE of each run's tokens
  (the paper drops the first 10%: the earliest checkpoints sit at chance whatever their loss). The
  floor is the task's chance level, fixed, not fitted (the paper fits it; with few small models the
  floor is where the points are least informative).

Intervals carried through both steps, by the same parametric bootstrap as the loss (pipeline/fit/bootstrap.py):
draw r redraws every run's metric as step 1's law times log-normal noise of the metric's own noise model
(pipeline/fit/noise.py: seed spread, else the law's residuals) and refits step 1; for an accuracy it also
redraws every step-2 point as the fitted sigmoid plus normal noise of step 2's residual sd (3 parameters off
the degrees of freedom) and refits step 2; the prediction of draw r is sigmoid_r(law_r(N, D)); the interval
is the 5-95 percentile of those (pipeline.fit.intervals). A draw whose step-1 refit is no law is dropped
with its pair and counted (`bootstrap.dropped` in the summary). Without a noise estimate (6 runs or fewer,
no seeds) step 1 resamples runs instead, and says so (`bootstrap.unit`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.checks import apply_outlier_rule
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.noise import noise_model
from pipeline.fit.parametric import fit_parametric
from pipeline.fit.table import RunsTable

STEP2_SKIP_SHARE = 0.10
# Chance accuracy (1 / options) of common multiple-choice benchmarks, for runs files that do not carry a
# <task>_chance column: HellaSwag 4 endings (Zellers et al. 2019), ARC 4 (Clark et al. 2018), MMLU 4
# (Hendrycks et al. 2021), PIQA 2 (Bisk et al. 2020), CommonsenseQA 5 (Talmor et al. 2019), Social IQa 3
# (Sap et al. 2019), OpenBookQA 4 (Mihaylov et al. 2018), WinoGrande 2 (Sakaguchi et al. 2020), BoolQ 2
# (Clark et al. 2019). MMLU subsets (mmlu_stem, ...) share MMLU's.
CHANCE_BY_TASK = {"hellaswag": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "mmlu": 0.25, "piqa": 0.5,
                  "csqa": 0.2, "socialiqa": 1 / 3, "openbookqa": 0.25, "winogrande": 0.5, "boolq": 0.5}
METRIC_SUFFIXES = ("_loss", "_bpb", "_acc", "_acc_norm")
ACCURACY_KINDS = {"acc": "acc", "accuracy": "acc", "acc_norm": "acc_norm"}


@dataclass(frozen=True)
class Target:
    name: str                 # canonical: "loss", "<metric>", "<task>:acc", "<task>:acc_norm"
    kind: str                 # "loss" | "metric" | "accuracy"
    metric: str               # the column step 1 (or the only step) fits
    accuracy: str | None = None
    task: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "accuracy"


def recorded_metrics(table: RunsTable) -> list[str]:
    """The metrics the recommendation reports: columns named <x>_loss, <task>_bpb, <task>_acc(_norm)."""
    return sorted(m for m in table.metrics if m.endswith(METRIC_SUFFIXES))


def parse_target(text: str, table: RunsTable) -> Target:
    """`target=` -> a Target the table can serve; a one-line UserError naming what exists otherwise."""
    text = str(text).strip()
    if text == "loss":
        return Target("loss", "loss", "loss")
    task, sep, kind = text.partition(":")
    if not sep:
        for suffix in ("_acc_norm", "_acc"):
            if text.endswith(suffix) and f"{text[:-len(suffix)]}_bpb" in table.metrics:
                task, kind = text[:-len(suffix)], suffix[1:]
                break
        else:
            if text in table.metrics:
                return Target(text, "metric", text)
            _unknown(text, table)
    if kind == "bpb":
        if f"{task}_bpb" not in table.metrics:
            _unknown(text, table)
        return Target(f"{task}_bpb", "metric", f"{task}_bpb", task=task)
    if kind not in ACCURACY_KINDS:
        raise UserError(f"target={text}: '{kind}' is not a task metric: use {task}:acc, {task}:acc_norm or {task}:bpb")
    column = f"{task}_{ACCURACY_KINDS[kind]}"
    missing = [c for c in (f"{task}_bpb", column) if c not in table.metrics]
    if missing:
        if all(c not in table.metrics for c in (f"{task}_bpb", column)):
            _unknown(text, table)
        raise UserError(f"target={text} needs {task}_bpb and {column} for the two-step prediction, and the runs in "
                        f"{table.source} have no {missing[0]}")
    return Target(f"{task}:{ACCURACY_KINDS[kind]}", "accuracy", f"{task}_bpb", accuracy=column, task=task)


def _unknown(text: str, table: RunsTable):
    tasks = sorted({m[:-4] for m in table.metrics if m.endswith("_bpb")})
    others = [m for m in recorded_metrics(table) if not m.endswith(("_bpb", "_acc", "_acc_norm"))]
    known = ", ".join(["loss", *others, *(f"{t}:acc" for t in tasks), *(f"{t}:bpb" for t in tasks)][:14])
    raise UserError(f"unknown target '{text}': the runs in {table.source or 'the table'} record {known}"
                    f"{' ...' if len(tasks) * 2 + len(others) > 13 else ''}")


def metric_table(table: RunsTable, metric: str) -> RunsTable:
    """The table with `metric` in place of the loss (its curves dropped: they are the loss's).

    Every run must have the metric: a law fitted on the runs that happen to have it would silently
    change which runs the recommendation rests on.
    """
    if metric == "loss":
        return table
    values = table.metrics[metric]
    missing = [rid for rid, v in zip(table.run_id, values, strict=True) if not (np.isfinite(v) and v > 0)]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise UserError(f"metric {metric} is missing (or not positive) in {len(missing)} of {len(table)} runs "
                        f"({shown}): fill it in, or drop those runs from {table.source}")
    return replace(table, loss=np.asarray(values, dtype=float), curves=())


def chance_level(table: RunsTable, task: str) -> float:
    """The accuracy of guessing: recorded by the pilots, a <task>_chance column, or CHANCE_BY_TASK."""
    info = table.tasks.get(task) or {}
    if info.get("chance"):
        return float(info["chance"])
    column = table.metrics.get(f"{task}_chance")
    if column is not None and np.all(np.isfinite(column)):
        return float(np.mean(column))
    base = re.sub(r"_(stem|humanities|social_sciences|other)$", "", task)
    if base in CHANCE_BY_TASK:
        return CHANCE_BY_TASK[base]
    raise UserError(f"task {task}: chance accuracy unknown: add a {task}_chance column (1 / number of choices)")


# An accuracy that never leaves chance, or never moves, carries no signal for step 2: a sigmoid through it
# has any slope, and its bootstrap collapses to a zero-width interval at the constant (issue 26).
SIGNAL_MIN_ACCURACY = 0.01     # one percentage point above chance somewhere, and as much spread across runs


def check_target_signal(table: RunsTable, target: Target) -> None:
    """Before any fit: an accuracy target whose values are out of range or carry no signal is refused."""
    if target.kind == "accuracy":
        check_accuracy(table.metrics[target.accuracy], target.accuracy, chance_level(table, target.task), table)


def check_accuracy(values, column: str, chance: float, table: RunsTable) -> None:
    """A one-line UserError unless the runs' accuracies lie in [0, 1], rise above chance somewhere and vary."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    outside = values[(values < 0) | (values > 1)]
    if outside.size:
        raise UserError(f"{column}={outside[0]:g} in {table.source or 'the runs'} is not an accuracy in [0, 1]: give "
                        f"fractions (a percentage divided by 100), or drop the column ({outside.size} such runs)")
    if values.size and values.max() <= chance + SIGNAL_MIN_ACCURACY:
        raise UserError(f"no signal in {column}: every run is at or below chance ({values.max():.3g} at best, chance "
                        f"{chance:.3g}): the pilots are too small for this task; target its bpb or the loss instead")
    if values.size and np.ptp(values) < SIGNAL_MIN_ACCURACY:
        raise UserError(f"no signal in {column}: {values.min():.3g}-{values.max():.3g} in every run (spread under "
                        f"{SIGNAL_MIN_ACCURACY:g}): accuracy does not move with N and D here; target its bpb or the loss")


# --- step 2: accuracy from bits per byte ----------------------------------------------------------------
@dataclass(frozen=True)
class Sigmoid:
    """acc(bpb) = chance + (top - chance) / (1 + exp(k (bpb - b0))): falls from `top` to `chance` as bpb grows."""

    chance: float
    top: float
    k: float
    b0: float

    def __call__(self, bpb):
        z = np.clip(self.k * (np.asarray(bpb, dtype=float) - self.b0), -700, 700)
        return self.chance + (self.top - self.chance) / (1.0 + np.exp(z))

    def to_dict(self) -> dict:
        return {"chance": self.chance, "top": self.top, "k": self.k, "b0": self.b0,
                "form": "acc = chance + (top - chance) / (1 + exp(k (bpb - b0)))"}


def _residuals(theta, bpb, acc, chance, sqrt_w):
    top, k, b0 = theta
    return sqrt_w * (Sigmoid(chance, top, k, b0)(bpb) - acc)


def fit_sigmoid(bpb, acc, chance: float, weights=None, start: Sigmoid | None = None) -> Sigmoid:
    """Least-squares step 2 with the floor fixed at `chance`; several starts unless `start` is given."""
    bpb, acc = np.asarray(bpb, dtype=float), np.asarray(acc, dtype=float)
    if bpb.size < 3:
        raise UserError(f"step 2 (accuracy from bpb) needs at least 3 points, got {bpb.size}")
    sqrt_w = np.sqrt(np.ones_like(bpb) if weights is None else np.asarray(weights, dtype=float))
    spread = max(float(np.ptp(bpb)), 1e-3)
    lower, upper = [chance + 1e-4, 1e-3 / spread, bpb.min() - 20 * spread], [1.0, 1e3 / spread, bpb.max() + 20 * spread]
    if start is not None:
        starts = [[min(max(start.top, lower[0]), 1.0), min(max(start.k, lower[1]), upper[1]),
                   min(max(start.b0, lower[2]), upper[2])]]
    else:
        tops = [min(1.0, max(chance + 0.05, float(acc.max()) + 0.05)), 1.0]
        starts = [[t, s / spread, float(np.quantile(bpb, q))] for t in tops for s in (1.0, 4.0, 16.0)
                  for q in (0.1, 0.5, 0.9)]
    from scipy.optimize import least_squares  # here, not at import: a loss-only fit never loads scipy (0.3 s)

    best = None
    for theta0 in starts:
        res = least_squares(_residuals, theta0, bounds=(lower, upper), args=(bpb, acc, chance, sqrt_w),
                            method="trf", x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    top, k, b0 = (float(v) for v in best.x)
    return Sigmoid(chance, top, k, b0)


# --- the fitted models the decision uses ----------------------------------------------------------------
@dataclass
class MetricModel:
    """A fitted metric: value and bootstrap samples at any (N, D)."""

    target: Target
    law: ParametricLaw
    law_samples: np.ndarray | None = None        # (S, 5) of (E, A, B, alpha, beta)
    sigmoid: Sigmoid | None = None
    sigmoid_samples: list | None = None          # S Sigmoids, paired with law_samples row by row
    points: dict | None = None                   # what was fitted, for plots: {"n", "d", "value"[, "bpb", "acc"]}
    bootstrap: dict | None = None                # {"draws", "used", "dropped", "unit"} of the samples

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def higher_is_better(self) -> bool:
        return self.target.higher_is_better

    def value(self, n, d):
        bpb = self.law.loss(n, d)
        return self.sigmoid(bpb) if self.sigmoid is not None else bpb

    def samples(self, n, d) -> np.ndarray | None:
        """(S, ...) predictions of the bootstrap pairs, or None without a bootstrap."""
        if self.law_samples is None or len(self.law_samples) < 2:
            return None
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        e, a, b, alpha, beta = (self.law_samples[:, i].reshape((-1,) + (1,) * n.ndim) for i in range(5))
        with np.errstate(over="ignore"):  # a wild resample's N^alpha overflows to inf: its term is 0
            step1 = e + a / n**alpha + b / d**beta
        if self.sigmoid_samples is None:
            return step1
        return np.stack([sig(v) for sig, v in zip(self.sigmoid_samples, step1, strict=True)])

    def interval(self, n, d) -> list[float] | None:
        s = self.samples(n, d)
        return None if s is None else percentile_interval(s)

    def summary(self) -> dict:
        out = {"target": self.name, "kind": self.target.kind, "metric": self.target.metric,
               "law": self.law.to_dict(), "bootstrap_pairs": 0 if self.law_samples is None else len(self.law_samples),
               "bootstrap": self.bootstrap}
        if self.sigmoid is not None:
            out["step2"] = {**self.sigmoid.to_dict(), "accuracy_column": self.target.accuracy,
                            "n_points": len(self.points["bpb"]) if self.points else None}
        return out


def step2_points(table: RunsTable, target: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bpb, acc, run index) of every point step 2 fits: final points, plus intermediate ones past the skip."""
    bpb_all, acc_all, run_of = [], [], []
    for i in range(len(table)):
        pts = table.metric_points[i] if table.metric_points else None
        if pts and target.metric in pts and target.accuracy in pts:
            (tb, vb), (ta, va) = pts[target.metric], pts[target.accuracy]
            common, ib, ia = np.intersect1d(tb, ta, return_indices=True)
            keep = common >= STEP2_SKIP_SHARE * table.tokens[i]
            bpb_all.append(vb[ib][keep])
            acc_all.append(va[ia][keep])
            run_of.append(np.full(int(keep.sum()), i))
        else:
            bpb_all.append(np.array([table.metrics[target.metric][i]]))
            acc_all.append(np.array([table.metrics[target.accuracy][i]]))
            run_of.append(np.array([i]))
    bpb, acc, run = (np.concatenate(x) for x in (bpb_all, acc_all, run_of))
    ok = np.isfinite(bpb) & np.isfinite(acc)
    return bpb[ok], acc[ok], run[ok]


def fit_metric(table: RunsTable, target: Target, *, bootstrap: int = 1000, seed: int = 0,
               outliers: str = "default", step1_cache: dict | None = None) -> MetricModel:
    """Step 1 (and step 2 for an accuracy) with paired bootstrap samples; see the module doc.

    `step1_cache` (metric -> step 1) lets a task's bpb, acc and acc_norm share one law and its samples.
    """
    if target.kind == "accuracy":
        missing = [rid for rid, v in zip(table.run_id, table.metrics[target.accuracy], strict=True) if not np.isfinite(v)]
        if missing:
            raise UserError(f"metric {target.accuracy} is missing in {len(missing)} of {len(table)} runs "
                            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): fill it in, or drop "
                            f"those runs from {table.source}")
    key = (target.metric, bootstrap, seed, outliers)
    if step1_cache is not None and key in step1_cache:
        clean, law, samples, boot = step1_cache[key]
    else:
        clean, law, samples, boot = _step1(table, target.metric, bootstrap, seed, outliers)
        if step1_cache is not None:
            step1_cache[key] = (clean, law, samples, boot)
    points = {"n": clean.n, "d": clean.tokens, "value": clean.loss, "run_id": clean.run_id}
    if target.kind != "accuracy":
        return MetricModel(target, law, samples, points=points, bootstrap=boot)

    chance = chance_level(table, target.task)
    check_accuracy(table.metrics[target.accuracy], target.accuracy, chance, table)
    bpb, acc, _ = step2_points(clean, target)
    sigmoid = fit_sigmoid(bpb, acc, chance)
    sig_samples = None
    if samples is not None:
        sd_acc = float(np.sqrt(np.sum((acc - sigmoid(bpb)) ** 2) / max(acc.size - 3, 1)))
        rng = np.random.default_rng([seed, 2])        # step 2's own stream, paired with step 1's draws by order
        redrawn = sigmoid(bpb)[None, :] + sd_acc * rng.standard_normal((len(samples), acc.size))
        sig_samples = [fit_sigmoid(bpb, a, chance, start=sigmoid) for a in redrawn]
        boot = {**boot, "step2_unit": f"parametric: the fitted sigmoid + normal noise, sd {sd_acc:.4f} (accuracy)"}
    points.update(bpb=bpb, acc=acc, final_acc=clean.metrics[target.accuracy])
    return MetricModel(target, law, samples, sigmoid, sig_samples, points, bootstrap=boot)


def _step1(table: RunsTable, metric: str, bootstrap: int, seed: int, outliers: str):
    """(runs fitted, law, bootstrap samples or None, {"draws", "used", "dropped", "unit"} or None).

    `outliers=auto` lets the loss fit's backtest choose the rule (pipeline/fit/selection.py); a metric's law
    is fitted with the rule on under auto, the rule that predicted better on every public set tried
    (docs/calibration.md)."""
    rule = "default" if outliers == "auto" else outliers
    clean, _ = apply_outlier_rule(metric_table(table, metric), rule)
    fit = fit_parametric(clean.n, clean.tokens, clean.loss)
    law = replace(fit.law(clean.convention), name=metric, source=f"Approach 3 fit of {metric} to {len(clean)} runs")
    if bootstrap < 2:
        return clean, law, None, None
    noise = noise_model(clean, fit.law())
    boot = bootstrap_law(fit, clean.n, clean.tokens, clean.loss, budget_flops=1.0, n_resamples=bootstrap, seed=seed,
                         sd_log=noise["sd_log"] if noise else None)
    summary = {"draws": bootstrap, "used": boot["n_used"], "dropped": boot["n_dropped"], "unit": boot["unit"],
               "sd_log": noise["sd_log"] if noise else None}   # the metric's noise: what a new run observes it with
    return clean, law, (np.asarray(boot["samples"], dtype=float) if boot["n_used"] else None), summary


def fit_targets(table: RunsTable, target_text: str, *, bootstrap: int, seed: int, outliers: str,
                secondary_bootstrap: int = 100) -> tuple[Target, dict[str, MetricModel], dict[str, str]]:
    """The chosen target's model, and one per other recorded metric (loss excluded: the main fit has it).

    Other metrics use `secondary_bootstrap` resamples (their intervals are reported, not optimised);
    a metric whose law cannot be fitted is reported with its reason instead of stopping the fit.
    """
    target = parse_target(target_text, table)
    models: dict[str, MetricModel] = {}
    failed: dict[str, str] = {}
    cache: dict = {}
    if target.kind != "loss":
        models[target.name] = fit_metric(table, target, bootstrap=bootstrap, seed=seed, outliers=outliers,
                                         step1_cache=cache)
    for metric in recorded_metrics(table):
        if metric.endswith(("_acc", "_acc_norm")):
            task = metric.rsplit("_acc", 1)[0]
            if f"{task}_bpb" not in table.metrics:
                continue
            other = Target(f"{task}:{metric[len(task) + 1:]}", "accuracy", f"{task}_bpb", accuracy=metric, task=task)
        else:
            other = Target(metric, "metric", metric)
        if other.name in models:
            continue
        try:
            models[other.name] = fit_metric(table, other, bootstrap=min(bootstrap, secondary_bootstrap),
                                            seed=seed, outliers=outliers, step1_cache=cache)
        except UserError as err:
            failed[other.name] = str(err)
    return target, models, failed

