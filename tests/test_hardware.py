"""Budget conversion (pipeline.decide.budget) and the per-GPU memory check (pipeline.plan.memory)."""

from __future__ import annotations

import pytest

from models.sizing import shape_for_params
from pipeline.decide.budget import resolve_budget
from pipeline.errors import UserError
from pipeline.plan.hardware import GPUS, reference_gpu_days
from pipeline.plan.memory import memory_check


def test_32_h100_for_two_weeks_is_1p53e22_flops():
    budget = resolve_budget({"gpu": "h100_sxm", "gpus": 32, "days": 14})
    # 32 x 989e12 x 0.40 x 14 x 86400
    assert budget["flops"] == pytest.approx(1.5313e22, rel=1e-4)
    assert budget["mfu"] == 0.40 and "assumed" in budget["mfu_source"]
    assert budget["gpu_days"] == 448
    assert budget["conversion"] == "32 x 989e12 FLOP/s x 0.40 MFU x 14 d x 86400 s/d = 1.53e+22 FLOPs"


def test_mfu_is_given_or_the_stated_default_never_the_pilots_and_explicit_peak_works():
    assumed = resolve_budget({"gpu": "a100_80gb", "gpus": 8, "days": 1})
    assert assumed["mfu"] == 0.40 and "assumed 0.40" in assumed["mfu_source"] and "budget.mfu" in assumed["mfu_source"]
    assert assumed["flops"] == pytest.approx(8 * 312e12 * 0.40 * 86400)
    given = resolve_budget({"gpu": "a100_80gb", "gpus": 8, "days": 1, "mfu": 0.3})
    assert given["mfu"] == 0.3 and given["mfu_source"] == "given (budget.mfu)"
    custom = resolve_budget({"gpu": "my_asic", "peak_flops": 1e15, "gpus": 2, "days": 0.5, "mfu": 0.5})
    assert custom["flops"] == pytest.approx(2 * 1e15 * 0.5 * 43200)


def test_flops_budget_with_hardware_derives_days_and_cost():
    budget = resolve_budget({"flops": 1.5313e22, "gpu": "h100_sxm", "gpus": 32, "price_per_gpu_hour": 2.0})
    assert budget["days"] == pytest.approx(14.0, rel=1e-4)
    assert budget["cost_usd"] == pytest.approx(448 * 24 * 2.0, rel=1e-4)
    only_flops = resolve_budget({"flops": 1e21})
    assert only_flops["gpu_days"] is None and only_flops["source"] == "flops"
    # 1e21 / (989e12 x 0.4) s = 29.26 H100-days
    assert reference_gpu_days(1e21) == pytest.approx(29.26, rel=1e-3)


@pytest.mark.parametrize("budget, pilot_flops, fragment", [
    ({"gpu": "h100_sxm", "gpus": 0, "days": 14}, None, "budget.gpus=0"),
    ({"gpu": "h100_sxm", "gpus": 8, "days": -1}, None, "budget.days=-1"),
    ({"gpu": "tpu_v9", "gpus": 8, "days": 1}, None, "budget.peak_flops"),
    ({"flops": 1e22, "gpu": "h100_sxm", "gpus": 8, "days": 1}, None, "not both"),
    ({}, None, "no budget"),
    ({"gpu": "h100_sxm", "gpus": 8, "days": 1, "mfu": 1.5}, None, "budget.mfu"),
    ({"flops": 1e18}, 5e18, "pilots already spent"),
])
def test_bad_budgets_raise_one_line_user_errors(budget, pilot_flops, fragment):
    with pytest.raises(UserError) as err:
        resolve_budget(budget, pilot_flops=pilot_flops)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_every_table_gpu_has_a_dense_bf16_peak_and_memory():
    assert {"h100_sxm", "h100_pcie", "h200", "a100_80gb", "a100_40gb", "b200", "l40s", "mi300x"} <= set(GPUS)
    assert all(1e14 < g.peak_flops < 1e16 and g.memory_gb >= 40 for g in GPUS.values())


def test_7b_does_not_fit_one_80gb_gpu_and_needs_sharding():
    shape = shape_for_params(7e9, 32000, 2048)
    check = memory_check(shape, gpu_memory_gb=80, n_gpus=32)
    assert not check["fits_unsharded"]
    # 16 bytes x ~7e9 parameters ~ 112 GB of weights, gradients and AdamW states
    assert check["model_states_gb"] == pytest.approx(16 * check["n_params_total"] / 1e9)
    assert 105 < check["model_states_gb"] < 120
    assert check["parallelism"] == "fsdp" and check["shards"] == 2
    assert "FSDP/ZeRO-3 across 2 GPUs" in check["summary"]
    assert check["activations_gb"]["checkpointing"] < check["activations_gb"]["no_checkpointing"]


def test_100m_fits_one_gpu_and_huge_models_escalate():
    small = memory_check(shape_for_params(1e8, 32000, 2048), gpu_memory_gb=80)
    assert small["parallelism"] == "single_gpu" and small["fits_unsharded"]
    assert small["max_micro_batch_sequences"] >= 8
    long_context = memory_check(shape_for_params(7e10, 32000, 8192), micro_batch_sequences=16, gpu_memory_gb=80,
                                n_gpus=64)
    assert (long_context["parallelism"], long_context["tensor_parallel"]) == ("fsdp+checkpointing+tensor_parallel", 8)
    huge = memory_check(shape_for_params(2e11, 32000, 8192), micro_batch_sequences=4, gpu_memory_gb=80, n_gpus=8)
    assert huge["parallelism"] == "does_not_fit" and "add GPUs" in huge["summary"]


def test_cuda_device_names_map_to_their_peaks():
    from pipeline.plan.hardware import gpu_key_for_device_name, peak_flops_for_device_name

    assert gpu_key_for_device_name("NVIDIA H100 80GB HBM3") == "h100_sxm"
    assert gpu_key_for_device_name("NVIDIA H100 PCIe") == "h100_pcie"
    assert gpu_key_for_device_name("NVIDIA A100-SXM4-40GB") == "a100_40gb"
    assert peak_flops_for_device_name("NVIDIA H200") == 989e12
    assert peak_flops_for_device_name("Tesla T4") is None
