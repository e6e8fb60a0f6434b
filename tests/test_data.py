"""The data stage: splits by document, reproducible shards, exact-resume sampling, one-line errors.

A generated corpus of 60 small documents (each opens with a unique "document NNN" marker) keeps the
preparations fast; the full standard-library preparation is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets / transformers are imported

import numpy as np
import pytest

from pipeline.config.schema import DataConfig
from pipeline.data import corpus, sampler
from pipeline.data import manifest as manifest_lib
from pipeline.data.corpus import prepare_corpus
from pipeline.data.manifest import load_manifest, open_tokens
from pipeline.data.sampler import TrainSampler, check_repeat
from pipeline.errors import UserError

N_DOCS = 60
WORDS = ("def", "return", "self", "value", "import", "class", "for", "in", "range", "if", "else", "None",
         "print", "items", "key", "list", "dict", "=", "+", "(", ")", ":", "\n", "\n    ", "0", "1")


def write_documents(folder, n_docs: int = N_DOCS, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n_docs):
        body = " ".join(rng.choice(WORDS, size=int(rng.integers(300, 900))))
        texts.append(f"# document {i:03d}\n{body}\n")
        (folder / f"doc_{i:03d}.txt").write_text(texts[-1])
    return texts


def small_config(source, cache_dir, **overrides) -> DataConfig:
    values = {"source": str(source), "cache_dir": str(cache_dir), "vocab_size": 300, "val_tokens": 4096}
    return DataConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    write_documents(folder)
    return folder


@pytest.fixture(scope="module")
def prepared(docs_dir, tmp_path_factory):
    return prepare_corpus(small_config(docs_dir, tmp_path_factory.mktemp("cache")))


def markers(manifest, split: str) -> list[str]:
    """The 'document NNN' markers of every document in a split, decoded from its tokens."""
    tokens = open_tokens(manifest, split)
    pieces = np.split(np.asarray(tokens), np.flatnonzero(tokens == manifest.eos_id) + 1)
    tokenizer = manifest_lib.load_tokenizer(manifest)
    found = []
    for piece in pieces:
        text = tokenizer.decode([int(t) for t in piece if t != manifest.eos_id])
        if text.startswith("# document "):
            found.append(text[len("# document "):][:3])
    return found


def one_line_error(fn, *args, fragment: str, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and fragment in message, message
    return message


# --- preparation ---------------------------------------------------------------------------------
def test_manifest_counts_match_the_shards(prepared):
    assert prepared.val_tokens == 4096 and prepared.dtype == "uint16" and prepared.vocab_size == 300
    for split in ("train", "val"):
        path = prepared.shard_path(split)
        assert path.stat().st_size == getattr(prepared, f"{split}_tokens") * 2
        assert manifest_lib._sha256_file(path) == prepared.sha256[path.name]
    train = open_tokens(prepared, "train")
    assert int(np.count_nonzero(train == prepared.eos_id)) == prepared.n_train_docs  # doc EOS doc EOS ...
    assert train[-1] == prepared.eos_id
    assert prepared.n_train_docs + prepared.n_val_docs == N_DOCS and not prepared.train_capped
    assert int(np.max(train)) < prepared.vocab_size
    assert load_manifest(prepared.dir, verify_checksums=True).sha256 == prepared.sha256


def test_no_document_is_in_both_splits(prepared):
    train, val = markers(prepared, "train"), markers(prepared, "val")
    assert len(val) == prepared.n_val_docs and len(train) == prepared.n_train_docs
    assert not set(train) & set(val)
    assert sorted(train + val) == [f"{i:03d}" for i in range(N_DOCS)]


def test_two_preparations_give_identical_shards(prepared, docs_dir, tmp_path):
    again = prepare_corpus(small_config(docs_dir, tmp_path))
    assert again.fingerprint == prepared.fingerprint and again.sha256 == prepared.sha256
    assert again.dir != prepared.dir
    other_seed = prepare_corpus(small_config(docs_dir, tmp_path, seed=1))
    assert other_seed.fingerprint != prepared.fingerprint
    assert set(markers(other_seed, "val")) != set(markers(prepared, "val"))


def test_cached_corpus_is_reused_and_a_damaged_one_rebuilt(docs_dir, tmp_path):
    cfg = small_config(docs_dir, tmp_path)
    first = prepare_corpus(cfg)
    train_path = first.shard_path("train")
    mtime = train_path.stat().st_mtime_ns
    assert prepare_corpus(cfg).sha256 == first.sha256 and train_path.stat().st_mtime_ns == mtime
    with open(train_path, "r+b") as f:  # flip one token: sizes still match, the checksum does not
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    one_line_error(load_manifest, first.dir, verify_checksums=True, fragment="sha256")
    assert manifest_lib._sha256_file(prepare_corpus(cfg, verify_checksums=True).shard_path("train")) == first.sha256["train.bin"]
    (tmp_path / f".tmp-{first.fingerprint}-dead").mkdir()  # left by a builder that was killed
    train_path.write_bytes(b"")
    assert prepare_corpus(cfg).sha256 == first.sha256
    assert not list(tmp_path.glob(".tmp-*"))


def test_concurrent_preparations_build_once(docs_dir, tmp_path, monkeypatch):
    builds, real_build = [], corpus._build
    monkeypatch.setattr(corpus, "_build", lambda *a: (builds.append(1), real_build(*a)))
    results = []
    threads = [threading.Thread(target=lambda: results.append(prepare_corpus(small_config(docs_dir, tmp_path))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 2 and results[0].sha256 == results[1].sha256


def test_train_cap_and_stdlib_subset(tmp_path):
    cfg = DataConfig(source="stdlib", max_documents=12, val_tokens=2048, max_train_tokens=5000,
                     cache_dir=str(tmp_path))
    manifest = prepare_corpus(cfg)
    assert manifest.source_identity["files"] == 12 and "PSF" in manifest.licence
    assert manifest.train_tokens == 5000 and manifest.train_capped and manifest.val_tokens == 2048


def test_tokenizer_round_trip(prepared):
    tokenizer = manifest_lib.load_tokenizer(prepared)
    text = "def f(self):\n    return {'key': 1}  # ünïcode\n"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.eos_token_id == prepared.eos_id == 0


def test_hub_tokenizer_by_name_or_directory(prepared, docs_dir, tmp_path):
    # A local directory goes through the same AutoTokenizer path as a hub name such as "gpt2".
    tokenizer_dir = os.path.join(prepared.dir, "tokenizer")
    manifest = prepare_corpus(small_config(docs_dir, tmp_path, tokenizer=tokenizer_dir))
    assert manifest.eos_id == 0 and manifest.vocab_size == len(manifest_lib.load_tokenizer(prepared))
    assert manifest.val_tokens == 4096 and manifest.n_train_docs + manifest.n_val_docs == N_DOCS


def test_hub_stream_code_path_with_a_local_parquet(docs_dir, tmp_path, monkeypatch):
    import datasets

    texts = [p.read_text() for p in sorted(docs_dir.glob("*.txt"))]
    parquet = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))}).to_parquet(str(parquet))
    calls, real_load = [], datasets.load_dataset

    def fake_hub(name, config=None, split=None, streaming=False, **kw):
        calls.append((name, config, split, streaming))
        return real_load("parquet", data_files=str(parquet), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    # datasets sleeps 5 s when a parquet stream's reader threads shut down (apache/arrow#45214): not our code.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)  # newer datasets only
    cfg = small_config("hf:org/web-docs", tmp_path / "cache", hf_config="sample", max_train_tokens=20_000)
    manifest = prepare_corpus(cfg)
    assert calls == [("org/web-docs", "sample", "train", True)]
    assert manifest.train_tokens == 20_000 and manifest.train_capped and manifest.val_tokens == 4096
    assert not set(markers(manifest, "train")) & set(markers(manifest, "val"))


def test_local_jsonl_source(tmp_path):
    import json

    rows = [{"content": f"# document {i:03d}\n" + "x = 1\n" * (50 + i)} for i in range(30)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = small_config(tmp_path / "*.jsonl", tmp_path / "cache", text_field="content", val_tokens=512)
    manifest = prepare_corpus(cfg)
    assert manifest.n_train_docs + manifest.n_val_docs == 30
    one_line_error(prepare_corpus, small_config(tmp_path / "a.jsonl", tmp_path / "c2"), fragment="data.text_field")


# --- bad input: one line naming the fix ------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(tmp_path, monkeypatch):
    one_line_error(prepare_corpus, small_config(tmp_path / "missing", tmp_path), fragment="data.source=stdlib")
    (tmp_path / "empty").mkdir()
    for i in range(3):
        (tmp_path / "empty" / f"{i}.txt").write_text("")
    one_line_error(prepare_corpus, small_config(tmp_path / "empty", tmp_path), fragment="holds no text")
    write_documents(tmp_path / "few", n_docs=3)
    one_line_error(prepare_corpus, small_config(tmp_path / "few", tmp_path, val_tokens=100_000),
                   fragment="lower data.val_tokens")
    # checked before anything is read or written, also when the data stage is called directly
    one_line_error(prepare_corpus, DataConfig(source="hf:HuggingFaceFW/fineweb-edu", cache_dir=str(tmp_path / "c")),
                   fragment="data.max_train_tokens")
    one_line_error(prepare_corpus, DataConfig(vocab_size=100, cache_dir=str(tmp_path / "c")), fragment="data.vocab_size=100")
    assert not (tmp_path / "c").exists()


def test_offline_hub_names_give_one_line_errors(docs_dir, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)  # newer datasets only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    one_line_error(prepare_corpus, small_config(docs_dir, tmp_path, tokenizer="no-such-org/no-such-tokenizer"),
                   fragment="data.tokenizer=bpe")
    cfg = small_config("hf:no-such-org/no-such-dataset", tmp_path, max_train_tokens=1000)
    one_line_error(prepare_corpus, cfg, fragment="data.source=<their local path or glob>")


# --- sampling ------------------------------------------------------------------------------------
def test_sampler_resume_gives_identical_batches(prepared):
    tokens = open_tokens(prepared, "train")
    run = TrainSampler(tokens, seq_len=32, seed=7)
    batches = [run.batch(step, micro, 4, grad_accum=2) for step in range(6) for micro in range(2)]
    resumed = TrainSampler(tokens, seq_len=32, seed=7)  # a fresh process after a restart at step 3
    for k, (step, micro) in enumerate((s, m) for s in range(3, 6) for m in range(2)):
        x, y = resumed.batch(step, micro, 4, grad_accum=2)
        assert x.equal(batches[6 + k][0]) and y.equal(batches[6 + k][1])
    x, y = batches[0]
    assert x.shape == (4, 32) and str(x.dtype) == "torch.int64" and x.is_contiguous() and y.is_contiguous()
    assert x[:, 1:].equal(y[:, :-1])
    other = TrainSampler(tokens, seq_len=32, seed=8).batch(0, 0, 4, grad_accum=2)[0]
    assert not other.equal(x)
    with pytest.raises(ValueError, match="grad_accum"):
        run.batch(0, 1, 4)


def test_sampler_epochs_visit_every_window_once():
    tokens = np.arange(1001, dtype=np.uint16)  # token value = position: starts are readable
    sampler = TrainSampler(tokens, seq_len=10, seed=0)
    assert sampler.n_windows == 99 and sampler.tokens_per_epoch == 990
    for epoch in range(2):
        starts = np.concatenate([sampler.batch(step, 0, 9)[0][:, 0].numpy() for step in range(11 * epoch, 11 * epoch + 11)])
        assert len(set(starts.tolist())) == 99 and len(set((starts % 10).tolist())) == 1  # one grid per epoch
        assert starts.max() + 11 <= 1001
    assert sampler.epochs_consumed(2002) == 2.0


def test_sampler_global_batch_is_independent_of_ranks_and_micro_steps():
    tokens = np.arange(5000, dtype=np.uint16)
    sampler = TrainSampler(tokens, seq_len=16, seed=3)
    two_ranks = [sampler.batch(5, 0, 4, rank=r, world_size=2)[0] for r in range(2)]
    two_micro = [sampler.batch(5, m, 4, grad_accum=2)[0] for m in range(2)]
    assert sorted(map(tuple, np.concatenate(two_ranks).tolist())) == sorted(map(tuple, np.concatenate(two_micro).tolist()))


def test_validation_batches_are_fixed_and_cover_the_split(prepared):
    first = sampler.validation_batches(prepared, seq_len=100, batch_size=16)
    again = sampler.validation_batches(prepared, seq_len=100, batch_size=16)
    n_windows = (4096 - 1) // 100
    assert n_windows == 40 and [x.shape[0] for x, _ in first] == [16, 16, 8]
    assert all(a[0].equal(b[0]) and a[1].equal(b[1]) for a, b in zip(first, again, strict=True))
    val = np.asarray(open_tokens(prepared, "val"), dtype=np.int64)
    assert np.array_equal(np.concatenate([y.numpy() for _, y in first]).ravel(), val[1:n_windows * 100 + 1])


def test_check_repeat_records_or_refuses(prepared):
    unique = prepared.train_tokens
    assert check_repeat(prepared, unique // 2, allow_repeat=False) == pytest.approx(0.5, rel=1e-6)
    assert check_repeat(prepared, unique * 5 // 2, allow_repeat=True) == pytest.approx(2.5, rel=1e-6)
    one_line_error(check_repeat, prepared, unique + 1, allow_repeat=False, fragment="data.allow_repeat=true")
    one_line_error(check_repeat, prepared, unique, allow_repeat=False, seq_len=128, fragment="unique")


@pytest.mark.slow
def test_full_stdlib_corpus_has_enough_tokens(tmp_path):
    manifest = prepare_corpus(DataConfig(cache_dir=str(tmp_path)))  # the default: ~20 s on 2 cores
    assert manifest.train_tokens >= 5_000_000 and manifest.val_tokens == 262_144
    assert manifest.shard_path("train").stat().st_size == 2 * manifest.train_tokens


def test_no_worker_processes_are_forked_from_a_threaded_process(tmp_path, monkeypatch):
    """datasets forks its pool; with another Python thread alive (W&B, a watchdog) a forked child can hang
    on a lock that thread held (seen: a suite hung in corpus preparation), so one process reads then."""
    import threading

    import datasets

    seen, real = [], datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_proc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        prepare_corpus(DataConfig(source="stdlib", max_documents=300, val_tokens=16384, num_proc=2,
                                  cache_dir=str(tmp_path)))
    finally:
        release.set()
    assert seen == [None]


def test_native_threads_count_as_threads_for_the_fork_guard():
    """torch's OpenMP pool is invisible to threading.active_count(); a fork beside it hung a suite, so the
    guard counts OS threads (/proc/self/task). Run in a fresh interpreter without BLAS pools (as
    scripts/prepare_data.py runs): one thread, then torch's intra-op pool makes it several."""
    code = ("import threading\nfrom pipeline.data.corpus import _only_thread\nbefore = _only_thread()\n"  # no pools yet
            "import torch\ntorch.set_num_threads(2)\nx = torch.ones(512, 512)\n(x @ x).sum()\n"
            "print(before, threading.active_count(), _only_thread())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1", "False"]
