"""The pilot sweep and the full run on a real SLURM cluster (`make test-slurm`; slurm/README.md).

Nothing here stands in for SLURM: sbatch, squeue, scancel, scontrol requeue and sacct (slurmdbd with
MariaDB) are the real ones -- of the cluster SLURM_CONF or `sinfo` points at, or else of a throwaway
one-node cluster scripts/slurm_cluster.py starts for this session and stops afterwards.

The study: cpu_tiny's model family on 300 standard-library files, 2 budgets x 2 sizes (about
60-160 steps each, a checkpoint after every step), the same runs trained here in-process as the reference
every cluster run must match bit for bit (CPU, one thread per run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from slurm_cluster_helpers import (
    REPO,
    cluster_script,
    job_field,
    run_sweep,
    scheduler,
    sweep_log,
    wait_for,
    wait_for_job,
    wait_for_progress,
)

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.plan.design import plan_sweep
from pipeline.records import load_record, read_jsonl
from pipeline.sweep.scheduler_state import submission_tag
from pipeline.train.lock import slurm_job
from pipeline.train.run import execute

pytestmark = pytest.mark.slurm

STUDY = ["experiment=cpu_tiny", "tracking.mode=disabled", "eval.val_sets=[]", "eval.tasks=[]", "train.evals_per_run=2",
         "train.threads=1", "train.log_interval_steps=1", "train.progress=false", "train.checkpoint_interval_s=0",
         "train.device=cpu", "sweep.sizes=[23k,46k]", "sweep.budgets_flops=[1e10,2e10]",
         "sweep.centre_seeds=1"]  # one seed per size: the tests count runs (the demo preset repeats the centre)
SMALL = ["sweep.budgets_flops=[1e10]"]  # the two cheaper runs (about 100 and 60 steps)


@pytest.fixture(scope="session")
def cluster():
    """The cluster every test submits to: the reachable one, or a throwaway one stopped when the session ends
    (however it ends). Its partition: $SLURM_TEST_PARTITION, else the cluster's default."""
    script = cluster_script()
    saved = os.environ.get("SLURM_CONF")
    with script.cluster() as (env, which):
        os.environ.update(env)
        print(f"\nslurm: {which}")
        partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
        default = next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0] if partitions else None)
        try:
            yield SimpleNamespace(partition=os.environ.get("SLURM_TEST_PARTITION") or default)
        finally:
            if "SLURM_CONF" in env:
                os.environ.pop("SLURM_CONF") if saved is None else os.environ.update(SLURM_CONF=saved)


def planned_ids(args: list[str]) -> list[str]:
    return [r.run_id for r in plan_sweep(load_config("study", Study, args), vocab_size=512)]


def launcher(partition: str) -> list[str]:
    return ["launcher.mode=slurm", f"launcher.partition={partition}", "launcher.cpus_per_task=1", "launcher.mem_gb=1",
            "launcher.gpus_per_node=0", "launcher.timeout_min=30", "launcher.array_parallelism=8"]


@pytest.fixture(scope="module")
def study(corpus_overrides, cluster, tmp_path_factory):
    """(overrides for a results_dir, the reference: {run_id: (losses, final val loss)} trained in-process)."""
    def overrides(results_dir: Path, *extra: str) -> list[str]:
        return [*STUDY, *corpus_overrides, f"results_dir={results_dir}", *launcher(cluster.partition), *extra]

    local = load_config("study", Study, [*STUDY, *corpus_overrides, f"results_dir={tmp_path_factory.mktemp('local')}"])
    reference = {}
    for run in plan_sweep(local, vocab_size=512):
        record = execute(run.job)
        assert record["status"] == "ok"
        reference[run.run_id] = (losses(Path(record["run_dir"])), record["final_val_loss"])
    return overrides, reference


def rows(run_dir: Path) -> int:
    try:
        return (run_dir / "train.jsonl").read_text().count("\n")
    except OSError:
        return 0


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["train_loss"]) for row in read_jsonl(run_dir / "train.jsonl")]


