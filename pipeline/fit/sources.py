"""Runs tables from outside a sweep: a CSV/JSONL file of (params, tokens, loss), or a W&B project.

File columns: `params` (N, in the convention the caller names), `loss`, and `tokens` and/or
`flops` (training FLOPs); optional `run_id`, `status` (rows other than "ok" are excluded),
`budget_flops` (the IsoFLOP budget a row belongs to) and `params_<convention>` (N under another
convention, for the sensitivity check). Without `tokens`, D = flops / (6 N) (the convention of
Chinchilla's own points, Hoffmann et al. 2022 Fig. 4); without `flops`, C = 6 N D. A file with a
bad value aborts with its line number: the user wrote it and can fix it.

W&B: `table_from_wandb_runs` converts run-like objects (attributes `name`/`id`, `state`, mappings
`summary` and `config`, as `wandb.Api().runs(path)` yields) and is tested without a server.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN
from pipeline.fit.table import RunsTable, beyond_range, load_results_dir, table_from_records
from pipeline.records import FINISHED_STATUS

OPTIONAL_COLUMNS = ("run_id", "status", "flops", "budget_flops")
KNOWN_COLUMNS = ("params", "tokens", "loss", *OPTIONAL_COLUMNS)


# A table of runs holds one row per finished run: a pilot study has tens to hundreds (Chinchilla's
# Approach 3 used ~400). The fit's cost grows linearly with the rows (measured on 2 cores without the
# bootstrap: 62 s at 3,000 rows, 120 s at 10,000), so a larger table is refused as soon as its
# 5,001st row is read -- a 2.7M-row file in well under a second -- and a file above 256 MiB, or
# anything that is not a regular file (/dev/zero, a FIFO), before it is opened.
MAX_TABLE_ROWS = 5_000
MAX_TABLE_BYTES = 256 * 2**20
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")


def check_table_file(path: Path) -> None:
    """Refuse a runs table that does not exist, is not a regular file, is too large or of another kind."""
    try:
        info = path.stat()  # follows symlinks: z.jsonl -> /dev/zero is a device
    except FileNotFoundError:
        raise UserError(f"runs table {path} does not exist: pass a .csv/.jsonl file or a results directory") from None
    except OSError as err:
        raise UserError(f"cannot read runs table {path} ({err.strerror}): check the path and its permissions") from err
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"runs table {path} is not a regular file: pass a .csv/.jsonl file or a results directory")
    if info.st_size > MAX_TABLE_BYTES:
        raise UserError(f"runs table {path} is {info.st_size / 2**20:,.0f} MiB, above the {MAX_TABLE_BYTES // 2**20} MiB "
                        "limit for a table of runs: keep one row per run (final losses only)")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"runs table {path} has suffix '{path.suffix.lower()}': use .csv or .jsonl (or a results directory)")


def _too_many_rows(path: Path) -> UserError:
    return UserError(f"runs table {path} has more than {MAX_TABLE_ROWS:,} rows: give one row per finished run "
                     "(its final loss, not every evaluation), or fit a subset")


def _read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs, streamed; line numbers are what an editor shows (CSV header = line 1).
    At most MAX_TABLE_ROWS rows.

    Text is read as UTF-8 with an optional byte-order mark (spreadsheets write one), and CSV header
    names are stripped of surrounding spaces.
    """
    check_table_file(path)
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames:
                    reader.fieldnames = [name.strip() for name in reader.fieldnames]
                for count, row in enumerate(reader, start=1):
                    if count > MAX_TABLE_ROWS:
                        raise _too_many_rows(path)
                    yield reader.line_num, row
            return
        with open(path, encoding="utf-8-sig") as f:
            count = 0
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                count += 1
                if count > MAX_TABLE_ROWS:
                    raise _too_many_rows(path)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {line_no} is not valid JSON ({err.msg}): "
                                    "fix or remove that line") from err
                if not isinstance(row, dict):
                    raise UserError(f"{path} line {line_no} is not a JSON object: write one object per line")
                yield line_no, row
    except UnicodeDecodeError as err:
        raise UserError(f"runs table {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                        "export it as UTF-8 CSV or JSONL") from err
    except csv.Error as err:
        raise UserError(f"runs table {path} is not a readable CSV ({err}): export it again as CSV") from err


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _metric_columns(path: Path, rows: list[tuple[int, dict]], columns: list[str]) -> dict[str, np.ndarray]:
    """Every other column whose filled cells are all numbers is a metric (pipeline/fit/targets.py).

    Empty cells are NaN (a run without that metric: the fit of that metric names it); columns with text
    (labels such as a size name) are not metrics.
    """
    out = {}
    for name in columns:
        if name in KNOWN_COLUMNS or name.startswith("params_"):
            continue
        cells = [row.get(name) for _, row in rows]
        filled = [c for c in cells if c is not None and str(c).strip() != ""]
        if filled and all(_is_number(c) for c in filled):
            out[name] = np.array([float(c) if c is not None and str(c).strip() != "" else np.nan for c in cells])
    return out


def _number(path: Path, line_no: int, name: str, value) -> float:
    where = f"{path} line {line_no}"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: {name} is empty: fill it in or remove that line")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {name}={value!r} is not a number: fix or remove that line") from None
    if math.isnan(number):
        raise UserError(f"{where}: {name} is NaN: remove that line or mark it status=failed")
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{where}: {name}={value} must be a positive finite number: fix or remove that line")
    if beyond_range(name, number):
        raise UserError(f"{where}: {beyond_range(name, number)}: fix or remove that line, or mark it status=failed")
    return number


