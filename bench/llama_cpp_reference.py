#!/usr/bin/env python3
"""Batch-1 decoding speed of llama.cpp on a GGUF exported by `minimind export --format gguf`: a
prompt of N tokens, then M greedy tokens, the same steps as `minimind bench generate`. llama.cpp comes
from the `llama-cpp-python` package (pip install llama-cpp-python), which bundles it.

    python bench/llama_cpp_reference.py model.gguf --threads 2 --prompt-len 128 --new-tokens 256

Ends with `Generate throughput: N tokens/s`, like the Rust benchmark. To measure a llama.cpp library
built for one instruction set (e.g. AVX2 only, beside `MINIMIND_SIMD=avx2`), point
`LLAMA_CPP_LIB_PATH` at the folder holding its `libllama.so`; llama-cpp-python loads that one.
"""
import argparse
import statistics
import time

from llama_cpp import Llama


def main():
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    llm = Llama(model_path=a.gguf, n_ctx=a.prompt_len + a.new_tokens + 8, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    prompt = [10 + (i * 31) % 6000 for i in range(a.prompt_len)]
    times = []
    for step in range(a.steps + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        for _ in range(a.new_tokens):
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            llm.eval([token])
        if step > 0:  # the first run warms up
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"llama.cpp {a.gguf}: prompt {a.prompt_len} + {a.new_tokens} greedy tokens, {a.threads} threads")
    print(f"step time (median of {len(times)}): {median:.3f} s")
    print(f"Generate throughput: {a.new_tokens / median:.1f} tokens/s")


if __name__ == "__main__":
    main()
