"""Atomic, validated checkpoints that a relaunch finds on its own.

What a checkpoint holds (everything that decides the next step):
model, optimizer, the step and token counters, the torch RNG states, and the identity of the run
(run id = hash of the resolved semantic config, data fingerprint). The data position is the step:
the sampler is a pure function of (seed, step) and the LR a pure function of step.

Write protocol: `ckpt-<step>.pt.tmp` -> fsync -> `os.replace` to `ckpt-<step>.pt` -> fsync dir.
A file is valid only under its final name, so a SIGKILL mid-save leaves a `.tmp` that start-up
deletes. The newest two are kept; loading falls back to the older one if the newest cannot be read.
Loading uses `torch.load(weights_only=True)`: nothing in a checkpoint is executed as code.
"""

from __future__ import annotations

import os
import re
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


def clean_stale_temporaries(ckpt_dir: Path) -> None:
    for tmp in ckpt_dir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep: int = 2, protect: frozenset = frozenset()) -> Path:
    """Save atomically; keep the newest `keep` plus the `protect`ed steps (a trunk's branch points)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt-{step:09d}.pt"
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        if int(_NAME.match(old.name).group(1)) not in protect:
            old.unlink(missing_ok=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.exists():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def load_latest_checkpoint(ckpt_dir: Path, *, run_id: str, data_fingerprint: str) -> dict | None:
    """The newest readable checkpoint of *this* run, or None when there is none.

    A checkpoint of another configuration under the same directory is an error, not something to
    resume from silently.
    """
    clean_stale_temporaries(ckpt_dir) if ckpt_dir.exists() else None
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or corrupt file: fall back to the previous one
            continue
        if state.get("run_id") != run_id:
            raise UserError(f"{path} belongs to run {state.get('run_id')}, not {run_id}: "
                            "the config changed; use a new run_dir or delete the old checkpoints")
        if state.get("data_fingerprint") != data_fingerprint:
            raise UserError(f"{path} was trained on data {state.get('data_fingerprint')}, now {data_fingerprint}: "
                            "restore the dataset or start a new run_dir")
        state["_path"] = str(path)
        return state
    return None


def load_branch_point(trunk_dir: Path, step: int, *, trunk_id: str, data_fingerprint: str) -> dict:
    """The trunk's checkpoint at `step`, where a cooldown branch starts (Hägele et al. 2024)."""
    path = trunk_dir / "checkpoints" / f"ckpt-{step:09d}.pt"
    if not path.exists():
        raise UserError(f"the trunk {trunk_id} has no checkpoint at step {step} ({path}): "
                        "train the trunk first (the sweep orders it before its branches)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("run_id") != trunk_id or state.get("data_fingerprint") != data_fingerprint:
        raise UserError(f"{path} is not a checkpoint of trunk {trunk_id} on this data: re-run the trunk")
    state["_path"] = str(path)
    return state
