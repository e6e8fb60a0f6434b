"""Metrics recorded beside the validation loss, at the same evaluation points (`eval` config section).

    suite = build_suite(job.eval, manifest, seq_len)        # once per run, before training
    metrics = suite.evaluate(model, device, autocast)      # at every evaluation point
    -> {"<set>_loss": ..., "<task>_bpb": ..., "<task>_acc": ..., "<task>_acc_norm": ...}

Names follow the convention the fit reads from any runs table (pipeline/fit/targets.py):
* `<set>_loss`: mean per-token cross-entropy (nats) over a named validation set, in windows of the
  model's seq_len exactly as the main validation set (pipeline.data.sampler.validation_batches);
* `<task>_bpb`: bits per byte of the correct choice given the question, averaged over questions
  (the OLMo ladder's task loss, Bhagia et al. 2024 sec. 3.1: -log p(correct) / (ln 2 x its UTF-8 bytes));
* `<task>_acc`: the choice of highest summed log-likelihood is the answer (ranked classification);
* `<task>_acc_norm`: the same with log-likelihood per character of the choice (OLMES / lm-eval
  `acc_norm`, which the OLMo ladder reports as `len_norm`).
The tasks and sets are pipeline/data/tasks.py's; every run of a sweep scores the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.manifest import Manifest, load_tokenizer
from pipeline.data.tasks import Task, bits_per_byte, bytes_of, load_tasks, parse_val_set, val_set_tokens
from pipeline.errors import UserError

BATCH_ROWS = 64


@dataclass
class _ScoredTask:
    task: Task
    inputs: torch.Tensor      # [pairs, length] token ids (right-padded)
    targets: torch.Tensor     # [pairs, length] next-token ids
    mask: torch.Tensor        # [pairs, length] 1 on the choice's tokens
    question_of: np.ndarray   # pair -> question index
    choice_of: np.ndarray     # pair -> choice index
    choice_bytes: np.ndarray  # pair -> UTF-8 bytes of the choice
    choice_chars: np.ndarray  # pair -> characters of the choice


@dataclass
class EvalSuite:
    val_sets: dict[str, list] = field(default_factory=dict)   # name -> [(x, y), ...] batches
    tasks: list[_ScoredTask] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.val_sets or self.tasks)

    def describe(self) -> dict:
        """For run.json: what each metric was computed on (chance levels for the accuracy fits)."""
        return {"val_sets": {name: {"tokens": int(sum(y.numel() for _, y in batches))}
                             for name, batches in self.val_sets.items()},
                "tasks": {t.task.name: t.task.describe() for t in self.tasks}}

    @torch.no_grad()
    def evaluate(self, model, device, autocast) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for name, batches in self.val_sets.items():
            out[f"{name}_loss"] = _mean_loss(model, batches, device, autocast)
        for scored in self.tasks:
            out.update(_score_task(model, scored, device, autocast))
        model.train(was_training)
        return out


def _mean_loss(model, batches, device, autocast) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += y.numel()
    return total / count


def _choice_loglik(model, scored: _ScoredTask, device, autocast) -> np.ndarray:
    """Summed log-probability of each (question, choice) pair's choice tokens."""
    out = []
    for lo in range(0, len(scored.inputs), BATCH_ROWS):
        x = scored.inputs[lo:lo + BATCH_ROWS].to(device)
        y = scored.targets[lo:lo + BATCH_ROWS].to(device)
        m = scored.mask[lo:lo + BATCH_ROWS].to(device)
        with autocast():
            logits = model(x)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        out.append((logp * m).sum(dim=1).cpu().double().numpy())
    return np.concatenate(out)


def _score_task(model, scored: _ScoredTask, device, autocast) -> dict[str, float]:
    ll = _choice_loglik(model, scored, device, autocast)
    n_questions = len(scored.task.questions)
    acc, acc_norm, bpb = np.zeros(n_questions), np.zeros(n_questions), np.zeros(n_questions)
    for q, question in enumerate(scored.task.questions):
        rows = np.flatnonzero(scored.question_of == q)           # in choice order
        acc[q] = float(np.argmax(ll[rows]) == question.answer)
        acc_norm[q] = float(np.argmax(ll[rows] / scored.choice_chars[rows]) == question.answer)
        right = rows[question.answer]
        bpb[q] = bits_per_byte(-ll[right], int(scored.choice_bytes[right]))
    name = scored.task.name
    return {f"{name}_bpb": float(bpb.mean()), f"{name}_acc": float(acc.mean()), f"{name}_acc_norm": float(acc_norm.mean())}


def _encode_task(task: Task, tokenizer, seq_len: int) -> _ScoredTask:
    """Token rows for every (question, choice): question tokens (left-truncated) + choice tokens."""
    rows, question_of, choice_of, n_bytes, n_chars = [], [], [], [], []
    for q, question in enumerate(task.questions):
        context = tokenizer.encode(question.question, add_special_tokens=False)
        for c, choice in enumerate(question.choices):
            cont = tokenizer.encode(choice, add_special_tokens=False)
            if len(cont) > seq_len:
                raise UserError(f"task {task.name} question {q + 1} choice {c + 1} is {len(cont)} tokens, longer "
                                f"than model.seq_len={seq_len}: shorten it")
            # Input = all tokens but the last; the first choice token needs >= 1 context token before it.
            keep = max(1, seq_len + 1 - len(cont))
            ctx = context[-keep:] if context else [tokenizer.eos_token_id]
            rows.append((ctx, cont))
            question_of.append(q)
            choice_of.append(c)
            n_bytes.append(bytes_of(choice))
            n_chars.append(len(choice))
    length = max(len(ctx) + len(cont) - 1 for ctx, cont in rows)
    inputs = torch.zeros((len(rows), length), dtype=torch.long)
    targets = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length))
    for i, (ctx, cont) in enumerate(rows):
        ids = ctx + cont
        inputs[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        targets[i, :len(ids) - 1] = torch.tensor(ids[1:])
        mask[i, len(ctx) - 1:len(ids) - 1] = 1.0          # positions whose target is a choice token
    return _ScoredTask(task, inputs, targets, mask, np.array(question_of), np.array(choice_of),
                       np.array(n_bytes, dtype=float), np.array(n_chars, dtype=float))


def build_suite(eval_cfg, manifest: Manifest, seq_len: int) -> EvalSuite:
    """The run's extra validation sets and tasks from the `eval` config section (empty: nothing extra)."""
    suite = EvalSuite()
    if not eval_cfg.val_sets and not eval_cfg.tasks:
        return suite
    for spec in eval_cfg.val_sets:
        name, source = parse_val_set(spec)
        tokens = val_set_tokens(source, manifest, eval_cfg.val_set_tokens, min_tokens=seq_len + 1)
        n_windows = (len(tokens) - 1) // seq_len
        flat = torch.from_numpy(tokens[:n_windows * seq_len + 1])
        x, y = flat[:-1].view(n_windows, seq_len), flat[1:].view(n_windows, seq_len)
        suite.val_sets[name] = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n_windows, 32)]
    if eval_cfg.tasks:
        tokenizer = load_tokenizer(manifest)
        for task in load_tasks(list(eval_cfg.tasks), manifest, eval_cfg.max_questions, eval_cfg.seed):
            suite.tasks.append(_encode_task(task, tokenizer, seq_len))
    return suite
