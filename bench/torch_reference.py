#!/usr/bin/env python3
"""The same model and the same benchmark steps as `minimind bench`, in plain PyTorch.

MiniMind2 architecture (RMSNorm pre-norm blocks, rotate_half RoPE θ=1e6, GQA attention through
F.scaled_dot_product_attention, SwiGLU FFN, tied embedding/head), PyTorch's default Linear init
(U(±1/√fan_in), MiniMind2's), AdamW with PyTorch defaults, fp32, the same thread count; the minimind-3
presets add per-head q/k RMSNorm and (minimind3-moe) a top-1 softmax router over 4 SwiGLU experts
dispatched per expert as minimind-3 does (its aux loss is left out of the timing: it is tiny).

    python bench/torch_reference.py train    --preset minimind2-small --batch-size 4 --seq-len 512 --threads 2
    python bench/torch_reference.py forward  --preset minimind2-small --batch-size 4 --seq-len 512 --threads 2
    python bench/torch_reference.py generate --preset minimind2-small --prompt-len 128 --new-tokens 256 --threads 2

On a GPU: `--device cuda --dtype bf16` (autocast bf16, MiniMind's mixed precision: fp32 weights and
AdamW state, bf16 matmuls) and optionally `--compile` (torch.compile); peak device memory is PyTorch's
`max_memory_allocated` (and `max_memory_reserved`, what its caching allocator held).

Each run ends with `<mode> throughput: N tokens/s`, like the Rust benchmark. Needs only `torch`.
"""
import contextlib
import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2),
    "minimind2-small": dict(hidden=512, layers=8, heads=8, kv_heads=2),
    "minimind2": dict(hidden=768, layers=16, heads=8, kv_heads=2),
    "minimind3": dict(hidden=768, layers=8, heads=8, kv_heads=4, qk_norm=True, ffn=2432, eps=1e-6),
    "minimind3-moe": dict(hidden=768, layers=8, heads=8, kv_heads=4, qk_norm=True, ffn=2432, eps=1e-6, experts=4),
}
VOCAB, THETA = 6400, 1e6


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return self.weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope_tables(head_dim, length):
    inv_freq = 1.0 / (THETA ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    freqs = torch.outer(torch.arange(length).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.cos()], -1), torch.cat([freqs.sin(), freqs.sin()], -1)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


class Attention(nn.Module):
    def __init__(self, d, heads, kv_heads, qk_norm=False, eps=1e-5):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.q_norm = RMSNorm(self.head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps) if qk_norm else None
        self.q_proj = nn.Linear(d, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[0], cache[1] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, d, ffn):
        super().__init__()
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """minimind-3's MoE: softmax router, top-1 (renormalized), each expert on its own tokens."""

    def __init__(self, d, ffn, experts):
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, ffn) for _ in range(experts))

    def forward(self, x):
        shape, flat = x.shape, x.reshape(-1, x.shape[-1])
        w, idx = torch.topk(F.softmax(self.gate(flat), dim=-1), 1, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        y = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (idx[:, 0] == e).nonzero(as_tuple=True)[0]
            if rows.numel():
                y.index_add_(0, rows, expert(flat[rows]) * w[rows])
        return y.reshape(shape)


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, ffn, qk_norm=False, eps=1e-5, experts=0):
        super().__init__()
        self.self_attn = Attention(d, heads, kv_heads, qk_norm, eps)
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(d, eps), RMSNorm(d, eps)
        self.mlp = MoE(d, ffn, experts) if experts else SwiGLU(d, ffn)

    def forward(self, x, cos, sin, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class MiniMind(nn.Module):
    def __init__(self, hidden, layers, heads, kv_heads, qk_norm=False, ffn=None, eps=1e-5, experts=0):
        super().__init__()
        ffn = ffn or 64 * math.ceil(int(hidden * 8 / 3) / 64)
        self.layers = nn.ModuleList(
            Block(hidden, heads, kv_heads, ffn, qk_norm, eps, experts) for _ in range(layers))
        self.norm = RMSNorm(hidden, eps)
        self.lm_head = nn.Linear(hidden, VOCAB, bias=False)
        self.embed_tokens = nn.Embedding(VOCAB, hidden)
        self.embed_tokens.weight = self.lm_head.weight  # tied, initialized as the head
        cos, sin = rope_tables(hidden // heads, 32768)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids, caches=None, pos=0):
        x = self.embed_tokens(ids)
        t = ids.shape[1]
        cos, sin = self.cos[pos : pos + t], self.sin[pos : pos + t]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.lm_head(self.norm(x))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(warmup, steps, fn, device=torch.device("cpu")):
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def matmul_ceiling(m, k, n, device, dtype):
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype)
    step, _ = timed(2, 5, lambda: a @ b.t(), device)
    return 2 * m * k * n / step / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "forward", "generate"])
    p.add_argument("--preset", default="minimind2-small", choices=PRESETS)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = p.parse_args()
    device = torch.device(a.device)
    half = a.dtype == "bf16"
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = PRESETS[a.preset]
    model = MiniMind(**cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if half and a.mode != "train":
        model = model.to(torch.bfloat16)  # inference in bf16 weights, as `minimind --dtype bf16`
    ffn = 64 * math.ceil(int(cfg["hidden"] * 8 / 3) / 64)
    ceiling = matmul_ceiling(a.batch_size * a.seq_len, cfg["hidden"], ffn, device,
                             torch.bfloat16 if half else torch.float32)
    run = torch.compile(model) if a.compile else model
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if half and a.mode == "train" \
        else contextlib.nullcontext
    print(f"torch bench {a.mode} on {device} in {a.dtype}{' compiled' if a.compile else ''}: {a.preset} "
          f"({n_params} parameters), batch {a.batch_size} × {a.seq_len}, {torch.get_num_threads()} threads, "
          f"matmul ceiling {ceiling:.1f} GFLOP/s, torch {torch.__version__}")
    ids = torch.randint(0, VOCAB, (a.batch_size, a.seq_len + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    tokens = a.batch_size * a.seq_len
    fwd_flops = 2 * n_params * tokens + 4 * tokens * a.seq_len * cfg["hidden"] * cfg["layers"]
    if a.mode == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with autocast():
                logits = run(x)
                loss = F.cross_entropy(logits.view(-1, VOCAB).float(), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        flops = 3 * fwd_flops
    elif a.mode == "forward":
        def step():
            with torch.no_grad():
                run(x)

        flops = fwd_flops
    else:
        prompt = ids[:1, : a.prompt_len]
        tokens = a.new_tokens

        def step():
            with torch.no_grad():
                caches = [[None, None] for _ in model.layers]
                logits = model(prompt, caches, 0)
                pos = prompt.shape[1]
                for _ in range(a.new_tokens):
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                    logits = model(nxt, caches, pos)
                    pos += 1

        flops = 2 * n_params * (a.prompt_len + a.new_tokens)
    median, n = timed(a.warmup, a.steps, step, device)
    gflops = flops / median / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"step time (median of {n}): {median:.3f} s")
    print(f"peak RSS: {rss:.0f} MiB")
    if device.type == "cuda":
        print(f"peak device memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated, "
              f"{torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB reserved")
    print(f"achieved: {gflops:.1f} GFLOP/s = {100 * gflops / ceiling:.0f}% of the matmul ceiling")
    print(f"{a.mode.capitalize()} throughput: {tokens / median:.1f} tokens/s")


if __name__ == "__main__":
    main()
