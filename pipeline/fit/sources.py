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
import json
import math
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN
from pipeline.fit.table import RunsTable, load_results_dir, table_from_records
from pipeline.records import FINISHED_STATUS

OPTIONAL_COLUMNS = ("run_id", "status", "flops", "budget_flops")


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
    return number


def load_table_file(path: str | Path, convention: str = "total", flop_method: str | None = None,
                    columns: dict[str, str] | None = None) -> RunsTable:
    """Table from a CSV or JSONL file; `columns` renames the file's columns, e.g. {"Model Size": "params"}.

    FLOP methods: "6n" (6 N D) always, "given" (the file's `flops` column) when present; the default
    is "given" when the file has FLOPs, else "6n".
    """
    path = Path(path)
    rename = columns or {}
    rows = [(n, {rename.get(k, k): v for k, v in row.items()}) for n, row in _read_rows(path)]
    if not rows:
        raise UserError(f"{path} has no rows: add one line per run with columns params, tokens, loss")
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
                     excluded=tuple(excluded), source=str(path))


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


def load_runs(source: str | Path, convention: str = "total", flop_method: str | None = None,
              columns: dict[str, str] | None = None, all_runs: bool = False) -> RunsTable:
    """Dispatch on the source: `wandb:entity/project`, a results directory, or a .csv/.jsonl file."""
    text = str(source)
    if text.startswith("wandb:"):
        return load_wandb(text[len("wandb:"):], convention, flop_method or "exact")
    path = Path(text)
    if path.is_dir():
        return load_results_dir(path, convention, flop_method or "exact", all_runs=all_runs)
    return load_table_file(path, convention, flop_method, columns)
