#!/usr/bin/env bash
# Compile check of the CUDA build (`--features cuda`) on a machine without a GPU or a CUDA install:
# NVIDIA's compiler comes from PyPI into a throw-away venv. Slow the first time (candle's kernels are
# compiled to PTX): ~10 minutes on 2 cores.
#
#   tools/cuda-check.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/minimind-cuda-venv}
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
# One CUDA version for compiler, NVVM, headers and runtime headers (mixing them fails in ptxas).
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*" \
  "nvidia-cuda-runtime==13.2.*" "nvidia-cuda-cccl==13.2.*"
root=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
export CUDA_ROOT=$root CUDA_PATH=$root CUDA_TOOLKIT_ROOT_DIR=$root PATH=$root/bin:$PATH
export CUDARC_CUDA_VERSION=13020 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-check} cargo check --features cuda
