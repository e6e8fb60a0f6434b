"""`python -m pipeline.train ... train.dry_run=true`: the run resolved at the size it is launched at, before
any GPU is touched.

    python -m pipeline.train --config-dir <fit dir> experiment=full_run train.dry_run=true

Resolves the run exactly as each process will (pipeline/plan/runspec.py) at `train.world_size` processes
(or WORLD_SIZE, or 1), with no process group, no corpus and no torch: the vocabulary comes from the tokenizer
table (pipeline/config/presets.py) or the configured BPE size. Then the memory per GPU (model states,
one micro-batch's activations, one eval batch; pipeline/plan/memory.py), the checkpoint's size and the
share of the run spent writing it, and the wall-clock time at the budget's MFU (pipeline/plan/launch.py).
Prints a table and one JSON line; anything that cannot launch is refused with one line that says what to
change (exit 2).
"""

from __future__ import annotations

import json
import os

from pipeline.config.presets import KNOWN_VOCAB_SIZES
from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.design import expected_vocab_size
from pipeline.plan.hardware import DEFAULT_MFU, REFERENCE_GPU, SECONDS_PER_DAY, gpu_spec, wall_clock_s
from pipeline.plan.launch import plan_launch
from pipeline.plan.runspec import resolve_run


def dry_run_vocab(job: Study) -> int:
    vocab = KNOWN_VOCAB_SIZES.get(job.data.tokenizer) or expected_vocab_size(job.data)
    if vocab is None:
        raise UserError(f"the vocabulary of data.tokenizer={job.data.tokenizer!r} is not known without loading it: "
                        f"use a tabled tokenizer ({', '.join(KNOWN_VOCAB_SIZES)}) or run once with the network to "
                        "cache it")
    return int(vocab)


def hardware(job: Study) -> tuple[str, float, float, float, str]:
    """(GPU name, peak FLOP/s, memory GB, MFU, where the MFU comes from) from the config's budget section."""
    b = job.budget
    spec = gpu_spec(b.gpu, b.peak_flops) or gpu_spec(REFERENCE_GPU)
    name = b.gpu or (REFERENCE_GPU if b.peak_flops is None else "budget.peak_flops")
    mfu, source = (b.mfu, "budget.mfu") if b.mfu is not None else (DEFAULT_MFU, "assumed (set budget.mfu)")
    return name, spec.peak_flops, spec.memory_gb, mfu, source


def dry_run(job: Study) -> dict:
    """The launch summary; raises UserError when the run cannot launch as configured."""
    t = job.train
    world = t.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    spec = resolve_run(job, dry_run_vocab(job), world_size=world)
    gpu, peak, memory_gb, mfu, mfu_source = hardware(job)
    parallelism = t.parallelism if world > 1 else "ddp"
    launch = plan_launch(spec.shape, spec.batch_tokens // spec.shape.seq_len, world, memory_gb,
                         micro_batch_size=spec.micro_batch_size, eval_batch_size=t.eval_batch_size or 32,
                         parallelism=parallelism)
    if launch.problems:
        raise UserError(launch.problems[0])
    seconds = wall_clock_s(spec.flops["palm"], world, peak, mfu)
    interval = float(t.checkpoint_interval_s)
    return {
        "run_id": spec.run_id, "world_size": world, "nodes": launch.nodes, "gpus_per_node": launch.gpus_per_node,
        "parallelism": parallelism, "params": spec.n_params, "convention": spec.convention,
        "micro_batch_size": spec.micro_batch_size, "grad_accum_steps": spec.grad_accum,
        "global_batch_sequences": spec.batch_tokens // spec.shape.seq_len, "global_batch_tokens": spec.batch_tokens,
        "seq_len": spec.shape.seq_len, "batch_note": spec.batch_note, "steps": spec.steps, "tokens": spec.tokens,
        "eval_batch_size": launch.eval_batch_size, "precision": t.precision.value, "compile": t.compile,
        "gpu": gpu, "gpu_memory_gb": memory_gb, "usable_gb": launch.usable_gb,
        "peak_memory_gb_per_gpu": launch.peak_memory_gb_per_gpu, "train_peak_gb": launch.train_peak_gb,
        "eval_peak_gb": launch.eval_peak_gb, "checkpoint_gb": launch.checkpoint_gb,
        "checkpoint_write_s": launch.checkpoint_write_s, "checkpoint_interval_s": interval,
        "checkpoint_overhead": launch.checkpoint_write_s / interval,
        "mfu": mfu, "mfu_source": mfu_source, "est_hours": seconds / 3600, "est_days": seconds / SECONDS_PER_DAY,
        "est_rule": "PaLM-count FLOPs of the run (Chowdhery et al. 2022, App. B) / (world x peak x MFU)",
    }


def render(summary: dict) -> str:
    s = summary
    rows = [
        ("run", s["run_id"]),
        ("processes", f"{s['world_size']} = {s['nodes']} node(s) x {s['gpus_per_node']} GPUs ({s['parallelism']})"),
        ("model", f"{s['params']:,} {s['convention']} parameters, {s['precision']}, compile {s['compile']}"),
        ("batch", f"{s['global_batch_sequences']} sequences x {s['seq_len']} = {s['global_batch_tokens']:,} tokens "
                  f"= micro {s['micro_batch_size']} x accumulation {s['grad_accum_steps']} x {s['world_size']} "
                  "processes"),
        ("batch rule", s["batch_note"]),
        ("steps", f"{s['steps']:,} ({s['tokens']:,} tokens)"),
        ("memory per GPU", f"{s['peak_memory_gb_per_gpu']:.3g} GB of {s['usable_gb']:.0f} usable on a {s['gpu']} "
                           f"({s['gpu_memory_gb']:g} GB): training {s['train_peak_gb']:.3g}, eval batch of "
                           f"{s['eval_batch_size']} {s['eval_peak_gb']:.3g}"),
        ("checkpoint", f"{s['checkpoint_gb']:.3g} GB every {s['checkpoint_interval_s'] / 60:.0f} min, "
                       f"~{s['checkpoint_write_s']:.3g} s to write ({s['checkpoint_overhead']:.2%} of the time)"),
        ("time", f"{s['est_hours']:.3g} h ({s['est_days']:.3g} days) at MFU {s['mfu']:.2f}, {s['mfu_source']}; "
                 f"{s['est_rule']}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n" + json.dumps(summary, sort_keys=True)
