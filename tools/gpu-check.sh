#!/usr/bin/env bash
# The GPU check: what a machine with one NVIDIA GPU and PyTorch says about minimind's CUDA path, in
# under 8 minutes (H200). Needs a `minimind` built with `--features cuda,nccl` (on any machine:
# tools/cuda-build.sh; the .xz it writes is accepted as is) and a Python with torch (whose NVIDIA
# wheels also provide the cuBLAS/cuRAND/NVRTC/NCCL libraries the binary loads).
#
#   tools/gpu-check.sh [path/to/minimind[.xz]] [report-file]
#
# A dry run of the script itself on a CPU machine, with small shapes:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 tools/gpu-check.sh target/release/minimind
#
# It prints, and writes to the report file (default gpu-check.txt):
#   1. parity: one training step of a small model on CUDA against the CPU in fp32 — loss and every
#      gradient (fp32 within 1e-4 of the largest value, bf16 within 5% of each gradient's norm);
#   2. training throughput, MiniMind2-Small, batch 32 × 512, bf16: minimind beside PyTorch (bf16
#      autocast, eager and torch.compile), with peak device memory;
#   3. batch-1 decoding tokens/s, bf16 and fp32, beside PyTorch's loop;
#   4. a 200-step tiny pretrain on the bundled data in bf16 whose loss must fall.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cuda/release/minimind}
report=${2:-gpu-check.txt}
py=${PYTHON:-python3}
dev=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $bin == *.xz ]]; then
  xz -dc "$bin" >"$work/minimind" && chmod +x "$work/minimind" && bin=$work/minimind
fi
# The CUDA libraries of PyTorch's wheels (nvidia/*/lib and nvidia/cu13/lib), found through Python.
libs=$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec > >(tee "$report") 2>&1
failed=0
step() { echo; echo "== $*"; }
run() { # run LIMIT_S CMD…: a bounded command; a failure is reported and counted, the check goes on
  local limit=$1; shift
  echo "\$ $*"
  timeout "$limit" "$@" || { echo "!! failed (exit $?): $*"; failed=$((failed + 1)); }
}

step "machine"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
"$bin" --version
missing=$(ldd "$bin" | grep "not found" || true)
[ -z "$missing" ] || { echo "!! libraries not found:"; echo "$missing"; failed=$((failed + 1)); }

step "1. parity: one training step on CUDA vs the CPU in fp32 (loss, every gradient)"
presets=(tiny minimind3)
[ -z "$quick" ] || presets=(tiny)
for preset in "${presets[@]}"; do
  for dtype in fp32 bf16; do
    run 120 "$bin" bench parity --preset "$preset" --device "$dev" --dtype "$dtype"
  done
done
# Routing may flip between precisions, so the MoE model is compared in fp32 only.
run 120 "$bin" bench parity --preset minimind3-moe --device "$dev" --dtype fp32

step "2. training: MiniMind2-Small, batch 32 × 512, bf16 (tokens/s, peak device memory)"
shape=(--preset minimind2-small --batch-size 32 --seq-len 512 --steps 10 --warmup 3)
[ -z "$quick" ] || shape=(--preset tiny --batch-size 2 --seq-len 64 --steps 2 --warmup 1)
run 240 "$bin" bench train "${shape[@]}" --device "$dev" --dtype bf16
run 240 "$py" bench/torch_reference.py train "${shape[@]}" --device "$dev" --dtype bf16
run 300 "$py" bench/torch_reference.py train "${shape[@]}" --device "$dev" --dtype bf16 --compile
run 240 "$bin" bench train "${shape[@]}" --device "$dev" --dtype fp32

step "3. batch-1 decoding: prompt 128, 256 new tokens"
decode=(--preset minimind2-small --prompt-len 128 --new-tokens 256 --steps 3 --warmup 1)
[ -z "$quick" ] || decode=(--preset tiny --prompt-len 16 --new-tokens 16 --steps 1 --warmup 0)
for dtype in bf16 fp32; do
  run 120 "$bin" bench generate "${decode[@]}" --device "$dev" --dtype "$dtype"
  run 120 "$py" bench/torch_reference.py generate "${decode[@]}" --device "$dev" --dtype "$dtype"
done

step "4. a 200-step tiny pretrain on the bundled data, bf16: the loss must fall"
pretrain=(200 32 256 1.0) # steps, batch, tokens per row, the least fall of the loss
[ -z "$quick" ] || pretrain=(40 8 64 0.3)
run 240 "$bin" pretrain --data data/songci_demo.jsonl --tokenizer assets/tokenizers/v2 --preset tiny \
  --batch-size "${pretrain[1]}" --accumulation-steps 1 --max-seq-len "${pretrain[2]}" --max-steps "${pretrain[0]}" --lr 2e-3 --save-every 0 \
  --device "$dev" --dtype bf16 --out "$work/tiny"
if [ -s "$work/tiny/metrics.jsonl" ]; then
  "$py" - "$work/tiny/metrics.jsonl" "${pretrain[0]}" "${pretrain[3]}" <<'PY' || failed=$((failed + 1))
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
first, last = sum(r["loss"] for r in rows[:10]) / 10, sum(r["loss"] for r in rows[-10:]) / 10
print(f"steps {len(rows)}: mean loss of the first 10 steps {first:.3f}, of the last 10 {last:.3f}, "
      f"median {sorted(r['tokens_per_sec'] for r in rows)[len(rows) // 2]:.0f} tokens/s")
sys.exit(0 if len(rows) == int(sys.argv[2]) and last < first - float(sys.argv[3]) else 1)
PY
  run 60 "$bin" generate --model "$work/tiny" --prompt 床前明月光 --max-new-tokens 32 --device "$dev" --dtype bf16
fi

step "result"
if [ "$failed" -eq 0 ]; then echo "gpu check passed"; else echo "gpu check: $failed step(s) failed"; fi
exit "$failed"
