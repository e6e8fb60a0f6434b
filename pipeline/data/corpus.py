"""Where documents come from, and in which order: the standard library, local files, or a hub stream.

`resolve_source(cfg)` names the source and its identity (what the corpus fingerprint hashes) without
reading any text; `ordered_documents(...)` yields the documents' texts in *split order*:
  - finite sources (stdlib, local files) are loaded with `datasets.load_dataset` and visited in a
    permutation seeded by `data.seed` -- the validation set is the head of that permutation, so the
    split is by document, seeded, and identical for every run;
  - hub sources are streamed (`streaming=True`, nothing is downloaded in full) through a seeded
    shuffle buffer; the validation set is the head of the shuffled stream.
Empty documents are skipped (they would add only an end-of-document token).

`prepare_corpus(cfg)` caches a prepared corpus under
cache_dir/<fingerprint>/: built once under an flock, in a temporary directory, published with one
os.replace, manifest.json written last.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.config.schema import DataConfig
from pipeline.config.validate import validate_data
from pipeline.data import manifest as data
from pipeline.data import tokenizer as tok
from pipeline.errors import UserError

# The file kinds a local source may hold, by extension, and the `datasets` builder that reads them.
BUILDER_BY_SUFFIX = {".txt": "text", ".text": "text", ".md": "text", ".py": "text",
                     ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STDLIB_LICENCE = ("Python standard library source, PSF License Version 2 "
                  "(https://docs.python.org/3/license.html)")
HF_STREAM_SHUFFLE_BUFFER = 10_000  # documents; shuffles order within the stream's head (seeded)
DOCS_PER_READ = 256                 # documents fetched from an Arrow table per random-access read


@dataclass
class Source:
    kind: str                      # "stdlib" | "local" | "hf"
    label: str                     # short, filesystem-safe name for the corpus directory
    identity: dict                 # what the fingerprint hashes: changes whenever the text may change
    licence: str
    files: list[str] = field(default_factory=list)  # stdlib / local: every file, sorted
    builder: str | None = None     # datasets builder for local files: text | json | parquet


def _digest(rows: list[str]) -> str:
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _safe_label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "corpus"


def stdlib_files(max_documents: int | None = None) -> tuple[Path, list[Path]]:
    """The running interpreter's Lib/ *.py files, sorted (deterministic), site-packages excluded.

    site-packages holds third-party code under other licences; Lib/test is kept (PSF too) because
    without it the 512-token corpus has ~7M tokens, with it ~15M (fewer repeated epochs in demos).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        # Pruned, not filtered: site-packages may hold 10x more files than the stdlib itself.
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "__pycache__")]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files[:max_documents] if max_documents else files


def local_files(pattern: str) -> list[Path]:
    """Files named by a path, a directory (searched recursively) or a glob, sorted."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDER_BY_SUFFIX)
    return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())


def resolve_source(cfg: DataConfig) -> Source:
    """Name the source and its identity (stat only, no text read). UserError on a bad source."""
    if cfg.source == "stdlib":
        root, files = stdlib_files(cfg.max_documents)
        # The stdlib of one Python version never changes in place: version + names + sizes identify it.
        rows = [f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in files]
        identity = {"kind": "stdlib", "python": f"{platform.python_implementation()} {platform.python_version()}",
                    "files": len(files), "digest": _digest(rows)}
        return Source("stdlib", "stdlib", identity, STDLIB_LICENCE, [str(p) for p in files], "text")
    if cfg.source.startswith("hf:"):
        name = cfg.source[3:]
        if not name:
            raise UserError("data.source=hf: needs a dataset name, e.g. data.source=hf:HuggingFaceFW/fineweb-edu")
        identity = {"kind": "hf", "name": name, "config": cfg.hf_config, "split": cfg.hf_split}
        licence = f"see the dataset card: https://huggingface.co/datasets/{name}"
        return Source("hf", _safe_label(name.split("/")[-1]), identity, licence)
    files = local_files(cfg.source)
    if not files:
        raise UserError(f"data.source={cfg.source}: no such file, or no txt/jsonl/parquet files there: "
                        f"give an existing path or glob, or use data.source=stdlib")
    builders = {BUILDER_BY_SUFFIX.get(p.suffix.lower()) for p in files}
    if None in builders or len(builders) > 1:
        kinds = sorted({p.suffix or "(none)" for p in files})
        raise UserError(f"data.source={cfg.source} holds files of kinds {', '.join(kinds)}: "
                        f"point it at one kind only (.txt/.md/.py, .jsonl/.json or .parquet)")
    # Local files may be edited: name, size and modification time identify them (touching one re-prepares).
    rows = [f"{p.resolve()}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files]
    identity = {"kind": "local", "files": len(files), "digest": _digest(rows)}
    label = _safe_label(Path(cfg.source.split("*")[0] or ".").resolve().name)
    return Source("local", label, identity, "user-provided files: check their licence",
                  [str(p) for p in files], builders.pop())


# --- documents in split order ------------------------------------------------------------------
def ordered_documents(cfg: DataConfig, source: Source, hf_cache_dir: Path) -> Iterator[str]:
    """The source's non-empty texts: a seeded permutation (finite) or a seeded shuffled stream (hub)."""
    rows = _hub_stream(cfg) if source.kind == "hf" else _permuted_local(cfg, source, hf_cache_dir)
    for text in rows:
        if text is None or text == "":
            continue
        if not isinstance(text, str):
            raise UserError(f"data.text_field={cfg.text_field} holds {type(text).__name__} values, not text: "
                            f"name the column that holds the documents' text")
        yield text