def check_bitwise(run_dir: Path, reference: dict, resumed: bool) -> dict:
    """Recorded once, ok, one row per step, every loss equal to the uninterrupted local run's."""
    record = load_record(run_dir)
    steps, final = reference[run_dir.name]
    assert record["status"] == "ok", record
    assert losses(run_dir) == steps  # bitwise: float equality, every step exactly once
    assert record["final_val_loss"] == final
    assert bool(record.get("resumed_from_step")) is resumed, record.get("resumed_from_step")
    return record


# --- (1) the pilot study as one array ------------------------------------------------------------------
def test_pilot_study_as_an_array_matches_the_local_run_bitwise(study, tmp_path):
    overrides, reference = study
    code, out = run_sweep(overrides(tmp_path / "r"), tmp_path / "sweep.log")
    assert code == 0, out[-3000:]
    runs = tmp_path / "r" / "cpu_tiny" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(reference)
    for run_dir in runs.iterdir():
        check_bitwise(run_dir, reference, resumed=False)
    # Real accounting: slurmdbd recorded every array task, completed.
    submission = next((tmp_path / "r" / "cpu_tiny" / "slurm").glob("submission-*.json"))
    rows = [row for row in scheduler.accounting_rows("cpu_tiny") if row[4] == submission_tag(submission)]
    assert sorted(row[3] for row in rows) == ["COMPLETED"] * len(reference)


# --- (2)-(4) preempted, requeued, killed: one array, a different fault per run ------------------------
FAULTS = {"usr1": "preempted by submitit's signal", "requeue": "scontrol requeue", "sigkill": "SIGKILL, then requeue"}


@pytest.fixture(scope="module")
def faulted(study, tmp_path_factory):
    """The study as one array; mid-run, one task gets USR1, one `scontrol requeue`, one SIGKILL + requeue."""
    overrides, reference = study
    root = tmp_path_factory.mktemp("faults")
    args = overrides(root / "r")
    proc, log = run_sweep(args, root / "sweep.log", wait=False)
    runs = root / "r" / "cpu_tiny" / "runs"
    by_length = sorted(reference, key=lambda r: -len(reference[r][0]))[:3]  # the longest runs get the faults
    victims = dict(zip(FAULTS, by_length, strict=True))
    jobs = {}
    for fault, run_id in reversed(victims.items()):  # the shortest run first: it would end first
        lease = wait_for_progress(runs / run_id, steps=8, procs=[proc], log=log)
        job = jobs[fault] = slurm_job(lease)
        if fault == "usr1":  # what SLURM sends before the time limit (and at preemption with send_user_signal)
            subprocess.run(["scancel", "--signal=USR1", job], check=True)
        elif fault == "requeue":  # what an admin or a preemption with PreemptMode=REQUEUE does
            subprocess.run(["scontrol", "requeue", job], check=True)
        else:  # the node's processes die at once; SLURM requeues the job (--requeue, node failure)
            os.kill(lease["pid"], signal.SIGKILL)
            subprocess.run(["scontrol", "requeue", job], check=True)
    code = proc.wait(timeout=600)
    for job in jobs.values():
        wait_for_job(job, {"COMPLETED"})
    return {"code": code, "out": log.read_text(), "runs": runs, "victims": victims, "jobs": jobs,
            "reference": reference, "root": root, "args": args}


def test_a_task_preempted_by_signal_is_requeued_and_resumes_bitwise(faulted):
    run_dir = faulted["runs"] / faulted["victims"]["usr1"]
    record = check_bitwise(run_dir, faulted["reference"], resumed=True)
    assert job_field(faulted["jobs"]["usr1"], "Restarts") == "1"
    logs = sweep_log(faulted["root"])
    assert "asking submitit to requeue" in logs and f"Requeued job {faulted['jobs']['usr1']}" in logs
    assert record["resumed_from_step"] >= 8


