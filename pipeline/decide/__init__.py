"""Stage 6, the decision: from a fitted (or published) law and a budget to a concrete, launchable full run.

recommend.py computes the answer (N, D, loss, intervals, the concrete model, the full-run config);
budget.py converts hardware and days to FLOPs; memory.py checks whether the model fits a GPU;
tradeoffs.py moves the answer for inference traffic, scarce data and off-optimal sizes; report.py
writes report.md and the terminal summary.
"""
