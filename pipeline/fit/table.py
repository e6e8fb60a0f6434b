"""One validated table of pilot runs, from a sweep's records, a CSV/JSONL file, or a W&B project.

Every row is a finished run: N under each parameter-count convention the source has, D (tokens),
C under each FLOP method it has, the final validation loss, the planned IsoFLOP budget (if any)
and the evaluation curve (sweep records only; Approach 1 needs it). `convention` and `flop_method`
pick the N and C the fits use (README, "Accounting conventions": the report says which).

Runs that cannot be used (not finished, diverged, non-finite or non-positive numbers, unreadable
records) are excluded with a reason and listed in `excluded`; the fit reports them. A table file
with a bad value aborts instead, naming the line: the user typed it and can fix it.

Only comparable runs are fitted together. A sweep folder's fit uses the runs of its current plan
(plan.json) and lists the other records as excluded ("not in the current plan", naming the setting in
which they differ); `all_runs=True` fits every record. Either way, runs that differ in their data
(corpus fingerprint, tokenizer, validation set), their LR or batch rule, or their LR schedule are never
mixed: the table refuses with one line naming the field (`COMPARABLE_FIELDS`, `pilot_schedule`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.records import FINISHED_STATUS, RecordError, load_records, read_jsonl

PLAN_FILE = "plan.json"
# (name in messages, path in the record): settings that change what a loss means. The tokenizer and the
# validation set change the units and the sample of the loss; the fingerprint catches any other change of
# the corpus; the LR/batch rules change how well each size is trained.
COMPARABLE_FIELDS = (("data.tokenizer", ("data", "tokenizer")), ("data.val_tokens", ("data", "val_tokens")),
                     ("data.source", ("data", "source")), ("data.fingerprint", ("data", "fingerprint")),
                     ("LR rule", ("hparams", "lr_source")), ("batch rule", ("hparams", "batch_source")))

# Runs whose FLOPs lie within 5% of each other count as one IsoFLOP budget when no planned budget
# is recorded: the planner keeps each run within half an optimizer step of its budget (well under
# 5%), while the budgets of a useful design differ by 1.5x or more.
BUDGET_MATCH_TOLERANCE = 0.05
CURVE_FIELDS = ("tokens", "flops_exact", "flops_6n", "val_loss")


@dataclass(frozen=True)
class RunsTable:
    run_id: tuple[str, ...]
    params: dict[str, np.ndarray]     # convention -> N of each run (total, non_embedding, ...)
    tokens: np.ndarray                # D of each run
    loss: np.ndarray                  # final validation loss (nats per token)
    flops: dict[str, np.ndarray]      # method -> training FLOPs of each run ("exact", "6n", "given")
    budget_flops: np.ndarray          # planned IsoFLOP budget of each run, nan where none was recorded
    curves: tuple = ()                # per run: dict of CURVE_FIELDS arrays, or None
    convention: str = "total"
    flop_method: str = "exact"
    excluded: tuple = ()              # ({"run_id", "reason"}, ...)
    source: str = ""
    mfu: np.ndarray | None = None     # per run, nan where not measured (CPU runs, files)
    vocab_size: int | None = None     # the pilots' shared vocabulary and sequence length (records only)
    seq_len: int | None = None
    schedule: dict | None = None      # the pilots' shared LR schedule (records only), see pilot_schedule
    setup: dict | None = None         # the pilots' shared tokenizer, unique train tokens, precision, device (records)
    # Other metrics (pipeline/fit/targets.py): name -> final value per run (nan where a run lacks it);
    # per run, name -> (tokens, values) at its intermediate evaluations (or None); task -> {"chance": ...}.
    metrics: dict = field(default_factory=dict)
    metric_points: tuple = ()
    tasks: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.convention not in self.params:
            raise UserError(f"parameter convention '{self.convention}' is not in {self.source or 'the runs'}: "
                            f"use one of {', '.join(self.params)}")
        if self.flop_method not in self.flops:
            raise UserError(f"FLOP method '{self.flop_method}' is not in {self.source or 'the runs'}: "
                            f"use one of {', '.join(self.flops)}")

    def __len__(self) -> int:
        return len(self.run_id)

    @property
    def n(self) -> np.ndarray:
        return self.params[self.convention]

    @property
    def c(self) -> np.ndarray:
        return self.flops[self.flop_method]

    @property
    def has_curves(self) -> bool:
        return any(c is not None for c in self.curves)

    def with_convention(self, convention: str) -> RunsTable:
        return replace(self, convention=convention)

    def subset(self, keep: np.ndarray, reason: str | None = None) -> RunsTable:
        """The rows where `keep` is true; the others join `excluded` with `reason` when given."""
        keep = np.asarray(keep, dtype=bool)
        dropped = ([{"run_id": r, "reason": reason} for r, k in zip(self.run_id, keep, strict=True) if not k]
                   if reason else [])
        return replace(
            self, run_id=tuple(r for r, k in zip(self.run_id, keep, strict=True) if k),
            params={k: v[keep] for k, v in self.params.items()}, tokens=self.tokens[keep], loss=self.loss[keep],
            flops={k: v[keep] for k, v in self.flops.items()}, budget_flops=self.budget_flops[keep],
            curves=tuple(c for c, k in zip(self.curves, keep, strict=True) if k) if self.curves else (),
            mfu=None if self.mfu is None else self.mfu[keep], excluded=(*self.excluded, *dropped),
            metrics={k: v[keep] for k, v in self.metrics.items()},
            metric_points=tuple(p for p, k in zip(self.metric_points, keep, strict=True) if k)
            if self.metric_points else ())

    def budget_groups(self) -> np.ndarray:
        """The IsoFLOP budget each run belongs to: its planned budget, else its cluster of FLOPs.

        Runs without a planned budget join a planned budget within BUDGET_MATCH_TOLERANCE of their
        FLOPs, or else cluster: sorted by FLOPs, a new budget starts where the FLOPs jump by more
        than the tolerance (read-off points such as Chinchilla's spread ~8% around their budget);
        a cluster's value is the geometric mean of its members' FLOPs.
        """
        groups = self.budget_flops.astype(float).copy()
        planned = np.unique(groups[np.isfinite(groups)])
        for i in np.flatnonzero(~np.isfinite(groups)):
            near = planned[np.abs(planned / self.c[i] - 1) <= BUDGET_MATCH_TOLERANCE]
            if near.size:
                groups[i] = near[np.argmin(np.abs(near / self.c[i] - 1))]
        loose = np.flatnonzero(~np.isfinite(groups))
        order = loose[np.argsort(self.c[loose])]
        cluster: list[int] = []
        for i in [*order, None]:
            if cluster and (i is None or self.c[i] > self.c[cluster[-1]] * (1 + BUDGET_MATCH_TOLERANCE)):
                groups[cluster] = float(np.exp(np.mean(np.log(self.c[cluster]))))
                cluster = []
            if i is not None:
                cluster.append(int(i))
        return groups

    def grouping_note(self) -> str | None:
        """How runs without a planned budget were grouped into IsoFLOP budgets (None when all had one)."""
        loose = int(np.sum(~np.isfinite(self.budget_flops.astype(float))))
        if not loose:
            return None
        n_budgets = np.unique(self.budget_groups()).size
        return (f"{loose} runs without a planned budget were grouped into {n_budgets} IsoFLOP budgets by their "
                f"FLOPs ({self.flop_method}): runs within {BUDGET_MATCH_TOLERANCE:.0%} of each other share a budget")

    def pilot_summary(self) -> dict:
        """What the pilots spent (finished runs only), for the budget and the report."""
        planned = self.budget_flops[np.isfinite(self.budget_flops)]
        measured = self.mfu[np.isfinite(self.mfu)] if self.mfu is not None else np.empty(0)
        return {"n_runs": len(self), "n_excluded": len(self.excluded), "flop_method": self.flop_method,
                "total_flops": float(self.c.sum()), "max_run_flops": float(self.c.max()),
                "max_budget_flops": float(planned.max()) if planned.size else None,
                "mfu": float(measured.mean()) if measured.size else None}

    def rows(self) -> list[dict]:
        """Plain rows for reports: run_id, N under every convention, D, C under every method, loss."""
        out = []
        for i, run_id in enumerate(self.run_id):
            row = {"run_id": run_id, "tokens": float(self.tokens[i]), "loss": float(self.loss[i]),
                   "budget_flops": None if math.isnan(self.budget_flops[i]) else float(self.budget_flops[i])}
            row.update({f"params_{k}": float(v[i]) for k, v in self.params.items()})
            row.update({f"flops_{k}": float(v[i]) for k, v in self.flops.items()})
            out.append(row)
        return out


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _read_curve(run_dir: str | None) -> dict | None:
    if not run_dir:
        return None
    rows = [r for r in read_jsonl(Path(run_dir) / "eval.jsonl")
            if all(_positive_finite(r.get(k)) for k in CURVE_FIELDS)]
    if not rows:
        return None
    return {k: np.array([float(r[k]) for r in rows]) for k in CURVE_FIELDS}


def _read_metric_points(run_dir: str | None) -> dict | None:
    """name -> (tokens, values) of every metric beyond val_loss in the run's eval.jsonl (evaluate.py)."""
    if not run_dir:
        return None
    points: dict[str, tuple[list, list]] = {}
    for row in read_jsonl(Path(run_dir) / "eval.jsonl"):
        tokens = row.get("tokens")
        if not _positive_finite(tokens):
            continue
        for key, value in row.items():
            if key in ("step", "tokens", "flops_exact", "flops_6n") or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool) or not math.isfinite(value):
                continue
            points.setdefault(key, ([], []))
            points[key][0].append(float(tokens))
            points[key][1].append(float(value))
    return {k: (np.array(t), np.array(v)) for k, (t, v) in points.items()} or None


