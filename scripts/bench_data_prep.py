"""Data-stage measurements: preparation time of the default corpus, and why a 512-token vocabulary.

1. Prepares the default corpus (standard library, 512-token BPE) into a temporary cache with all
   cores, then again with one tokenizer thread (RAYON_NUM_THREADS=1, in a subprocess), and prints
   times, token counts and the ratio.
2. For vocabularies 257 (bytes + end-of-document), 512, 1024 and 4096: trains a BPE on 8 MB of
   stdlib text, measures characters per token on 2 MB of other files, and times training steps of
   one tiny model (4 layers, d_model 64, seq 128, batch 32 x 128 tokens, fp32, AdamW) whose only
   difference is the vocabulary. Rounds alternate between vocabularies so machine drift hits all,
   and the fastest round counts (other processes on a shared machine can only slow a round down).
   Text per second = tokens/s x characters/token.

    python scripts/bench_data_prep.py            # ~2 minutes on 2 cores
    python scripts/bench_data_prep.py --skip-prep --cpu-time   # vocab table only, 1 thread, CPU seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCABS = (257, 512, 1024, 4096)
PREPARE = ("import json, sys, time; from pipeline.data import DataConfig, prepare_corpus; t = time.perf_counter(); "
           "m = prepare_corpus(DataConfig(cache_dir=sys.argv[1])); "
           "print(json.dumps({'s': time.perf_counter() - t, 'train': m.train_tokens, 'val': m.val_tokens}))")


def time_preparation(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", PREPARE, cache], env=env, check=True,
                             capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _first_chars(docs: list[str], limit: int) -> list[str]:
    taken, chars = [], 0
    for text in docs:
        if chars >= limit:
            break
        taken.append(text)
        chars += len(text)
    return taken


def stdlib_texts() -> tuple[list[str], list[str]]:
    """~8 MB of stdlib files to train each BPE on, and ~2 MB of other files to measure it on."""
    from pipeline.data.corpus import stdlib_files

    _, files = stdlib_files()
    texts = [p.read_text(errors="replace") for p in files[::2]]  # every other file: a spread sample
    train = [t for i, t in enumerate(texts) if i % 5]
    held_out = [t for i, t in enumerate(texts) if i % 5 == 0]
    return _first_chars(train, 8 * 2**20), _first_chars(held_out, 2 * 2**20)


def chars_per_token(train: list[str], held_out: list[str], vocab: int) -> float:
    from pipeline.data.tokenizer import train_bpe

    tokenizer, _ = train_bpe(train, vocab)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(held_out, add_special_tokens=False))
    return sum(map(len, held_out)) / tokens


def training_tokens_per_s(rounds: int, steps: int, cpu_time: bool) -> dict[int, float]:
    import torch
    import torch.nn.functional as F

    from models.shape import ModelShape
    from models.transformer import Transformer

    torch.set_num_threads(1 if cpu_time else 2)
    clock = time.process_time if cpu_time else time.perf_counter
    torch.manual_seed(0)
    batch, seq_len = 32, 128
    setups = {}
    for vocab in VOCABS:
        model = Transformer(ModelShape(n_layer=4, d_model=64, n_heads=4, d_ff=176, vocab_size=vocab, seq_len=seq_len))
        setups[vocab] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                         torch.randint(0, vocab, (batch, seq_len + 1)))

    def run(vocab: int, n: int) -> float:
        model, optimizer, data = setups[vocab]
        started = clock()
        for _ in range(n):
            logits = model(data[:, :-1])
            loss = F.cross_entropy(logits.view(-1, vocab), data[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return n * batch * seq_len / (clock() - started)

    for vocab in VOCABS:
        run(vocab, 3)  # warm-up
    samples = {vocab: [] for vocab in VOCABS}
    for _ in range(rounds):
        for vocab in VOCABS:
            samples[vocab].append(run(vocab, steps))
    non_embedding = sum(p.numel() for n, p in setups[512][0].named_parameters() if not n.startswith(("embed", "head")))
    print(f"model: 4 layers, d_model 64, {non_embedding:,} non-embedding parameters; batch {batch} x {seq_len}")
    return {vocab: max(v) for vocab, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-prep", action="store_true", help="skip the two corpus preparations (~40 s)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cpu-time", action="store_true",
                        help="one torch thread, timed in process CPU seconds: robust on a machine shared with other jobs")
    args = parser.parse_args()
    if not args.skip_prep:
        ours, single = time_preparation(None), time_preparation(1)
        print(f"prepare default corpus: {ours['s']:.1f} s all cores, {single['s']:.1f} s one tokenizer thread "
              f"(x{single['s'] / ours['s']:.2f}); {ours['train']:,} train + {ours['val']:,} val tokens")
    train, held_out = stdlib_texts()
    ratios = {vocab: chars_per_token(train, held_out, vocab) for vocab in VOCABS}
    speeds = training_tokens_per_s(args.rounds, args.steps, args.cpu_time)
    print(f"{'vocab':>6} {'tokens/s':>9} {'vs 512':>7} {'chars/token':>12} {'chars/s':>9} {'vs 512':>7}")
    for vocab in VOCABS:
        text_speed = speeds[vocab] * ratios[vocab]
        print(f"{vocab:>6} {speeds[vocab]:>9,.0f} {speeds[vocab] / speeds[512]:>7.2f} {ratios[vocab]:>12.2f} "
              f"{text_speed:>9,.0f} {text_speed / (speeds[512] * ratios[512]):>7.2f}")


if __name__ == "__main__":
    main()
