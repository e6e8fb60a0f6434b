"""The stop flag (pipeline/train/stop.py) belongs to the process that installed it, not to its forked children."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A forked child (datasets' reader pool forks its workers, and Pool.terminate() stops them with SIGTERM,
# then waits) must die on SIGTERM although it inherited the parent's handler; it used to set the flag and
# go on waiting, which hung the parent (a run, the test suite) in corpus preparation for good.
SCRIPT = """
import multiprocessing, os, signal, time
from pipeline.train.stop import STOP
STOP.install()
ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:
    os.write(ready_w, b"1")  # a signal landing before the child runs Python code is dropped by CPython's fork
    time.sleep(60)
    os._exit(0)
os.read(ready_r, 1)
os.kill(child, signal.SIGTERM)
_, status = os.waitpid(child, 0)
with multiprocessing.get_context("fork").Pool(2) as pool:
    assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, STOP.signal_name)
"""


def test_a_forked_child_dies_on_sigterm_and_the_parent_keeps_its_flag():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True None"
