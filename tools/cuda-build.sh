#!/usr/bin/env bash
# Builds (or only checks) the CUDA binary on a machine without a GPU or a CUDA install: NVIDIA's
# compiler and libraries come from PyPI into a throw-away venv, and a stub libcuda.so (the driver,
# which only a GPU machine has) satisfies the linker. The binary runs on any machine with an NVIDIA
# driver for CUDA ≥ 13.0 and the runtime libraries listed in docs/GPU.md (PyTorch's wheels carry them).
#
#   tools/cuda-build.sh [check|build] [FEATURES]     default: build cuda,nccl
#
# `build` writes target/cuda/release/minimind and target/cuda/minimind.xz (stripped, xz: ≈ 10 MB).
# First run: ≈ 20 minutes on 2 cores (candle's kernels are compiled to PTX for sm_90).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
features=${2:-cuda,nccl}
venv=${CUDA_VENV:-/tmp/minimind-cuda-venv}
# 13.0: PTX from a newer compiler does not JIT on a driver for CUDA 13.0 (driver 580).
v=13.0
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==$v.*" "nvidia-nvvm==$v.*" "nvidia-cuda-crt==$v.*" \
  "nvidia-cuda-runtime==$v.*" "nvidia-cuda-cccl==$v.*" "nvidia-cuda-nvrtc==$v.*" "nvidia-cublas==$v.*" \
  "nvidia-curand" "nvidia-nccl-cu13"
site=$(echo "$venv"/lib/python3*/site-packages/nvidia)
root=$site/cu13
# Link directory: unversioned names for the linker, and the driver stub.
lib=$venv/minimind-link
mkdir -p "$lib"
for so in "$root"/lib/*.so.* "$site"/*/lib/*.so.*; do
  [ -e "$so" ] || continue
  base=$(basename "$so"); ln -sf "$so" "$lib/${base%%.so.*}.so"
done
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
if [ ! -e "$lib/libcuda.so" ] || [ -L "$lib/libcuda.so" ]; then
  [ -n "$cudarc" ] || cargo fetch -q
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
  grep -o "fn cu[A-Z][A-Za-z0-9_]*" "$cudarc/src/driver/sys/mod.rs" | sort -u |
    sed 's/^fn \(.*\)/int \1(void) { return 999; }/' >"$lib/cuda_stub.c"
  rm -f "$lib/libcuda.so"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$lib/cuda_stub.c"
fi
export CUDA_ROOT=$root CUDA_PATH=$root CUDA_TOOLKIT_ROOT_DIR=$root PATH=$root/bin:$PATH
export NCCL_HOME=$site/nccl LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="-L native=$lib ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
if [ "$mode" = check ]; then
  cargo check --features "$features"
  exit
fi
cargo build --release --features "$features"
strip -o "$CARGO_TARGET_DIR/minimind.stripped" "$CARGO_TARGET_DIR/release/minimind"
xz -T0 -6 -c "$CARGO_TARGET_DIR/minimind.stripped" >"$CARGO_TARGET_DIR/minimind.xz"
ls -l "$CARGO_TARGET_DIR/minimind.xz"
