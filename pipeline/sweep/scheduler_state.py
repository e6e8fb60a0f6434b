"""Each run's SLURM job state next to its record's, for `python -m pipeline.sweep ... sweep.dry_run=true`.

The record on disk says what the run has done (done, preempted, interrupted, ...); the scheduler says
what its job is doing now (PENDING, RUNNING, REQUEUED, FAILED, CANCELLED, ...). A run cancelled with
`scancel` reads "interrupted" on disk and "CANCELLED" here: relaunching the sweep resubmits it.

How a job is tied to its run: the sweep submits each array with the comment `scaling-pilot:<submission
file>` (pipeline/sweep/slurm_array.py), and array task i runs the i-th run of that submission file
(Hydra's sweep keeps the order of `run_id=a,b,c`). `squeue` knows the jobs the controller remembers;
`sacct` (clusters with accounting) the older ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.train.scheduler import QUEUE_FIELDS, accounting_rows, queue_rows

COMMENT_PREFIX = "scaling-pilot:"


def submission_tag(submission: Path) -> str:
    """The comment an array is submitted with: names its submission file (hence its runs, in order)."""
    return COMMENT_PREFIX + Path(submission).stem


def submitted_runs(sweep_dir: Path) -> dict[str, list[str]]:
    """{comment: [run ids, in array task order]} for every array this sweep has submitted."""
    out = {}
    for path in sorted((Path(sweep_dir) / "slurm").glob("submission-*.json")):
        try:
            out[submission_tag(path)] = list(json.loads(path.read_text())["runs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: its runs show no scheduler state, the records still do
    return out


def task_indices(text: str) -> list[int]:
    """Array task ids as squeue/sacct print them: "3", or a pending range "[0-3,5%2]" / "0-3%2". A lone
    job ("N/A": submitit submits a single run as a plain job, not an array) is task 0 of its submission."""
    if text in ("N/A", ""):
        return [0]
    out = []
    for part in text.strip("[]").split("%")[0].split(","):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if bounds:
            out.extend(range(int(bounds.group(1)), int(bounds.group(2) or bounds.group(1)) + 1))
    return out


def scheduler_states(sweep_dir: Path) -> dict[str, str]:
    """{run id: "PENDING (job 812_3, requeued 1x)"} for the runs of this sweep's arrays; {} off a cluster."""
    submissions = submitted_runs(sweep_dir)
    if not submissions:
        return {}
    newest: dict[str, tuple[int, str]] = {}
    # squeue first (what runs now), then sacct for the jobs the controller has forgotten.
    for rows in (queue_rows(QUEUE_FIELDS), accounting_rows(Path(sweep_dir).name)):
        for job_id, array_id, tasks, state, comment, restarts in rows or []:
            order = submissions.get(comment.strip())
            if order is None or not job_id.isdigit():
                continue
            for index in task_indices(tasks):
                run_id = order[index] if index < len(order) else None
                if run_id and (run_id not in newest or int(job_id) > newest[run_id][0]):  # a relaunch's job wins
                    name = f"{array_id}_{index}" if tasks not in ("N/A", "") else job_id
                    requeued = f", requeued {restarts}x" if restarts.isdigit() and int(restarts) else ""
                    newest[run_id] = (int(job_id), f"{state.split()[0]} (job {name}{requeued})")
    return {run_id: text for run_id, (_, text) in newest.items()}


def with_scheduler_states(sweep_dir: Path, states: dict[str, str]) -> dict[str, str]:
    """The record states, each followed by its job's scheduler state when there is one."""
    scheduler = scheduler_states(sweep_dir)
    return {run_id: f"{state}; slurm {scheduler[run_id]}" if run_id in scheduler else state
            for run_id, state in states.items()}
