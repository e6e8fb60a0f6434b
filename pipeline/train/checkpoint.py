"""Atomic, validated checkpoints that a relaunch finds on its own.

What a checkpoint holds (everything that decides the next step):
model and optimizer (keyed by parameter name: pipeline/train/distributed.py), the step and token
counters, the torch RNG states, and the identity of the run (run id = hash of the resolved semantic
config, data fingerprint). The data position is the step: the sampler is a pure function of
(seed, step) and the LR a pure function of step.

Two layouts, chosen here by the number of processes (the callers do not care which):
- one process: one file `ckpt-<step>.pt` (format 2), the state as it is;
- several processes: a directory `ckpt-<step>.dcp/` (format 3) written by
  `torch.distributed.checkpoint` (DCP): every rank writes its own shards (`__<rank>_0.distcp`; a
  replicated DDP tensor is written once), rank 0 the index (`.metadata`) and `train_state.pt` (the
  counters, RNG and identity, and the shard files' names and sizes). No rank gathers or loads the
  full state; a resume on another number of processes reads the overlapping parts of the shards (DCP
  reshards). A single process resumes from either layout.

Write protocol: the file or directory is written as `<name>.tmp` (each file fsynced), then
`os.replace` to its final name and fsync of the directory. A checkpoint is valid only under its
final name, so a SIGKILL mid-save leaves a `.tmp` that start-up deletes; a failed write (disk full,
on any rank) deletes its `.tmp` at once, so the torn files cannot eat the space the run's failed
record needs (issue 18, #2).

Pruning goes by readability, never by name alone (issue 18, #1): after a save, the checkpoint just
written and the newest `keep - 1` *readable* others are kept (plus protected steps, a trunk's branch
points); unreadable ones are deleted with a warning. So a torn or foreign file with a higher step
number can never push a good checkpoint out, and the newest readable checkpoint is never deleted.
Loading falls back to the newest readable one and says loudly when that discards progress.
Files are read with `torch.load(weights_only=True)`: nothing in them is executed as code (DCP's own
`.metadata` index is a pickle that `dcp.load` reads: a sharded checkpoint must come from this run).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from pipeline.errors import UserError
from pipeline.train.distributed import distributed, from_main

_NAME = re.compile(r"^ckpt-(\d{9})\.(pt|dcp)$")
ONE_FILE, SHARDED = 2, 3  # the `format` of each layout (1: a single process's state by index, still read)
TRAIN_STATE = "train_state.pt"  # in a sharded checkpoint: everything but the model and optimizer tensors


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def remove(path: Path) -> None:
    """A checkpoint or temporary of either layout."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temporaries(ckpt_dir: Path) -> None:
    for tmp in ckpt_dir.glob("*.tmp"):
        remove(tmp)


def _whole_torch_file(path: Path) -> bool:
    """A whole `torch.save` zip archive (its central directory is written last, so a truncated or
    garbage file fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def readable(path: Path) -> bool:
    """Cheap structural check; the full load still happens when resuming. A sharded checkpoint: its
    `train_state.pt` is whole and every shard file it lists is there with the size it was written with."""
    if not path.is_dir():
        return _whole_torch_file(path)
    if not _whole_torch_file(path / TRAIN_STATE):
        return False
    try:
        files = torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=True)["files"]
        return all((path / name).stat().st_size == size for name, size in files.items())
    except Exception:  # noqa: BLE001 - anything missing or foreign: not readable
        return False


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep: int = 2, protect: frozenset = frozenset()) -> Path:
    """Save atomically, then prune: keep this one, the newest `keep - 1` readable others and the `protect`ed steps.

    On several processes every rank calls it with its own `state` (a collective); a failed write on
    any rank raises the same OSError on every rank, after its temporary files were removed.
    """
    if keep < 1:  # validated in pipeline/config/validate.py; a direct caller must not delete what it just wrote
        raise ValueError(f"keep={keep} must be >= 1")
    if distributed():
        final = _save_sharded(ckpt_dir, step, state)
        if dist.get_rank() == 0:
            prune(ckpt_dir, final, keep, protect)
        return final
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt-{step:09d}.pt"
    tmp = final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "format": ONE_FILE}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a torn temporary would hold the space the failed record needs
        raise
    _fsync_dir(ckpt_dir)
    prune(ckpt_dir, final, keep, protect)
    return final


def _save_sharded(ckpt_dir: Path, step: int, state: dict) -> Path:
    """Every rank writes its shards into `ckpt-<step>.dcp.tmp/`; rank 0 then commits it by renaming.

    The steps where one rank can fail alone (rank 0 preparing or committing the directory) end in a
    broadcast of the outcome, so every rank raises the same error or none does; `dcp.save` itself
    already raises on every rank when a write fails on any.
    """
    main = dist.get_rank() == 0
    final = ckpt_dir / f"ckpt-{step:09d}.dcp"
    tmp = final.with_name(final.name + ".tmp")

    def on_main(action) -> None:
        failure = None
        if main:
            try:
                action()
            except OSError as err:
                failure = (err.errno, err.strerror)
        failure = from_main(failure, main)
        if failure:
            if main:
                remove(tmp)
            raise OSError(*failure)

    def prepare() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove(tmp)
        tmp.mkdir()

    on_main(prepare)
    try:
        dcp.save({"model": state["model"], "optimizer": state["optimizer"]},
                 storage_writer=FileSystemWriter(tmp, sync_files=True))
    except CheckpointException as err:
        if main:
            remove(tmp)
        raise _as_os_error(err) from err

    def commit() -> None:
        files = {p.name: p.stat().st_size for p in tmp.iterdir()}
        rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        with open(tmp / TRAIN_STATE, "wb") as f:
            torch.save({**rest, "format": SHARDED, "files": files}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again: the old copy goes only once the new one is whole
            aside = final.with_name(final.name + ".old.tmp")
            os.replace(final, aside)
            os.replace(tmp, final)
            remove(aside)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckpt_dir)

    on_main(commit)
    return final


def _as_os_error(err: CheckpointException) -> OSError:
    """The first OSError among the ranks' failures (disk full, permission), as every rank's error."""
    for failure, _trace in err.failures.values():
        if isinstance(failure, OSError):
            return OSError(failure.errno, failure.strerror)
    return OSError(errno.EIO, f"a rank failed writing its shards: {str(err).splitlines()[-1]}")


def prune(ckpt_dir: Path, newest: Path, keep: int, protect: frozenset = frozenset()) -> None:
    others = [p for p in list_checkpoints(ckpt_dir) if p != newest]
    good = [p for p in others if readable(p)]
    kept = {newest, *good[max(0, len(good) - (keep - 1)):]} if keep > 1 else {newest}
    for path in others:
        if path in kept or step_of(path) in protect:
            continue
        if path not in good:
            warn(f"deleting unreadable checkpoint {path} (torn or not a checkpoint)")
        remove(path)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints (files and sharded directories) by step, oldest first (readable or not)."""
    if not ckpt_dir.exists():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name)), key=lambda p: (step_of(p), p.name))