def _only_thread() -> bool:
    """True when this process runs one OS thread (Python's and native ones: /proc/self/task on Linux)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no procfs (macOS): Python's own count is the best available
        return threading.active_count() == 1


def _permuted_local(cfg: DataConfig, source: Source, hf_cache_dir: Path) -> Iterator[str | None]:
    import datasets

    options = {"sample_by": cfg.txt_sample_by, "encoding_errors": "replace"} if source.builder == "text" else {}
    # Several processes only pay off for many files; the stdlib's 1.8k small files load in ~1.5 s on one.
    # datasets forks its worker pool, and a fork copies only the calling thread: a lock another Python
    # thread held at that moment (a W&B or watchdog thread of a sweep that runs many runs in one process)
    # stays locked in the child, which then hangs forever. So workers only from a single-threaded process,
    # counting native threads too (torch's and BLAS's pools, tokenizers' Rayon): a pytest process that had
    # trained in-process passed `threading.active_count() == 1` with two native threads and its forked
    # worker hung in a futex (seen in the suite, 2026-12-07). numpy's OpenBLAS pool counts too, so in
    # practice the pool runs from scripts/prepare_data.py, which starts without BLAS/OpenMP pools.
    many_files = cfg.num_proc > 1 and len(source.files) >= 64 * cfg.num_proc
    num_proc = cfg.num_proc if many_files and _only_thread() else None
    try:
        table = datasets.load_dataset(source.builder, data_files=source.files, split="train",
                                      cache_dir=str(hf_cache_dir), num_proc=num_proc, **options)
    except Exception as err:  # malformed json/parquet: name the file kind and the fix
        raise UserError(f"cannot read data.source={cfg.source} as {source.builder} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}): "
                        f"fix or remove the malformed files") from err
    if cfg.text_field not in table.column_names:
        raise UserError(f"data.text_field={cfg.text_field} is not a column of {cfg.source} "
                        f"(columns: {', '.join(table.column_names)}): set data.text_field to the text column")
    if cfg.max_documents and source.kind == "local":  # stdlib is limited by file already
        table = table.select(range(min(cfg.max_documents, len(table))))
    table = table.select_columns([cfg.text_field])
    order = np.random.default_rng(cfg.seed).permutation(len(table))
    for start in range(0, len(order), DOCS_PER_READ):
        yield from table[order[start:start + DOCS_PER_READ].tolist()][cfg.text_field]


def _hub_stream(cfg: DataConfig) -> Iterator[str | None]:
    import datasets

    name = cfg.source[3:]
    fix = ("connect to the network (and unset HF_HUB_OFFLINE), or download the files and pass "
           "data.source=<their local path or glob>")
    try:
        stream = datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_split, streaming=True)
        stream = stream.shuffle(seed=cfg.seed, buffer_size=HF_STREAM_SHUFFLE_BUFFER)
        if cfg.max_documents:
            stream = stream.take(cfg.max_documents)
        rows = iter(stream)
        first = next(rows, None)
    except Exception as err:
        raise UserError(f"cannot stream hub dataset {name!r} (config {cfg.hf_config}, split {cfg.hf_split}; "
                        f"{type(err).__name__}): {fix}") from err
    if first is None:
        return
    if cfg.text_field not in first:
        raise UserError(f"data.text_field={cfg.text_field} is not a field of {name} "
                        f"(fields: {', '.join(first)}): set data.text_field to the text field")
    yield first[cfg.text_field]
    for row in rows:
        yield row[cfg.text_field]



# --- preparation: cached by fingerprint, built once under a lock, published atomically ------------
def corpus_fingerprint(cfg: DataConfig, source: Source) -> str:
    """Readable label + hash of everything that decides the shards' bytes."""
    payload = {"format": data.FORMAT_VERSION, "source": source.identity, "text_field": cfg.text_field,
               "txt_sample_by": cfg.txt_sample_by, "tokenizer": cfg.tokenizer, "val_tokens": cfg.val_tokens,
               "max_train_tokens": cfg.max_train_tokens, "seed": cfg.seed, "max_documents": cfg.max_documents}
    if cfg.tokenizer == "bpe":
        payload["vocab_size"] = cfg.vocab_size
    tokenizer_label = f"bpe{cfg.vocab_size}" if cfg.tokenizer == "bpe" else _safe_label(cfg.tokenizer)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{source.label}-{tokenizer_label}-{digest[:12]}"


