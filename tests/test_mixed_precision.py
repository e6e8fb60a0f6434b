"""What a GPU run uses, run on CPU: bf16 autocast, torch.compile (inductor, per block), FSDP2's
MixedPrecisionPolicy and sharded checkpoints, on two gloo processes.

The first test checks the pieces from inside the ranks (tests/_mixed_precision_rank.py): compute in
bf16, shards and gradients in fp32, losses within bf16 rounding of fp32. The second trains the
engine end to end that way (slow: inductor compiles the training, evaluation and no-grad shapes).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_multiprocess import (
    ENV,
    REPO,
    TIMEOUT_S,
    accelerate_launch,
    load_record,
    reference,  # noqa: F401 - the fixture: the same run on one fp32 process
    run_args,
    wait_all,
)


def test_fsdp_mixed_precision_policy_and_compiled_blocks_on_two_cpu_processes(tmp_path):
    from pipeline.sweep.launchers import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(REPO / "tests" / "_mixed_precision_rank.py")]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["fsdp", "ddp"])
def test_bf16_compiled_run_trains_checkpoints_and_ends_near_the_fp32_loss(corpus_overrides, tmp_path, parallelism,
                                                                        reference):  # noqa: F811
    """DDP: accelerate wraps the model whose blocks are already compiled (each block's gradients are
    ready, and their bucket's all-reduce can start, before the earlier blocks' backward)."""
    run_dir = tmp_path / "run"
    args = run_args(corpus_overrides, run_dir, f"train.parallelism={parallelism}", "train.precision=bf16",
                    "train.compile=true", "train.checkpoint_interval_s=0")
    proc = accelerate_launch(args, tmp_path / "launch.log", mixed_precision="bf16")
    assert wait_all([proc], [tmp_path / "launch.log"]) == [0], (tmp_path / "launch.log").read_text()[-3000:]
    record = load_record(run_dir)
    assert record["status"] == "ok" and record["precision"] == "bf16" and record["world_size"] == 2
    assert (run_dir / "checkpoints" / "ckpt-000000040.dcp").is_dir()
    # DDP computes under autocast (fp32 weights and residual stream, bf16 matmuls): 40 steps end 0.12% from fp32.
    # FSDP2 gathers the parameters in bf16 (torchtitan's policy, half the traffic), so the whole block, residual
    # stream included, runs in bf16: measured -1.5% compiled, +1.2% eager, where gathering fp32 under the same
    # autocast gives the DDP run's loss bit for bit (docs/multiprocess.md). 2% bounds that; a broken path is far off.
    tolerance = 0.02 if parallelism == "fsdp" else 0.01
    assert record["final_val_loss"] == pytest.approx(reference["final_val_loss"], rel=tolerance)
