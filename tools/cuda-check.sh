#!/usr/bin/env bash
# Compile check of the GPU build (`--features cuda,nccl`) on a machine without a GPU or a CUDA
# install (NVIDIA's compiler from PyPI; see tools/cuda-build.sh): ≈ 10 minutes the first time.
exec "$(dirname "$0")/cuda-build.sh" check "${1:-cuda,nccl}"