@contextmanager
def _exclusive_lock(path: Path):
    """flock: jobs preparing the same corpus build it once; the kernel releases it if a job dies."""
    import fcntl

    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"data: waiting for another process preparing {path.stem.lstrip('.')}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(corpus_dir: Path, verify_checksums: bool) -> data.Manifest | None:
    if not (corpus_dir / "manifest.json").exists():
        return None
    try:
        return data.load_manifest(corpus_dir, verify_checksums)
    except UserError as err:
        print(f"data: rebuilding {corpus_dir.name}: {err}", file=sys.stderr, flush=True)
        return None


def prepare_corpus(cfg: DataConfig, verify_checksums: bool = False) -> data.Manifest:
    """Tokenize the source once into cfg.cache_dir/<fingerprint>/ and return its manifest.

    Idempotent: a valid cached corpus is returned as is (shard sizes always checked, sha256 sums when
    verify_checksums). The fingerprint hashes the source's identity, text field, tokenizer, vocab
    size, val_tokens, max_train_tokens, seed, max_documents and FORMAT_VERSION. A build runs in a
    temporary directory under an exclusive lock and is published with one os.replace, so a crash or
    two sweep jobs preparing at once never leave a half-written corpus.
    """
    validate_data(cfg)  # also when called directly (scripts/prepare_data.py), not through load_config
    source = resolve_source(cfg)
    fingerprint = corpus_fingerprint(cfg, source)
    cache = Path(cfg.cache_dir)
    final = cache / fingerprint
    manifest = _cached(final, verify_checksums)
    if manifest is not None:
        return manifest
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create data.cache_dir={cache} ({err.strerror}): choose a writable directory") from err
    with _exclusive_lock(cache / f".{fingerprint}.lock"):
        manifest = _cached(final, verify_checksums)  # another job may have built it while we waited
        if manifest is not None:
            return manifest
        for stale in cache.glob(f".tmp-{fingerprint}-*"):  # left by a builder that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        print(f"data: preparing {fingerprint} (once; cached afterwards)", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fingerprint}-", dir=cache))
        try:
            _build(cfg, source, fingerprint, tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable by all jobs
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return data.load_manifest(final)


def _build(cfg: DataConfig, source: Source, fingerprint: str, out: Path) -> None:
    """Tokenize the source into `out` (pipeline/data/tokenizer.py) and write manifest.json last."""
    import datasets

    started = time.perf_counter()
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one line per build is enough in sweep logs
    try:
        shards = tok.build_shards(cfg, ordered_documents(cfg, source, out / "hf_cache"), out)
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    shutil.rmtree(out / "hf_cache", ignore_errors=True)  # Arrow copies of local files: no longer needed
    manifest = data.Manifest(dir=str(out), fingerprint=fingerprint, source=cfg.source,
                             source_identity=source.identity, licence=source.licence, tokenizer=cfg.tokenizer,
                             prepare_s=round(time.perf_counter() - started, 2), created_by=_versions(),
                             config=asdict(cfg), **shards)
    record = {"schema_version": data.SCHEMA_VERSION, **{k: v for k, v in asdict(manifest).items() if k != "dir"}}
    (out / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")  # last: marks the build complete


def _versions() -> dict:
    versions = {"format_version": data.FORMAT_VERSION, "python": platform.python_version()}
    for package in ("numpy", "datasets", "tokenizers", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
