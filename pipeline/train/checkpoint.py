"""Atomic, validated checkpoints that a relaunch finds on its own.

What a checkpoint holds (everything that decides the next step):
model and optimizer (full, unsharded, keyed by parameter name: pipeline/train/distributed.py), the
step and token counters, the torch RNG states, and the identity of the run (run id = hash of the
resolved semantic config, data fingerprint). The data position is the step: the sampler is a pure
function of (seed, step) and the LR a pure function of step.

Write protocol (main process only): `ckpt-<step>.pt.tmp` -> fsync -> `os.replace` to `ckpt-<step>.pt`
-> fsync dir. A file is valid only under its final name, so a SIGKILL mid-save leaves a `.tmp` that
start-up deletes; a failed write (disk full) deletes its `.tmp` at once, so the torn file cannot eat
the space the run's failed record needs (issue 18, #2).

Pruning goes by readability, never by name alone (issue 18, #1): after a save, the checkpoint just
written and the newest `keep - 1` *readable* others are kept (plus protected steps, a trunk's branch
points); unreadable files are deleted with a warning. So a torn or foreign file with a higher step
number can never push a good checkpoint out, and the newest readable checkpoint is never deleted.
Loading falls back to the newest readable one and says loudly when that discards progress.
Loading uses `torch.load(weights_only=True)`: nothing in a checkpoint is executed as code.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import torch

from pipeline.errors import UserError

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


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


def clean_stale_temporaries(ckpt_dir: Path) -> None:
    for tmp in ckpt_dir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def readable(path: Path) -> bool:
    """Cheap structural check: a whole `torch.save` zip archive (its central directory is written last,
    so a truncated or garbage file fails). The full load still happens when resuming."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep: int = 2, protect: frozenset = frozenset()) -> Path:
    """Save atomically, then prune: keep this one, the newest `keep - 1` readable others and the `protect`ed steps."""
    if keep < 1:  # validated in pipeline/config/validate.py; a direct caller must not delete what it just wrote
        raise ValueError(f"keep={keep} must be >= 1")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt-{step:09d}.pt"
    tmp = final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a torn temporary would hold the space the failed record needs
        raise
    _fsync_dir(ckpt_dir)
    prune(ckpt_dir, final, keep, protect)
    return final


def prune(ckpt_dir: Path, newest: Path, keep: int, protect: frozenset = frozenset()) -> None:
    others = [p for p in list_checkpoints(ckpt_dir) if p != newest]
    good = [p for p in others if readable(p)]
    kept = {newest, *good[max(0, len(good) - (keep - 1)):]} if keep > 1 else {newest}
    for path in others:
        if path in kept or step_of(path) in protect:
            continue
        if path not in good:
            warn(f"deleting unreadable checkpoint {path} (torn or not a checkpoint)")
        path.unlink(missing_ok=True)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files by step, oldest first (readable or not)."""
    if not ckpt_dir.exists():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


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
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or corrupt file: fall back to the previous one
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
    """A checkpoint the main process has already chosen and validated (the other ranks of a run read it here)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_branch_point(trunk_dir: Path, step: int, *, trunk_id: str, data_fingerprint: str) -> dict:
    """The trunk's checkpoint at `step`, where a cooldown branch starts (Hägele et al. 2024)."""
    path = trunk_dir / "checkpoints" / f"ckpt-{step:09d}.pt"
    if not path.exists():
        raise UserError(f"the trunk {trunk_id} has no checkpoint at step {step} ({path}): "
                        "train the trunk first (the sweep orders it before its branches)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path} cannot be read ({type(err).__name__}): re-run the trunk {trunk_id}") from err
    if state.get("run_id") != trunk_id or state.get("data_fingerprint") != data_fingerprint:
        raise UserError(f"{path} is not a checkpoint of trunk {trunk_id} on this data: re-run the trunk")
    state["_path"] = str(path)
    return state