def load_table_file(path: str | Path, convention: str = "total", flop_method: str | None = None,
                    columns: dict[str, str] | None = None) -> RunsTable:
    """Table from a CSV or JSONL file; `columns` renames the file's columns, e.g. {"Model Size": "params"}.

    FLOP methods: "6n" (6 N D) always, "given" (the file's `flops` column) when present; the default
    is "given" when the file has FLOPs, else "6n".
    """
    return table_from_rows(Path(path), list(_read_rows(Path(path))), convention, flop_method, columns)


def table_from_rows(path: Path, raw: list[tuple[int, dict]], convention: str = "total", flop_method: str | None = None,
                    columns: dict[str, str] | None = None) -> RunsTable:
    """load_table_file's work on rows already read: (line number, row) pairs from `path`."""
    rename = columns or {}
    if not raw:
        raise UserError(f"{path} has no rows: add one line per run with columns params, tokens, loss")
    absent = [(theirs, ours) for theirs, ours in rename.items() if theirs not in raw[0][1]]
    if absent:
        theirs, ours = absent[0]
        raise UserError(f"columns.{ours}={theirs}: {path} has no column {theirs} (found: {', '.join(raw[0][1])})")
    rows = [(n, {rename.get(k, k): v for k, v in row.items() if not (k in rename.values() and k not in rename)})
            for n, row in raw]
    found = list(rows[0][1])
    needed = ["params", "loss"] + ([] if "flops" in found else ["tokens"])
    missing = [c for c in needed if c not in found]
    if missing:
        raise UserError(f"{path}: missing column '{missing[0]}' (found: {', '.join(found)}): add it, or map a "
                        f"column to it with columns.{missing[0]}=<your column>")
    extra_conventions = sorted(c[len("params_"):] for c in found if c.startswith("params_"))
    has_flops = "flops" in found
    kept: list[dict] = []
    excluded = []
    for line_no, row in rows:
        run_id = str(row.get("run_id") or f"line{line_no}")
        status = str(row.get("status") or FINISHED_STATUS).strip()
        if status != FINISHED_STATUS:
            excluded.append({"run_id": run_id, "reason": f"status {status}"})
            continue
        n = _number(path, line_no, "params", row["params"])
        flops = _number(path, line_no, "flops", row["flops"]) if has_flops else None
        tokens = (_number(path, line_no, "tokens", row["tokens"]) if "tokens" in found
                  else flops / (TRAIN_FLOPS_PER_PARAM_TOKEN * n))
        budget = row.get("budget_flops")
        kept.append({
            "run_id": run_id, "params": n, "tokens": tokens, "flops": flops,
            "loss": _number(path, line_no, "loss", row["loss"]),
            "budget": np.nan if budget in (None, "") else _number(path, line_no, "budget_flops", budget),
            **{f"params_{c}": _number(path, line_no, f"params_{c}", row[f"params_{c}"]) for c in extra_conventions}})
    if not kept:
        raise UserError(f"{path}: no row has status ok ({len(excluded)} excluded): nothing to fit")
    ok_rows = [(n, row) for n, row in rows if str(row.get("status") or FINISHED_STATUS).strip() == FINISHED_STATUS]
    metrics = _metric_columns(path, ok_rows, found)
    n = np.array([r["params"] for r in kept])
    tokens = np.array([r["tokens"] for r in kept])
    flops = {"6n": TRAIN_FLOPS_PER_PARAM_TOKEN * n * tokens}
    if has_flops:
        flops["given"] = np.array([r["flops"] for r in kept])
    params = {convention: n, **{c: np.array([r[f"params_{c}"] for r in kept]) for c in extra_conventions}}
    return RunsTable(run_id=tuple(r["run_id"] for r in kept), params=params, tokens=tokens,
                     loss=np.array([r["loss"] for r in kept]), flops=flops,
                     budget_flops=np.array([r["budget"] for r in kept]), curves=(),
                     convention=convention, flop_method=flop_method or ("given" if has_flops else "6n"),
                     excluded=tuple(excluded), source=str(path), metrics=metrics)


