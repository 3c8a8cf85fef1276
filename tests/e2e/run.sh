#!/usr/bin/env bash
# End-to-end checks against a live `minimind serve`: the official `openai` Python client (in a
# throw-away venv), the web page and a run report in headless Chromium (Playwright). Installs what it needs.
#   tests/e2e/run.sh [path/to/minimind]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/minimind}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

# A tiny model to serve.
"$bin" train-tokenizer --data tests/fixtures/pretrain_zh_songci_32.jsonl --data tests/fixtures/sft_zh_en_32.jsonl \
  --vocab-size 800 --out "$work/tok" >/dev/null
"$bin" pretrain --data tests/fixtures/pretrain_zh_songci_32.jsonl --tokenizer "$work/tok" --out "$work/tiny" \
  --preset tiny --batch-size 4 --accumulation-steps 1 --max-seq-len 64 --max-steps 3 2>/dev/null >/dev/null
# Fine-tuned until its greedy answer to the page's question is not empty (an undertrained model may
# answer <|im_end|> at once), so the browser check compares real streamed text.
for steps in 40 80 160; do
  "$bin" sft --model "$work/tiny" --data tests/fixtures/sft_zh_en_32.jsonl --out "$work/chat" --batch-size 4 \
    --max-seq-len 96 --max-steps "$steps" --lr 3e-3 --overwrite 2>/dev/null >/dev/null
  answer=$("$bin" generate --model "$work/chat" --chat --prompt 你好 --temperature 0 --top-p 0.85 --max-new-tokens 12)
  [ -n "$answer" ] && break
done
rm -rf "$work/tiny" && mv "$work/chat" "$work/tiny"
port=$((20000 + RANDOM % 20000))
# A second model for the page's side-by-side compare mode, whose votes land in votes.jsonl.
cp -r "$work/tiny" "$work/tiny2"
"$bin" serve --model "$work/tiny" --model "$work/tiny2" --votes "$work/votes.jsonl" --port "$port" 2>"$work/serve.log" &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q openai prometheus_client
"$work/venv/bin/python" tests/e2e/openai_client.py "http://127.0.0.1:$port/v1" tiny
# /metrics parses as Prometheus text and has counted the client's requests.
curl -sf "http://127.0.0.1:$port/metrics" | "$work/venv/bin/python" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
done = sum(s.value for s in families["minimind_requests"].samples if s.name == "minimind_requests_total")
assert done > 0, "no requests counted"
assert "minimind_time_to_first_token_seconds" in families
print(f"metrics: {len(families)} families, {done:.0f} requests counted")
'
# --tensorboard: the event files read back by TensorBoard's own reader, the same losses as metrics.jsonl.
"$work/venv/bin/pip" install -q tensorboard
"$bin" sft --model "$work/tiny" --data tests/fixtures/sft_zh_en_32.jsonl --out "$work/tbrun" --batch-size 4 \
  --max-seq-len 96 --max-steps 3 --tensorboard "$work/tb" 2>/dev/null >/dev/null
"$work/venv/bin/python" - "$work/tb" "$work/tbrun/metrics.jsonl" <<'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1]); events.Reload()
losses = [(e.step, e.value) for e in events.Scalars("loss")]
expected = [(r["step"], r["loss"]) for r in map(json.loads, open(sys.argv[2]))]
assert [s for s, _ in losses] == [s for s, _ in expected], (losses, expected)
assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(losses, expected)), (losses, expected)
assert {"lr", "grad_norm", "tokens_per_sec"} <= set(events.Tags()["scalars"]), events.Tags()
# The checkpoint's sample answers, as a text summary of the text plugin.
samples = events.Tensors("samples")
text = samples[-1].tensor_proto.string_val[0].decode()
assert samples[-1].step == expected[-1][0] and "**What is 7 times 8?** →" in text, (samples, text)
print(f"tensorboard: {len(losses)} steps of {len(events.Tags()['scalars'])} scalars and {len(samples)} sample texts read back")
PY
# The run report of that run and the served model (curves, figures, greedy answers).
"$bin" report "$work/tbrun" "$work/tiny" --out "$work/report.html" --max-new-tokens 8 >/dev/null
passed=1

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || true
fi
if [ -x /usr/bin/chromium ] && command -v npm >/dev/null; then
  (cd "$work" && npm init -y >/dev/null && npm install -s playwright-core >/dev/null 2>&1)
  cp tests/e2e/browser.mjs "$work/browser.mjs"
  node "$work/browser.mjs" "http://127.0.0.1:$port/" "${SCREENSHOT:-}" "$work/votes.jsonl"
  cp tests/e2e/report.mjs "$work/report.mjs"
  node "$work/report.mjs" "$work/report.html" "${REPORT_SCREENSHOT:-}"
  passed=3
else
  echo "browser test skipped: no Chromium/npm on this machine"
fi
echo "e2e: $passed passed, 0 failed"
