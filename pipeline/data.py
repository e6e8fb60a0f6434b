"""The data stage: prepare a corpus once, then serve fixed validation batches and resumable train batches.

    manifest = prepare_corpus(cfg)                      # cached under cfg.cache_dir/<fingerprint>/
    sampler = TrainSampler(open_tokens(manifest, "train"), seq_len, seed)
    x, y = sampler.batch(step, micro_step, micro_batch_size, rank, world_size, grad_accum)
    val = validation_batches(manifest, seq_len, batch_size)

A prepared corpus is a directory with `train.bin` and `val.bin` (packed token ids, uint16 when the
vocabulary fits: documents joined as `doc EOS doc EOS ...`), the tokenizer, and `manifest.json`
(counts, sha256 per shard, source, licence, versions). Sources, split order, caching:
pipeline/corpus.py; tokenizers, the split and the shards (and why a 512-token BPE): pipeline/tokenizer.py.

Training windows DO cross document boundaries (packed with EOS between documents, no attention mask
at the boundary: GPT-2 / nanoGPT practice). Sampling is an epoch-wise permutation of non-overlapping
windows (see TrainSampler), so each epoch visits every window once and "epochs" mean what they say.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

FORMAT_VERSION = 1   # bump when the bytes a build writes change: it is part of every fingerprint
SCHEMA_VERSION = 1   # manifest.json layout
SPLITS = ("train", "val")


@dataclass
class DataConfig:
    source: str = "stdlib"              # "stdlib" | "hf:<dataset name>" | a local path, directory or glob (txt/jsonl/parquet)
    hf_config: str | None = None        # hub dataset config, e.g. "sample-10BT" for FineWeb-Edu
    hf_split: str = "train"
    text_field: str = "text"            # column holding the documents (jsonl, parquet, hub)
    tokenizer: str = "bpe"              # "bpe": byte-level BPE trained on the train split; else a hub tokenizer name or dir
    vocab_size: int = 512               # "bpe" only (pipeline/tokenizer.py: why 512)
    val_tokens: int = 262_144           # fixed validation size in tokens, identical for every run
    max_train_tokens: int | None = None # cap on training tokens (required for "hf:" sources)
    allow_repeat: bool = True           # False: a run needing more tokens than the corpus holds is refused
    cache_dir: str = ".cache/data"      # prepared corpora live under cache_dir/<fingerprint>/
    num_proc: int = 2                   # processes for reading many local files
    seed: int = 0                       # seeds the document-level train/validation split
    max_documents: int | None = None    # use only the first N documents of the source (tests, quick looks)
    txt_sample_by: str = "document"     # .txt/.py files: one document per "document" (file), "paragraph" or "line"
    unique_tokens: float | None = None  # fit only: unique tokens available for the FULL run (Muennighoff et al. 2023)

    def __post_init__(self) -> None:
        if not self.source:
            raise UserError("data.source is empty: use stdlib, hf:<name> or a path")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise UserError(f"data.vocab_size={self.vocab_size} must be >= 257 (256 bytes + end-of-document) for bpe")
        if self.val_tokens < 2:
            raise UserError(f"data.val_tokens={self.val_tokens} must be >= 2: e.g. data.val_tokens=262144")
        if self.max_train_tokens is not None and self.max_train_tokens < 2:
            raise UserError(f"data.max_train_tokens={self.max_train_tokens} must be >= 2 or null")
        if self.source.startswith("hf:") and self.max_train_tokens is None:
            raise UserError("data.max_train_tokens is required for hub sources: e.g. data.max_train_tokens=2000000000")
        if self.max_documents is not None and self.max_documents < 2:
            raise UserError(f"data.max_documents={self.max_documents} must be >= 2 (train and validation) or null")
        if self.num_proc < 1:
            raise UserError(f"data.num_proc={self.num_proc} must be >= 1")
        if self.seed < 0:
            raise UserError(f"data.seed={self.seed} must be >= 0")
        if self.txt_sample_by not in ("document", "paragraph", "line"):
            raise UserError(f"data.txt_sample_by={self.txt_sample_by} must be document, paragraph or line")


@dataclass
class Manifest:
    dir: str                    # where it was loaded from (not stored: a cache may move)
    fingerprint: str
    source: str
    source_identity: dict
    licence: str
    tokenizer: str
    vocab_size: int             # the model's vocabulary (embedding rows)
    eos_id: int
    dtype: str                  # "uint16" | "uint32"
    train_tokens: int           # unique training tokens
    val_tokens: int
    n_train_docs: int
    n_val_docs: int
    sha256: dict                # shard file name -> sha256
    train_capped: bool = False  # max_train_tokens cut the training split short of the source
    prepare_s: float = 0.0
    created_by: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def shard_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use 'train' or 'val'")
        return Path(self.dir) / f"{split}.bin"

    def summary(self) -> str:
        return (f"{self.fingerprint}: {self.train_tokens:,} train tokens ({self.n_train_docs:,} docs), "
                f"{self.val_tokens:,} val tokens ({self.n_val_docs:,} docs), vocab {self.vocab_size} "
                f"({self.tokenizer}), {self.dtype}, prepared in {self.prepare_s:.1f} s -> {self.dir}")


# --- the prepared corpus on disk ----------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path_or_dir: str | os.PathLike, verify_checksums: bool = False) -> Manifest:
    """Read manifest.json; check its schema and the shard sizes (and sha256 sums if asked)."""
    path = Path(path_or_dir)
    corpus_dir = path if path.is_dir() else path.parent
    try:
        values = json.loads((corpus_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"no readable manifest.json in {corpus_dir}: prepare it with scripts/prepare_data.py") from err
    if values.pop("schema_version", None) != SCHEMA_VERSION:
        raise UserError(f"{corpus_dir}/manifest.json is not schema {SCHEMA_VERSION}: delete {corpus_dir} and prepare again")
    known = {f.name for f in fields(Manifest)}
    manifest = Manifest(dir=str(corpus_dir), **{k: v for k, v in values.items() if k in known and k != "dir"})
    itemsize = np.dtype(manifest.dtype).itemsize
    for split in SPLITS:
        shard = manifest.shard_path(split)
        expected = getattr(manifest, f"{split}_tokens") * itemsize
        if not shard.is_file() or shard.stat().st_size != expected:
            raise UserError(f"{shard} is missing or not {expected} bytes: delete {corpus_dir} and prepare again")
        if verify_checksums and _sha256_file(shard) != manifest.sha256.get(shard.name):
            raise UserError(f"{shard} fails its sha256 check: delete {corpus_dir} and prepare again")
    return manifest


def open_tokens(manifest: Manifest, split: str) -> np.memmap:
    """The split's packed token ids, memory-mapped read-only."""
    n_tokens = manifest.train_tokens if split == "train" else manifest.val_tokens
    return np.memmap(manifest.shard_path(split), dtype=manifest.dtype, mode="r", shape=(n_tokens,))


def load_tokenizer(manifest: Manifest):
    """The corpus's tokenizer (a transformers fast tokenizer with encode / decode), read offline."""
    from pipeline.tokenizer import load_saved_tokenizer

    return load_saved_tokenizer(manifest.dir)




def prepare_corpus(cfg: DataConfig, verify_checksums: bool = False) -> Manifest:
    """Tokenize the source once into cfg.cache_dir/<fingerprint>/ and return its manifest.

    Idempotent: a valid cached corpus is returned as is (shard sizes always checked, sha256 sums when
    verify_checksums). The fingerprint hashes the source's identity, text field, tokenizer, vocab
    size, val_tokens, max_train_tokens, seed, max_documents and FORMAT_VERSION. A build runs in a
    temporary directory under an exclusive lock and is published with one os.replace, so a crash or
    two sweep jobs preparing at once never leave a half-written corpus (pipeline/corpus.py).
    """
    from pipeline.corpus import prepare

    return prepare(cfg, verify_checksums)


# --- serving tokens -----------------------------------------------------------------------------
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
        import torch

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
    import torch

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