# --- W&B -----------------------------------------------------------------------------------------
_WANDB_STATES = {"finished": FINISHED_STATUS, "running": "running", "crashed": "failed", "failed": "failed",
                 "killed": "failed", "preempted": "preempted"}


def _lookup(mappings: Iterable[Mapping], *path: str):
    """A value stored flat ("params/total", "params.total") or nested (["params"]["total"])."""
    for mapping in mappings:
        for key in ("/".join(path), ".".join(path)):
            if key in mapping:
                return mapping[key]
        node = mapping
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def _wandb_record(run) -> dict:
    summary = dict(getattr(run, "summary", None) or {})
    config = dict(getattr(run, "config", None) or {})
    sources = (summary, config)
    status = _lookup(sources, "status") or _WANDB_STATES.get(str(getattr(run, "state", "")), "failed")
    return {
        "run_id": str(getattr(run, "name", None) or getattr(run, "id", "?")),
        "status": status,
        "final_val_loss": _lookup(sources, "final_val_loss"),
        "params": {k: _lookup(sources, "params", k) for k in ("total", "non_embedding", "embedding", "head")},
        "tokens": _lookup(sources, "tokens"),
        "flops": {k: _lookup(sources, "flops", k) for k in ("exact", "6n")},
        "target": {"budget_flops": _lookup(sources, "target", "budget_flops") or _lookup(sources, "budget_flops")},
    }


def table_from_wandb_runs(runs: Iterable, convention: str = "total", flop_method: str = "exact",
                          source: str = "W&B") -> RunsTable:
    """Table from W&B run objects (pure: no network). Runs missing a value are excluded with a reason."""
    return table_from_records([_wandb_record(r) for r in runs], convention, flop_method,
                              source=source, read_curves=False)


