"""Run records on disk: the source of truth for every pilot run.

Layout of a sweep (all paths derive from the deterministic run id, never a timestamp):

    <results_dir>/<sweep>/runs/<run_id>/run.json      the record (this module's schema), written atomically
                                      /eval.jsonl     one row per evaluation: step, tokens, flops, val_loss
                                      /train.jsonl    one row per logged step: step, tokens, train_loss, lr, ...
                                      /checkpoints/   resumable state (pipeline.train.checkpoint)

`run.json` carries `schema_version`; a record from a future or unknown format is rejected rather
than misread. W&B mirrors these files; it is never the source the fit reads.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError

RUN_SCHEMA_VERSION = 1
RUN_STATUSES = ("ok", "diverged", "failed", "running", "preempted")
FINISHED_STATUS = "ok"
TERMINAL_STATUSES = ("ok", "diverged")  # recorded outcomes: never trained again

# key -> accepted python types; the record may hold more keys than these.
_REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "status": (str,),
    "params": (dict,),
    "convention": (str,),
    "tokens": (int,),
    "flops": (dict,),
    "shape": (dict,),
}
PARAM_CONVENTIONS = ("total", "non_embedding", "embedding", "head")
FLOP_METHODS = ("6n", "exact")


class RecordError(UserError):
    """A run record that cannot be trusted (malformed, wrong version, half-written)."""


# --- atomic files --------------------------------------------------------------------------------
# Files are created with the mode a plain open() would give (0666 less the umask, usually 0644), not
# mkstemp's private 0600: run.json must be as readable as config.json beside it (a shared results
# directory is read by other users' fits).
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that readers see the old file or the new one, never a prefix.

    Temp file in the same directory (same filesystem, so `os.replace` is atomic), fsync the
    file, replace, fsync the directory (docs/reliability.md: a SIGKILL mid-save must not leave a
    truncated file under the real name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _json_default(value):
    # numpy scalars and paths reach records from several places; store them as plain JSON.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def jsonable(value):
    """numpy scalars/arrays -> Python numbers/lists, non-finite floats -> None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def writable_dir_error(path: str | os.PathLike, err: OSError, key: str) -> UserError:
    """The one-line error for a results folder that cannot be written (read-only, full, not a directory)."""
    where = err.filename or path
    return UserError(f"cannot write {where} ({err.strerror or type(err).__name__}): free space there or choose a "
                     f"writable {key}")


def check_writable_dir(path: str | os.PathLike, key: str) -> None:
    """Raise the one-line error now if `path` (or, not yet created, its nearest existing parent) cannot be
    written -- before compute is spent on results that could not be saved. Writes nothing."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {path} ({probe} is not a directory): choose a writable {key}")
    if not os.access(probe, os.W_OK | os.X_OK):  # access(2) also reports a read-only filesystem (EROFS)
        raise UserError(f"cannot write {path} ({probe} is not writable): choose a writable {key}")


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is dropped, anything else is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise RecordError(f"{path}:{i + 1} is not valid JSON ({err.msg}): delete or repair that line") from err
    return rows


def truncate_jsonl_after_step(path: str | os.PathLike, step: int) -> None:
    """Keep exactly the rows with `step <= step` (after a resume each step must appear once)."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", -1) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# --- records -------------------------------------------------------------------------------------
def validate_record(record: dict, where: str = "run record") -> dict:
    """Check a record against the schema; return it unchanged or raise a one-line RecordError."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(record).__name__}")
    version = record.get("schema_version")
    if version != RUN_SCHEMA_VERSION:
        raise RecordError(
            f"{where}: schema_version={version!r}, this tool reads version {RUN_SCHEMA_VERSION}: "
            "re-run it with this version or upgrade the tool")
    for key, types in _REQUIRED_KEYS.items():
        if key not in record:
            raise RecordError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], types) or isinstance(record[key], bool):
            raise RecordError(f"{where}: '{key}' should be {types[0].__name__}, found {type(record[key]).__name__}")
    if record["status"] not in RUN_STATUSES:
        raise RecordError(f"{where}: status '{record['status']}' is not one of {', '.join(RUN_STATUSES)}")
    for key in PARAM_CONVENTIONS:
        value = record["params"].get(key)
        if not isinstance(value, int) or value < 0:
            raise RecordError(f"{where}: params.{key}={value!r} must be a non-negative integer")
    for key in FLOP_METHODS:
        value = record["flops"].get(key)
        if not isinstance(value, (int, float)) or not value >= 0:
            raise RecordError(f"{where}: flops.{key}={value!r} must be a non-negative number")
    if record["status"] == FINISHED_STATUS:
        loss = record.get("final_val_loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise RecordError(f"{where}: status ok but final_val_loss={loss!r} is not a finite number")
    return record


def write_record(run_dir: str | os.PathLike, record: dict) -> Path:
    record = {"schema_version": RUN_SCHEMA_VERSION, **record}
    validate_record(record, where=str(run_dir))
    path = Path(run_dir) / "run.json"
    atomic_write_json(path, record)
    return path


def load_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RecordError(f"{path} does not exist: has the run started?") from err
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON ({err.msg}): delete it and re-run that run") from err
    return validate_record(record, where=str(path))


def finished_record(run_dir: str | os.PathLike, run_id: str | None = None) -> dict | None:
    """The run's record if it is finished (ok or diverged) -- and is run `run_id`, when given -- else None.

    Whoever is about to train a run calls this right after claiming its lock (pipeline.train.lock
    claim_unfinished): a finished run is never re-entered, so a second sweep of the same study, a late
    array task or a repeated `python -m pipeline.train` cannot overwrite its record. A torn or missing
    record is not finished (the run then resumes from its final checkpoint and rewrites it)."""
    try:
        record = load_record(run_dir)
    except RecordError:
        return None
    if record["status"] not in TERMINAL_STATUSES or (run_id is not None and record["run_id"] != run_id):
        return None
    return record


def run_dirs(results_dir: str | os.PathLike) -> Iterator[Path]:
    """Every run directory under a sweep's results dir (or under a directory of sweeps)."""
    root = Path(results_dir)
    for record_path in sorted(root.rglob("run.json")):
        yield record_path.parent


def load_records(results_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(valid records, [{'path', 'reason'}] for unreadable ones) under `results_dir`."""
    records, rejected = [], []
    for run_dir in run_dirs(results_dir):
        try:
            record = load_record(run_dir)
        except RecordError as err:
            rejected.append({"path": str(run_dir), "reason": str(err)})
            continue
        record["_dir"] = str(run_dir)
        records.append(record)
    return records, rejected
