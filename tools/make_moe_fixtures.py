"""Writes tests/fixtures/pth/ checkpoints of the MoE and minimind-3 generations, saved by torch.save in
MiniMind's layouts, with the logits of a PyTorch forward written from MiniMind's definitions (spec §2):

- moe2_classic_micro.pth: MiniMind2-MoE, classic names (`feed_forward.experts.e.w1`, `feed_forward.gate`,
  one `feed_forward.shared_experts`), interleaved-pair RoPE, fp32;
- moe2_micro.pth: the same weights in MiniMind2's HF layout (`mlp.experts.e.gate_proj`, `mlp.gate`,
  `mlp.shared_experts.0`, q/k rows permuted for rotate-half RoPE), fp32;
- v3_micro.pth: minimind-3 dense (q_norm/k_norm, ε 1e-6), fp32;
- v3_moe_micro.pth: minimind-3-MoE (4 experts, top-1, renormalized, no shared expert), fp32;
- moe_micro_logits.json: ids and each file's logits. tests/suite/import.rs imports each and compares.

    python tools/make_moe_fixtures.py            # needs torch
"""
import json, math, pathlib
import torch
import torch.nn.functional as F

V, D, H, KV, LAYERS, THETA = 97, 32, 2, 1, 2, 1e6
HD = D // H
FFN = 64 * math.ceil(int(D * 8 / 3) / 64)
E = 4
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pth"


def rnd(g):
    return lambda *s: torch.randn(*s, generator=g) * 0.2


