"""The training loop of one run: accelerate, exact resume, evaluation, divergence, preemption.

Read top to bottom: `train_run` builds the model and optimizer (DDP through accelerate, or FSDP2
with `train.parallelism=fsdp`), resumes from the newest valid checkpoint if one exists, then steps.
The loop is the same on every rank; the ranks agree on each step's decisions with one all-reduce
and only the main process writes (pipeline/train/distributed.py). Everything that decides step k -- the batch (sampler is a
pure function of seed and step), the LR (pure function of step), the weights, optimizer moments,
RNG states -- is either in the checkpoint or recomputed from the step, so a relaunch after SIGKILL
continues bit-for-bit on CPU (tests/test_train.py and tests/test_faults.py prove it).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.runspec import RunSpec
from pipeline.plan.schedule import lr_multiplier
from pipeline.records import append_jsonl, truncate_jsonl_after_step
from pipeline.train.build import build_model
from pipeline.train.checkpoint import (
    SHARDED,
    clean_stale_temporaries,
    list_checkpoints,
    load_branch_point,
    load_latest_checkpoint,
    newest_readable,
    read_checkpoint,
    read_shards,
    save_checkpoint,
)
from pipeline.train.distributed import agree, from_main, load_training_state, training_state
from pipeline.train.lock import heartbeat
from pipeline.train.stop import STOP, StopFlag

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving a checkpoint: EX_TEMPFAIL
# (sysexits.h) -- "try again later". The sweep relaunches it; slurm/pilot.sbatch requeues on it.
REQUEUE_EXIT_CODE = 75


@dataclass
class Outcome:
    status: str                      # ok | diverged | preempted
    final_val_loss: float | None
    steps_done: int
    tokens_done: int
    train_wall_s: float              # wall time of the training steps in this attempt
    tokens_per_s: float
    resumed_from_step: int | None
    branched_from: dict | None = None  # {"run_id", "step"} of the trunk a cooldown branch started from
    diverged_reason: str | None = None
    stop_signal: str | None = None   # SIGTERM / SIGUSR1 when preempted
    eval_curve: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # progress discarded at start-up (unreadable checkpoints)
    metrics: dict = field(default_factory=dict)  # the eval suite's metrics at the last evaluation (evaluate.py)


def _optimizer(model: torch.nn.Module, spec: RunSpec, job: Study, device: torch.device):
    # Weight decay on matrices only; norms' gains are not decayed (standard since GPT-2/LLaMA).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": job.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # fused AdamW kernels exist for CUDA tensors only
    return torch.optim.AdamW(groups, lr=spec.hparams.lr, betas=(job.train.beta1, spec.hparams.beta2),
                             eps=job.train.adam_eps, fused=fused)


def eval_steps(total_steps: int, evals_per_run: int) -> set[int]:
    """Steps (1-based count of completed steps) after which to evaluate: evenly spaced, last included."""
    return {max(1, round(total_steps * (i + 1) / evals_per_run)) for i in range(evals_per_run)}


@torch.no_grad()
def evaluate(model, val_batches, device, autocast, rank: int = 0, world: int = 1) -> float:
    """Mean per-token loss over the fixed validation set (identical for every run).

    With `world` > 1 each rank evaluates every world-th batch and one all-reduce collects the
    per-batch sums, which are then added in batch order on every rank: the same float64 additions in
    the same order as one process, so the result is bit for bit the single-process one. The model
    must then be the unwrapped module (no collective may run per batch); FSDP evaluates on every rank.
    """
    model.eval()
    sums, count = [0.0] * len(val_batches), 0
    for i, (x, y) in enumerate(val_batches):
        count += y.numel()
        if i % world != rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        sums[i] = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
    model.train()
    if world > 1:
        sums = agree(sums, device)
    total = 0.0
    for value in sums:
        total += value
    return total / count


def _choose_start(job: Study, spec: RunSpec, run_dir: Path, data_fingerprint: str) -> tuple[dict | None, dict]:
    """Main process: the checkpoint to resume from (or the trunk's branch point), validated; never raises.

    Returns (its state, what the other ranks need: path, branch origin, the warnings, or an error).
    """
    ckpt_dir = run_dir / "checkpoints"
    try:
        state = load_latest_checkpoint(ckpt_dir, run_id=spec.run_id, data_fingerprint=data_fingerprint)
        notes = []
        if state is not None and state["skipped"]:
            notes.append(f"unreadable checkpoints {', '.join(state['skipped'])} skipped: resumed from step "
                         f"{state['step']}, the steps after it were trained again")
        elif state is None and list_checkpoints(ckpt_dir):
            notes.append(f"no readable checkpoint ({', '.join(p.name for p in list_checkpoints(ckpt_dir))}): "
                         "restarted from step 0, earlier progress discarded")
        branched_from = None
        if state is None and job.train.branch_from:
            # A cooldown branch starts from its trunk's stable phase at the step where its decay begins.
            branch_step = spec.steps - spec.cooldown_steps
            state = load_branch_point(run_dir.parent / job.train.branch_from, branch_step,
                                      trunk_id=job.train.branch_from, data_fingerprint=data_fingerprint)
            branched_from = {"run_id": job.train.branch_from, "step": branch_step}
    except UserError as err:
        return None, {"error": str(err)}
    return state, {"path": state["_path"] if state else None, "branched_from": branched_from, "notes": notes,
                   "error": None}


def train_run(job: Study, spec: RunSpec, *, accelerator, sampler, val_batches, run_dir: Path,
              data_fingerprint: str, tracker, progress, stop: StopFlag = STOP, eval_suite=None) -> Outcome:
    """Train on every rank; only the main process writes files (the tracker is disabled elsewhere)."""
    t = job.train
    device = accelerator.device
    main = accelerator.is_main_process
    world = accelerator.num_processes
    ckpt_dir = run_dir / "checkpoints"
    if main and ckpt_dir.exists():
        clean_stale_temporaries(ckpt_dir)

    fsdp = t.parallelism == "fsdp" and world > 1
    # Meta device -> sharded -> this rank's part allocated and initialised once (pipeline/train/build.py);
    # the optimizer is built after, on the parameters as they train (FSDP's shards).
    model = build_model(spec.shape, init_std=job.model.init_std, seed=t.seed, device=device, fsdp=fsdp,
                        bf16=accelerator.mixed_precision == "bf16",
                        compile_blocks=t.compile if t.compile is not None else device.type == "cuda")
    optimizer = _optimizer(model, spec, job, device)
    if not fsdp:
        model, optimizer = accelerator.prepare(model, optimizer)
    raw_optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer

    def validation_loss() -> float:
        if fsdp:  # every rank takes part in every sharded forward pass
            return evaluate(model, val_batches, device, accelerator.autocast)
        # DDP: the ranks split the batches, on the unwrapped module (DDP's forward may run collectives)
        return evaluate(getattr(model, "module", model), val_batches, device, accelerator.autocast,
                        rank=accelerator.process_index, world=world)

    def suite_metrics() -> dict:
        """Named validation sets and tasks (pipeline/train/evaluate.py), on every rank: the same numbers
        (replicated weights under DDP; under FSDP every rank must take part in the forward passes)."""
        if eval_suite is None:
            return {}
        return eval_suite.evaluate(model if fsdp else getattr(model, "module", model), device, accelerator.autocast)

    state, start = _choose_start(job, spec, run_dir, data_fingerprint) if main else (None, None)
    start = from_main(start, main)
    if start["error"]:
        raise UserError(start["error"])
    start_step, resumed_from, branched_from = 0, None, start["branched_from"]
    if start["path"] is not None:
        state = state if main else read_checkpoint(start["path"])  # sharded: all but the tensors
        if state.get("format") == SHARDED:  # every rank reads the parts of the shards its own tensors cover
            tensors = training_state(model, raw_optimizer)
            read_shards(start["path"], tensors)
            state.update(tensors)
        load_training_state(model, raw_optimizer, state)
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_step = int(state["step"])
        resumed_from = None if branched_from else start_step
        best_loss = float(state["best_train_loss"])
        del state
    else:
        best_loss = math.inf
    if main:  # after a resume each step appears exactly once in the local logs
        truncate_jsonl_after_step(run_dir / "train.jsonl", start_step)
        truncate_jsonl_after_step(run_dir / "eval.jsonl", start_step)

    def checkpoint(step: int) -> None:
        """A collective: every rank saves its own state (its shards under FSDP; pipeline/train/checkpoint.py
        decides the layout); the RNG states and counters are the main process's. A failed write stops every rank."""
        payload = {**training_state(model, raw_optimizer),
                   "step": step, "tokens": step * spec.batch_tokens, "rng_cpu": torch.get_rng_state(),
                   "best_train_loss": best_loss, "run_id": spec.run_id, "data_fingerprint": data_fingerprint,
                   "world_size": world, "parallelism": "fsdp" if fsdp else "ddp"}
        if device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        error = None
        try:
            save_checkpoint(ckpt_dir, step, payload, keep=t.keep_checkpoints, protect=frozenset(t.keep_steps))
            if main:
                heartbeat(run_dir)
        except OSError as err:
            if main:
                kept = newest_readable(ckpt_dir)
                error = (f"cannot write a checkpoint of step {step} in {ckpt_dir} ({err.strerror}); its temporary "
                         "file was removed; " + (f"the newest checkpoint is {kept.name}, a relaunch resumes from it"
                                                 if kept else "no checkpoint exists, a relaunch starts from step 0")
                         + ": free space or choose another results_dir")
        error = from_main(error, main)
        if error:
            raise UserError(error)

    def sync_context(last_micro: bool):
        if fsdp:  # FSDP2: reduce-scatter the gradients on the last micro-batch only
            model.set_requires_gradient_sync(last_micro)
            return nullcontext()
        return nullcontext() if last_micro else accelerator.no_sync(model)

    autocast = accelerator.autocast
    evals = eval_steps(spec.steps, t.evals_per_run)
    peak_lr = spec.hparams.lr
    warm_end = spec.warmup_steps
    last_ckpt_time = time.monotonic()
    t0 = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    status, reason, val_loss, done = "ok", None, None, start_step
    metrics: dict = {}
    # A signal during start-up (data, accelerate, W&B) stops the run before it trains: nothing new to save.
    if agree([1.0 if stop.requested else 0.0], device)[0] > 0:
        status, reason = "preempted", f"received {stop.signal_name or 'a stop signal on another rank'} during start-up"
    for step in range(start_step, spec.steps if status == "ok" else start_step):
        lr = peak_lr * lr_multiplier(step, schedule=t.schedule.value, total_steps=spec.steps,
                                     warmup_steps=spec.warmup_steps, min_lr_ratio=t.min_lr_ratio,
                                     cooldown_steps=spec.cooldown_steps)
        for group in raw_optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(spec.grad_accum):
            x, y = sampler.batch(step, micro, spec.micro_batch_size, accelerator.process_index, world,
                                 spec.grad_accum)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with sync_context(micro == spec.grad_accum - 1), autocast():
                logits = model(x)  # [micro_batch, seq_len, vocab]
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
            accelerator.backward(loss / spec.grad_accum) if not fsdp else (loss / spec.grad_accum).backward()
            loss_sum += loss.detach()
        if fsdp:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        else:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        window_tokens += spec.batch_tokens  # the global batch: every rank's share

        # The one all-reduce of the step: every rank acts on the same loss, stop and checkpoint decisions.
        due = main and time.monotonic() - last_ckpt_time > t.checkpoint_interval_s
        loss_total, stops, due_votes = agree([(loss_sum / spec.grad_accum).item(), float(stop.requested),
                                              float(due)], device)
        train_loss = loss_total / world
        logged = done % t.log_interval_steps == 0 or done in evals or done == spec.steps
        if logged:
            now = time.perf_counter()
            tok_s = window_tokens / max(now - window_t, 1e-9)
            window_t, window_tokens = now, 0
            row = {"step": done, "tokens": done * spec.batch_tokens, "train_loss": train_loss, "lr": lr,
                   "grad_norm": float(grad_norm), "tokens_per_s": tok_s}
            if main:
                append_jsonl(run_dir / "train.jsonl", row)
            tracker.log({"train/loss": train_loss, "lr": lr, "tokens": row["tokens"],
                         "perf/tokens_per_s": tok_s, "train/grad_norm": row["grad_norm"]}, step=done)
            progress.update(done, train_loss, tok_s)
        if not math.isfinite(train_loss):  # checked every step: a NaN on any rank is in the sum
            status, reason = "diverged", f"train loss is {train_loss} at step {done}"
        elif logged and done > warm_end and train_loss > t.diverge_ratio * best_loss:
            status, reason = "diverged", (f"train loss {train_loss:.3f} > {t.diverge_ratio} x best "
                                          f"{best_loss:.3f} at step {done}")
        if logged:
            best_loss = min(best_loss, train_loss)
        if status == "diverged":
            checkpoint(done)
            break

        if done in evals:
            val_loss = validation_loss()  # the same number on every rank
            metrics = suite_metrics()
            row = {"step": done, "tokens": done * spec.batch_tokens,
                   "flops_exact": done * spec.batch_tokens * spec.flops_per_token["exact"],
                   "flops_6n": done * spec.batch_tokens * spec.flops_per_token["6n"], "val_loss": val_loss,
                   **metrics}
            if main:
                append_jsonl(run_dir / "eval.jsonl", row)
            tracker.log({"val/loss": val_loss, "tokens": row["tokens"], **{f"val/{k}": v for k, v in metrics.items()}},
                        step=done)
            if not math.isfinite(val_loss):
                status, reason = "diverged", f"validation loss is {val_loss} at step {done}"
                checkpoint(done)
                break

        if stops > 0:
            checkpoint(done)
            status, reason = "preempted", f"received {stop.signal_name or 'a stop signal on another rank'} at step {done}"
            break
        if done == spec.steps or done in t.keep_steps or due_votes > 0:
            checkpoint(done)
            last_ckpt_time = time.monotonic()
    if status == "ok" and val_loss is None:  # resumed after the last step (e.g. killed writing the record)
        val_loss = validation_loss()
        metrics = suite_metrics()
    wall = time.perf_counter() - t0
    steps_done = done
    trained_here = (steps_done - start_step) * spec.batch_tokens
    return Outcome(status=status, final_val_loss=val_loss if status == "ok" else None,
                   steps_done=steps_done, tokens_done=steps_done * spec.batch_tokens, train_wall_s=wall,
                   tokens_per_s=trained_here / wall if wall > 0 else 0.0,
                   resumed_from_step=resumed_from, branched_from=branched_from, diverged_reason=reason,
                   stop_signal=stop.signal_name if status == "preempted" else None, notes=start["notes"],
                   metrics=metrics if status == "ok" else {})
