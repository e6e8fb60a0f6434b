"""Hyperparameters as functions of scale — one explicit, cited rule used by pilots and the full run.

A scaling law is only as right as the hyperparameters of the runs it is fitted on: a learning rate
or batch that is good for one size and bad for another bends the law (Porian et al. 2024, "Resolving
discrepancies in compute-optimal scaling of language models"; DeepSeek-AI 2024, "DeepSeek LLM", sec. 3.1).

LR and batch rules (`train.hparam_rule`; every run records which one set its values, docs/hparams.md):

* steplaw2025 (the default) — Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter
  Scaling Law in Large Language Model Pretraining" (Step Law), their fitted form:
      lr_opt    = 1.79 * N ** -0.713 * D ** 0.307
      batch_opt = 0.58 * D ** 0.571               (tokens)
  N non-embedding parameters, D training tokens. Fitted on dense models of N 2.1e8-1.1e9 and D 4e9-1e11.
  Chosen as the default because it has the lowest measured loss penalty on the released sweeps
  (scripts/score_hparam_rules.py: median 0.17% over each (N, D) group's best, against 0.73% for
  deepseek2024; in-sample for steplaw2025, see docs/hparams.md).
* deepseek2024 — DeepSeek LLM 2024, eq. 1, fitted on their IsoFLOP sweeps of C 1e17-2e19 FLOPs:
      lr_opt     = 0.3118 * C ** -0.1250
      batch_opt  = 0.2920 * C **  0.3271      (tokens)
  C is the run's training compute. DeepSeek count C = M*D with M the non-embedding FLOPs per token
  including attention; we pass the run's exact FLOPs (models.accounting), which at CPU scale also
  count the embedding/head matmuls. It depends on C alone: every size of one IsoFLOP budget gets the
  same LR, although the best LR depends on N and D separately.
* a path to an `lr_law.json` written by the LR probe's fit (pipeline/fit/lr_law.py): the pilots' own
  calibration, lr_opt = a * N ** b * D ** c, fitted where no published sweep reaches; the batch comes
  from the rule the probe ran under (recorded in the file).

Every rule is rounded to whole sequences (at least one). The extrapolation distance of a run from the
rule's data (decades beyond its fitted range, on the axis furthest out) is recorded with it.
* Warmup — Porian et al. 2024, sec. 3.2: a warmup of N tokens (N = parameters), instead of Kaplan's
  long fixed warmup, which penalised small models. Capped at 25% of the run so tiny runs still decay.
* AdamW beta2 — Porian et al. 2024, sec. 3.4: small batches need beta2 close to 1 (they used 0.99
  and 0.999 at small batch sizes); 0.95 is the usual large-batch value (Chinchilla, LLaMA).
  We use 0.999 below 2**16 tokens per batch, 0.99 below 2**20 tokens, else 0.95.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from pipeline.plan.lr_rules import (
    DEEPSEEK_BATCH_TOKENS,
    DEEPSEEK_LR,
    RULES,
    HparamRule,
    Scale,
    load_rule,
)

__all__ = ["DEEPSEEK_BATCH_TOKENS", "DEEPSEEK_LR", "DEFAULT_RULE", "RULES", "HparamRule", "Hyperparameters",
           "Scale", "batch_tokens_for_compute", "beta2_for_batch", "load_rule", "lr_for_compute",
           "resolve_hyperparameters", "warmup_tokens_for"]

DEFAULT_RULE = "steplaw2025"
WARMUP_MAX_FRACTION = 0.25


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
    rule: str = DEFAULT_RULE            # the LR/batch rule (train.hparam_rule) that set unset values
    rule_range: str = ""                # the data behind that rule (its fitted range)
    extrapolation_decades: float = 0.0  # how far this run's (N, D, C) lies beyond that range
    rule_law: dict = field(default_factory=dict)  # the rule itself (HparamRule.to_dict): the full run reuses it

    def to_dict(self) -> dict:
        return asdict(self)


def lr_for_compute(flops: float) -> float:
    return RULES["deepseek2024"].lr(Scale(flops=flops, n_params=1.0, n_params_non_embedding=None, run_tokens=1.0))


def batch_tokens_for_compute(flops: float, seq_len: int) -> int:
    """DeepSeek's batch rule, rounded to whole sequences (at least one)."""
    scale = Scale(flops=flops, n_params=1.0, n_params_non_embedding=None, run_tokens=1.0)
    return _whole_sequences(RULES["deepseek2024"].batch_tokens(scale), seq_len)


def _whole_sequences(tokens: float, seq_len: int) -> int:
    return max(1, round(tokens / seq_len)) * seq_len


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
    n_params_non_embedding: int | None = None,
    rule: str | HparamRule = DEFAULT_RULE,
    lr: float | None = None,
    batch_tokens: int | None = None,
    warmup_tokens: int | None = None,
    beta2: float | None = None,
) -> Hyperparameters:
    """Fill every unset hyperparameter from the rules above; explicit values win and are labelled.

    n_params is the total parameter count (warmup); rules that need the non-embedding count read
    n_params_non_embedding, and fall back to n_params (labelled so) when it is not given.
    """
    chosen = rule if isinstance(rule, HparamRule) else load_rule(rule)
    scale = Scale(flops=float(flops), n_params=float(n_params), run_tokens=float(run_tokens),
                  n_params_non_embedding=None if n_params_non_embedding is None else float(n_params_non_embedding))

    def pick(value, rule_value, rule_label):
        return (value, "override") if value is not None else (rule_value, rule_label)

    lr_value, lr_src = pick(lr, chosen.lr(scale), chosen.lr_label(scale))
    batch_value, batch_src = pick(batch_tokens, _whole_sequences(chosen.batch_tokens(scale), seq_len),
                                  chosen.batch_label(scale))
    warm_value, warm_src = pick(warmup_tokens, warmup_tokens_for(n_params, run_tokens),
                                "Porian et al. 2024: N tokens, <=25% of run")
    rule_beta2 = beta2_for_batch(int(batch_value))
    beta2_label = (f"Porian et al. 2024: beta2 {rule_beta2} for {int(batch_value)}-token batches"
                   + (" (small batches need beta2 near 1)" if rule_beta2 > 0.95 else " (large batch: the usual 0.95)"))
    beta2_value, beta2_src = pick(beta2, rule_beta2, beta2_label)
    if not math.isfinite(lr_value) or lr_value <= 0:
        raise ValueError(f"learning rate {lr_value} must be positive")
    return Hyperparameters(float(lr_value), int(batch_value), int(warm_value), float(beta2_value),
                           lr_src, batch_src, warm_src, beta2_src, rule=chosen.name,
                           rule_range=chosen.fitted_range, extrapolation_decades=round(chosen.decades_beyond(scale), 2),
                           rule_law=chosen.to_dict())
