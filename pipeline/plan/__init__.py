"""Stage 2, planning: from a config to the exact runs it implies, before any data is prepared.

design.py expands the pilot design (grid or IsoFLOP budgets, cooldown reuse) into runs; runspec.py
resolves one run's every number (shape, tokens, FLOPs, batch, steps, run id); hparams.py is the LR,
batch, warmup and beta2 rule; schedule.py the LR schedules; hardware.py the GPU peak table.
"""
