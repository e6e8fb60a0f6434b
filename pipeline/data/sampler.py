"""Serving tokens to a run: resumable training batches, fixed validation batches, the repeat check.

Training windows DO cross document boundaries (packed with EOS between documents, no attention mask
at the boundary: GPT-2 / nanoGPT practice). Sampling is an epoch-wise permutation of non-overlapping
windows (see TrainSampler), so each epoch visits every window once and "epochs" mean what they say.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.manifest import Manifest, open_tokens
from pipeline.errors import UserError


class TrainSampler:
    """Training batches as a pure function of (seed, step, micro_step, rank): exact resume for free.

    The train split is cut into `n_windows` non-overlapping windows of seq_len targets (each reads
    seq_len + 1 tokens: inputs and next-token targets). Epoch e visits every window once, in a
    permutation seeded by (seed, e), with the whole grid shifted by an offset in [0, seq_len) drawn
    from the same generator, so a repeated epoch sees the text in other contexts. Sample g of the
    run -- counted over steps, then micro-steps, ranks and rows -- is window perm_e[g mod n_windows]
    of epoch e = g div n_windows. The global batch (micro_batch_size x grad_accum x world_size) of a
    step is therefore the same set of windows for any split into ranks and micro-steps.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n_windows = self.windows_for(len(tokens), seq_len)
        if self.n_windows < 1:
            raise UserError(f"the train split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                            f"use a larger corpus or a shorter model.seq_len")
        self.max_offset = min(seq_len - 1, len(tokens) - 1 - self.n_windows * seq_len)
        self._epochs: dict[int, tuple[np.ndarray, int]] = {}  # a cache; the sampler has no state

    @staticmethod
    def windows_for(n_tokens: int, seq_len: int) -> int:
        """Windows per epoch: one window fewer than fit, so the grid can shift (when there are >= 2)."""
        fit = (n_tokens - 1) // seq_len
        return fit - 1 if fit > 1 else fit

    @property
    def tokens_per_epoch(self) -> int:
        return self.n_windows * self.seq_len

    def _epoch(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n_windows).astype(np.int64)
            offset = int(rng.integers(0, self.max_offset + 1))
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = (order, offset)
        return self._epochs[epoch]

    def batch(self, step: int, micro_step: int, micro_batch_size: int, rank: int = 0, world_size: int = 1,
              grad_accum: int = 1):
        """(x, y) LongTensors [micro_batch_size, seq_len], y = x shifted by one token.

        grad_accum (micro-steps per optimizer step) is needed to count samples densely: without it
        the micro-batches of one step would overlap. micro_step >= grad_accum is refused for that reason.
        """
        if not 0 <= micro_step < grad_accum:
            raise ValueError(f"micro_step={micro_step} is not below grad_accum={grad_accum}: "
                             f"pass grad_accum=<micro-steps per optimizer step> to TrainSampler.batch")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not below world_size={world_size}")
        per_step = micro_batch_size * grad_accum * world_size
        first = step * per_step + (micro_step * world_size + rank) * micro_batch_size
        samples = np.arange(first, first + micro_batch_size, dtype=np.int64)
        epochs = samples // self.n_windows
        starts = np.empty(micro_batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            order, offset = self._epoch(int(epoch))
            rows = epochs == epoch
            starts[rows] = offset + order[samples[rows] % self.n_windows] * self.seq_len
        chunk = np.asarray(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        chunk = torch.from_numpy(chunk)
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def epochs_consumed(self, tokens_seen: int) -> float:
        """tokens_seen / unique training tokens (the convention of Muennighoff et al. 2023)."""
        return tokens_seen / len(self.tokens)


def validation_batches(manifest: Manifest, seq_len: int, batch_size: int) -> list:
    """The whole validation split as consecutive windows of seq_len targets, in fixed order.

    Identical for every run of a given seq_len: (val_tokens - 1) // seq_len windows, the last batch
    possibly smaller. Each window's first tokens have little context, as in training.
    """
    tokens = open_tokens(manifest, "val")
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise UserError(f"data.val_tokens={len(tokens)} is shorter than seq_len + 1 = {seq_len + 1}: "
                        f"raise data.val_tokens")
    flat = np.asarray(tokens[:n_windows * seq_len + 1], dtype=np.int64)
    x = torch.from_numpy(flat[:-1].reshape(n_windows, seq_len))
    y = torch.from_numpy(flat[1:].reshape(n_windows, seq_len))
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n_windows, batch_size)]


def check_repeat(manifest: Manifest, tokens_needed: int, allow_repeat: bool, seq_len: int | None = None) -> float:
    """Epochs a run of tokens_needed training tokens makes over the unique training tokens.

    Above one epoch the sampler repeats the data (in new orders and offsets) and the run records the
    epochs, or -- with allow_repeat=False -- the run is refused. With seq_len the check uses what
    one epoch of windows really holds (TrainSampler.tokens_per_epoch, a few windows short of all).
    """
    unique = manifest.train_tokens
    capacity = unique if seq_len is None else TrainSampler.windows_for(unique, seq_len) * seq_len
    epochs = tokens_needed / unique
    if tokens_needed > capacity and not allow_repeat:
        raise UserError(f"the run needs {tokens_needed:,} training tokens but the corpus holds {capacity:,} unique "
                        f"ones ({epochs:.2f} epochs): set data.allow_repeat=true to repeat it, or use a larger "
                        f"corpus (data.source, data.max_train_tokens)")
    return epochs
