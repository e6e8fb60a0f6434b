"""The SLURM path: settings checks, the sbatch file submitit renders, requeue hand-off, the plain
sbatch script, the h100_pilot preset's plan, and tiny real runs through submitit's local executor
(one of them preempted and requeued). No cluster: fake `sbatch`/`srun`/`scontrol` stand in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.data.corpus import prepare_corpus
from pipeline.errors import UserError
from pipeline.plan.design import plan_sweep
from pipeline.sweep.slurm_array import check_launcher, start_array, submit_array
from pipeline.sweep.slurm_task import hand_back_to_submitit, run_task, stop_signal

ROOT = Path(__file__).resolve().parents[1]
# Explicit sizes (the 512-token CPU grid has no 33k shape); one budget: two runs of ~5 s each on a CPU.
TINY_SWEEP = ["sweep.budgets_flops=[2e11]", "sweep.sizes=[23k,46k]"]


def make_study(tmp_path: Path, *extra: str) -> tuple[Study, list[str]]:
    overrides = ["experiment=cpu_tiny", f"results_dir={tmp_path / 'results'}", "tracking.mode=disabled",
                 *TINY_SWEEP, *extra]
    return load_config("study", Study, overrides), overrides


def with_launcher(study: Study, **fields) -> Study:
    return replace(study, launcher=replace(study.launcher, **fields))


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# --- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"max_num_timeout": 0}, "launcher.max_num_timeout=0 would drop a run"),
    ({"partition": None}, "launcher.partition is not set"),
    ({"gpus_per_node": 8}, "launcher.gpus_per_node=8"),
    ({"timeout_min": 2}, "launcher.timeout_min=2 is too short"),
    ({"array_parallelism": 0}, "launcher.array_parallelism=0 must be >= 1"),
])
def test_unsafe_launcher_settings_are_refused(tmp_path, fields, message):
    study, _ = make_study(tmp_path, "launcher.partition=gpu")
    check_launcher(study, n_runs=3)  # the defaults plus a partition are fine
    with pytest.raises(UserError, match=message):
        check_launcher(with_launcher(study, **fields), n_runs=3)
    with pytest.raises(UserError, match="no pending runs"):
        check_launcher(study, n_runs=0)


# --- the sbatch file submitit writes ----------------------------------------------------------------
def test_submitit_renders_one_array_job_with_our_settings(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "captured.sbatch"
    write_executable(bin_dir / "sbatch", f"#!{sys.executable}\nimport shutil, sys\n"
                     f"shutil.copy(sys.argv[-1], {str(captured)!r})\nprint('Submitted batch job 4242')\n")
    write_executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    study, overrides = make_study(tmp_path, "launcher.partition=gpu", "launcher.account=proj",
                                  "launcher.array_parallelism=2", "launcher.timeout_min=90",
                                  "sweep.budgets_flops=[2e11,4e11]")
    runs = plan_sweep(study, vocab_size=512)[:3]
    proc = start_array(study, runs, overrides)
    try:
        deadline = time.monotonic() + 60
        while not captured.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert captured.exists(), f"sbatch was never called (launcher exit {proc.poll()})"
    finally:
        proc.kill()  # it would wait for the (fake) array forever; the array itself lives on in SLURM
        proc.wait()
    lines = set(captured.read_text().splitlines())
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                 "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --job-name=cpu_tiny",
                 "export SUBMITIT_PREEMPT_SIGNAL=USR1"):
        assert line in lines
    submission = json.loads(next((tmp_path / "results" / "cpu_tiny" / "slurm").glob("submission-*.json")).read_text())
    assert sorted(submission["runs"]) == sorted(r.run_id for r in runs)
    assert submission["sweep_overrides"] == overrides


# --- requeue hand-off ------------------------------------------------------------------------------
def test_only_submitits_signal_is_handed_back_for_requeue(monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "USR1")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        hand_back_to_submitit({"run_id": "r", "error": "received SIGTERM at step 7"})  # scancel: stays stopped
        assert received == []
        hand_back_to_submitit({"run_id": "r", "error": "received SIGUSR1 at step 7"})
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stop_signal({"stop_signal": "SIGUSR2", "error": "received SIGUSR1 at step 1"}) == "SIGUSR2"
    assert stop_signal({"error": "train loss is nan at step 3"}) is None


def test_a_task_refuses_a_config_that_no_longer_resolves_to_its_run(tmp_path):
    study, overrides = make_study(tmp_path)
    run = plan_sweep(study, vocab_size=512)[0]
    from pipeline.sweep.slurm_array import write_submission

    path = write_submission(study, [run], overrides)
    submission = json.loads(path.read_text())
    submission["runs"][run.run_id]["config"]["train"]["lr"] = 0.5  # what a code change could do
    path.write_text(json.dumps(submission))
    with pytest.raises(UserError, match=f"run {run.run_id} now resolves to"):
        run_task(run.run_id, path)
    with pytest.raises(UserError, match="is not in"):
        run_task("n1k-d1k-00000000", path)


# --- slurm/pilot.sbatch ----------------------------------------------------------------------------
FAKE_PYTHON = """#!/bin/bash
# Stands in for `python -m pipeline.train`: records its arguments, exits 75 on USR1/TERM like the engine.
if [ "$1" = "-m" ] && [ "$2" = "pipeline.train" ]; then
    shift 2; printf '%s\\n' "$@" > "$FAKE_DIR/train_args"
    trap 'exit 75' USR1 TERM
    touch "$FAKE_DIR/started"
    while :; do sleep 0.05; done