def newest_readable(ckpt_dir: Path) -> Path | None:
    return next((p for p in reversed(list_checkpoints(ckpt_dir)) if readable(p)), None)


def load_latest_checkpoint(ckpt_dir: Path, *, run_id: str, data_fingerprint: str) -> dict | None:
    """The newest readable checkpoint of *this* run, or None when there is none.

    A checkpoint of another configuration under the same directory is an error, not something to
    resume from silently. Skipping unreadable newer files (listed in `state["skipped"]`), or finding
    none readable at all, is said loudly on stderr: that progress is trained again.
    """
    clean_stale_temporaries(ckpt_dir) if ckpt_dir.exists() else None
    skipped = []
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            if path.is_dir() and not readable(path):
                raise ValueError("a shard is missing or torn")
            state = read_checkpoint(path)
        except Exception:  # noqa: BLE001 - a torn or corrupt checkpoint: fall back to the previous one
            skipped.append(path.name)
            continue
        if state.get("run_id") != run_id:
            raise UserError(f"{path} belongs to run {state.get('run_id')}, not {run_id}: "
                            "the config changed; use a new run_dir or delete the old checkpoints")
        if state.get("data_fingerprint") != data_fingerprint:
            raise UserError(f"{path} was trained on data {state.get('data_fingerprint')}, now {data_fingerprint}: "
                            "restore the dataset or start a new run_dir")
        if skipped:
            warn(f"unreadable checkpoints {', '.join(skipped)} in {ckpt_dir}: resuming from step {state['step']} "
                 f"({path.name}); the steps after it are trained again")
        state["_path"] = str(path)
        state["skipped"] = skipped
        return state
    if skipped:
        warn(f"no readable checkpoint in {ckpt_dir} ({', '.join(skipped)} unreadable): the run restarts from "
             "step 0 and all its earlier progress is discarded")
    return None


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint the main process has already chosen and validated (the other ranks of a run read it here).

    One file: all of it. A sharded checkpoint: everything but the tensors, which `read_shards` loads
    into the live model's own state, each rank reading its part only.
    """
    path = Path(path)
    return torch.load(path / TRAIN_STATE if path.is_dir() else path, map_location="cpu", weights_only=True)


def read_shards(path: str | Path, template: dict) -> None:
    """Fill `template` ({"model", "optimizer"} as `training_state` gives them) in place from a sharded
    checkpoint: every rank reads the parts of the shards its own tensors cover (a collective; on one
    process without a process group it reads everything its tensors need)."""
    with warnings.catch_warnings():  # on one process DCP warns that it loads without a process group: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(template, storage_reader=FileSystemReader(path), no_dist=not distributed())


def read_model_weights(path: str | Path, model: torch.nn.Module) -> None:
    """The model's weights from a checkpoint of either layout into `model` (one process, e.g. export)."""
    path = Path(path)
    if path.is_dir():
        state = {"model": model.state_dict()}
        read_shards(path, state)
        model.load_state_dict(state["model"])
    else:
        model.load_state_dict(read_checkpoint(path)["model"])


def load_branch_point(trunk_dir: Path, step: int, *, trunk_id: str, data_fingerprint: str) -> dict:
    """The trunk's checkpoint at `step`, where a cooldown branch starts (Hägele et al. 2024)."""
    candidates = [trunk_dir / "checkpoints" / f"ckpt-{step:09d}.{kind}" for kind in ("dcp", "pt")]
    path = next((p for p in candidates if p.exists()), candidates[-1])
    if not path.exists():
        raise UserError(f"the trunk {trunk_id} has no checkpoint at step {step} ({path}): "
                        "train the trunk first (the sweep orders it before its branches)")
    try:
        if path.is_dir() and not readable(path):
            raise ValueError("a shard is missing or torn")
        state = read_checkpoint(path)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path} cannot be read ({type(err).__name__}): re-run the trunk {trunk_id}") from err
    if state.get("run_id") != trunk_id or state.get("data_fingerprint") != data_fingerprint:
        raise UserError(f"{path} is not a checkpoint of trunk {trunk_id} on this data: re-run the trunk")
    state["_path"] = str(path)
    return state
