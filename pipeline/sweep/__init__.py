"""Stage 4, launching the pilot study: `python -m pipeline.sweep` plans it, skips what is done, runs the rest.

__main__.py is the command; dispatch.py holds the sweep's state on disk and launches in waves;
launchers.py runs here (one after another) or on this node (one run per GPU, from a pool);
slurm_array.py submits a SLURM array through hydra-submitit-launcher, and slurm_task.py is one task of it;
scheduler_state.py puts each run's job state (squeue/sacct) next to its record's in the dry run.
"""
