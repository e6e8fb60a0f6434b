"""Prepare a corpus once (tokenize into memory-mapped shards) and print its manifest summary.

    python scripts/prepare_data.py                                  # conf/data/stdlib.yaml, ~20 s on 2 cores
    python scripts/prepare_data.py --preset fineweb_edu max_train_tokens=100000000
    python scripts/prepare_data.py source='data/*.jsonl' text_field=content vocab_size=1024
    python scripts/prepare_data.py --verify                         # also re-check the sha256 sums

`key=value` overrides are DataConfig fields (pipeline/data/manifest.py); a cached corpus is returned at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# No BLAS/OpenMP thread pools in this process, so corpus reading may fork its worker pool
# (data.num_proc; pipeline/data/corpus.py forks only from a process that runs one OS thread).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from pipeline.config.load import to_schema  # noqa: E402
from pipeline.config.schema import (  # noqa: E402
    CONF_DIR,  # noqa: E402
    DataConfig,
)
from pipeline.data.corpus import prepare_corpus  # noqa: E402
from pipeline.errors import UserError  # noqa: E402


def data_config(preset: str, overrides: list[str]) -> DataConfig:
    path = CONF_DIR / "data" / f"{preset}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise UserError(f"unknown data preset {preset!r}: choose one of {options}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"override {bad[0]!r} is not key=value: e.g. vocab_size=1024")
    merged = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    return to_schema(OmegaConf.to_container(merged), DataConfig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stdlib", help="a file of conf/data/ (default: stdlib)")
    parser.add_argument("--verify", action="store_true", help="re-check the sha256 of a cached corpus")
    parser.add_argument("overrides", nargs="*", help="DataConfig fields as key=value")
    args = parser.parse_args(argv)
    try:
        cfg = data_config(args.preset, args.overrides)
        started = time.perf_counter()
        manifest = prepare_corpus(cfg, verify_checksums=args.verify)
        elapsed_s = time.perf_counter() - started
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(manifest.summary())
    print(f"licence: {manifest.licence}")
    for name, digest in manifest.sha256.items():
        print(f"sha256 {name}: {digest}")
    print(f"this call: {elapsed_s:.1f} s ({'built' if elapsed_s >= manifest.prepare_s else 'cached'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
