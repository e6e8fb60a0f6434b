"""Engine overhead: tokens/s of `pipeline.train.engine.train_run` vs a bare eager PyTorch loop, one run each.

Same model shape, same batch, same AdamW settings, same CPU threads; the bare loop is the floor any
engine pays (forward, cross-entropy, backward, clip, step) with nothing else: no accelerate, no
sampler, no logging, no evaluation, no checkpoints. The engine run evaluates once (at its end) and
checkpoints once (at its end); those are excluded from its timed window by measuring the steps from
its train.jsonl rows. Prints both throughputs and the ratio; the target is >= 0.90.

    .venv/bin/python scripts/bench_engine.py [--size 200k] [--steps 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def bare_loop(spec, steps: int, threads: int, lr: float) -> float:
    import torch
    import torch.nn.functional as F

    from models.transformer import Transformer

    torch.set_num_threads(threads)
    model = Transformer(spec.shape)
    model.init_weights(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, spec.hparams.beta2), weight_decay=0.1)
    seqs = spec.batch_tokens // spec.shape.seq_len
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, spec.shape.vocab_size, (steps + 5, seqs, spec.shape.seq_len + 1), generator=gen)

    def step(i):
        x, y = data[i, :, :-1], data[i, :, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(5):  # warm-up, as the engine's first logged window also excludes start-up
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(5 + i)
    return steps * spec.batch_tokens / (time.perf_counter() - t0)


def engine_run(size: str, steps: int, threads: int) -> tuple[float, object]:
    from pipeline.config.load import load_config
    from pipeline.config.schema import Study
    from pipeline.data.corpus import prepare_corpus
    from pipeline.plan.runspec import resolve_run
    from pipeline.records import read_jsonl
    from pipeline.train.run import execute

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"model.size={size}", "train.batch_tokens=4096", f"train.tokens={4096 * (steps + 5)}",
                     f"train.threads={threads}", "train.evals_per_run=1", "train.log_interval_steps=5",
                     "train.progress=false", "tracking.mode=disabled", "train.checkpoint_interval_s=1e9",
                     f"run_dir={tmp}/run", "data.val_tokens=16384"]
        job = load_config("study", Study, overrides)
        spec = resolve_run(job, prepare_corpus(job.data).vocab_size)
        execute(job)
        rows = read_jsonl(f"{tmp}/run/train.jsonl")
        # steady state: the windows after the first one (start-up) and before the final eval row
        rates = [r["tokens_per_s"] for r in rows[1:-1]]
        return sum(rates) / len(rates), spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="200k")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine_tps, spec = engine_run(args.size, args.steps, args.threads)
    bare_tps = bare_loop(spec, args.steps, args.threads, spec.hparams.lr)
    print(f"model {spec.shape.describe()}  ({spec.params['total']:,} params), batch {spec.batch_tokens} tokens, "
          f"{args.threads} threads, fp32 CPU")
    print(f"bare eager loop : {bare_tps:10,.0f} tokens/s")
    print(f"pipeline.train.engine : {engine_tps:10,.0f} tokens/s")
    print(f"ratio engine / bare = {engine_tps / bare_tps:.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
