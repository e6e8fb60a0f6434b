"""Tokenizers for the data stage (a byte-level BPE trained on the training split, or a hub tokenizer),
and tokenizing documents into packed shards.

Both end up as a `tokenizers.Tokenizer` (the Rust object, whose `encode_batch` runs on every core)
plus an end-of-document id, and both are saved next to the shards (`<corpus>/tokenizer/`) in the
transformers format, so `load_tokenizer` works offline forever after the corpus is prepared.

Why a 512-token byte-level BPE by default (scripts/bench_data_prep.py, 2026-11, this 2-core CPU
shared with other jobs: one torch thread timed in CPU seconds; every ratio of a 2-thread wall-clock run
agreed within 0.03). A 4-layer, d_model-64 model (201k non-embedding parameters), fp32, seq 128, batch 32,
AdamW; characters per token of a BPE trained on 8 MB of stdlib, measured on 2 MB of other files:

    vocab   tokens/s (vs 512)   chars/token   chars/s (vs 512)   embedding + head params
      257     29.6k  (1.06)         1.00        29.6k  (0.52)          33k
      512     27.9k  (1.00)         2.05        57.3k  (1.00)          66k
     1024     23.6k  (0.84)         2.53        59.6k  (1.04)         131k
     4096     11.6k  (0.41)         3.26        37.7k  (0.66)         524k

The output layer's cost grows with the vocabulary while each extra merge compresses text less.
512 and 1024 process text equally fast, but 1024 doubles the embedding parameters -- already 1/4
of such a model, and the parameter convention moves the fitted exponent (README, "Accounting conventions") -- and gives
fewer unique tokens from the same corpus (more repeated epochs). Bytes alone (257) halve the text rate.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-document token; id 0 in our BPE
TOKENIZER_SUBDIR = "tokenizer"


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) trained on `texts` only.

    Byte-level means every string is encodable (no unknown token): the 256 byte symbols are the
    initial alphabet, then vocab_size - 257 merges. Returns (tokenizers.Tokenizer, eos_id).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer, tokenizer.token_to_id(EOS_TOKEN)


def load_hub_tokenizer(name: str, local_only: bool = False):
    """transformers.AutoTokenizer by hub name or local directory; a one-line UserError when it fails.
    `local_only`: the local cache or directory only, never the network (a check before data preparation)."""
    try:
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except Exception as err:  # OSError offline, ValueError for unknown names, ...
        raise UserError(f"cannot load tokenizer {name!r} ({type(err).__name__}): download it once with "
                        f"AutoTokenizer.from_pretrained({name!r}) on a machine with network (it is then "
                        f"cached), or use data.tokenizer=bpe") from err
    if not getattr(hf_tokenizer, "is_fast", False):
        raise UserError(f"tokenizer {name!r} has no fast (Rust) version: pick a fast tokenizer or data.tokenizer=bpe")
    if hf_tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {name!r} has no end-of-text token to separate documents: "
                        f"pick one that has (e.g. gpt2) or data.tokenizer=bpe")
    return hf_tokenizer


def rust_tokenizer(hf_tokenizer):
    """The Rust tokenizer of a transformers fast tokenizer, without truncation or padding."""
    backend = hf_tokenizer.backend_tokenizer
    backend.no_truncation()  # some hub tokenizer.json files truncate to the model's context length
    backend.no_padding()
    return backend


def save_bpe(tokenizer, out_dir: Path) -> None:
    """Save our BPE in the transformers layout so load_tokenizer reads both kinds the same way."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN).save_pretrained(str(out_dir))


def load_saved_tokenizer(corpus_dir: str | Path):
    """The tokenizer saved with a prepared corpus (transformers fast tokenizer: encode / decode)."""
    from transformers import AutoTokenizer

    path = Path(corpus_dir) / TOKENIZER_SUBDIR
    if not path.is_dir():
        raise UserError(f"{path} is missing: delete {corpus_dir} and prepare the corpus again")
    return AutoTokenizer.from_pretrained(str(path))


# --- tokenizing documents into packed shards ------------------------------------------------------
ENCODE_BATCH_CHARS = 8 * 2**20  # text per encode_batch call (Rust, all cores): bounded memory, full threads


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in docs:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pack(encodings, eos_id: int, dtype) -> np.ndarray:
    """Token ids of a batch of documents, each followed by the end-of-document id."""
    lengths = [len(e.ids) + 1 for e in encodings]
    packed = np.empty(sum(lengths), dtype=dtype)
    pos = 0
    for encoding, length in zip(encodings, lengths, strict=True):
        packed[pos:pos + length - 1] = encoding.ids
        packed[pos + length - 1] = eos_id
        pos += length
    return packed