def load_wandb(project_path: str, convention: str = "total", flop_method: str = "exact") -> RunsTable:
    """Every run of the W&B project `entity/project` (summary keys written by pipeline.train)."""
    try:
        import wandb
    except ImportError:
        raise UserError("wandb is not installed: `pip install wandb`, or export the runs to a CSV") from None
    try:
        runs = list(wandb.Api(timeout=30).runs(project_path))
    except Exception as err:  # noqa: BLE001 -- network, auth and naming errors all end the same way
        raise UserError(f"cannot read W&B project '{project_path}' ({type(err).__name__}): run `wandb login` "
                        "(or set WANDB_API_KEY) and check entity/project, or export the runs to a CSV") from err
    if not runs:
        raise UserError(f"W&B project '{project_path}' has no runs: check entity/project")
    return table_from_wandb_runs(runs, convention, flop_method, source=f"wandb:{project_path}")


# --- per-step files (one CSV per run, a row per evaluated checkpoint) ------------------------------------
# The OLMo ladder's column names (Bhagia et al. 2024; allenai/OLMo scripts/scaling/data): task metrics
# become <task>_bpb / <task>_acc (the test split where a task has one, as the paper; accuracy is len_norm,
# else acc), validation losses <set>_loss, so a per-step file and a one-row-per-run table agree.
_OLMO_STEP = {"_step": "step", "throughput/total_tokens": "tokens"}
_OLMO_LOSS = re.compile(r"^eval/(.+)-validation/CrossEntropyLoss$")
_OLMO_BPB = re.compile(r"^eval/downstream_bpb/(.+)_(val|test)_rc_5shot_bpb$")
_OLMO_ACC = re.compile(r"^eval/downstream/(.+)_(val|test)_rc_5shot_(len_norm|acc)$")


def olmo_columns(names: list[str]) -> dict[str, str]:
    """{OLMo column: our name} for the columns of an OLMo ladder per-step CSV that we read."""
    out = {k: v for k, v in _OLMO_STEP.items() if k in names}
    best: dict[str, tuple[tuple, str]] = {}
    for name in names:
        if m := _OLMO_LOSS.match(name):
            out[name] = f"{m.group(1).replace('-', '_')}_loss"
        for pattern, suffix in ((_OLMO_BPB, "bpb"), (_OLMO_ACC, "acc")):
            if m := pattern.match(name):
                rank = (m.group(2) == "test", len(m.groups()) > 2 and m.group(3) == "len_norm")
                key = f"{m.group(1)}_{suffix}"
                if key not in best or rank > best[key][0]:
                    best[key] = (rank, name)
    out.update({name: key for key, (_, name) in best.items()})
    return out


def read_step_file(path: Path, columns: dict[str, str] | None = None) -> list[tuple[int, dict]]:
    """(line, row) pairs of a per-step CSV, renamed (OLMo names, then `columns`), in step order."""
    rows = list(_read_rows(path))
    if not rows:
        raise UserError(f"per-step file {path} has no rows")
    olmo, mine = olmo_columns(list(rows[0][1])), columns or {}
    # `columns` may name a column by its own name or by the name the OLMo rule gave it (c4_en_loss).
    renamed = [(n, {mine.get(olmo.get(k, k), mine.get(k, olmo.get(k, k))): v for k, v in row.items()})
               for n, row in rows]
    if "step" not in renamed[0][1]:
        raise UserError(f"per-step file {path} has no step column: name it with columns.step=<your column>")
    try:
        return sorted(renamed, key=lambda item: float(item[1]["step"]))
    except (TypeError, ValueError):
        raise UserError(f"per-step file {path}: the step column holds a non-number: fix that line") from None


