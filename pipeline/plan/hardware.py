"""Hardware: peak throughput and memory per GPU type, and wall-clock time at a given MFU.

Used by the plan (time estimates), by each run (its MFU) and by the decision (the budget in FLOPs,
pipeline/decide/budget.py; the memory check, pipeline/plan/memory.py). MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM App. B) is the share of the peak that the
model's FLOPs actually use. Unset, it is 0.40, a stated assumption (the pilots' measured MFU is not
borrowed: pipeline/decide/budget.py says why): large dense bf16 runs report 40-55%
(PaLM 46%, Llama 3 38-43%), and a first run on a new stack rarely does better.

Peaks are dense (no 2:4 sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets. The memory
column feeds the per-GPU memory check (pipeline/plan/memory.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import UserError

SECONDS_PER_DAY = 86_400.0
DEFAULT_MFU = 0.40


@dataclass(frozen=True)
class GpuSpec:
    peak_flops: float   # dense bf16 FLOP/s
    memory_gb: float    # HBM per GPU, in GB (1e9 bytes), as the data sheet states it
    source: str


GPUS: dict[str, GpuSpec] = {
    "h100_sxm": GpuSpec(989e12, 80, "NVIDIA H100 data sheet: SXM5, 989 TFLOPS dense BF16"),
    "h100_pcie": GpuSpec(756e12, 80, "NVIDIA H100 data sheet: PCIe, 756 TFLOPS dense BF16"),
    "h200": GpuSpec(989e12, 141, "NVIDIA H200 data sheet: SXM, 989 TFLOPS dense BF16, 141 GB"),
    "a100_80gb": GpuSpec(312e12, 80, "NVIDIA A100 data sheet: 312 TFLOPS dense BF16"),
    "a100_40gb": GpuSpec(312e12, 40, "NVIDIA A100 data sheet: 312 TFLOPS dense BF16"),
    "b200": GpuSpec(2.25e15, 180, "NVIDIA HGX B200 data sheet: 2.25 PFLOPS dense BF16 per GPU, 180 GB"),
    "l40s": GpuSpec(362e12, 48, "NVIDIA L40S data sheet: 362 TFLOPS dense BF16"),
    "mi300x": GpuSpec(1307e12, 192, "AMD Instinct MI300X data sheet: 1307 TFLOPS dense BF16"),
}
# When the budget is given in FLOPs only, GPU-days are quoted on this reference, at DEFAULT_MFU.
REFERENCE_GPU = "h100_sxm"

# torch.cuda.get_device_name() substrings -> table keys, most specific first (for MFU of a run).
_DEVICE_NAMES = (("H100 PCIe", "h100_pcie"), ("H100", "h100_sxm"), ("H200", "h200"), ("A100-SXM4-40GB", "a100_40gb"),
                 ("A100-PCIE-40GB", "a100_40gb"), ("A100", "a100_80gb"), ("B200", "b200"), ("L40S", "l40s"),
                 ("MI300X", "mi300x"))


def gpu_key_for_device_name(device_name: str) -> str | None:
    """The table key of a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None if unknown."""
    for fragment, key in _DEVICE_NAMES:
        if fragment.lower() in device_name.lower():
            return key
    return None


def peak_flops_for_device_name(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU a run is on (None for a GPU not in the table: no MFU then)."""
    key = gpu_key_for_device_name(device_name)
    return GPUS[key].peak_flops if key else None






def positive(name: str, value, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"budget.{name}={value!r} must be a positive number: {fix}")
    return float(value)


def gpu_spec(gpu: str | None, peak_flops: float | None = None) -> GpuSpec | None:
    """The table's entry for `gpu`, or an ad-hoc one from an explicit peak; None when neither is given."""
    if peak_flops is not None:
        peak = positive("peak_flops", peak_flops, "give the GPU's dense bf16 FLOP/s, e.g. budget.peak_flops=989e12")
        known = GPUS.get(str(gpu).lower()) if gpu else None
        memory_gb = known.memory_gb if known else 80.0
        return GpuSpec(peak, memory_gb, "budget.peak_flops (given)" + ("" if known else "; memory assumed 80 GB"))
    if gpu is None:
        return None
    key = str(gpu).lower()
    if key not in GPUS:
        raise UserError(f"budget.gpu={gpu!r} is not in the peak-FLOPs table: use one of {', '.join(GPUS)} "
                        f"or give its dense bf16 peak with budget.peak_flops=<FLOP/s>")
    return GPUS[key]


def wall_clock_s(flops: float, gpus: int, peak_flops: float, mfu: float) -> float:
    """Seconds to spend `flops` on `gpus` GPUs at `mfu` of `peak_flops` each."""
    return flops / (gpus * peak_flops * mfu)






def reference_gpu_days(flops: float, mfu: float = DEFAULT_MFU, gpu: str = REFERENCE_GPU) -> float:
    """GPU-days to spend `flops` on the reference GPU at `mfu` (for budgets given in FLOPs only)."""
    return wall_clock_s(flops, 1, GPUS[gpu].peak_flops, mfu) / SECONDS_PER_DAY