fi
exec {python} "$@"
"""


@pytest.mark.parametrize("sent, requeued, exit_code", [(signal.SIGUSR1, True, 0), (signal.SIGTERM, False, 75)])
def test_pilot_sbatch_requeues_after_usr1_only(tmp_path, sent, requeued, exit_code):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"runs": [{"run_id": "a", "overrides": ["model.size=1e5"]},
                                         {"run_id": "b", "overrides": ["model.size=2e5", "train.flops=1e12"]}]}))
    write_executable(tmp_path / "python", FAKE_PYTHON.format(python=sys.executable))
    write_executable(tmp_path / "scontrol", '#!/bin/sh\necho "$@" >> "$FAKE_DIR/scontrol.log"\n')
    env = {**os.environ, "PLAN": str(plan), "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "77",
           "SWEEP_OVERRIDES": "experiment=cpu_tiny sweep_name=x", "PYTHON": str(tmp_path / "python"),
           "FAKE_DIR": str(tmp_path), "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(ROOT / "slurm" / "pilot.sbatch")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sent)  # what SLURM's --signal=B:USR1@120 (or scancel's SIGTERM) does to the batch shell
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == exit_code, output
    assert (tmp_path / "train_args").read_text().split() == [
        "experiment=cpu_tiny", "sweep_name=x", "model.size=2e5", "train.flops=1e12", "train.progress=false"]
    assert ((tmp_path / "scontrol.log").read_text().split() if (tmp_path / "scontrol.log").exists() else []) == (
        ["requeue", "77"] if requeued else [])


# --- the h100_pilot preset -------------------------------------------------------------------------
def test_h100_pilot_plan_spends_five_percent_and_brackets_the_optimum():
    from pipeline.decide.budget import resolve_budget
    from pipeline.fit.laws import PUBLISHED_LAWS

    study = load_config("study", Study, ["experiment=h100_pilot"])
    full = resolve_budget(study.budget)["flops"]
    assert full == pytest.approx(1.531e22, rel=1e-3)  # 32 x 989e12 x 0.40 x 14 x 86,400
    runs = plan_sweep(study, vocab_size=50257)  # GPT-2's vocabulary (conf/data/fineweb_edu.yaml)
    total = sum(r.spec.flops["exact"] for r in runs)
    assert len(runs) == 20
    assert total == pytest.approx(7.15e20, rel=0.01) and 0.045 < total / full < 0.05
    assert total / (8 * 989e12 * 0.4) / 86400 == pytest.approx(2.6, abs=0.05)  # days on one 8xH100 node
    for budget in (3e18, 1e19, 3e19, 1e20):
        sizes = [r.spec.params["total"] for r in runs if r.spec.budget_flops == budget]
        n_opt, _ = PUBLISHED_LAWS["epoch"].optimal_allocation(budget)  # Besiroglu et al. 2024
        assert len(sizes) == 5 and min(sizes) < n_opt / 1.5 and max(sizes) > n_opt * 1.5
        assert all(abs(r.spec.flops["exact"] / budget - 1) < 0.01 for r in runs if r.spec.budget_flops == budget)
    assert max(r.spec.params["total"] for r in runs) < 2.5e9
    assert max(r.spec.tokens for r in runs) <= study.data.max_train_tokens  # no run repeats data


# --- end to end through submitit's local executor --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_corpus_overrides(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    return [f"data.cache_dir={cache}", "data.max_documents=300", "data.val_tokens=8192",
            "sweep.budgets_flops=[1e11]", "train.evals_per_run=2", "train.threads=1",
            "train.log_interval_steps=5"]


@pytest.mark.slow  # ~25 s on an idle 2-core machine: six Python processes and two real runs
def test_array_runs_each_run_once_and_a_preempted_task_is_requeued(tmp_path, tiny_corpus_overrides, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study, overrides = make_study(tmp_path, *tiny_corpus_overrides)
    runs = plan_sweep(study, prepare_corpus(study.data).vocab_size)
    run_dirs = {r.run_id: tmp_path / "results" / "cpu_tiny" / "runs" / r.run_id for r in runs}
    preempted = run_dirs[runs[0].run_id]
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=submit_array(study, runs, overrides, "local")))
    thread.start()
    deadline = time.monotonic() + 60
    while not ((preempted / "train.jsonl").exists() and (preempted / ".lock").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The signal SLURM would send before the time limit, to the task process holding the run's lock.
    os.kill(json.loads((preempted / ".lock").read_text())["pid"], signal.SIGUSR1)
    thread.join(timeout=120)
    assert result.get("code") == 0
    assert sorted(p.name for p in (tmp_path / "results" / "cpu_tiny" / "runs").iterdir()) == sorted(run_dirs)
    for run in runs:
        record = json.loads((run_dirs[run.run_id] / "run.json").read_text())
        assert record["status"] == "ok" and record["steps_done"] == run.spec.steps
        steps = [json.loads(line)["step"] for line in (run_dirs[run.run_id] / "train.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps))  # one row per logged step, across the resume
    assert json.loads((preempted / "run.json").read_text())["resumed_from_step"] > 0
    logs = "".join(p.read_text() for p in (tmp_path / "results" / "cpu_tiny" / "submitit").rglob("*_log.out"))
    assert "asking submitit to requeue" in logs and "Requeued job" in logs
    # A duplicate or late task of a finished run does not train it again.
    submission = next((tmp_path / "results" / "cpu_tiny" / "slurm").glob("submission-*.json"))
    assert run_task(runs[1].run_id, submission) == {"run_id": runs[1].run_id, "status": "ok", "skipped": True}


def test_cooldown_reuse_submits_the_trunks_then_the_branches(tmp_path, tiny_corpus_overrides, monkeypatch):
    """Two arrays through submitit's local executor (~15 s): the trunk, then its two branches."""
    from pipeline.sweep import dispatch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(dispatch, "launch_slurm", lambda s, r, o: submit_array(s, r, o, "local"))
    study, overrides = make_study(tmp_path, *tiny_corpus_overrides, "launcher.mode=slurm", "sweep.design=grid",
                                  "sweep.sizes=[23k]", "sweep.tokens=[40960,81920]", "sweep.tokens_per_param=[]",
                                  "sweep.cooldown_reuse=true", "train.batch_tokens=1024")
    runs = plan_sweep(study, prepare_corpus(study.data).vocab_size)
    dispatch.launch(study, runs, overrides)
    root = tmp_path / "results" / "cpu_tiny"
    records = [json.loads((root / "runs" / r.run_id / "run.json").read_text()) for r in runs]
    assert [r["status"] for r in records] == ["ok"] * 3 and records[0]["role"] == "trunk"
    assert [r["branched_from"]["run_id"] for r in records[1:]] == [runs[0].run_id] * 2
    submissions = [json.loads(p.read_text()) for p in (root / "slurm").glob("submission-*.json")]
    assert sorted(sorted(s["runs"]) for s in submissions) == sorted([[runs[0].run_id],
                                                                     sorted(r.run_id for r in runs[1:])])
