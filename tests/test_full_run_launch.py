"""The full run launches at the size it was sized for (issue 23): `pipeline.fit` writes a full_run.yaml whose
dry run (`python -m pipeline.train ... train.dry_run=true`) resolves it at the recorded world size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_fit_synthetic import isoflop_design, write_sweep

from models.accounting import palm_mfu_flops_per_token
from models.shape import ModelShape
from models.sizing import shape_for_params
from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw
from pipeline.plan.launch import plan_launch
from pipeline.plan.runspec import resolve_run
from pipeline.train.dry_run import dry_run

REPO = Path(__file__).resolve().parents[1]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def dry_run_json(fit_dir: Path, *overrides: str) -> dict:
    proc = run("pipeline.train", "--config-dir", str(fit_dir), "experiment=full_run", "train.dry_run=true", *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("gpus", [8, 32, 256])
def test_h100_budgets_write_a_full_run_that_dry_runs_at_its_world_size(gpus, tmp_path):
    fit_dir = tmp_path / "fit"
    proc = run("pipeline.fit", "law=epoch", "budget.gpu=h100_sxm", f"budget.gpus={gpus}", "budget.days=14",
               "bootstrap=0", f"out_dir={fit_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "MFU 0.40, assumed 0.40" in proc.stdout  # no budget.mfu: the stated default, said so
    full = yaml.safe_load((fit_dir / "experiment" / "full_run.yaml").read_text())
    train = full["train"]
    assert train["world_size"] == gpus and train["precision"] == "bf16" and train["compile"] is True
    assert train["device"] == "cuda" and full["budget"] == {"gpu": "h100_sxm", "gpus": gpus, "mfu": 0.4}
    assert full["data"]["source"] == "hf:HuggingFaceFW/fineweb-edu" and full["data"]["tokenizer"] == "gpt2"

    out = dry_run_json(fit_dir)
    assert out["world_size"] == gpus and out["precision"] == "bf16"
    assert out["micro_batch_size"] * out["grad_accum_steps"] * out["world_size"] * out["seq_len"] \
        == out["global_batch_tokens"] == train["batch_tokens"]
    assert out["peak_memory_gb_per_gpu"] < 80 and out["checkpoint_interval_s"] >= 600
    assert out["checkpoint_overhead"] <= 0.02 + 1e-9 and out["steps"] * out["global_batch_tokens"] == train["tokens"]
    # The budget line is the full run's PaLM count, the one the dry run times it with: 14 days launch 14 days.
    # What remains is whole steps (tokens move by at most half a batch, < 1e-5 of ~1e5 steps): 0.1% bounds it.
    assert out["est_days"] == pytest.approx(14, rel=1e-3)
    rec = json.loads((fit_dir / "recommendation.json").read_text())
    assert rec["count"]["name"] == "palm" and "law epoch is published as L(N, D)" in rec["count"]["why"]
    shape = ModelShape.from_dict(rec["model"]["shape"])
    assert rec["model"]["count_flops_per_token"] == palm_mfu_flops_per_token(shape, 2048)
    assert out["tokens"] == rec["model"]["tokens"] and out["params"] == rec["model"]["params"]["total"]
    assert rec["data"]["unique_tokens"] == 3.5e11  # the preset's corpus: epochs stated (more than one at 256 GPUs)
    assert (rec["data"]["epochs"] > 1) == (gpus == 256)


def test_kaplans_frontier_and_a_table_without_shapes_launch_the_days_they_were_sized_for(tmp_path):
    """Kaplan's N_opt(C) keeps its 6ND count, a CSV's fit keeps the table's C for its approaches; the tokens of
    both are the budget over the full run's PaLM count, so the dry run says 14 days."""
    rows = isoflop_design()
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss,flops\n" + "".join(f"{r['n']},{r['tokens']},{r['loss']},{r['budget']}\n"
                                                           for r in rows))
    hardware = ["budget.gpu=h100_sxm", "budget.gpus=8", "budget.days=14", "bootstrap=0"]
    for name, source, why in (("kaplan", "law=kaplan", "compute frontier N_opt(C) fitted with C = 6 N D"),
                              ("csv", f"runs={csv}", "carry no shape")):
        fit_dir = tmp_path / name
        proc = run("pipeline.fit", source, *hardware, f"out_dir={fit_dir}")
        assert proc.returncode == 0, proc.stderr
        rec = json.loads((fit_dir / "recommendation.json").read_text())
        assert rec["count"]["name"] == "palm" and why in rec["count"]["why"]
        assert dry_run_json(fit_dir)["est_days"] == pytest.approx(14, rel=1e-3)
    # The CSV's approaches keep its own count (its flops column: C = 1.1 x 6 N D, Chinchilla eq. 4 at C / 1.1);
    # the decision is on the full run's PaLM line
    fit = rec["approaches"]["parametric"]
    law = ParametricLaw(*(rec["law"][k] for k in ("E", "A", "B", "alpha", "beta")))
    assert "Approaches 1 and 2" in fit["allocation_rule"] and "palm count" in rec["allocation_rule"]
    assert fit["n_opt"] == pytest.approx(float(law.optimal_allocation(rec["budget"]["flops"] / 1.1)[0]), rel=1e-3)
    assert abs(rec["n_opt"] / fit["n_opt"] - 1) > 1e-3
    assert "The approaches' N_opt and D_opt:" in (tmp_path / "csv" / "report.md").read_text()