def write_tokens(docs: Iterator[str], tokenizer, eos_id: int, path: Path, dtype,
                 cap_tokens: int | None) -> tuple[int, int, str]:
    """Tokenize docs into one packed file (doc EOS doc EOS ...) of at most cap_tokens tokens.

    Returns (tokens written, documents used, sha256 of the file).
    """
    digest, tokens, n_docs = hashlib.sha256(), 0, 0
    with open(path, "wb") as out:
        for batch in _batches(docs):
            packed = _pack(tokenizer.encode_batch(batch, add_special_tokens=False), eos_id, dtype)
            if cap_tokens is not None and tokens + len(packed) >= cap_tokens:
                packed = packed[:cap_tokens - tokens]  # the last document may be cut: that is the cap
                n_docs += int(np.count_nonzero(packed == eos_id)) + int(packed[-1] != eos_id)
            else:
                n_docs += len(batch)
            out.write(packed.tobytes())
            digest.update(packed.tobytes())
            tokens += len(packed)
            if cap_tokens is not None and tokens >= cap_tokens:
                break
    return tokens, n_docs, digest.hexdigest()


def validation_tokens(candidates: list[str], tokenizer, eos_id: int, val_tokens: int, dtype):
    """Whole documents from the candidates until >= val_tokens, then cut to exactly val_tokens.

    Returns (tokens, number of candidate documents used). The rest of the last document is dropped,
    never put in training: a document lives in one split only.
    """
    packed, total = [], 0
    for encoding in tokenizer.encode_batch(candidates, add_special_tokens=False):
        packed.append(np.append(np.asarray(encoding.ids, dtype=dtype), np.asarray(eos_id, dtype=dtype)))
        total += len(packed[-1])
        if total >= val_tokens:
            return np.concatenate(packed)[:val_tokens], len(packed)
    raise UserError(f"the validation set needs {val_tokens} tokens but the held-out documents give {total}: "
                    f"lower data.val_tokens or use a larger corpus")


# --- the split and the shards of one corpus ---------------------------------------------------------
# Validation candidates are reserved *before* the BPE is trained, so the tokenizer never sees them:
# documents from the head of the split order until they hold this many characters per validation
# token (byte-level BPEs give 2-5 characters per token; 8 leaves room). Candidates the validation
# set does not need go to the training split.
VAL_RESERVE_CHARS_PER_TOKEN = 8
BPE_TRAIN_MAX_CHARS = 256 * 2**20  # the BPE learns its merges from at most this much training text


def _take_chars(docs: Iterator[str], limit: int) -> list[str]:
    """Documents from the iterator until they hold >= limit characters (or it ends)."""
    taken, chars = [], 0
    while chars < limit:
        text = next(docs, None)
        if text is None:
            break
        taken.append(text)
        chars += len(text)
    return taken


def build_shards(cfg, docs: Iterator[str], out: Path) -> dict:
    """Split `docs` (already in split order) by document; write tokenizer/, val.bin and train.bin.

    Returns the manifest's token fields: vocab_size, eos_id, dtype, counts, sha256, train_capped.
    """
    hub_tokenizer = None if cfg.tokenizer == "bpe" else load_hub_tokenizer(cfg.tokenizer)  # fail fast
    too_small = (f"data.source={cfg.source} holds too little text for data.val_tokens={cfg.val_tokens} plus "
                 f"training: lower data.val_tokens or use a larger corpus")
    candidates = _take_chars(docs, VAL_RESERVE_CHARS_PER_TOKEN * cfg.val_tokens)
    if not candidates:
        raise UserError(f"data.source={cfg.source} holds no text (no non-empty documents in field "
                        f"{cfg.text_field!r}): point it at files with text")
    if hub_tokenizer is None:
        # From the training split only, and no more text than a capped split holds (a hub stream is long).
        cap_chars = VAL_RESERVE_CHARS_PER_TOKEN * cfg.max_train_tokens if cfg.max_train_tokens else BPE_TRAIN_MAX_CHARS
        bpe_text = _take_chars(docs, min(BPE_TRAIN_MAX_CHARS, cap_chars))
        if not bpe_text:
            raise UserError(too_small)
        tokenizer, eos_id = train_bpe(bpe_text, cfg.vocab_size)
        save_bpe(tokenizer, out / TOKENIZER_SUBDIR)
        vocab_size, rest = cfg.vocab_size, itertools.chain(bpe_text, docs)
    else:
        hub_tokenizer.save_pretrained(str(out / TOKENIZER_SUBDIR))
        tokenizer, eos_id = rust_tokenizer(hub_tokenizer), hub_tokenizer.eos_token_id
        vocab_size, rest = len(hub_tokenizer), docs
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32

    val, n_val_docs = validation_tokens(candidates, tokenizer, eos_id, cfg.val_tokens, dtype)
    (out / "val.bin").write_bytes(val.tobytes())
    train_docs = itertools.chain(candidates[n_val_docs:], rest)
    train_tokens, n_train_docs, train_sha = write_tokens(train_docs, tokenizer, eos_id, out / "train.bin",
                                                         dtype, cfg.max_train_tokens)
    if train_tokens < 2:
        raise UserError(too_small)
    return {"vocab_size": vocab_size, "eos_id": int(eos_id), "dtype": np.dtype(dtype).name,
            "train_tokens": train_tokens, "val_tokens": len(val), "n_train_docs": n_train_docs,
            "n_val_docs": n_val_docs, "train_capped": cfg.max_train_tokens is not None
            and train_tokens >= cfg.max_train_tokens,
            "sha256": {"train.bin": train_sha, "val.bin": hashlib.sha256(val.tobytes()).hexdigest()}}
