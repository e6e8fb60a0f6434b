"""`python tests/_disk_full_on_one_rank.py STEP <train overrides>`: `python -m pipeline.train`, except that
this process's shard file of checkpoint STEP is cut short by a full disk (ENOSPC) -- a fault on one rank only.

Used by tests/test_multiprocess.py on rank 1 only; the other rank runs the plain command.
"""

from __future__ import annotations

import errno
import os
import runpy
import sys
from pathlib import Path

from torch.distributed.checkpoint import FileSystemWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
full_at = f"ckpt-{int(sys.argv.pop(1)):09d}.dcp.tmp"
real_write_data = FileSystemWriter.write_data


def write_data(self, plan, planner):
    if Path(str(self.path)).name == full_at:
        (Path(str(self.path)) / "__1_0.distcp").write_bytes(b"\x00" * 4096)  # part of the shard, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write_data(self, plan, planner)


FileSystemWriter.write_data = write_data
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
