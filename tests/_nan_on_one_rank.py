"""`python tests/_nan_on_one_rank.py STEP <train overrides>`: `python -m pipeline.train`, except that
the training loss of this process turns NaN at its STEP-th training forward pass (a fault on one rank).

Used by tests/test_multiprocess.py on rank 1 only; the other rank runs the plain command.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
poison_at = int(sys.argv.pop(1))
real_cross_entropy = F.cross_entropy
calls = 0


def cross_entropy(*args, **kwargs):
    global calls
    loss = real_cross_entropy(*args, **kwargs)
    if torch.is_grad_enabled():  # training, not evaluation
        calls += 1
        if calls == poison_at:
            return loss * float("nan")
    return loss


F.cross_entropy = cross_entropy
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
