"""Training-step throughput: models.Transformer vs transformers.LlamaForCausalLM at equal shapes.

One step = forward + cross-entropy + backward + AdamW step, fp32, on the CPU with 2 threads (or on a
GPU with --device cuda). Both models hold the same weights (the HF one is exported by models.hf_io)
and see the same batches; the loss is computed outside both so only the modules differ. After a few
warm-up steps, rounds of timed steps alternate between the two models so drift in machine speed hits
both; the median round gives tokens/s.

    python scripts/bench_model_throughput.py                      # prints a markdown table (~2 min)
    python scripts/bench_model_throughput.py --write docs/model_throughput.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from models.accounting import count_params  # noqa: E402
from models.hf_io import to_hf_llama  # noqa: E402
from models.sizing import shape_for_name  # noqa: E402
from models.transformer import Transformer  # noqa: E402


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, is_hf: bool, vocab_size: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits = model(input_ids=inputs, use_cache=False).logits if is_hf else model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step, batches, device: torch.device) -> float:
    """Seconds per step over the given batches."""
    _synchronize(device)
    start_s = time.perf_counter()
    for inputs, targets in batches:
        step(inputs, targets)
    _synchronize(device)
    return (time.perf_counter() - start_s) / len(batches)


def bench_size(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    shape = shape_for_name(name, args.vocab_size, args.seq_len)
    ours = Transformer(shape)
    ours.init_weights(seed=0)
    hf = to_hf_llama(ours)
    ours, hf = ours.to(device).train(), hf.to(device).train()
    generator = torch.Generator().manual_seed(0)
    rows = args.batch_tokens // args.seq_len
    batches = [
        tuple(
            t.to(device)
            for t in torch.randint(0, args.vocab_size, (2, rows, args.seq_len), generator=generator).unbind(0)
        )
        for _ in range(4)
    ]
    steps = {"ours": make_step(ours, False, args.vocab_size), "hf": make_step(hf, True, args.vocab_size)}
    warm_s = {key: time_steps(step, batches[: args.warmup_steps], device) for key, step in steps.items()}
    # Enough steps per round that one round lasts ~round_s for the slower model.
    steps_per_round = max(1, round(args.round_s / max(warm_s.values())))
    round_batches = [batches[i % len(batches)] for i in range(steps_per_round)]
    per_step_s: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        for key, step in steps.items():
            per_step_s[key].append(time_steps(step, round_batches, device))
    tokens_per_step = rows * args.seq_len
    ours_tps = tokens_per_step / statistics.median(per_step_s["ours"])
    hf_tps = tokens_per_step / statistics.median(per_step_s["hf"])
    return {
        "name": name,
        "shape": shape.describe(),
        "total_params": count_params(shape)["total"],
        "ours_tokens_per_s": ours_tps,
        "hf_tokens_per_s": hf_tps,
        "ratio": ours_tps / hf_tps,
        "steps_timed": steps_per_round * args.rounds,
    }


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def render(results: list[dict], args: argparse.Namespace, device: torch.device, elapsed_s: float) -> str:
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    lines = [
        f"Date: {datetime.date.today().isoformat()}. Machine: {machine}. fp32, AdamW, "
        f"vocab {args.vocab_size}, seq {args.seq_len}, {args.batch_tokens} tokens/step. "
        f"torch {torch.__version__}, transformers {transformers.__version__}. Run time {elapsed_s:.0f} s.",
        "",
        "| size | shape | total params | ours tokens/s | HF Llama tokens/s | ours / HF | steps timed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['shape']} | {r['total_params']:,} | {r['ours_tokens_per_s']:,.0f} | "
            f"{r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f} | {r['steps_timed']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50k,200k,1m,5m", help="comma-separated names of NAMED_SIZES")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-s", type=float, default=2.0, help="target seconds per timed round")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start_s = time.perf_counter()
    results = []
    for name in args.sizes.split(","):
        results.append(bench_size(name.strip(), args, device))
        r = results[-1]
        print(f"{r['name']}: ours {r['ours_tokens_per_s']:,.0f} tok/s, HF {r['hf_tokens_per_s']:,.0f} tok/s", flush=True)
    table = render(results, args, device, time.perf_counter() - start_s)
    print(table)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(
            "# Model throughput: ours vs transformers' LlamaForCausalLM\n\n"
            "Printed by `scripts/bench_model_throughput.py` (training steps: forward, loss, backward, AdamW).\n\n"
            + table
            + "\n"
        )


if __name__ == "__main__":
    main()
