#!/usr/bin/env bash
# Side-by-side benchmark: minimind vs the PyTorch reference (bench/torch_reference.py), same model,
# same shapes, same thread count, and — when llama-cpp-python is installed — batch-1 decoding vs
# llama.cpp on our GGUF export (bench/llama_cpp_reference.py). Prints one table of tokens/s.
#
#   bench/compare.sh [THREADS] [PRESET]        e.g. bench/compare.sh 2 minimind2-small
#
# Needs a release build (cargo build --release) and a Python with torch (PYTHON=/path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
preset=${2:-minimind2-small}
python=${PYTHON:-python3}
bin=target/release/minimind
run() { grep -Eo '[0-9.]+ tokens/s' | grep -Eo '^[0-9.]+'; }
rss() { grep -Eo 'peak RSS: [0-9]+' | grep -Eo '[0-9]+$'; }
printf '%-13s %12s %12s %7s %14s %14s\n' mode minimind torch ratio "minimind RSS" "torch RSS"
# "generate-int8": our decode with int8 weights against PyTorch's fp32 loop.
for mode in train forward generate generate-int8; do
  flags=(); [ "$mode" = generate-int8 ] && flags=(--int8)
  ours=$("$bin" --threads "$threads" bench "${mode%-int8}" --preset "$preset" --steps 5 "${flags[@]}")
  theirs=$("$python" bench/torch_reference.py "${mode%-int8}" --preset "$preset" --threads "$threads" --steps 5)
  a=$(echo "$ours" | run); b=$(echo "$theirs" | run)
  printf '%-13s %12s %12s %7s %11s MiB %11s MiB\n' "$mode" "$a" "$b" "$(echo "scale=2; $a / $b" | bc)" \
    "$(echo "$ours" | rss)" "$(echo "$theirs" | rss)"
done

# llama.cpp's decoding of the same model exported to GGUF (f32 beside our fp32, q8_0 beside our int8),
# when the Python at hand has llama-cpp-python (which bundles llama.cpp).
if "$python" -c "import llama_cpp" 2>/dev/null; then
  work=$(mktemp -d)
  "$bin" pretrain --data data/songci_demo.jsonl --tokenizer assets/tokenizers/v2 --preset "$preset" --max-steps 1 \
    --batch-size 1 --max-seq-len 32 --out "$work/m" >/dev/null 2>&1
  for q in f32 q8_0; do
    "$bin" export "$work/m" --format gguf --dtype "$q" --out "$work/m-$q.gguf" >/dev/null
    flags=(); [ "$q" = q8_0 ] && flags=(--int8)
    ours=$("$bin" --threads "$threads" bench generate --preset "$preset" --steps 3 "${flags[@]}")
    theirs=$("$python" bench/llama_cpp_reference.py "$work/m-$q.gguf" --threads "$threads" --steps 3)
    a=$(echo "$ours" | run); b=$(echo "$theirs" | run)
    printf '%-13s %12s %12s %7s   (llama.cpp %s)\n' "generate" "$a" "$b" "$(echo "scale=2; $a / $b" | bc)" "$q"
  done
  rm -rf "$work"
fi
