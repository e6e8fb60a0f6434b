"""The training loop of one run: accelerate, exact resume, evaluation, divergence, preemption.

Read top to bottom: `train_run` builds the model and optimizer, resumes from the newest valid
checkpoint if one exists, then steps. Everything that decides step k -- the batch (sampler is a
pure function of seed and step), the LR (pure function of step), the weights, optimizer moments,
RNG states -- is either in the checkpoint or recomputed from the step, so a relaunch after SIGKILL
continues bit-for-bit on CPU (tests/test_train.py and tests/test_faults.py prove it).
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from models.transformer import Transformer
from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.runspec import RunSpec
from pipeline.plan.schedule import lr_multiplier
from pipeline.records import append_jsonl, truncate_jsonl_after_step
from pipeline.train.checkpoint import (
    clean_stale_temporaries,
    load_branch_point,
    load_latest_checkpoint,
    save_checkpoint,
)
from pipeline.train.lock import heartbeat

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
    metrics: dict = field(default_factory=dict)  # the eval suite's metrics at the last evaluation (evaluate.py)


class _StopFlag:
    """Set by SIGTERM / SIGUSR1 (SLURM preemption, timeouts); checked at step boundaries."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some launchers): leave signals alone
                pass
        return self

    def _handle(self, signum, _frame):
        self.signal_name = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
