"""Hyperparameters as functions of scale — one explicit, cited rule used by pilots and the full run.

A scaling law is only as right as the hyperparameters of the runs it is fitted on: a learning rate
or batch that is good for one size and bad for another bends the law (Porian et al. 2024, "Resolving
discrepancies in compute-optimal scaling of language models"; DeepSeek-AI 2024, "DeepSeek LLM", sec. 3.1).

Rules (each overridable in `train.*`; the record stores the value used and which rule produced it):

* Learning rate and batch size — DeepSeek LLM 2024, eq. 1, fitted on their IsoFLOP sweeps:
      lr_opt     = 0.3118 * C ** -0.1250
      batch_opt  = 0.2920 * C **  0.3271      (tokens)
  C is the run's training compute in FLOPs. DeepSeek count C = M*D with M the non-embedding FLOPs
  per token including attention; we pass the run's exact FLOPs (models.accounting), which at CPU
  scale also count the embedding/head matmuls. The batch is rounded to whole sequences.
* Warmup — Porian et al. 2024, sec. 3.2: a warmup of N tokens (N = parameters), instead of Kaplan's
  long fixed warmup, which penalised small models. Capped at 25% of the run so tiny runs still decay.
* AdamW beta2 — Porian et al. 2024, sec. 3.4: small batches need beta2 close to 1 (they used 0.99
  and 0.999 at small batch sizes); 0.95 is the usual large-batch value (Chinchilla, LLaMA).
  We use 0.999 below 2**16 tokens per batch, 0.99 below 2**20 tokens, else 0.95.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DEEPSEEK_LR = (0.3118, -0.1250)
DEEPSEEK_BATCH_TOKENS = (0.2920, 0.3271)
WARMUP_MAX_FRACTION = 0.25
RULE_NAME = "deepseek2024-lr-batch+porian2024-warmup-beta2"


@dataclass(frozen=True)
class Hyperparameters:
    lr: float
    batch_tokens: int
    warmup_tokens: int
    beta2: float
    lr_source: str
    batch_source: str
    warmup_source: str
    beta2_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def lr_for_compute(flops: float) -> float:
    coef, exponent = DEEPSEEK_LR
    return coef * flops**exponent


def batch_tokens_for_compute(flops: float, seq_len: int) -> int:
    """DeepSeek's batch rule, rounded to whole sequences (at least one)."""
    coef, exponent = DEEPSEEK_BATCH_TOKENS
    sequences = max(1, round(coef * flops**exponent / seq_len))
    return sequences * seq_len


def warmup_tokens_for(n_params: int, run_tokens: int) -> int:
    return int(min(n_params, WARMUP_MAX_FRACTION * run_tokens))


def beta2_for_batch(batch_tokens: int) -> float:
    if batch_tokens < 2**16:
        return 0.999
    if batch_tokens < 2**20:
        return 0.99
    return 0.95


def resolve_hyperparameters(
    *,
    flops: float,
    n_params: int,
    run_tokens: int,
    seq_len: int,
    lr: float | None = None,
    batch_tokens: int | None = None,
    warmup_tokens: int | None = None,
    beta2: float | None = None,
) -> Hyperparameters:
    """Fill every unset hyperparameter from the rules above; explicit values win and are labelled."""

    def pick(value, rule_value, rule_label):
        return (value, "override") if value is not None else (rule_value, rule_label)

    lr_value, lr_src = pick(lr, lr_for_compute(flops), "DeepSeek LLM 2024 eq.1: 0.3118*C^-0.125")
    batch_value, batch_src = pick(batch_tokens, batch_tokens_for_compute(flops, seq_len),
                                  "DeepSeek LLM 2024 eq.1: 0.2920*C^0.3271 tokens")
    warm_value, warm_src = pick(warmup_tokens, warmup_tokens_for(n_params, run_tokens),
                                "Porian et al. 2024: N tokens, <=25% of run")
    rule_beta2 = beta2_for_batch(int(batch_value))
    beta2_label = (f"Porian et al. 2024: beta2 {rule_beta2} for {int(batch_value)}-token batches"
                   + (" (small batches need beta2 near 1)" if rule_beta2 > 0.95 else " (large batch: the usual 0.95)"))
    beta2_value, beta2_src = pick(beta2, rule_beta2, beta2_label)
    if not math.isfinite(lr_value) or lr_value <= 0:
        raise ValueError(f"learning rate {lr_value} must be positive")
    return Hyperparameters(float(lr_value), int(batch_value), int(warm_value), float(beta2_value),
                           lr_src, batch_src, warm_src, beta2_src)