def _record_metrics(kept: list[dict]) -> tuple[dict, dict]:
    """Final metrics of each run (nan where missing) and the tasks' chance levels, from the records."""
    names = sorted({k for r in kept for k, v in (r.get("metrics") or {}).items() if isinstance(v, (int, float))})
    metrics = {name: np.array([float((r.get("metrics") or {}).get(name, np.nan)) for r in kept]) for name in names}
    tasks: dict = {}
    for rec in kept:
        for name, info in ((rec.get("evaluation") or {}).get("tasks") or {}).items():
            tasks.setdefault(name, info)
    return metrics, tasks


def _schedule_of(rec: dict) -> dict | None:
    hp = rec.get("hparams") or {}
    if not hp.get("schedule"):
        return None
    fraction = None
    if hp["schedule"] == "wsd":  # the configured fraction; older records only have the rounded step count
        fraction = hp.get("cooldown_fraction") or round((hp.get("cooldown_steps") or 0) / max(1, rec.get("steps") or 1), 2)
    return {"name": hp["schedule"], "min_lr_ratio": hp.get("min_lr_ratio"), "cooldown_fraction": fraction}


def pilot_schedule(records: list[dict], source: str) -> dict | None:
    """The LR schedule all runs share, or a one-line UserError when they mix schedules.

    A fit must not mix them: on our CPU pilots a (1 - sqrt) WSD cooldown ends 0.02-0.04 nats below a
    cosine cycle at the same (N, D), and decaying to 0 instead of 10% moves a cosine run by ~0.03
    (docs/cooldown_reuse.md): a near-constant offset per family that would bend the law if mixed.
    The full run then uses the same schedule, so the predicted loss is for the run it will be.
    """
    kinds: dict[tuple, int] = {}
    for rec in records:
        sched = _schedule_of(rec)
        key = tuple(sorted(sched.items())) if sched else None
        kinds[key] = kinds.get(key, 0) + 1
    if len(kinds) > 1:
        def label(key):
            if key is None:
                return "unknown"
            d = dict(key)
            tail = f", cooldown {d['cooldown_fraction']:.0%}" if d.get("cooldown_fraction") else ""
            return f"{d['name']} to {d['min_lr_ratio']:g} of peak{tail}"
        mix = "; ".join(f"{n} runs {label(k)}" for k, n in kinds.items())
        raise UserError(f"the runs in {source} mix LR schedules ({mix}): their losses differ by a schedule offset, "
                        "so fit one schedule at a time (one sweep's results directory)")
    key = next(iter(kinds))
    return dict(key) if key else None


