"""A prepared corpus on disk: its manifest, its token shards and its tokenizer.

A prepared corpus is a directory with `train.bin` and `val.bin` (packed token ids, uint16 when the
vocabulary fits: documents joined as `doc EOS doc EOS ...`), the tokenizer, and `manifest.json`
(counts, sha256 per shard, source, licence, versions). How one is built: pipeline/data/corpus.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from pipeline.data.tokenizer import load_saved_tokenizer
from pipeline.errors import UserError

FORMAT_VERSION = 1   # bump when the bytes a build writes change: it is part of every fingerprint
SCHEMA_VERSION = 1   # manifest.json layout
SPLITS = ("train", "val")




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
    return load_saved_tokenizer(manifest.dir)










