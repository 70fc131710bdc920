#!/usr/bin/env bash
# The GPU path, measured: a smoke test of every training stage on CUDA (plus torchrun DDP and FSDP when
# there are 2+ GPUs), then tokens/s and MFU at ~124M, ~350M and ~1B parameters, printed as one table.
#
#   bash benchmarks/gpu.sh                      # everything
#   bash benchmarks/gpu.sh --bench-only --sizes 1b --steps 30
#
# Runs from the repository without installing it (PYTHONPATH=src) on a machine that has only PyTorch,
# numpy, safetensors, tokenizers, transformers, pyyaml and pydantic. Writes gpu_bench.json beside the table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-python}"
"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device visible (torch %s); run this on a GPU machine" % torch.__version__)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PY
"$PYTHON" benchmarks/gpu_bench.py --json "${GPU_BENCH_JSON:-gpu_bench.json}" "$@"