def _field(rec: dict, path: tuple[str, str]):
    return (rec.get(path[0]) or {}).get(path[1])


def differing_field(rec: dict, reference: dict) -> str | None:
    """The first COMPARABLE_FIELDS setting in which `rec` differs from `reference`, as 'name (a vs b)'."""
    for name, path in COMPARABLE_FIELDS:
        mine, theirs = _field(rec, path), _field(reference, path)
        if mine is not None and theirs is not None and mine != theirs:
            return f"{name} ({mine} vs {theirs})"
    return None


def check_comparable(records: list[dict], source: str) -> None:
    """One-line UserError when the runs differ in a COMPARABLE_FIELDS setting (their losses do not compare)."""
    for name, path in COMPARABLE_FIELDS:
        values: dict = {}
        for rec in records:
            value = _field(rec, path)
            if value is not None:
                values[value] = values.get(value, 0) + 1
        if len(values) > 1:
            mix = ", ".join(f"{n} runs with {v}" for v, n in values.items())
            raise UserError(f"the runs in {source} differ in {name} ({mix}): their losses are not comparable; fit the "
                            "current plan (drop all_runs=true) or one setting at a time")


def pilot_setup(records: list[dict]) -> dict:
    """What the pilots shared beyond the schedule: tokenizer, unique training tokens, precision, device."""
    def common(values):
        values = {v for v in values if v is not None}
        return values.pop() if len(values) == 1 else None
    rules = {json.dumps(_field(r, ("hparams", "rule_law")), sort_keys=True) for r in records}
    return {"hparam_rule": json.loads(rules.pop()) if len(rules) == 1 else None,   # the LR/batch rule, if shared
            "lr_runs": [{"lr": r["hparams"]["lr"], "tokens": r["tokens"], "flops": r["flops"]["exact"],
                         "n_total": r["params"]["total"], "n_non_embedding": r["params"]["non_embedding"],
                         "budget": (r.get("target") or {}).get("budget_flops")}
                        for r in records if (r.get("hparams") or {}).get("lr") and (r.get("flops") or {}).get("exact")],
            "tokenizer": common(_field(r, ("data", "tokenizer")) for r in records),
            "unique_tokens": common(_field(r, ("data", "train_tokens_unique")) for r in records),
            "data_fingerprint": common(_field(r, ("data", "fingerprint")) for r in records),
            "precision": common(r.get("precision") for r in records),
            "device": common(((r.get("provenance") or {}).get("device") or {}).get("type") for r in records)}


