"""Peak host memory of saving and of resuming a checkpoint, per rank: sharded (DCP) vs the model's size.

    .venv/bin/python scripts/bench_checkpoint.py --ranks 4 [--layers 12 --d-model 512 --vocab 16384]

Starts `--ranks` CPU processes on gloo (each its own interpreter, as torchrun would), twice, through
the trainer's own calls (pipeline/train/engine.py):
- save: each rank holds an FSDP2-sharded model of the family (55M parameters by default) and its
  AdamW state after one step, then `training_state` + `save_checkpoint` (every rank its shards);
- resume, in new processes as a relaunch is: a fresh model and optimizer (built on meta, sharded,
  materialised), then `read_checkpoint` + `training_state` + `read_shards` + `load_training_state`.
Each phase's peak RSS growth is the kernel's high-water mark (VmHWM, reset by writing 5 to
/proc/self/clear_refs just before the phase) minus the RSS at its start. The last line is
`peak_rss_ratio=<max over ranks and phases of that growth / bytes of the full model + optimizer
state (fp32 weights and two AdamW moments: 12 bytes per parameter)>`. Sharded, each rank holds a
1/ranks share of the state, so the ratio is about 1/ranks plus buffers; a full gather on rank 0 or
a full load per rank reads >= 1. Absolute numbers move with a shared machine's load; the ratio not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def peak_growth(action) -> int:
    """Bytes the RSS peaked above its level at the start of `action`."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    start, _ = rss_bytes()
    action()
    _, peak = rss_bytes()
    return peak - start


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from models.shape import ModelShape
    from pipeline.train.build import build_model
    from pipeline.train.checkpoint import read_checkpoint, read_shards, save_checkpoint
    from pipeline.train.distributed import load_training_state, training_state

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    shape = ModelShape(n_layer=args.layers, d_model=args.d_model, n_heads=args.d_model // 64, d_ff=args.d_ff,
                       vocab_size=args.vocab, seq_len=64)

    def model_and_optimizer():
        model = build_model(shape, init_std=0.02, seed=0, device=torch.device("cpu"), fsdp=True, bf16=False,
                            compile_blocks=False)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, optimizer = model_and_optimizer()
    params = sum(p.numel() for p in model.parameters())  # DTensors: the full count
    path = Path(args.dir) / "ckpt-000000001.dcp"
    if args.phase == "resume":
        def resume():
            state = read_checkpoint(path)
            tensors = training_state(model, optimizer)  # allocates this rank's moments: part of a resume
            read_shards(path, tensors)
            load_training_state(model, optimizer, {**state, **tensors})

        growth = peak_growth(resume)
        assert optimizer.state and all(s["step"].item() == 1 for s in optimizer.state.values())
    else:
        take_one_step(model, optimizer, rank, shape)  # the moments exist, as in any checkpoint after step 1
        meta = {"step": 1, "rng_cpu": torch.get_rng_state(), "run_id": "bench", "data_fingerprint": "bench"}
        growth = peak_growth(lambda: save_checkpoint(Path(args.dir), 1, {**training_state(model, optimizer), **meta}))
    print(json.dumps({"rank": rank, "params": params, "growth": growth}), flush=True)
    dist.barrier()  # gloo aborts a rank that tears down while another still works
    dist.destroy_process_group()


def take_one_step(model, optimizer, rank, shape) -> None:
    import torch

    tokens = torch.randint(0, shape.vocab_size, (1, shape.seq_len), generator=torch.Generator().manual_seed(rank))
    model(tokens).float().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=1408)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--phase", choices=["save", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        worker(args)
        return
    if args.ranks < 1 or args.d_model % 64:
        sys.exit("error: --ranks must be >= 1 and --d-model a multiple of 64 (heads of 64 channels)")
    with tempfile.TemporaryDirectory() as tmp:
        save_rows, resume_rows = (run_ranks(args.ranks, phase, tmp) for phase in ("save", "resume"))
    full = 12 * save_rows[0]["params"]
    print(f"{save_rows[0]['params'] / 1e6:.1f}M parameters; full model + AdamW state {full / 2**20:.0f} MiB "
          f"(12 bytes per parameter); {args.ranks} ranks, gloo, CPU")
    print("rank  save peak RSS growth  resume peak RSS growth")
    for saved, resumed in zip(save_rows, resume_rows, strict=True):
        print(f"{saved['rank']:>4}  {saved['growth'] / 2**20:>15.0f} MiB  {resumed['growth'] / 2**20:>17.0f} MiB")
    print(f"peak_rss_ratio={max(r['growth'] for r in save_rows + resume_rows) / full:.3f}")


def run_ranks(ranks: int, phase: str, tmp: str) -> list[dict]:
    """One phase on `ranks` new processes; their result rows by rank."""
    from pipeline.sweep.launchers import free_port

    port, procs = free_port(), []
    for rank in range(ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, __file__, "--phase", phase, "--dir", tmp, *sys.argv[1:]],
                                      env=env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"error: a rank failed during {phase} (exit codes {[p.returncode for p in procs]})")
    return sorted((json.loads(out.strip().splitlines()[-1]) for out in outputs), key=lambda r: r["rank"])


if __name__ == "__main__":
    main()
