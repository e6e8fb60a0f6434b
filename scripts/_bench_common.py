"""What the fit benchmarks share: the 240-point table, a baseline revision on disk, one BLAS thread.

scripts/bench_fit_stage.py (the fit stage in-process) and scripts/bench_fit_cli.py (the whole command) time
the same table against the same kind of baseline, so the rule for each lives here once.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "chinchilla_fig4_epoch.csv"
BUDGET = 5.76e23                      # Chinchilla's own budget (Hoffmann et al. 2022, Table 3)
# One BLAS thread for every timed process: many tiny dot products otherwise wake OpenBLAS threads that
# fight for the 2 cores and distort the ratios.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def write_240_points(src: Path, dst: Path) -> int:
    """Epoch's 245 points less their 5 highest losses (Besiroglu et al. 2024 fit those 240), same columns."""
    with src.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: float(r["loss"]))
    kept = rows[:-5]
    with dst.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def extract_revision(rev: str, dest: Path) -> Path:
    """This repository at git revision `rev`, unpacked into `dest` (created), for timing beside the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def missing_csv(path: Path) -> str | None:
    """The one-line error for a missing table, or None."""
    return None if path.exists() else f"{path} not found: pass --csv (Epoch's chinchilla_fig4_epoch.csv)"
