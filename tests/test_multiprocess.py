"""One run on two processes, for real: CPU, gloo, the same code path as several GPUs.

Two ways to start the ranks, both used here:
- `accelerate launch --multi_gpu --num_processes 2 -m pipeline.train ...` (torchrun underneath). On a
  machine without GPUs this starts two CPU processes on gloo; accelerate's own `--cpu --num_processes 2`
  starts ONE process (accelerate 1.15 routes multi-CPU through mpirun only), so it cannot be the test.
- each rank as its own `python -m pipeline.train` with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as one
  `srun` task per GPU does (slurm/full_run.sbatch): each rank's exit status is visible (torchrun
  reports any non-zero worker as 1), which the SIGTERM and NaN tests need.

Equality with one process: the global batch is the same (8 sequences per step) and so is the
micro-batch (4 sequences: 2 ranks x 4, or 1 process x 2 accumulated micro-batches). DDP divides each
rank's gradient by 2 and sums, which is exactly what accumulation does, so the runs agree bit for bit.
Every subprocess is bounded by a timeout and killed on the way out, so nothing can hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.records import load_record, load_records, read_jsonl
from pipeline.sweep.launchers import free_port
from pipeline.train.checkpoint import list_checkpoints, readable, step_of
from pipeline.train.run import execute

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
STEPS = 40
RUN = ["model.size=23k", f"train.tokens={STEPS * 1024}", "train.batch_tokens=1024", "train.micro_batch_size=4",
       "train.threads=1", "train.log_interval_steps=1", "train.evals_per_run=2", "train.progress=false",
       "tracking.mode=disabled", "train.device=cpu"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def reference(corpus_overrides, tmp_path_factory) -> dict:
    """One process, the same global batch and micro-batch (2 accumulated micro-batches of 4)."""
    run_dir = tmp_path_factory.mktemp("one-process") / "run"
    record = execute(load_config("study", Study, [*corpus_overrides, *RUN, f"run_dir={run_dir}"]))
    assert record["status"] == "ok" and record["hparams"]["grad_accum"] == 2
    return record


def accelerate_launch(args: list[str], log: Path, mixed_precision: str = "no") -> subprocess.Popen:
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", mixed_precision, "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "pipeline.train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


def spawn_ranks(args: list[str], logs: Path, rank1_command: list[str] | None = None) -> list[subprocess.Popen]:
    """Two ranks started the way `srun` starts one task per GPU (env:// rendezvous on localhost)."""
    logs.mkdir(parents=True, exist_ok=True)
    port, procs = free_port(), []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        command = (rank1_command if rank == 1 and rank1_command else [sys.executable, "-m", "pipeline.train"])
        procs.append(subprocess.Popen([*command, *args], cwd=REPO, env=env,
                                      stdout=(logs / f"rank{rank}.log").open("w"), stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout_s: float = TIMEOUT_S) -> list[int]:
    """Exit codes; on a timeout every process is killed and the test fails with their logs (no hang)."""
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        raise AssertionError("timed out:\n" + "\n".join(log.read_text()[-3000:] for log in logs if log.exists())) from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_for_checkpoint(run_dir: Path, min_step: int, procs: list[subprocess.Popen], timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ckpts = list_checkpoints(run_dir / "checkpoints")
        if ckpts and step_of(ckpts[-1]) >= min_step:
            return step_of(ckpts[-1])
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        p.kill()
        p.wait()
    raise AssertionError(f"no checkpoint at step >= {min_step} in time")


def run_args(corpus_overrides, run_dir: Path, *extra) -> list[str]:
    return [*corpus_overrides, *RUN, f"run_dir={run_dir}", *extra]


def relaunch_and_check(corpus_overrides, run_dir: Path, reference: dict, tmp_path: Path, *extra) -> dict:
    proc = accelerate_launch(run_args(corpus_overrides, run_dir, *extra), tmp_path / "relaunch.log")
    assert wait_all([proc], [tmp_path / "relaunch.log"]) == [0], (tmp_path / "relaunch.log").read_text()[-3000:]
    record = load_record(run_dir)
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["final_val_loss"] == reference["final_val_loss"]  # bitwise
    assert [r["step"] for r in read_jsonl(run_dir / "train.jsonl")] == list(range(1, STEPS + 1))
    assert not (run_dir / ".lock").exists()
    return record


RECORDING_WANDB = """
import os
class _Summary(dict):
    pass
class _Run:
    summary = _Summary()
    def log(self, metrics, step):
        pass
    def finish(self, exit_code=0):
        pass
def init(**kwargs):
    with open(os.path.join(os.environ["FAKE_DIR"], "wandb_inits"), "a") as f:
        f.write(f"{os.environ.get('RANK')} {kwargs['id']}\\n")
    return _Run()
class Settings:
    def __init__(self, **kwargs):
        pass
"""


def test_two_processes_end_with_the_loss_of_one_process(corpus_overrides, tmp_path, reference, monkeypatch):
    fake = tmp_path / "fake" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(RECORDING_WANDB)
    monkeypatch.setitem(ENV, "PYTHONPATH", os.pathsep.join([str(fake.parent), str(REPO)]))
    monkeypatch.setitem(ENV, "FAKE_DIR", str(tmp_path))
    monkeypatch.setitem(ENV, "WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    tracked = [*run_args(corpus_overrides, run_dir), "tracking.mode=offline", f"tracking.dir={tmp_path / 'wandb'}"]
    proc = accelerate_launch(tracked, tmp_path / "launch.log")
    assert wait_all([proc], [tmp_path / "launch.log"]) == [0], (tmp_path / "launch.log").read_text()[-3000:]
    assert (tmp_path / "wandb_inits").read_text().split() == ["0", f"{reference['run_id']}-a0"]  # one W&B run, rank 0
    record = load_record(run_dir)
    assert record["status"] == "ok" and record["world_size"] == 2 and record["hparams"]["grad_accum"] == 1
    assert record["run_id"] == reference["run_id"]  # the process count is not part of the run's identity
    assert record["final_val_loss"] == reference["final_val_loss"]  # bitwise on CPU
    one = [r["train_loss"] for r in read_jsonl(Path(reference["run_dir"]) / "train.jsonl")]
    two = [r["train_loss"] for r in read_jsonl(run_dir / "train.jsonl")]
    assert len(two) == STEPS and two == pytest.approx(one, abs=1e-6)  # one row per step: the main process writes
    assert not (run_dir / ".lock").exists()


def test_two_processes_killed_and_relaunched_end_with_the_same_loss(corpus_overrides, tmp_path, reference):
    run_dir = tmp_path / "run"
    procs = spawn_ranks(run_args(corpus_overrides, run_dir, "train.checkpoint_interval_s=0"), tmp_path / "first")
    wait_for_checkpoint(run_dir, 15, procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert load_record(run_dir)["status"] == "running"
    record = relaunch_and_check(corpus_overrides, run_dir, reference, tmp_path)
    assert record["resumed_from_step"] >= 15


def test_sigterm_to_every_rank_exits_75_with_a_resumable_checkpoint(corpus_overrides, tmp_path, reference):
    run_dir = tmp_path / "run"
    logs = tmp_path / "first"
    procs = spawn_ranks(run_args(corpus_overrides, run_dir, "train.checkpoint_interval_s=0"), logs)
    wait_for_checkpoint(run_dir, 10, procs)
    for p in procs:  # what SLURM does to every task of a step
        p.send_signal(signal.SIGTERM)
    assert wait_all(procs, [logs / "rank0.log", logs / "rank1.log"]) == [75, 75]
    record = load_record(run_dir)
    assert record["status"] == "preempted" and "SIGTERM" in record["error"]
    assert readable(run_dir / "checkpoints" / f"ckpt-{record['steps_done']:09d}.dcp")  # sharded: two processes
    resumed = relaunch_and_check(corpus_overrides, run_dir, reference, tmp_path)
    assert resumed["resumed_from_step"] == record["steps_done"]


def test_a_nan_on_one_rank_stops_every_rank_and_the_run_is_diverged(corpus_overrides, tmp_path):
    run_dir = tmp_path / "run"
    logs = tmp_path / "ranks"
    shim = [sys.executable, str(REPO / "tests" / "_nan_on_one_rank.py"), "7"]
    procs = spawn_ranks(run_args(corpus_overrides, run_dir), logs, rank1_command=shim)
    assert wait_all(procs, [logs / "rank0.log", logs / "rank1.log"]) == [0, 0]  # diverged is a recorded outcome
    record = load_record(run_dir)
    assert record["status"] == "diverged" and record["steps_done"] == 7
    assert record["error"] == "train loss is nan at step 7"
    assert readable(run_dir / "checkpoints" / "ckpt-000000007.dcp")
    assert [r["step"] for r in read_jsonl(run_dir / "train.jsonl")] == list(range(1, 8))
    final = f"{record['run_id']}: diverged"       # one final line per run, from the main process (issue 26)
    assert final in (logs / "rank0.log").read_text() and final not in (logs / "rank1.log").read_text()


def test_a_full_disk_on_one_rank_stops_every_rank_and_keeps_the_newest_sharded_checkpoint(corpus_overrides, tmp_path):
    """Rank 1 cannot write its shard of checkpoint 7: DCP raises on both ranks, the temporary directory goes,
    both ranks stop on the same error (printed once, by the main process), and checkpoint 6 stays the newest readable one."""
    run_dir, logs = tmp_path / "run", tmp_path / "ranks"
    shim = [sys.executable, str(REPO / "tests" / "_disk_full_on_one_rank.py"), "7"]
    procs = spawn_ranks(run_args(corpus_overrides, run_dir, "train.parallelism=fsdp", "train.checkpoint_interval_s=0"),
                        logs, rank1_command=shim)
    codes = wait_all(procs, [logs / "rank0.log", logs / "rank1.log"])
    assert codes[0] == codes[1] != 0
    record = load_record(run_dir)
    assert record["status"] == "failed"
    assert record["error"].startswith("UserError: cannot write a checkpoint of step 7") and "No space left" in record["error"]
    assert "the newest checkpoint is ckpt-000000006.dcp, a relaunch resumes from it" in record["error"]
    # one error line per run, from the main process (issue 26): rank 1 agreed to stop but does not repeat it
    assert "cannot write a checkpoint of step 7" in (logs / "rank0.log").read_text()
    assert "cannot write a checkpoint of step 7" not in (logs / "rank1.log").read_text()
    assert not list(run_dir.rglob("*.tmp"))
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["ckpt-000000005.dcp", "ckpt-000000006.dcp"]
    assert all(readable(p) for p in list_checkpoints(run_dir / "checkpoints"))


def test_fsdp_on_two_processes_killed_resumes_on_two_and_on_one_and_exports(corpus_overrides, tmp_path, reference):
    """FSDP2 (`fully_shard`) on CPU with gloo: sharded parameters and AdamW moments, saved shard by shard (DCP).
    (tests/test_sharded_resume.py: the same on 4 processes, resumed on 4 and on 2; slow.)

    FSDP computes the gradient norm from the shards' norms (another summation order than one
    process), so it matches one process to float rounding, and its own uninterrupted run bit for bit.
    """
    import torch

    from models.hf_io import load_hf_checkpoint
    from pipeline.data.corpus import prepare_corpus
    from pipeline.data.sampler import validation_batches
    from pipeline.train.checkpoint import read_checkpoint
    from pipeline.train.engine import evaluate
    from pipeline.train.export import export_run

    fsdp = ["train.parallelism=fsdp", "train.checkpoint_interval_s=0"]
    whole = tmp_path / "uninterrupted"
    proc = accelerate_launch(run_args(corpus_overrides, whole, *fsdp), tmp_path / "whole.log")
    assert wait_all([proc], [tmp_path / "whole.log"]) == [0], (tmp_path / "whole.log").read_text()[-3000:]
    uninterrupted = load_record(whole)
    assert uninterrupted["status"] == "ok" and uninterrupted["parallelism"] == "fsdp"
    assert uninterrupted["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-6)

    run_dir, logs = tmp_path / "run", tmp_path / "first"
    procs = spawn_ranks(run_args(corpus_overrides, run_dir, *fsdp), logs)
    wait_for_checkpoint(run_dir, 10, procs)
    for p in procs:  # a lost node: nothing more is saved
        p.send_signal(signal.SIGKILL)
        p.wait()
    path = list_checkpoints(run_dir / "checkpoints")[-1]
    state = read_checkpoint(path)
    assert state["parallelism"] == "fsdp" and state["world_size"] == 2 and state["format"] == 3
    assert "model" not in state and {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(state["files"])
    shards = [(path / f"__{rank}_0.distcp").stat().st_size for rank in (0, 1)]
    assert min(shards) > 0.4 * sum(shards)  # each rank wrote its own half of the weights and moments
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    record = relaunch_and_check(corpus_overrides, run_dir, uninterrupted, tmp_path, *fsdp)
    assert record["resumed_from_step"] == state["step"]

    # The same checkpoint resumed by ONE process (no process group): DCP reads both shards into whole tensors.
    # The gradient is then summed in one process (another order than the reduce-scatter): float rounding only.
    one = execute(load_config("study", Study, run_args(corpus_overrides, copy, *fsdp)))
    assert one["status"] == "ok" and one["world_size"] == 1 and one["resumed_from_step"] == state["step"]
    assert one["final_val_loss"] == pytest.approx(uninterrupted["final_val_loss"], abs=1e-5)
    assert [r["train_loss"] for r in read_jsonl(copy / "train.jsonl")] == pytest.approx(
        [r["train_loss"] for r in read_jsonl(run_dir / "train.jsonl")], abs=1e-5)

    out, step = export_run(run_dir, tmp_path / "hf")
    assert step == STEPS and (out / "model.safetensors").exists()
    model = load_hf_checkpoint(out)
    manifest = prepare_corpus(load_config("study", Study, corpus_overrides).data)
    val = evaluate(model, validation_batches(manifest, model.shape.seq_len, batch_size=32), torch.device("cpu"),
                   nullcontext)
    assert val == pytest.approx(record["final_val_loss"], abs=1e-6)


def test_node_launcher_runs_a_sweep_of_two_runs_with_two_processes_each(corpus_overrides, tmp_path):
    command = [sys.executable, "-m", "pipeline.sweep", *corpus_overrides, "sweep.design=grid",
               "sweep.sizes=[23k,46k]", "sweep.tokens=[20480]", "sweep.tokens_per_param=[]",
               "train.batch_tokens=1024", "train.warmup_tokens=2048", "train.threads=1", "train.device=cpu",
               "train.evals_per_run=2", "tracking.mode=disabled", "launcher.mode=node", "launcher.gpus=4",
               "launcher.gpus_per_run=2", "sweep_name=node", f"results_dir={tmp_path}"]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("started") == 2 and "gpu 0,1:" in done.stdout and "gpu 2,3:" in done.stdout
    records, rejected = load_records(tmp_path / "node")
    plan = json.loads((tmp_path / "node" / "plan.json").read_text())
    assert rejected == [] and sorted(r["run_id"] for r in records) == sorted(r["run_id"] for r in plan["runs"])
    for record in records:  # each run recorded once, by its main process, after training on two ranks
        assert record["status"] == "ok" and record["world_size"] == 2 and record["steps_done"] == 20
        assert [r["step"] for r in read_jsonl(Path(record["_dir"]) / "train.jsonl")] == [10, 20]  # once, not per rank
        log = (tmp_path / "node" / "logs" / f"{record['run_id']}.log").read_text()
        assert log.count(f"{record['run_id']}: ok") == 1  # one final line per run, from its main process (issue 26)
    attempts = json.loads((tmp_path / "node" / "attempts.json").read_text())
    assert attempts == {r["run_id"]: 1 for r in records}
    assert not list((tmp_path / "node" / "runs").glob("*/.lock"))


# --- slurm/full_run.sbatch: one srun over "nodes", one task per rank ---------------------------------------
FAKE_SRUN = """#!/bin/bash
# Stands in for srun on one machine: SLURM_NTASKS copies of the command with SLURM_PROCID/SLURM_LOCALID,
# USR1/TERM forwarded to every task (what srun does), exit status the highest of the tasks'.
while [[ "$1" == --* ]]; do shift; done
PIDS=()
forward() { for p in "${PIDS[@]}"; do kill -"$1" "$p" 2>/dev/null; done; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
    PIDS+=($!)
done
CODE=0
for p in "${PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done
    wait "$p"; c=$?
    [ "$c" -gt "$CODE" ] && CODE=$c
done
exit $CODE
"""
FAKE_SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then echo localhost; else echo "$@" >> "$FAKE_DIR/scontrol.log"; fi
"""


def test_full_run_sbatch_trains_on_every_task_and_requeues_after_usr1(corpus_overrides, tmp_path, reference):
    bin_dir, fit_dir, run_dir = tmp_path / "bin", tmp_path / "fit", tmp_path / "run"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (fit_dir / "experiment").mkdir(parents=True)
    (fit_dir / "experiment" / "full_run.yaml").write_text("# @package _global_\nsweep_name: full_run\n")
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "FIT_DIR": str(fit_dir), "PYTHON": sys.executable, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "MASTER_PORT": str(free_port()),
           "TRAIN_OVERRIDES": " ".join(run_args(corpus_overrides, run_dir, "train.checkpoint_interval_s=0"))}
    sbatch = [str(REPO / "slurm" / "full_run.sbatch")]
    log = tmp_path / "job1.log"
    job = subprocess.Popen(["bash", *sbatch], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_for_checkpoint(run_dir, 5, [job])
    job.send_signal(signal.SIGUSR1)  # --signal=B:USR1@300: to the batch shell, which forwards it
    assert wait_all([job], [log]) == [0], log.read_text()[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    first = load_record(run_dir)
    assert first["status"] == "preempted" and "SIGUSR1" in first["error"] and first["world_size"] == 2

    requeued = subprocess.Popen(["bash", *sbatch], cwd=REPO, env={**env, "MASTER_PORT": str(free_port())},
                                stdout=(tmp_path / "job2.log").open("w"), stderr=subprocess.STDOUT)
    assert wait_all([requeued], [tmp_path / "job2.log"]) == [0], (tmp_path / "job2.log").read_text()[-3000:]
    record = load_record(run_dir)
    assert record["status"] == "ok" and record["resumed_from_step"] == first["steps_done"]
    assert record["final_val_loss"] == reference["final_val_loss"]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # not requeued again
