"""Stage 5, fitting: a table of runs -> scaling laws fitted three ways, with intervals and checks.

__main__.py is `python -m pipeline.fit` (it also runs the decision, pipeline/decide/);
table.py is the validated table of runs from a sweep's records; sources.py reads runs from a CSV/JSONL
file or W&B; laws.py holds the law forms and published laws; envelope.py, isoflop.py and
parametric.py are Chinchilla's approaches 1-3 (lbfgs.py is the batched optimiser behind 3);
candidates.py the law forms, selection.py the backtest that chooses between them, refits.py every refit on a
subset batched from one grid search, bootstrap.py the law's one bootstrap; checks.py the outlier rule and
agreement checks; fit_all.py runs them all; plots.py draws them.
"""