def rms(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def rope_tables(T):
    freqs = 1.0 / (THETA ** (torch.arange(0, HD, 2)[: HD // 2].float() / HD))
    angles = torch.outer(torch.arange(T).float(), freqs)
    return torch.cat([angles.cos(), angles.cos()], -1), torch.cat([angles.sin(), angles.sin()], -1)


def rope_half(x, cos, sin):  # rotate_half, x [B, T, heads, HD]
    rot = torch.cat([-x[..., HD // 2:], x[..., : HD // 2]], -1)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


def rope_classic(x, T):  # adjacent pairs as complex numbers
    freqs = 1.0 / (THETA ** (torch.arange(0, HD, 2)[: HD // 2].float() / HD))
    cis = torch.polar(torch.ones(T, HD // 2), torch.outer(torch.arange(T).float(), freqs))
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None, :]).flatten(3)


def swiglu(x, gate, up, down):
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def moe(x, sd, p, k, renormalize, shared):
    """Inference-mode MoE: softmax scores, top-k, optional renormalization, experts, shared experts."""
    B, T, _ = x.shape
    flat = x.reshape(-1, D)
    scores = F.softmax(flat @ sd[p + "gate.weight"].T, dim=-1)
    w, idx = torch.topk(scores, k, dim=-1, sorted=False)
    if renormalize:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    y = torch.zeros_like(flat)
    for e in range(E):
        ep = f"{p}experts.{e}."
        out = swiglu(flat, sd[ep + "gate_proj.weight"], sd[ep + "up_proj.weight"], sd[ep + "down_proj.weight"])
        y = y + out * (w * (idx == e)).sum(-1, keepdim=True)
    for s in range(shared):
        sp = f"{p}shared_experts.{s}."
        y = y + swiglu(flat, sd[sp + "gate_proj.weight"], sd[sp + "up_proj.weight"], sd[sp + "down_proj.weight"])
    return y.reshape(B, T, D)


def hf_forward(sd, ids, eps, qk_norm, ffn):
    """The HF-named model (MiniMind2 or minimind-3 layout); `ffn(x, prefix)` is the block's FFN."""
    B, T = ids.shape
    cos, sin = rope_tables(T)
    h = sd["model.embed_tokens.weight"][ids]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"], eps)
        q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, H, HD)
        k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, KV, HD)
        v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, KV, HD)
        if qk_norm:
            q, k = rms(q, sd[p + "self_attn.q_norm.weight"], eps), rms(k, sd[p + "self_attn.k_norm.weight"], eps)
        q, k = rope_half(q, cos, sin), rope_half(k, cos, sin)
        k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + o.transpose(1, 2).reshape(B, T, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = h + ffn(rms(h, sd[p + "post_attention_layernorm.weight"], eps), p + "mlp.")
    return rms(h, sd["model.norm.weight"], eps) @ sd["model.embed_tokens.weight"].T


def hf_state(seed, qk_norm, experts, shared):
    r = rnd(torch.Generator().manual_seed(seed))
    sd = {"model.embed_tokens.weight": r(V, D)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = r(H * HD, D)
        sd[p + "self_attn.k_proj.weight"] = r(KV * HD, D)
        sd[p + "self_attn.v_proj.weight"] = r(KV * HD, D)
        sd[p + "self_attn.o_proj.weight"] = r(D, H * HD)
        if qk_norm:
            sd[p + "self_attn.q_norm.weight"] = 1 + r(HD) / 2
            sd[p + "self_attn.k_norm.weight"] = 1 + r(HD) / 2
        sd[p + "input_layernorm.weight"] = 1 + r(D) / 2
        sd[p + "post_attention_layernorm.weight"] = 1 + r(D) / 2
        mlps = [f"mlp.experts.{e}." for e in range(experts)] + [f"mlp.shared_experts.{s}." for s in range(shared)]
        if experts:
            sd[p + "mlp.gate.weight"] = r(E, D) * 5  # decisive routing, so fp rounding never flips a choice
        for m in mlps or ["mlp."]:
            sd[p + m + "gate_proj.weight"] = r(FFN, D)
            sd[p + m + "down_proj.weight"] = r(D, FFN)
            sd[p + m + "up_proj.weight"] = r(FFN, D)
    sd["model.norm.weight"] = 1 + r(D) / 2
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def to_classic(sd):
    """MiniMind2-classic names for a MiniMind2-MoE state: q/k rows back to interleaved pairs."""
    out = {}
    proj = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    attn = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
    for k, v in sd.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
            out[{"model.embed_tokens.weight": "tok_embeddings.weight", "lm_head.weight": "output.weight",
                 "model.norm.weight": "norm.weight"}[k]] = v
            continue
        _, _, i, rest = k.split(".", 3)
        if rest.startswith("self_attn."):
            name = rest.split(".")[1]
            if name in ("q_proj", "k_proj"):  # rotate-half rows → interleaved rows (inverse permutation)
                v = v.view(-1, 2, HD // 2, D).transpose(1, 2).reshape(-1, D)
            out[f"layers.{i}.attention.{attn[name]}.weight"] = v
        elif rest == "input_layernorm.weight":
            out[f"layers.{i}.attention_norm.weight"] = v
        elif rest == "post_attention_layernorm.weight":
            out[f"layers.{i}.ffn_norm.weight"] = v
        elif rest == "mlp.gate.weight":
            out[f"layers.{i}.feed_forward.gate.weight"] = v
        elif rest.startswith("mlp.experts."):
            _, _, e, name, _ = rest.split(".")
            out[f"layers.{i}.feed_forward.experts.{e}.{proj[name]}.weight"] = v
        elif rest.startswith("mlp.shared_experts.0."):
            out[f"layers.{i}.feed_forward.shared_experts.{proj[rest.split('.')[3]]}.weight"] = v
    out["output.weight"] = out["tok_embeddings.weight"]
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[1, 5, 9, 33, 2, 70, 96, 0, 41, 12, 7]])
    cases = {}
    with torch.no_grad():
        moe2 = hf_state(1, qk_norm=False, experts=E, shared=1)
        logits = hf_forward(moe2, ids, 1e-5, False, lambda x, p: moe(x, moe2, p, 2, True, 1))
        torch.save(moe2, OUT / "moe2_micro.pth")
        torch.save(to_classic(moe2), OUT / "moe2_classic_micro.pth")
        cases["moe2_micro.pth"] = cases["moe2_classic_micro.pth"] = logits
        v3 = hf_state(2, qk_norm=True, experts=0, shared=0)
        dense = lambda x, p: swiglu(x, v3[p + "gate_proj.weight"], v3[p + "up_proj.weight"], v3[p + "down_proj.weight"])
        cases["v3_micro.pth"] = hf_forward(v3, ids, 1e-6, True, dense)
        torch.save(v3, OUT / "v3_micro.pth")
        v3moe = hf_state(3, qk_norm=True, experts=E, shared=0)
        cases["v3_moe_micro.pth"] = hf_forward(v3moe, ids, 1e-6, True, lambda x, p: moe(x, v3moe, p, 1, True, 0))
        torch.save(v3moe, OUT / "v3_moe_micro.pth")
    meta = {"ids": ids[0].tolist(), "shape": {"vocab_size": V, "hidden_size": D, "num_attention_heads": H,
            "num_key_value_heads": KV, "num_hidden_layers": LAYERS, "intermediate_size": FFN, "experts": E},
            "logits": {k: [round(x, 6) for x in v[0].flatten().tolist()] for k, v in cases.items()},
            "torch": torch.__version__}
    (OUT / "moe_micro_logits.json").write_text(json.dumps(meta) + "\n")
    print("wrote", *sorted(cases), "moe_micro_logits.json")


if __name__ == "__main__":
    main()