def test_scontrol_requeue_mid_run_resumes_from_its_checkpoint(faulted):
    run_dir = faulted["runs"] / faulted["victims"]["requeue"]
    record = check_bitwise(run_dir, faulted["reference"], resumed=True)
    assert record["resumed_from_step"] >= 8  # from its own checkpoint, not from scratch
    assert job_field(faulted["jobs"]["requeue"], "Restarts") == "1"


def test_a_killed_and_requeued_task_takes_over_its_own_run(faulted):
    run_dir = faulted["runs"] / faulted["victims"]["sigkill"]
    check_bitwise(run_dir, faulted["reference"], resumed=True)
    job = faulted["jobs"]["sigkill"]
    assert job_field(job, "Restarts") == "1"
    assert faulted["code"] == 0, faulted["out"][-3000:]  # the sweep saw every task of the array finish
    # Its lease named its first life (same job, restart 0): taken over at once, not waited on nor skipped.
    assert f"took the run over from SLURM job {job}" in sweep_log(faulted["root"])
    code, out = run_sweep(faulted["args"], None, dry_run=True)
    assert "state: 4 done" in out, out


# --- (5) two sweeps of one study at once --------------------------------------------------------------
def test_two_sweeps_of_one_study_at_once_train_each_run_once(study, tmp_path):
    overrides, reference = study
    args = overrides(tmp_path / "r", *SMALL)
    first, log1 = run_sweep(args, tmp_path / "sweep1.log", wait=False)
    second, log2 = run_sweep(args, tmp_path / "sweep2.log", wait=False)
    codes = [first.wait(timeout=600), second.wait(timeout=600)]
    runs = tmp_path / "r" / "cpu_tiny" / "runs"
    logs = sweep_log(tmp_path)
    met = 0
    for run_dir in runs.iterdir():
        check_bitwise(run_dir, reference, resumed=False)  # trained by one task, start to end, never resumed
        # When both sweeps submitted the run, one task trained it and the other found it held or finished.
        skipped = logs.count(f"{run_dir.name}: not trained here") + logs.count(f"{run_dir.name}: already ok")
        assert skipped <= 1 and logs.count(f"{run_dir.name}: took the run over") == 0, logs[-4000:]
        met += skipped
    assert met >= 1, logs[-4000:]  # the sweeps really overlapped: a task met a run of the other sweep
    for code, log in ((codes[0], log1), (codes[1], log2)):
        text = log.read_text()
        # A sweep whose task found a run held by the other sweep never calls it done: it says so and exits 1.
        assert code == 0 or (code == 1 and "runs not finished; relaunch" in text), text[-3000:]
    code, out = run_sweep(args, None, dry_run=True)
    assert "state: 2 done" in out, out


# --- (6) a cancelled array task -----------------------------------------------------------------------
def test_a_cancelled_task_shows_as_cancelled_and_a_relaunch_finishes_it(study, tmp_path):
    overrides, reference = study
    args = overrides(tmp_path / "r", *SMALL)
    proc, log = run_sweep(args, tmp_path / "sweep1.log", wait=False)
    runs = tmp_path / "r" / "cpu_tiny" / "runs"
    longest = max(planned_ids(args), key=lambda r: len(reference[r][0]))
    job = slurm_job(wait_for_progress(runs / longest, steps=8, procs=[proc], log=log))
    subprocess.run(["scancel", job], check=True)
    wait_for_job(job, {"CANCELLED"})
    assert proc.wait(timeout=600) != 0, log.read_text()[-3000:]  # the array did not finish every run
    code, out = run_sweep(args, None, dry_run=True)
    line = next(line for line in out.splitlines() if line.startswith(longest))
    assert "slurm CANCELLED (job " in line and ("preempted" in line or "interrupted" in line), out
    code, out = run_sweep(args, tmp_path / "sweep2.log")
    assert code == 0 and "launching 1 of 2 runs" in out, out[-3000:]
    check_bitwise(runs / longest, reference, resumed=True)


