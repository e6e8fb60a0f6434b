"""Hardware: peak throughput per GPU type, and turning "32 H100s for two weeks" into FLOPs.

    C = gpus x peak FLOP/s x MFU x days x 86,400 s/day

MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM App. B) is the share of the peak that the
model's FLOPs actually use. Unset, it is the mean MFU the pilots measured on that GPU type (the caller
passes it); with no measurement it is 0.40, a stated assumption: large dense bf16 runs report 40-55%
(PaLM 46%, Llama 3 38-43%), and a first run on a new stack rarely does better.

Peaks are dense (no 2:4 sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets. The memory
column feeds the per-GPU memory check (pipeline.memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


def _field(budget: Any, name: str):
    """Read a field of a BudgetConfig dataclass, any object with those attributes, or a dict."""
    if budget is None:
        return None
    if isinstance(budget, dict):
        return budget.get(name)
    return getattr(budget, name, None)


def _positive(name: str, value, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"budget.{name}={value!r} must be a positive number: {fix}")
    return float(value)


def gpu_spec(gpu: str | None, peak_flops: float | None = None) -> GpuSpec | None:
    """The table's entry for `gpu`, or an ad-hoc one from an explicit peak; None when neither is given."""
    if peak_flops is not None:
        peak = _positive("peak_flops", peak_flops, "give the GPU's dense bf16 FLOP/s, e.g. budget.peak_flops=989e12")
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


def _resolve_mfu(budget: Any, pilot_mfu: float | None) -> tuple[float, str]:
    mfu = _field(budget, "mfu")
    if mfu is not None:
        if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
            raise UserError(f"budget.mfu={mfu!r} must lie in (0, 1]: pass a fraction, e.g. budget.mfu=0.4")
        return float(mfu), "given (budget.mfu)"
    if pilot_mfu is not None and math.isfinite(pilot_mfu) and 0 < pilot_mfu <= 1:
        return float(pilot_mfu), "mean MFU measured in the pilots on this GPU type"
    return DEFAULT_MFU, f"assumed {DEFAULT_MFU:.2f} (no measurement; set budget.mfu to change it)"


def resolve_budget(budget: Any, pilot_mfu: float | None = None, pilot_flops: float | None = None) -> dict:
    """The full run's budget in FLOPs, and how it was obtained.

    Give it one way: `budget.flops`, or hardware and time (`gpu` or `peak_flops`, `gpus`, `days`).
    `flops` together with `gpu` and `gpus` (no `days`) is allowed: the days are then derived, so the
    report can quote wall-clock time. `pilot_flops` (what the pilots spent) must be below the budget,
    or the extrapolation makes no sense.
    """
    flops, gpu, gpus, days = (_field(budget, k) for k in ("flops", "gpu", "gpus", "days"))
    peak_given = _field(budget, "peak_flops")
    has_hardware = gpu is not None or peak_given is not None or gpus is not None
    if flops is not None and days is not None:
        raise UserError("both budget.flops and budget.days are set: give the budget as FLOPs or as "
                        "GPUs x days, not both")
    if flops is None and days is None:
        raise UserError("no budget: set budget.flops=<FLOPs>, or budget.gpu=h100_sxm budget.gpus=32 budget.days=14")

    spec = gpu_spec(gpu, peak_given)
    if gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
            raise UserError(f"budget.gpus={gpus!r} must be a positive whole number of GPUs, e.g. budget.gpus=32")
    mfu, mfu_source = _resolve_mfu(budget, pilot_mfu)

    if flops is not None:
        flops = _positive("flops", flops, "give the training compute, e.g. budget.flops=1e22")
        source = "flops"
        conversion = f"given: {flops:.3g} FLOPs"
        if has_hardware and (spec is None or gpus is None):
            raise UserError("budget.flops with hardware needs both budget.gpu (or peak_flops) and budget.gpus "
                            "to estimate wall-clock time: add the missing one or drop the hardware")
        if spec is not None:
            days = wall_clock_s(flops, gpus, spec.peak_flops, mfu) / SECONDS_PER_DAY
    else:
        days = _positive("days", days, "give the wall-clock time in days, e.g. budget.days=14")
        if spec is None or gpus is None:
            raise UserError("budget.days needs budget.gpu (or budget.peak_flops) and budget.gpus: e.g. "
                            "budget.gpu=h100_sxm budget.gpus=32 budget.days=14")
        flops = gpus * spec.peak_flops * mfu * days * SECONDS_PER_DAY
        source = "hardware"
        conversion = (f"{gpus} x {spec.peak_flops / 1e12:g}e12 FLOP/s x {mfu:.2f} MFU x {days:g} d x 86400 s/d "
                      f"= {flops:.3g} FLOPs")

    if pilot_flops is not None and pilot_flops >= flops:
        raise UserError(f"the budget ({flops:.3g} FLOPs) is not above what the pilots already spent "
                        f"({pilot_flops:.3g} FLOPs): raise the budget; the law must extrapolate upward")

    out = {"flops": flops, "source": source, "gpu": gpu, "gpus": gpus, "days": days, "mfu": mfu,
           "mfu_source": mfu_source, "peak_flops": spec.peak_flops if spec else None,
           "gpu_memory_gb": spec.memory_gb if spec else None, "peak_source": spec.source if spec else None,
           "conversion": conversion, "gpu_days": None, "cost_usd": None}
    if spec is not None:
        out["gpu_days"] = gpus * days
    price = _field(budget, "price_per_gpu_hour")
    if price is not None:
        price = _positive("price_per_gpu_hour", price, "give dollars per GPU-hour, e.g. 2.5")
        if out["gpu_days"] is not None:
            out["cost_usd"] = out["gpu_days"] * 24 * price
    out["price_per_gpu_hour"] = price
    return out


def reference_gpu_days(flops: float, mfu: float = DEFAULT_MFU, gpu: str = REFERENCE_GPU) -> float:
    """GPU-days to spend `flops` on the reference GPU at `mfu` (for budgets given in FLOPs only)."""
    return wall_clock_s(flops, 1, GPUS[gpu].peak_flops, mfu) / SECONDS_PER_DAY