def table_from_records(records: list[dict], convention: str = "total", flop_method: str = "exact",
                       rejected: list[dict] | None = None, source: str = "records",
                       read_curves: bool = True) -> RunsTable:
    """Table from run records (pipeline.records schema); unusable runs are excluded with a reason."""
    excluded = [{"run_id": Path(r["path"]).name, "reason": r["reason"]} for r in rejected or []]
    kept: list[dict] = []
    curves: list[dict | None] = []
    for rec in records:
        run_id = str(rec.get("run_id", "?"))
        status = rec.get("status")
        reason = None
        if rec.get("role") == "trunk":
            reason = "stable-phase trunk of cooldown branches: its LR never decayed (Hägele et al. 2024)"
        elif status != FINISHED_STATUS:
            detail = f" ({rec['error']})" if rec.get("error") else ""
            reason = f"status {status}{detail}"
        elif not _positive_finite(rec.get("final_val_loss")):
            reason = f"final_val_loss={rec.get('final_val_loss')!r} is not a positive finite number"
        else:
            for what, value in (("tokens", rec.get("tokens")),
                                *((f"params.{k}", v) for k, v in rec.get("params", {}).items() if k == convention),
                                *((f"flops.{k}", v) for k, v in rec.get("flops", {}).items() if k == flop_method)):
                if not _positive_finite(value):
                    reason = f"{what}={value!r} is not a positive finite number"
                    break
        curve = None
        if not reason and read_curves:
            try:  # one unreadable eval.jsonl excludes its run, named, and the fit goes on
                curve = _read_curve(rec.get("_dir") or rec.get("run_dir"))
            except RecordError as err:
                reason = f"unreadable evaluation curve: {err}"
        if reason:
            excluded.append({"run_id": run_id, "reason": reason})
        else:
            kept.append(rec)
            curves.append(curve)
    if not kept:
        first = f" (first: {excluded[0]['run_id']}: {excluded[0]['reason']})" if excluded else ""
        raise UserError(f"no finished runs in {source}: {len(excluded)} excluded{first}; "
                        "wait for the sweep to finish or check its failures")
    conventions = [k for k in ("total", "non_embedding", "embedding", "head")
                   if all(_positive_finite(r.get("params", {}).get(k)) for r in kept)]
    methods = [k for k in ("exact", "6n") if all(_positive_finite(r.get("flops", {}).get(k)) for r in kept)]
    budgets = [(r.get("target") or {}).get("budget_flops", r.get("budget_flops")) for r in kept]
    shapes = {((r.get("shape") or {}).get("vocab_size"), (r.get("shape") or {}).get("seq_len")) for r in kept}
    vocab_size, seq_len = shapes.pop() if len(shapes) == 1 else (None, None)
    schedule = pilot_schedule(kept, source)
    check_comparable(kept, source)
    metrics, tasks = _record_metrics(kept)
    return RunsTable(
        run_id=tuple(str(r["run_id"]) for r in kept),
        params={k: np.array([float(r["params"][k]) for r in kept]) for k in conventions},
        tokens=np.array([float(r["tokens"]) for r in kept]),
        loss=np.array([float(r["final_val_loss"]) for r in kept]),
        flops={k: np.array([float(r["flops"][k]) for r in kept]) for k in methods},
        budget_flops=np.array([float(b) if _positive_finite(b) else np.nan for b in budgets]),
        curves=tuple(curves) if read_curves else (),
        convention=convention, flop_method=flop_method, excluded=tuple(excluded), source=source,
        mfu=np.array([float(r["mfu"]) if _positive_finite(r.get("mfu")) else np.nan for r in kept]),
        vocab_size=vocab_size, seq_len=seq_len, schedule=schedule, setup=pilot_setup(kept), metrics=metrics, tasks=tasks,
        metric_points=(tuple(_read_metric_points(r.get("_dir") or r.get("run_dir")) for r in kept)
                       if read_curves and metrics else ()))


