"""The GPU check, prepared for when a GPU is lent: what the CPU suite cannot measure, in one run of < 8 min on
an H100, written to one JSON file to commit (`bash scripts/gpu_check.sh`; docs/gpu_check.md).

    throughput   tokens/s and MFU (PaLM count, Chowdhery et al. 2022 App. B, against the table's dense bf16
                 peak, pipeline/plan/hardware.py) of models.Transformer at 20M, 124M and 1B total parameters,
                 V=50,257, T=2,048, bf16 autocast + fused AdamW, eager and torch.compile'd; random tokens
                 (speed does not depend on them)
    parity       the real engine (pipeline.train.run.execute) trains the same 20M-class run twice, bf16 and fp32,
                 200 optimizer steps on the standard-library corpus: final validation losses and their gap
    memory       a scaled-down full run written by `pipeline.fit` (law=epoch, budget.flops, full_run_preset=study:
                 a BPE vocabulary and T=2,048, no network) is dry-run (pipeline/train/dry_run.py) and then
                 trained for a few steps by the engine in this process: the dry run's peak GB per GPU against
                 torch.cuda.max_memory_allocated

Each section records its own elapsed time; a section that would start after the time budget is skipped and
says so, so the file always comes back. `--cpu-smoke` runs every section at toy sizes on the CPU (what the
test suite exercises: tests/test_gpu_check.py); its numbers mean nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.accounting import palm_mfu_flops_per_token  # noqa: E402
from models.sizing import parse_size, shape_for_params  # noqa: E402
from models.transformer import Transformer  # noqa: E402
from pipeline.config.load import load_config  # noqa: E402
from pipeline.config.schema import Study  # noqa: E402
from pipeline.plan.hardware import peak_flops_for_device_name  # noqa: E402
from pipeline.train.dry_run import dry_run  # noqa: E402
from pipeline.train.run import execute  # noqa: E402

GPU = {"sizes": {"20m": 16, "124m": 8, "1b": 4}, "vocab": 50257, "seq_len": 2048, "warmup": 3, "steps": 10,
       "parity_steps": 200, "parity_size": "20m", "parity_seq": 512, "memory_flops": 3e18, "memory_vocab": 4096,
       "budget_s": 420, "compile": True, "data": ["data.val_tokens=65536"]}
CPU_SMOKE = {"sizes": {"200k": 2}, "vocab": 512, "seq_len": 64, "warmup": 1, "steps": 2,
             "parity_steps": 12, "parity_size": "200k", "parity_seq": 64, "memory_flops": 1e13, "memory_vocab": 512,
             "budget_s": 600, "compile": False, "data": ["data.val_tokens=65536", "data.max_documents=300"]}  # compiling costs minutes on a shared CPU: eager only


def step_fn(model, optimizer, device):
    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def throughput(size: str, micro: int, compiled: bool, cfg: dict, device: torch.device) -> dict:
    shape = shape_for_params(parse_size(size), cfg["vocab"], cfg["seq_len"])
    model = Transformer(shape).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    run = torch.compile(model) if compiled else model
    step = step_fn(run, optimizer, device)
    x = torch.randint(0, shape.vocab_size, (micro, shape.seq_len + 1), device=device)
    started = time.perf_counter()
    for _ in range(cfg["warmup"]):
        step(x)
    sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(cfg["steps"]):
        step(x)
    sync(device)
    tokens_per_s = cfg["steps"] * micro * shape.seq_len / (time.perf_counter() - started)
    peak = peak_flops_for_device_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    palm = palm_mfu_flops_per_token(shape, shape.seq_len)
    return {"size": size, "params": model.num_params("total"), "shape": shape.describe(), "micro_batch": micro,
            "compile": compiled, "tokens_per_s": tokens_per_s, "warmup_s": warm_s,
            "mfu": tokens_per_s * palm / peak if peak else None,
            "max_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def study(overrides: list[str]) -> Study:
    return load_config("study", Study, overrides)


def parity(cfg: dict, device: torch.device, work: Path) -> dict:
    """The engine trains one run in bf16 and in fp32; same seed, data and steps. Each in its own process:
    accelerate fixes the mixed precision once per process."""
    common = ["data.source=stdlib", "data.vocab_size=512", *cfg["data"], f"data.cache_dir={work.parent / 'data'}",
              f"model.size={cfg['parity_size']}", f"model.seq_len={cfg['parity_seq']}", "train.compile=false",
              f"train.device={device.type}", "train.batch_tokens=" + str(16 * cfg["parity_seq"]),
              "train.tokens=" + str(16 * cfg["parity_seq"] * cfg["parity_steps"]), "train.evals_per_run=2",
              "train.progress=false", "tracking.mode=disabled"]
    out = {}
    for precision in ("bf16", "fp32"):
        run_dir = work / precision
        subprocess.run([sys.executable, "-m", "pipeline.train", *common, f"train.precision={precision}",
                        f"run_dir={run_dir}"], cwd=REPO, check=True, capture_output=True, text=True)
        record = json.loads((run_dir / "run.json").read_text())
        out[precision] = {"status": record["status"], "steps": record["steps_done"],
                          "final_val_loss": record["final_val_loss"], "tokens_per_s": record["tokens_per_s"]}
    bf16, fp32 = out["bf16"]["final_val_loss"], out["fp32"]["final_val_loss"]
    out["val_loss_gap"] = bf16 - fp32
    out["relative_gap"] = (bf16 - fp32) / fp32
    return out


def memory(cfg: dict, device: torch.device, work: Path) -> dict:
    """A full run from the fit, scaled down by its budget; the dry run's peak against the measured one."""
    fit_dir = work / "fit"
    data = ["data.source=stdlib", f"data.vocab_size={cfg['memory_vocab']}", *cfg["data"],
            f"data.cache_dir={work.parent / 'data'}"]  # one corpus cache for every section
    subprocess.run([sys.executable, "-m", "pipeline.fit", "law=epoch", f"budget.flops={cfg['memory_flops']:g}",
                    "full_run_preset=study", f"model.seq_len={cfg['seq_len']}", "bootstrap=0", *data,
                    f"out_dir={fit_dir}"], cwd=REPO, check=True, capture_output=True, text=True)
    overrides = [f"hydra.searchpath=[file://{fit_dir}]", "experiment=full_run", *data, "train.compile=false",
                 f"train.device={device.type}", "tracking.mode=disabled", "train.progress=false",
                 f"run_dir={work / 'full_run'}"]
    planned = dry_run(study(overrides))
    batch = planned["global_batch_tokens"]                 # a dozen optimizer steps at the full run's batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record = execute(study([*overrides, f"train.tokens={batch * 12}", f"train.warmup_tokens={batch}",
                            "train.evals_per_run=2"]))
    measured = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"dry_run": {k: planned[k] for k in ("params", "micro_batch_size", "grad_accum_steps", "eval_batch_size",
                                                 "seq_len", "peak_memory_gb_per_gpu", "train_peak_gb", "eval_peak_gb")},
            "status": record["status"], "steps": record["steps_done"], "measured_max_allocated_gb": measured,
            "measured_over_predicted": measured / planned["peak_memory_gb_per_gpu"] if measured else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/gpu_check.json", help="the JSON file to write (commit it)")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: checks the script, not a GPU")
    args = parser.parse_args()
    cfg = CPU_SMOKE if args.cpu_smoke else GPU
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("error: no GPU visible: run on a GPU machine, or use --cpu-smoke to check the script on a CPU")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    started = time.perf_counter()
    result = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else platform.processor() or "cpu", "torch": torch.__version__,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    jobs = [(f"throughput_{size}_{'compiled' if c else 'eager'}", lambda s=size, m=micro, c=c: throughput(s, m, c, cfg, device))
            for c in (False, True)[:1 + cfg["compile"]] for size, micro in cfg["sizes"].items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # memory first: it is the one engine run in this process (accelerate fixes its precision per process)
        jobs = [("memory_dry_run_vs_measured", lambda: memory(cfg, device, Path(tmp) / "memory")), *jobs,
                ("parity_bf16_fp32", lambda: parity(cfg, device, Path(tmp) / "parity"))]
        jobs.sort(key=lambda job: job[0].endswith("_compiled"))  # compiled throughput last: the slowest to start
        for name, job in jobs:
            if time.perf_counter() - started > cfg["budget_s"]:
                result["sections"][name] = {"skipped": f"past the {cfg['budget_s']} s budget"}
                continue
            t0 = time.perf_counter()
            try:
                result["sections"][name] = {**job(), "elapsed_s": time.perf_counter() - t0}
            except Exception as err:  # one failing section must not lose the others' numbers
                result["sections"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"{name}: {json.dumps(result['sections'][name])}", flush=True)
            result["elapsed_s"] = time.perf_counter() - started
            out.write_text(json.dumps(result, indent=2) + "\n")  # after every section: a kill keeps the rest
    print(f"wrote {out} ({result['elapsed_s']:.0f} s)")
    return 0 if not any("error" in s for s in result["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
