"""The budget in FLOPs: from "32 H100s for two weeks" (or FLOPs given directly) to C, and back to GPU-days.

    C = gpus x peak FLOP/s x MFU x days x 86,400 s/day

MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM App. B) is the share of the peak that the
model's FLOPs actually use. Unset, it is 0.40 (pipeline/plan/hardware.py: DEFAULT_MFU), a stated
assumption. The pilots' measured MFU is NOT borrowed: it is PaLM-counted, on small models and any GPU
type, while the budget is the full run's, on its hardware; the summary states which MFU was assumed.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError
from pipeline.plan.hardware import DEFAULT_MFU, SECONDS_PER_DAY, gpu_spec, positive, wall_clock_s

# The largest budget sized: ten years of a million H100s at 40% MFU is 1.2e29 FLOPs, and above ~2e29 the
# Chinchilla law's N_opt leaves the 1e13 parameters the family's sizing rule covers (models/sizing.py).
MAX_BUDGET_FLOPS = 1e30


def _field(budget: Any, name: str):
    """Read a field of a BudgetConfig dataclass, any object with those attributes, or a dict."""
    if budget is None:
        return None
    if isinstance(budget, dict):
        return budget.get(name)
    return getattr(budget, name, None)


def _resolve_mfu(budget: Any) -> tuple[float, str]:
    mfu = _field(budget, "mfu")
    if mfu is not None:
        if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
            raise UserError(f"budget.mfu={mfu!r} must lie in (0, 1]: pass a fraction, e.g. budget.mfu=0.4")
        return float(mfu), "given (budget.mfu)"
    return DEFAULT_MFU, (f"assumed {DEFAULT_MFU:.2f}, the stated default (large dense bf16 runs report 0.38-0.55; "
                         "the pilots' MFU is not used): set budget.mfu to change it")


def resolve_budget(budget: Any, pilot_flops: float | None = None) -> dict:
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
    mfu, mfu_source = _resolve_mfu(budget)

    if flops is not None:
        flops = positive("flops", flops, "give the training compute, e.g. budget.flops=1e22")
        source = "flops"
        conversion = f"given: {flops:.3g} FLOPs"
        if has_hardware and (spec is None or gpus is None):
            raise UserError("budget.flops with hardware needs both budget.gpu (or peak_flops) and budget.gpus "
                            "to estimate wall-clock time: add the missing one or drop the hardware")
        if spec is not None:
            days = wall_clock_s(flops, gpus, spec.peak_flops, mfu) / SECONDS_PER_DAY
    else:
        days = positive("days", days, "give the wall-clock time in days, e.g. budget.days=14")
        if spec is None or gpus is None:
            raise UserError("budget.days needs budget.gpu (or budget.peak_flops) and budget.gpus: e.g. "
                            "budget.gpu=h100_sxm budget.gpus=32 budget.days=14")
        flops = gpus * spec.peak_flops * mfu * days * SECONDS_PER_DAY
        source = "hardware"
        conversion = (f"{gpus} x {spec.peak_flops / 1e12:g}e12 FLOP/s x {mfu:.2f} MFU x {days:g} d x 86400 s/d "
                      f"= {flops:.3g} FLOPs")

    if not flops <= MAX_BUDGET_FLOPS:  # refused at once: the law's N_opt would be beyond the sizing rule's range
        raise UserError(f"the budget ({flops:.3g} FLOPs) is above {MAX_BUDGET_FLOPS:.0e} FLOPs (ten years of a million "
                        "H100s is ~1e29; the law's N_opt there is beyond the family's 1e13-parameter sizing range): "
                        "lower budget.flops, budget.gpus or budget.days")
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
        price = positive("price_per_gpu_hour", price, "give dollars per GPU-hour, e.g. 2.5")
        if out["gpu_days"] is not None:
            out["cost_usd"] = out["gpu_days"] * 24 * price
    out["price_per_gpu_hour"] = price
    return out