def plan_run_ids(results_dir: Path) -> list[str] | None:
    """Run ids of the sweep's current plan (plan.json, rewritten by every `pipeline.sweep`), None without one."""
    path = Path(results_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return [str(r["run_id"]) for r in json.loads(path.read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a readable plan ({type(err).__name__}): re-run the sweep's dry run to rewrite it, "
                        "or fit every record with all_runs=true") from err


def load_results_dir(results_dir: str | Path, convention: str = "total", flop_method: str = "exact",
                     all_runs: bool = False) -> RunsTable:
    """The run records under a sweep's results directory (unreadable records are excluded).

    By default only the runs of the current plan (plan.json) are fitted; the other records are listed
    under `excluded` as "not in the current plan", with the setting in which they differ from the plan's
    runs. `all_runs=True` fits every record (and refuses records that are not comparable).
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory {path} does not exist: pass the sweep's results_dir")
    records, rejected = load_records(path)
    planned = None if all_runs else plan_run_ids(path)
    stale: list[dict] = []
    if planned is not None:
        wanted = set(planned)
        current = [r for r in records if str(r.get("run_id")) in wanted]
        reference = current[0] if current else None
        for rec in records:
            if str(rec.get("run_id")) in wanted:
                continue
            differs = differing_field(rec, reference) if reference else None
            stale.append({"run_id": str(rec.get("run_id", "?")),
                          "reason": f"not in the current plan ({PLAN_FILE})"
                                    + (f": differs in {differs}" if differs else "") + "; all_runs=true fits it"})
        records = current
    table = table_from_records(records, convention, flop_method, rejected, source=str(path))
    return replace(table, excluded=(*table.excluded, *stale)) if stale else table


