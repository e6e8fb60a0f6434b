"""Stage 3, training: one run from config to record.

__main__.py is `python -m pipeline.train`; run.py runs one job end to end (data, record, trackers);
engine.py is the loop (accelerate, exact resume, evaluation, divergence, preemption); checkpoint.py,
lock.py (one worker per run: a lease keyed on the SLURM job or the local process, whose liveness
scheduler.py asks of squeue), tracking.py (W&B, never on the critical path), progress.py and
provenance.py (git state, versions, device) serve it.
"""