def test_a_launch_that_cannot_fit_is_refused_with_what_to_change(tmp_path):
    fit_dir = tmp_path / "fit"
    assert run("pipeline.fit", "law=epoch", "budget.gpu=h100_sxm", "budget.gpus=32", "budget.days=14",
               "bootstrap=0", f"out_dir={fit_dir}").returncode == 0
    proc = run("pipeline.train", "--config-dir", str(fit_dir), "experiment=full_run", "train.dry_run=true",
               "train.micro_batch_size=8", "train.batch_tokens=4194304")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    suggested = int(re.search(r"set train\.micro_batch_size=(\d+)", proc.stderr).group(1))
    # the largest micro-batch that fits: below the refused 8, at least the one the fit's memory check wrote
    written = yaml.safe_load((fit_dir / "experiment" / "full_run.yaml").read_text())["train"]["micro_batch_size"]
    assert written <= suggested < 8
    proc = run("pipeline.train", "--config-dir", str(fit_dir), "experiment=full_run", "train.dry_run=true",
               "train.parallelism=ddp")
    assert proc.returncode == 2 and "train.parallelism=fsdp" in proc.stderr


def test_every_run_rounds_the_rules_batch_to_micro_batches_on_every_process():
    """`accelerate launch --num_processes 2 -m pipeline.train model=tiny` used to refuse the rule's batch."""
    job = load_config("study", Study, ["model=tiny"])
    one, two = resolve_run(job, 512, world_size=1), resolve_run(job, 512, world_size=3)
    assert (two.batch_tokens // 128) % 3 == 0 and two.micro_batch_size * two.grad_accum * 3 * 128 == two.batch_tokens
    assert abs(two.batch_tokens - one.batch_tokens) <= 128 * 3 / 2 and "processes" in two.batch_note
    micro = load_config("study", Study, ["model=tiny", "train.micro_batch_size=4"])
    spec = resolve_run(micro, 512, world_size=2)
    assert spec.batch_tokens % (4 * 2 * 128) == 0 and spec.micro_batch_size == 4
    given = load_config("study", Study, ["model=tiny", "train.batch_tokens=1664"])  # 13 sequences: never moved
    with pytest.raises(UserError, match="micro_batch_size to a divisor"):
        resolve_run(given, 512, world_size=2)
    recorded = load_config("study", Study, ["model=tiny", "train.world_size=4"])
    with pytest.raises(UserError, match="launch 4 processes, or set train.world_size=2"):
        resolve_run(recorded, 512, world_size=2)


def test_the_batch_split_lands_closest_to_the_rule_with_micro_batches_at_least_half_the_largest():
    """The minimum accumulation alone rounded 100 sequences on 8 GPUs, 2 fitting, to 2 x 7 x 8 = 112 (+12%)."""
    from pipeline.plan.launch import split_batch

    assert split_batch(100, 8, 2) == (2, 6)              # 96 sequences, -4%
    assert split_batch(1024, 8, 16) == (16, 8)           # exact when the rule divides
    assert split_batch(24, 8, 16) == (3, 1)              # the share is below what fits: no accumulation
    for rule in range(16, 2048, 13):
        for world in (1, 8, 32):
            for fits in (1, 2, 3, 5, 8, 16):
                micro, accum = split_batch(rule, world, fits)
                share = max(rule / world, 1.0)
                top = max(1, min(fits, -(-rule // world)))
                assert 1 <= micro <= fits and 2 * micro >= top and accum >= 1
                # no micro-batch in [top/2, top] with its nearest accumulation comes closer
                best = min(abs(m * max(1, round(share / m)) - share) for m in range((top + 1) // 2, top + 1))
                assert abs(micro * accum - share) == pytest.approx(best)


def test_the_demos_full_run_keeps_the_pilots_tied_embeddings_and_dry_runs(tmp_path):
    """The demo's fit (experiment=cpu_tiny: its budgets, V=512, T=128, budget 1e15) on a tiny pilot results folder
    (tests/test_fit_synthetic.py) whose runs were trained with tied embeddings."""
    rows = isoflop_design(budgets=(5e11, 1e12, 2e12), sizes=5)
    write_sweep(tmp_path, rows)
    for run_json in (tmp_path / "sweep" / "runs").glob("*/run.json"):
        record = json.loads(run_json.read_text())
        record["shape"]["tie_embeddings"] = True
        run_json.write_text(json.dumps(record))
    fit_dir = tmp_path / "fit"
    proc = run("pipeline.fit", "experiment=cpu_tiny", f"results_dir={tmp_path}", "sweep_name=sweep", "bootstrap=0",
               "model.init_std=0.01", f"out_dir={fit_dir}")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((fit_dir / "recommendation.json").read_text())
    assert rec["model"]["shape"]["tie_embeddings"] is True and rec["model"]["params"]["head"] == 0
    full = yaml.safe_load((fit_dir / "experiment" / "full_run.yaml").read_text())
    assert full["model"]["tie_embeddings"] is True and full["model"]["init_std"] == 0.01
    out = dry_run_json(fit_dir)
    assert out["params"] == rec["model"]["params"]["total"] and out["world_size"] == 1 and out["seq_len"] == 128
    assert full["data"]["source"] == "stdlib" and full["train"]["precision"] == "bf16"  # the pilots' corpus, GPU preset
    assert out["micro_batch_size"] * out["grad_accum_steps"] * out["seq_len"] == out["global_batch_tokens"]


def test_dry_run_needs_no_data_and_no_process_group():
    job = load_config("study", Study, ["model=gpu", "model.size=124m", "train=gpu", "data.tokenizer=gpt2",
                                       "data.source=hf:nowhere/never", "data.max_train_tokens=1000000000",
                                       "train.tokens=1000000000", "train.world_size=8", "train.micro_batch_size=4"])
    out = dry_run(job)
    assert out["world_size"] == 8 and out["grad_accum_steps"] * 4 * 8 * 2048 == out["global_batch_tokens"]


def test_micro_and_eval_batches_come_from_memory_and_odd_node_counts_are_refused():
    shape = shape_for_params(1e9, 50257, 2048)
    launch = plan_launch(shape, 256, 1, gpu_memory_gb=40.0)   # 16 GB of states on a 40 GB GPU
    assert 1 <= launch.eval_batch_size < 32 and 1 <= launch.micro_batch_size < 256 and not launch.problems
    assert max(launch.train_peak_gb, launch.eval_peak_gb) <= launch.usable_gb
    assert launch.micro_batch_size * launch.grad_accum_steps == launch.global_batch_sequences
    bigger = plan_launch(shape, 256, 1, gpu_memory_gb=40.0, eval_batch_size=32)
    assert "set train.eval_batch_size=" in bigger.problems[0]
    assert "whole 8-GPU nodes" in plan_launch(shape, 256, 12).problems[0]


def test_a_gpu_days_budget_with_pilots_launches_the_days_it_names(tmp_path):
    """GPUs x days is PaLM FLOPs (MFU is defined on them): with pilots in the exact count the run is sized on the
    PaLM line of their family, so the dry run, which times PaLM FLOPs, states the budget's days. On the pilots'
    exact line it launched fewer days than named (the exact count also charges the embedding lookup)."""
    write_sweep(tmp_path, isoflop_design(budgets=(5e11, 1e12, 2e12), sizes=5))
    fit_dir = tmp_path / "fit"
    proc = run("pipeline.fit", "experiment=cpu_tiny", f"results_dir={tmp_path}", "sweep_name=sweep", "bootstrap=0",
               "budget.flops=null", "budget.gpu=h100_sxm", "budget.gpus=8", "budget.days=2e-5", f"out_dir={fit_dir}")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((fit_dir / "recommendation.json").read_text())
    assert rec["count"]["name"] == "palm" and "PaLM line of the pilots' family" in rec["count"]["why"]
    shape = ModelShape.from_dict(rec["model"]["shape"])
    assert rec["model"]["count_flops_per_token"] == palm_mfu_flops_per_token(shape, 128)
    tokens_row = next(d for d in rec["differences"] if d["setting"] == "tokens")
    assert "palm FLOPs per token" in tokens_row["why"]   # not "the same count" as the pilots' exact one
    out = dry_run_json(fit_dir)
    assert out["est_days"] == pytest.approx(2e-5, rel=2e-3) and out["tokens"] == rec["model"]["tokens"]   # whole steps of a tiny run: within 0.2%
    given = tmp_path / "given"                                 # the same budget as FLOPs stays in the pilots' count
    proc = run("pipeline.fit", "experiment=cpu_tiny", f"results_dir={tmp_path}", "sweep_name=sweep", "bootstrap=0",
               f"budget.flops={rec['budget']['flops']}", f"out_dir={given}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((given / "recommendation.json").read_text())["count"]["name"] == "exact"


def test_an_fsdp_full_run_says_its_numerics_differ_from_the_pilots():
    """FSDP2 gathers bf16 parameters (residual stream bf16); the pilots' autocast kept it fp32 (docs/multiprocess.md)."""
    from pipeline.decide.full_run import differences

    model = {"describe": "L=32 d=4096", "tokens": 10**12, "lr": 3e-4, "batch_tokens": 2**22, "precision": "bf16",
             "launch": {"parallelism": "fsdp", "world_size": 256}}
    target = {"tokenizer": "gpt2", "vocab_size": 50257, "seq_len": 2048, "source": "pilots"}
    rows = {r["setting"]: r for r in differences({"precision": "bf16", "device": "cuda"}, model, target)}
    assert rows["parallelism"]["full_run"] == "FSDP2 over 256 GPUs" and "residual stream is bf16" in rows["parallelism"]["why"]
    model["launch"] = {"parallelism": "ddp", "world_size": 8}
    assert "parallelism" not in {r["setting"] for r in differences({"precision": "bf16", "device": "cuda"}, model, target)}
