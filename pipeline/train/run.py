"""One training run from start to record: resolve it, prepare its data, train, write `run.json`.

`execute(job)` is what `python -m pipeline.train`, the local and node launchers and each SLURM task
call. The run's directory derives from its run id, so a relaunch finds its checkpoints and resumes;
the loop itself is pipeline/train/engine.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from pipeline.config.load import as_dict
from pipeline.config.schema import Study
from pipeline.data.corpus import prepare_corpus
from pipeline.data.manifest import open_tokens
from pipeline.data.sampler import TrainSampler, check_repeat, validation_batches
from pipeline.errors import UserError
from pipeline.plan.hardware import peak_flops_for_device_name
from pipeline.plan.runspec import RunSpec, resolve_run
from pipeline.records import RecordError, load_record, write_record
from pipeline.train.checkpoint import list_checkpoints, newest_readable
from pipeline.train.distributed import close as close_process_group
from pipeline.train.distributed import from_main
from pipeline.train.engine import REQUEUE_EXIT_CODE, train_run
from pipeline.train.evaluate import build_suite
from pipeline.train.lock import claim_unfinished, describe, release
from pipeline.train.progress import Progress
from pipeline.train.provenance import provenance
from pipeline.train.stop import STOP, Preempted
from pipeline.train.tracking import Tracker


def run_directory(job: Study, spec: RunSpec) -> Path:
    if job.run_dir:
        return Path(job.run_dir)
    return Path(job.results_dir) / job.sweep_name / "runs" / spec.run_id


def build_record(job: Study, spec: RunSpec, *, status: str, manifest, extra: dict) -> dict:
    """The run's record (schema: pipeline/records.py). `extra` carries outcome fields."""
    return {
        "run_id": spec.run_id,
        "sweep": job.sweep_name,
        "status": status,
        "params": spec.params,
        "convention": spec.convention,
        "tokens": spec.tokens,
        "flops": spec.flops,
        "flops_per_token": spec.flops_per_token,
        "target": {"tokens": spec.tokens, "budget_flops": spec.budget_flops, "horizon": spec.horizon_source},
        "steps": spec.steps,
        "batch_tokens": spec.batch_tokens,
        "shape": spec.shape.to_dict(),
        "hparams": {**spec.hparams.to_dict(), "schedule": job.train.schedule.value,
                    "min_lr_ratio": job.train.min_lr_ratio, "warmup_steps": spec.warmup_steps,
                    "cooldown_steps": spec.cooldown_steps, "cooldown_fraction": job.train.cooldown_fraction,
                    "beta1": job.train.beta1, "adam_eps": job.train.adam_eps,
                    "weight_decay": job.train.weight_decay, "grad_clip": job.train.grad_clip,
                    "micro_batch_size": spec.micro_batch_size, "grad_accum": spec.grad_accum,
                    "batch_note": spec.batch_note},  # how the rule's batch was rounded to micro x processes
        "data": {"fingerprint": manifest.fingerprint, "source": manifest.source,
                 "tokenizer": manifest.tokenizer, "train_tokens_unique": manifest.train_tokens,
                 "val_tokens": manifest.val_tokens,
                 "epochs": spec.tokens / manifest.train_tokens if manifest.train_tokens else None},
        "experiment": job.experiment,
        # trunk: the stable phase of a cooldown-reuse group (not a finished schedule: the fit skips it)
        "role": "trunk" if job.train.keep_steps else ("branch" if job.train.branch_from else "run"),
        **extra,
    }


def peak_flops_per_s(device) -> float | None:
    """Dense bf16 peak of the GPU the run is on, for MFU; None on CPU (no meaningful peak)."""
    if device.type != "cuda":
        return None
    return peak_flops_for_device_name(torch.cuda.get_device_name(device))


def execute(job: Study) -> dict:
    """Train the run `job` describes (or resume it) and return its final record.

    On several processes every rank calls this; the main process holds the lock and writes the
    record, the others wait for its decisions (pipeline/train/distributed.py).
    """
    owns_signals = STOP.install()  # first: a stop signal during start-up is remembered, not fatal
    finished = False
    try:
        record = _execute(job)
        finished = True
        return record
    finally:
        close_process_group(wait_for_all=finished)
        if owns_signals:
            STOP.uninstall()