def evaluate(model, val_batches, device, autocast) -> float:
    """Mean per-token loss over the fixed validation set (identical for every run)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in val_batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train()
    return total / count


def train_run(job: Study, spec: RunSpec, *, accelerator, sampler, val_batches, run_dir: Path,
              data_fingerprint: str, tracker, progress, eval_suite=None) -> Outcome:
    t = job.train
    device = accelerator.device
    ckpt_dir = run_dir / "checkpoints"
    clean_stale_temporaries(ckpt_dir) if ckpt_dir.exists() else None

    model = Transformer(spec.shape, init_std=job.model.init_std)
    model.init_weights(seed=t.seed)
    model.to(device)
    optimizer = _optimizer(model, spec, job, device)
    if t.compile if t.compile is not None else device.type == "cuda":
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    start_step, resumed_from, branched_from = 0, None, None
    state = load_latest_checkpoint(ckpt_dir, run_id=spec.run_id, data_fingerprint=data_fingerprint)
    if state is None and t.branch_from:
        # A cooldown branch starts from its trunk's stable phase at the step where its decay begins.
        branch_step = spec.steps - spec.cooldown_steps
        state = load_branch_point(run_dir.parent / t.branch_from, branch_step, trunk_id=t.branch_from,
                                  data_fingerprint=data_fingerprint)
        branched_from = {"run_id": t.branch_from, "step": branch_step}
    if state is not None:
        getattr(raw_model, "_orig_mod", raw_model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_step = int(state["step"])
        resumed_from = None if branched_from else start_step
        best_loss = float(state["best_train_loss"])
    else:
        best_loss = math.inf
    # After a resume each step appears exactly once in the local logs.
    truncate_jsonl_after_step(run_dir / "train.jsonl", start_step)
    truncate_jsonl_after_step(run_dir / "eval.jsonl", start_step)

    def checkpoint(step: int):
        inner = getattr(raw_model, "_orig_mod", raw_model)
        payload = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                   "tokens": step * spec.batch_tokens, "rng_cpu": torch.get_rng_state(),
                   "best_train_loss": best_loss, "run_id": spec.run_id, "data_fingerprint": data_fingerprint}
        if device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        if accelerator.is_main_process:
            try:
                save_checkpoint(ckpt_dir, step, payload, keep=t.keep_checkpoints, protect=frozenset(t.keep_steps))
            except OSError as err:
                raise UserError(f"cannot write a checkpoint in {ckpt_dir} ({err.strerror}): free space or choose "
                                "another results_dir; the run is recorded as failed") from err
            heartbeat(run_dir)
        accelerator.wait_for_everyone()

    autocast = accelerator.autocast
    evals = eval_steps(spec.steps, t.evals_per_run)
    stop = _StopFlag().install()
    peak_lr = spec.hparams.lr
    warm_end = spec.warmup_steps
    last_ckpt_time = time.monotonic()
    t0 = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    status, reason, val_loss, done = "ok", None, None, start_step
    metrics: dict = {}
    try:
        for step in range(start_step, spec.steps):
            lr = peak_lr * lr_multiplier(step, schedule=t.schedule.value, total_steps=spec.steps,
                                         warmup_steps=spec.warmup_steps, min_lr_ratio=t.min_lr_ratio,
                                         cooldown_steps=spec.cooldown_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(spec.grad_accum):
                x, y = sampler.batch(step, micro, spec.micro_batch_size, accelerator.process_index,
                                     accelerator.num_processes, spec.grad_accum)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = micro == spec.grad_accum - 1
                with (nullcontext() if sync else accelerator.no_sync(model)), autocast():
                    logits = model(x)  # [micro_batch, seq_len, vocab]
                    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
                accelerator.backward(loss / spec.grad_accum)
                loss_sum += loss.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window_tokens += spec.batch_tokens

            if done % t.log_interval_steps == 0 or done in evals or done == spec.steps:
                train_loss = (loss_sum / spec.grad_accum).item()
                now = time.perf_counter()
                tok_s = window_tokens * accelerator.num_processes / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                row = {"step": done, "tokens": done * spec.batch_tokens, "train_loss": train_loss, "lr": lr,
                       "grad_norm": float(grad_norm), "tokens_per_s": tok_s}
                if accelerator.is_main_process:
                    append_jsonl(run_dir / "train.jsonl", row)
                tracker.log({"train/loss": train_loss, "lr": lr, "tokens": row["tokens"],
                             "perf/tokens_per_s": tok_s, "train/grad_norm": row["grad_norm"]}, step=done)
                progress.update(done, train_loss, tok_s)
                if not math.isfinite(train_loss):
                    status, reason = "diverged", f"train loss is {train_loss} at step {done}"
                elif done > warm_end and train_loss > t.diverge_ratio * best_loss:
                    status, reason = "diverged", (f"train loss {train_loss:.3f} > {t.diverge_ratio} x best "
                                                  f"{best_loss:.3f} at step {done}")
                best_loss = min(best_loss, train_loss)
                if status == "diverged":
                    checkpoint(done)
                    break

            if done in evals:
                val_loss = evaluate(model, val_batches, device, autocast)
                metrics = eval_suite.evaluate(model, device, autocast) if eval_suite else {}
                row = {"step": done, "tokens": done * spec.batch_tokens,
                       "flops_exact": done * spec.batch_tokens * spec.flops_per_token["exact"],
                       "flops_6n": done * spec.batch_tokens * spec.flops_per_token["6n"], "val_loss": val_loss,
                       **metrics}
                if accelerator.is_main_process:
                    append_jsonl(run_dir / "eval.jsonl", row)
                tracker.log({"val/loss": val_loss, "tokens": row["tokens"], **{f"val/{k}": v for k, v in metrics.items()}},
                            step=done)
                if not math.isfinite(val_loss):
                    status, reason = "diverged", f"validation loss is {val_loss} at step {done}"
                    checkpoint(done)
                    break

            if stop.signal_name is not None:
                checkpoint(done)
                status, reason = "preempted", f"received {stop.signal_name} at step {done}"
                break
            if (done == spec.steps or done in t.keep_steps
                    or time.monotonic() - last_ckpt_time > t.checkpoint_interval_s):
                checkpoint(done)
                last_ckpt_time = time.monotonic()
        if status == "ok" and val_loss is None:  # resumed after the last step (e.g. killed writing the record)
            val_loss = evaluate(model, val_batches, device, autocast)
            metrics = eval_suite.evaluate(model, device, autocast) if eval_suite else {}
    finally:
        stop.restore()
    wall = time.perf_counter() - t0
    steps_done = done
    trained_here = (steps_done - start_step) * spec.batch_tokens
    return Outcome(status=status, final_val_loss=val_loss if status == "ok" else None,
                   steps_done=steps_done, tokens_done=steps_done * spec.batch_tokens, train_wall_s=wall,
                   tokens_per_s=trained_here / wall if wall > 0 else 0.0,
                   resumed_from_step=resumed_from, branched_from=branched_from, diverged_reason=reason,
                   stop_signal=stop.signal_name, metrics=metrics if status == "ok" else {})
