"""Export a run's newest readable checkpoint to the Hugging Face Llama format (models/hf_io.py).

    python -m pipeline.train.export <run_dir> <out_dir>

A checkpoint of one file holds the whole model; a sharded one (several processes, DCP) is read
here in one process, without a process group: DCP assembles each weight from the ranks' shards. So
a run trained on one process, with DDP or with FSDP exports the same way, on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.hf_io import save_hf_checkpoint
from models.shape import ModelShape
from models.transformer import Transformer
from pipeline.errors import UserError
from pipeline.records import RecordError, load_record
from pipeline.train.checkpoint import newest_readable, read_checkpoint, read_model_weights


def export_run(run_dir: str | Path, out_dir: str | Path) -> tuple[Path, int]:
    """(the HF directory written, the step of the checkpoint exported)."""
    run_dir = Path(run_dir)
    try:
        record = load_record(run_dir)
    except RecordError as err:
        raise UserError(f"{run_dir} has no readable run.json ({err}): pass a run directory") from err
    path = newest_readable(run_dir / "checkpoints")
    if path is None:
        raise UserError(f"{run_dir / 'checkpoints'} holds no readable checkpoint: train (or resume) the run first")
    state = read_checkpoint(path)
    if state.get("run_id") != record["run_id"]:
        raise UserError(f"{path} belongs to run {state.get('run_id')}, not {record['run_id']}")
    model = Transformer(ModelShape.from_dict(record["shape"]))
    read_model_weights(path, model)
    return save_hf_checkpoint(model, out_dir), int(state["step"])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        out, step = export_run(sys.argv[1], sys.argv[2])
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"step {step} -> {out}")
