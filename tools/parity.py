#!/usr/bin/env python3
"""Parity check of an exported model: transformers vs minimind, same tokens: logits and greedy text.

    cargo run --release -- export MODEL_DIR --format hf --out /tmp/hf
    python tools/parity.py MODEL_DIR /tmp/hf "浣溪沙（" [--new-tokens 32] [--bin target/release/minimind]

Loads the exported folder with `AutoModelForCausalLM` (no custom code), compares its logits on
`bos + prompt` with the ones `minimind generate --logits-out` writes for the original folder (max |Δ|),
then decodes greedily and compares the text with `minimind generate --temperature 0`.
Needs `torch` and `transformers` (not run in CI).
"""
import argparse
import os
import subprocess
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("model_dir")
p.add_argument("exported")
p.add_argument("prompt")
p.add_argument("--new-tokens", type=int, default=32)
p.add_argument("--bin", default="target/release/minimind")
a = p.parse_args()

tok = AutoTokenizer.from_pretrained(a.exported)
model = AutoModelForCausalLM.from_pretrained(a.exported, dtype=torch.float32)
ids = [tok.bos_token_id] + tok.encode(a.prompt, add_special_tokens=False)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "logits.safetensors")
    subprocess.run([a.bin, "generate", "--model", a.model_dir, "--prompt", a.prompt, "--temperature", "0",
                    "--max-new-tokens", "1", "--logits-out", path], capture_output=True, check=True)
    from safetensors.torch import load_file
    mine = load_file(path)
assert mine["input_ids"].tolist() == ids, f"token ids differ: {mine['input_ids'].tolist()} vs {ids}"
with torch.no_grad():
    their_logits = model(torch.tensor([ids])).logits[0].float()
delta = (their_logits - mine["logits"]).abs().max().item()
print(f"logits on {len(ids)} tokens: max |transformers - minimind| = {delta:.3g}")
out = model.generate(torch.tensor([ids]), max_new_tokens=a.new_tokens, do_sample=False,
                     eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
theirs = a.prompt + tok.decode(out[0][len(ids):], skip_special_tokens=True)
ours = subprocess.run([a.bin, "generate", "--model", a.model_dir, "--prompt", a.prompt, "--temperature", "0",
                       "--max-new-tokens", str(a.new_tokens)], capture_output=True, text=True, check=True).stdout.removesuffix("\n")  # println's newline
print("transformers:", repr(theirs))
print("minimind    :", repr(ours))
ok = theirs == ours and delta < 1e-3
print("PARITY OK" if ok else "PARITY MISMATCH")
raise SystemExit(0 if ok else 1)