def step_points(rows: list[tuple[int, dict]], path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (tokens, values) over a run's checkpoints, for every numeric metric column."""
    if "tokens" not in rows[0][1]:
        raise UserError(f"per-step file {path} has no tokens column: name it with columns.tokens=<your column>")
    skip = {"step", "tokens", "params", "flops", "run_id", "status", "budget_flops"}
    points = {}
    for name in rows[0][1]:
        if name in skip:
            continue
        pairs = [(row.get("tokens"), row.get(name)) for _, row in rows]
        pairs = [(float(t), float(v)) for t, v in pairs
                 if _is_number(t) and _is_number(v) and str(v).strip() and math.isfinite(float(v))]
        if pairs:
            t, v = zip(*pairs, strict=True)
            points[name] = (np.array(t), np.array(v))
    return points


def _step_files(pattern: str) -> list[Path]:
    path = Path(pattern)
    files = sorted(path.glob("*.csv")) if path.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise UserError(f"steps={pattern}: no per-step CSV files there: give a directory or glob of them")
    return files


def attach_step_files(table: RunsTable, pattern: str, columns: dict[str, str] | None = None) -> RunsTable:
    """Intermediate points from per-step files named <run_id>.csv (e.g. the OLMo ladder's) for the table's runs.

    A run without its file keeps only its final point; files of runs not in the table are ignored.
    """
    by_stem = {p.stem: p for p in _step_files(pattern)}
    matched = [rid for rid in table.run_id if rid in by_stem]
    if not matched:
        raise UserError(f"steps={pattern}: no file is named after a run id of {table.source} (e.g. "
                        f"{table.run_id[0]}.csv): name the run id column with columns.run_id=<column>")
    points = tuple(step_points(read_step_file(by_stem[rid], columns), by_stem[rid]) if rid in by_stem else None
                   for rid in table.run_id)
    return replace(table, metric_points=points)


def load_step_dir(path: Path, convention: str = "total", flop_method: str | None = None,
                  columns: dict[str, str] | None = None) -> RunsTable:
    """A directory of per-step CSVs, one run each (run id = file stem): its last row is the run's final point.

    Each file needs a params column (constant over its rows), as N is not something a checkpoint log
    says; for files without one (the OLMo ladder's), give a one-row-per-run table with runs= and the
    files with steps=.
    """
    files = _step_files(str(path))
    finals, points = [], []
    for file in files:
        rows = read_step_file(file, columns)
        line, last = rows[-1]
        if "params" not in last:
            raise UserError(f"per-step file {file} has no params column: add one, or pass a one-row-per-run table "
                            f"as runs= with the per-step files as steps={path}")
        finals.append((line, {**last, "run_id": last.get("run_id") or file.stem}))
        points.append(step_points(rows, file))
    table = table_from_rows(path, finals, convention, flop_method, None)
    by_id = dict(zip((r["run_id"] for _, r in finals), points, strict=True))
    return replace(table, metric_points=tuple(by_id.get(rid) for rid in table.run_id))


def _has_records(path: Path) -> bool:
    return any(path.glob("run.json")) or any(path.glob("runs/*/run.json")) or any(path.glob("*/run.json"))


def load_runs(source: str | Path, convention: str = "total", flop_method: str | None = None,
              columns: dict[str, str] | None = None, steps: str | None = None,
              all_runs: bool = False, keep_duplicates: bool = False) -> RunsTable:
    """Dispatch on the source: `wandb:entity/project`, a results directory, a directory of per-step CSVs,
    or a .csv/.jsonl file; `steps` adds per-step files' intermediate points (attach_step_files). Exact
    duplicate rows are counted once (RunsTable.without_duplicates) unless `keep_duplicates`."""
    text = str(source)
    if text.startswith("wandb:"):
        table = load_wandb(text[len("wandb:"):], convention, flop_method or "exact")
    elif Path(text).is_dir() and not _has_records(Path(text)) and any(Path(text).glob("*.csv")):
        table = load_step_dir(Path(text), convention, flop_method, columns)
    elif Path(text).is_dir():
        table = load_results_dir(Path(text), convention, flop_method or "exact", all_runs=all_runs)
    else:
        table = load_table_file(Path(text), convention, flop_method, columns)
    table = table if keep_duplicates else table.without_duplicates()
    return attach_step_files(table, steps, columns) if steps else table


def columns_from_config(columns) -> dict[str, str]:
    """The `columns` config section ({our name: your column}) as load_table_file's {your column: our name}."""
    items = columns.items() if isinstance(columns, Mapping) else vars(columns).items()
    return {theirs: ours for ours, theirs in items if theirs}
