#!/usr/bin/env python3
"""Parity check of an exported model: transformers vs minimind, same prompt, greedy decoding.

    cargo run --release -- export MODEL_DIR --format hf-llama --out /tmp/hf
    python tools/parity.py MODEL_DIR /tmp/hf "浣溪沙（" [--new-tokens 32] [--bin target/release/minimind]

Loads the exported folder with `AutoModelForCausalLM` (no custom code), decodes greedily from
`bos + prompt` and compares the text with `minimind generate --temperature 0` on the original folder.
Needs `torch` and `transformers` (not run in CI).
"""
import argparse
import subprocess

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
model = AutoModelForCausalLM.from_pretrained(a.exported, torch_dtype=torch.float32)
ids = [tok.bos_token_id] + tok.encode(a.prompt, add_special_tokens=False)
out = model.generate(torch.tensor([ids]), max_new_tokens=a.new_tokens, do_sample=False,
                     eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
theirs = a.prompt + tok.decode(out[0][len(ids):], skip_special_tokens=True)
ours = subprocess.run([a.bin, "generate", "--model", a.model_dir, "--prompt", a.prompt, "--temperature", "0",
                       "--max-new-tokens", str(a.new_tokens)], capture_output=True, text=True, check=True).stdout.rstrip("\n")
print("transformers:", repr(theirs))
print("minimind    :", repr(ours))
print("PARITY OK" if theirs == ours else "PARITY MISMATCH")
raise SystemExit(0 if theirs == ours else 1)