# --- (7) the full run: one srun over 2 tasks, requeued -------------------------------------------------
FULL_STEPS = 100
FULL_RUN = ["model.size=23k", f"train.tokens={FULL_STEPS * 1024}", "train.batch_tokens=1024",
            "train.micro_batch_size=4", "train.threads=1", "train.log_interval_steps=1", "train.evals_per_run=2",
            "train.progress=false", "tracking.mode=disabled", "train.device=cpu", "train.checkpoint_interval_s=0"]


def test_full_run_sbatch_trains_on_two_tasks_is_requeued_and_resumes(corpus_overrides, cluster, tmp_path):
    reference = execute(load_config("study", Study, [*corpus_overrides, *FULL_RUN, f"run_dir={tmp_path / 'one'}"]))
    fit_dir, run_dir, log = tmp_path / "fit", tmp_path / "run", tmp_path / "full-run.log"
    (fit_dir / "experiment").mkdir(parents=True)
    (fit_dir / "experiment" / "full_run.yaml").write_text("# @package _global_\nsweep_name: full_run\n")
    env = {**os.environ, "FIT_DIR": str(fit_dir), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "TRAIN_OVERRIDES": " ".join([*corpus_overrides, *FULL_RUN, f"run_dir={run_dir}"])}
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--partition={cluster.partition}", "--nodes=1", "--ntasks-per-node=2",
         "--cpus-per-task=1", "--gpus-per-node=0", "--mem=2G", "--time=30", f"--output={log}", str(REPO / "slurm" / "full_run.sbatch")],
        env=env, capture_output=True, text=True, cwd=REPO)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: rows(run_dir) >= 10, 300, "10 steps, each checkpointed", log)
    # --signal=B:USR1@300 in the script: SLURM signals the batch shell, which forwards to srun -> every rank.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_for_job(job, {"COMPLETED"}, restarts=1)
    record = load_record(run_dir)
    text = log.read_text()
    assert f"checkpoint saved after USR1: requeueing {job}" in text, text[-3000:]
    assert record["status"] == "ok" and record["world_size"] == 2 and record["resumed_from_step"] >= 10, record
    assert record["final_val_loss"] == reference["final_val_loss"]  # bitwise, across the requeue
    assert [r["step"] for r in read_jsonl(run_dir / "train.jsonl")] == list(range(1, FULL_STEPS + 1))


# --- (8) the lease between real jobs -------------------------------------------------------------------
CLAIMER = ("import sys, time; from pipeline.train.lock import claim; won = claim(sys.argv[1]); "
           "print('won' if won else 'held', flush=True); time.sleep(float(sys.argv[2]) if won else 0)")


def test_jobs_claiming_one_run_at_once_never_both_win(cluster, tmp_path):
    run_dir, jobs = tmp_path / "run", []
    for i in range(4):
        cmd = f"{sys.executable} -c \"{CLAIMER}\" {run_dir} 8"
        done = subprocess.run(["sbatch", "--parsable", f"--partition={cluster.partition}", "--cpus-per-task=1",
                               "--mem=1G", f"--output={tmp_path / f'claim{i}.out'}", f"--wrap={cmd}"],
                              capture_output=True, text=True, check=True)
        jobs.append(done.stdout.strip())
    for job in jobs:
        wait_for_job(job, {"COMPLETED"})
    said = sorted((tmp_path / f"claim{i}.out").read_text().strip() for i in range(4))
    assert said == ["held", "held", "held", "won"]
    # The winner's job has ended: its lease is stale now (the scheduler says so), the next job takes over.
    lease = json.loads((run_dir / ".lock").read_text())
    assert lease["slurm_job_id"] in jobs and scheduler.job_state(slurm_job(lease)) == "COMPLETED"
    later = subprocess.run(["sbatch", "--parsable", "--wait", f"--partition={cluster.partition}", "--mem=1G",
                            f"--output={tmp_path / 'claim-late.out'}",
                            f"--wrap={sys.executable} -c \"{CLAIMER}\" {run_dir} 0"], capture_output=True, text=True)
    assert later.returncode == 0 and (tmp_path / "claim-late.out").read_text().strip() == "won"