def _execute(job: Study) -> dict:
    t = job.train
    if t.threads:
        torch.set_num_threads(t.threads)
    use_cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    if t.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no GPU is visible: use train.device=auto or cpu")
    precision = t.precision.value
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    accelerator = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if precision == "bf16" else "no")
    main = accelerator.is_main_process

    with STOP.interruptible():  # minutes on a large corpus: a stop signal ends it (exit 75, nothing trained)
        manifest = prepare_corpus(job.data)
    spec = resolve_run(job, manifest.vocab_size, world_size=accelerator.num_processes)
    epochs = check_repeat(manifest, spec.tokens, job.data.allow_repeat, seq_len=spec.shape.seq_len)
    run_dir = run_directory(job, spec)
    problem, finished = None, None
    if main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(as_dict(job), indent=2, sort_keys=True) + "\n")
        except OSError as err:
            problem = f"cannot write to {run_dir} ({err.strerror}): choose a writable results_dir"
        else:
            problem = foreign_record_problem(run_dir, spec.run_id)
        if problem is None:
            # A finished run is never re-entered (two sweeps of one study, a late array task, a repeated
            # command): its record is read under the lock, which a worker releases only after writing it.
            state, found = claim_unfinished(run_dir, spec.run_id)  # found: the holder's lease, or the record
            if state == "held":
                problem = f"run {spec.run_id} is being trained by {describe(found)}: wait for it, or stop it and relaunch"
            else:
                finished = found
    # one lock per run, taken by the main process; the others follow its verdict
    problem, finished = from_main((problem, finished), main)
    if problem:
        raise UserError(problem)
    if finished is not None:
        return {**finished, "run_dir": str(run_dir), "exit_code": 0, "already_finished": True}

    sampler = TrainSampler(open_tokens(manifest, "train"), spec.shape.seq_len, t.seed)
    val_batches = validation_batches(manifest, spec.shape.seq_len, batch_size=t.eval_batch_size or 32)
    eval_suite = build_suite(job.eval, manifest, spec.shape.seq_len)  # named sets and tasks, before any step
    attempt = len(list_checkpoints(run_dir / "checkpoints"))
    base = {"provenance": provenance(accelerator.device), "epochs": epochs, "run_dir": str(run_dir),
            "world_size": accelerator.num_processes, "parallelism": t.parallelism,
            "precision": precision,  # as resolved (auto -> bf16 on GPU, fp32 on CPU): the full run lists the difference
            **({"evaluation": eval_suite.describe()} if eval_suite else {})}
    try:
        if main:  # the record exists before anything slow (W&B) can be interrupted
            write_record(run_dir, build_record(job, spec, status="running", manifest=manifest,
                                               extra={**base, "final_val_loss": None}))
        config_for_tracking = {**as_dict(job), "run_id": spec.run_id, "params": spec.params,
                               "tokens": spec.tokens, "flops": spec.flops, "shape": spec.shape.to_dict(),
                               "hparams": spec.hparams.to_dict()}
        tracking = {"run_id": spec.run_id, "attempt": attempt, "group": job.sweep_name, "config": config_for_tracking,
                    "wandb_dir": job.tracking.dir or str(Path(job.results_dir) / "wandb")}
        try:
            with STOP.interruptible():  # W&B may take a minute to give up: a stop signal must not wait for it
                tracker = Tracker(job.tracking, main_process=main, **tracking)
        except Preempted:  # the loop records the run preempted at its start
            tracker = Tracker(job.tracking, main_process=False, **tracking)
        progress = Progress(label=spec.run_id, total_steps=spec.steps, start_step=0,
                            batch_tokens=spec.batch_tokens, enabled=t.progress and main)
        started = time.time()
        outcome, error = None, None
        try:
            outcome = train_run(job, spec, accelerator=accelerator, sampler=sampler, val_batches=val_batches,
                                run_dir=run_dir, data_fingerprint=manifest.fingerprint, tracker=tracker,
                                progress=progress, eval_suite=eval_suite)
        except Exception as err:
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise
        finally:
            progress.close()
            record = finish_run(job, spec, manifest, accelerator, tracker, run_dir, outcome, error,
                                {**base, "wall_s": time.time() - started})
    finally:
        if main:
            release(run_dir)
    if record["status"] == "preempted":
        STOP.clear()  # the run acted on the signal: checkpoint saved, record written
    record["exit_code"] = REQUEUE_EXIT_CODE if record["status"] == "preempted" else 0
    return record


def foreign_record_problem(run_dir: Path, run_id: str) -> str | None:
    """A run directory holds one run: never overwrite another run's record (e.g. after a config change)."""
    try:
        existing = load_record(run_dir)
    except RecordError:
        return None  # none yet, or torn: this run rewrites it
    if existing["run_id"] != run_id:
        return (f"{run_dir} holds run {existing['run_id']} ({existing['status']}), not {run_id}: the config "
                "changed; use another run_dir (or leave run_dir unset to derive it from the run id)")
    return None


def finish_run(job, spec, manifest, accelerator, tracker, run_dir, outcome, error, base) -> dict:
    """Write the final record (even for a crashed run), then tell W&B; a failed write is reported to both."""
    status = outcome.status if outcome else "failed"
    peak = peak_flops_per_s(accelerator.device)
    tok_s = outcome.tokens_per_s if outcome else None
    extra = {
        **base,
        "final_val_loss": outcome.final_val_loss if outcome else None,
        "metrics": outcome.metrics if outcome else {},   # <set>_loss, <task>_bpb/_acc/_acc_norm at the end
        "tokens_trained": outcome.tokens_done if outcome else None,
        "steps_done": outcome.steps_done if outcome else None,
        "resumed_from_step": outcome.resumed_from_step if outcome else None,
        "branched_from": outcome.branched_from if outcome else None,
        "tokens_per_s": tok_s,
        # MFU with PaLM's count (Chowdhery et al. 2022, App. B): 6N + 12 L H Q T per token.
        "mfu": (tok_s * spec.flops_per_token["palm"] / (peak * accelerator.num_processes)
                if peak and tok_s else None),
        "error": error or (outcome.diverged_reason if outcome else None),
        "stop_signal": outcome.stop_signal if outcome else None,
        "warnings": outcome.notes if outcome else [],
        "tracking": tracker.report(),
    }
    record = build_record(job, spec, status=status, manifest=manifest, extra=extra)
    write_error = None
    if accelerator.is_main_process:
        try:
            write_record(run_dir, record)
        except OSError as err:
            kept = newest_readable(run_dir / "checkpoints")
            write_error = UserError(
                f"cannot write the record in {run_dir} ({err.strerror}): the run is marked failed in W&B only; "
                + (f"its newest checkpoint {kept.name} is kept, a relaunch resumes from it" if kept
                   else "it has no checkpoint") + "; free space or choose a writable results_dir")
            status = "failed"
    tracker.summary({"final_val_loss": extra["final_val_loss"], "status": status, "mfu": extra["mfu"],
                     "record_write_error": str(write_error) if write_error else None})
    tracker.finish(exit_code=0 if status in ("ok", "diverged") else 1)
    if write_error is not None:
        raise write_error
    return record



