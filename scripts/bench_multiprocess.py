"""Two processes x 1 thread vs 1 process x 2 threads: tokens/s of the same run (issue 17), one run each.

Same model, same global batch (each process takes its share), same steps; the runs are real
`python -m pipeline.train` commands (the 2-process one under `accelerate launch --multi_gpu`, which
starts CPU processes on gloo when there is no GPU). Throughput counts training steps only: it is
read from each run's train.jsonl windows after the first (start-up, the final evaluation and
checkpoint are outside them). Also run: 1 process x 1 thread (the unit both should double), and a
gloo all-reduce of one gradient's worth of floats (what DDP adds per step), to say where time goes.
Target: ratio >= 0.8. On a shared machine the numbers move with the neighbours' load: rerun quiet.

    .venv/bin/python scripts/bench_multiprocess.py [--size 200k] [--steps 120] [--batch-tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_tokens_per_s(run_dir: Path) -> tuple[float, float]:
    """(tokens/s over the logged windows after the first, mean seconds per step in them)."""
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    windows = list(zip(rows, rows[1:], strict=False))[1:]  # the first window holds the first steps' warm-up
    tokens = sum(b["tokens"] - a["tokens"] for a, b in windows)
    seconds = sum((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in windows)
    steps = sum(b["step"] - a["step"] for a, b in windows)
    return tokens / seconds, seconds / steps


def run(processes: int, threads: int, args, common: list[str], out: Path) -> tuple[float, float, float]:
    run_dir = out / f"p{processes}t{threads}"
    train = ["-m", "pipeline.train", *common, f"train.threads={threads}", f"run_dir={run_dir}"]
    if processes == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *train]
    env = {**ENV, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    tok_s, step_s = train_tokens_per_s(run_dir)
    return tok_s, step_s, time.perf_counter() - t0


ALLREDUCE = """
import os, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo"); torch.set_num_threads(1)
n, reps = int(sys.argv[1]), 20
x = torch.ones(n)
dist.all_reduce(x)
t0 = time.perf_counter()
for _ in range(reps):
    dist.all_reduce(x)
if dist.get_rank() == 0:
    print((time.perf_counter() - t0) / reps)
dist.destroy_process_group()
"""


def allreduce_seconds(n_floats: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(ALLREDUCE)
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port",
           str(free_port()), f.name, str(n_floats)]
    done = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    os.unlink(f.name)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="200k")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    corpus = ["data.source=stdlib", "data.max_documents=300", "data.val_tokens=16384", "data.vocab_size=512"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        common = [*corpus, f"data.cache_dir={out / 'cache'}", f"model.size={args.size}",
                  f"train.tokens={args.steps * args.batch_tokens}", f"train.batch_tokens={args.batch_tokens}",
                  "train.evals_per_run=1", "train.log_interval_steps=10", "train.progress=false",
                  "tracking.mode=disabled", "train.device=cpu", "train.checkpoint_interval_s=1e9"]
        subprocess.run([sys.executable, "-c", "from pipeline.cli import load_study; from pipeline.data.corpus import "
                        "prepare_corpus; import sys; prepare_corpus(load_study(sys.argv[1:], {}).data)", *common],
                       cwd=REPO, env=ENV, check=True, capture_output=True)
        one_one = run(1, 1, args, common, out)
        one_two = run(1, 2, args, common, out)
        two_one = run(2, 1, args, common, out)
        n_params = json.loads((out / "p1t1" / "run.json").read_text())["params"]["total"]
    comm = allreduce_seconds(n_params)
    print(f"model {args.size} ({n_params:,} parameters), global batch {args.batch_tokens} tokens, {args.steps} steps, "
          f"CPU, {os.cpu_count()} cores")
    for name, (tok_s, step_s, wall) in (("1 process x 1 thread ", one_one), ("1 process x 2 threads", one_two),
                                        ("2 processes x 1 thread", two_one)):
        print(f"  {name}: {tok_s / 1e3:7.1f}k tokens/s  ({step_s * 1e3:6.1f} ms/step; whole command {wall:.0f} s)")
    print(f"  gloo all-reduce of {n_params:,} fp32 gradients, 2 processes: {comm * 1e3:.1f} ms "
          f"({comm / two_one[1]:.0%} of a 2-process step)")
    print(f"  2 threads speed up 1 process {one_two[0] / one_one[0]:.2f}x; 2 processes speed it up "
          f"{two_one[0] / one_one[0]:.2f}x")
    print(f"ratio 2 processes x 1 thread / 1 process x 2 threads: {two_one[0] / one_two[0]:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
