"""The fit command's worker processes (pipeline/fit/worker.py): the same answer, matplotlib out of the command's own
process, jobs' errors raised where they were asked for, and a lost worker costing time, never the answer."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fit_synthetic import isoflop_design, table_from_design

from pipeline.errors import UserError
from pipeline.fit import lbfgs, worker
from pipeline.fit.candidates import FormObjective, candidate_forms
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.objective import HuberLogObjective

REPO = Path(__file__).resolve().parents[1]
LAW = ParametricLaw(1.7, 400.0, 1200.0, 0.34, 0.28)


@pytest.fixture
def one_worker(monkeypatch):
    """A worker process made active as the fit command makes its own (whatever this machine's core count)."""
    jobs = worker.Worker((("fit", (), 0), ("figures", (), 0)))
    monkeypatch.setattr(worker, "_active", jobs)
    yield jobs
    jobs.close()


def test_jobs_come_back_with_their_values_and_their_exceptions(one_worker):
    first = one_worker.submit("figures", "math:sqrt", 16.0)
    failing = one_worker.submit("figures", "pipeline.decide.budget:resolve_budget", {})
    last = one_worker.submit("figures", "math:hypot", 3.0, 4.0)
    assert one_worker.result(last) == 5.0 and one_worker.result(first) == 4.0     # any order of asking
    with pytest.raises(UserError, match="no budget"):      # the worker's exception, raised here with its type
        one_worker.result(failing)
    with pytest.raises(RuntimeError, match="threading:Lock: lock could not be sent back"):   # nothing hangs on it
        one_worker.result(one_worker.submit("figures", "threading:Lock"))
    assert one_worker.result(one_worker.submit("figures", "math:sqrt", 1.0)) == 1.0      # and the worker goes on


def test_a_lost_worker_costs_time_not_the_answer(one_worker):
    for process in one_worker._processes:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    assert one_worker.result(one_worker.submit("figures", "math:hypot", 6.0, 8.0)) == 10.0   # ran here instead
    assert worker.run("math:sqrt", 9.0) == 3.0


def test_without_a_worker_every_job_runs_here():
    assert worker.active() is None
    assert worker.run("math:sqrt", 4.0) == 2.0
    jobs = worker.runner()
    with pytest.raises(UserError):
        jobs.result(jobs.submit("figures", "pipeline.decide.budget:resolve_budget", {}))


def test_a_subset_objective_is_its_problems_alone():
    """What a half batch runs on in the worker: the same values for the same problems, renumbered from 0."""
    table = table_from_design(isoflop_design(noise=0.01, seed=3, law=LAW))
    rng = np.random.default_rng(0)
    losses = table.loss * np.exp(rng.normal(0, 0.01, (40, len(table.loss))))    # one loss vector per problem
    base = HuberLogObjective(table.n, table.tokens, losses)
    theta = np.tile([6.0, 7.0, 0.5, 0.3, 0.3], (40, 1)) + rng.normal(0, 0.1, (40, 5))
    rows = np.arange(25, 40)
    f_all, g_all = base(theta[rows], rows)
    half = pickle.loads(pickle.dumps(base.subset(rows)))      # as it travels to the worker
    f_half, g_half = half(theta[rows], np.arange(rows.size))
    np.testing.assert_array_equal(f_half, f_all)
    np.testing.assert_array_equal(g_half, g_all)


def test_a_batch_split_with_the_worker_is_the_whole_batch_to_the_bit(one_worker):
    table = table_from_design(isoflop_design(noise=0.01, seed=3, law=LAW))
    form = candidate_forms(None)[0]
    objective = FormObjective(form, HuberLogObjective(table.n, table.tokens, table.loss))
    starts = form.starts()[::15][:2 * lbfgs.SPLIT_MIN_PROBLEMS]
    split = lbfgs.minimize_batched(objective, starts, max_iter=2000)
    whole = lbfgs.minimize_here(objective, starts, max_iter=2000)
    for field in ("theta", "fun", "grad", "n_iter", "converged", "stalled"):
        np.testing.assert_array_equal(getattr(split, field), getattr(whole, field), err_msg=field)


def write_runs(path: Path) -> Path:
    table = table_from_design(isoflop_design(noise=0.01, seed=5, law=LAW))
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["params", "tokens", "loss"])
        out.writerows(zip(table.n, table.tokens, table.loss, strict=True))
    return path


def test_the_fit_command_answers_the_same_with_and_without_its_workers(tmp_path):
    """The whole command, as a user runs it: its own process never loads matplotlib; the workers draw every figure."""
    runs = write_runs(tmp_path / "runs.csv")
    probe = (f"import runpy, sys; sys.argv = ['pipeline.fit', 'runs={runs}', 'budget.flops=1e21', 'bootstrap=0', "
             "'out_dir=' + sys.argv[1]]\n"
             "try:\n    runpy.run_module('pipeline.fit', run_name='__main__')\n"
             "finally:\n    print('matplotlib loaded:', any(m.split('.')[0] == 'matplotlib' for m in sys.modules))")
    answers = {}
    for setting in ("1", "0"):
        out = tmp_path / f"workers{setting}"
        env = {**os.environ, "PIPELINE_FIT_WORKER": setting}
        done = subprocess.run([sys.executable, "-c", probe, str(out)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        with_workers = setting == "1" and worker._cores() >= 2
        assert f"matplotlib loaded: {not with_workers}" in done.stdout
        answers[setting] = json.loads((out / "recommendation.json").read_text())
        assert sorted(p.name for p in out.glob("*.png")) == ["deviation.png", "frontier.png", "isoflop_profiles.png",
                                                               "metric_loss.png", "parametric_fit.png"]
        assert "![parametric_fit](parametric_fit.png)" in (out / "report.md").read_text()
    for key in ("n_opt", "intervals", "selection", "law"):
        assert answers["1"][key] == answers["0"][key], key          # the same numbers, to the last digit
