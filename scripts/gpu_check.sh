#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py; docs/gpu_check.md): throughput and MFU at 20M/124M/1B, compile
# on/off, bf16-vs-fp32 loss parity over 200 steps, dry-run memory vs torch.cuda.max_memory_allocated.
#   bash scripts/gpu_check.sh                       # on a GPU machine, < 8 min on an H100 -> docs/gpu_check.json
#   bash scripts/gpu_check.sh --cpu-smoke --out /tmp/gpu_check.json   # checks the script on a CPU (toy sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" scripts/gpu_check.py "$@"
