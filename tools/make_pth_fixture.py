"""Writes tests/fixtures/pth/: a micro MiniMind2-classic checkpoint saved by torch.save (fp32, the
tied head sharing the embedding's storage, as MiniMind2-classic's train scripts save it), the same
weights in MiniMind2's layout (HF names, rotate-half RoPE rows, fp16 with the tied weight stored
twice, as MiniMind2's scripts save), and the logits of MiniMind2-classic's forward in PyTorch on
fixed ids. tests/suite/import.rs checks that `minimind import` reproduces these logits.

    python tools/make_pth_fixture.py            # needs torch; writes tests/fixtures/pth/*
"""
import json, math, pathlib
import torch
import torch.nn.functional as F

V, D_MODEL, H, KV, LAYERS, EPS, THETA = 97, 32, 2, 1, 2, 1e-5, 1e6
HD = D_MODEL // H
FFN = 64 * math.ceil(int(D_MODEL * 8 / 3) / 64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pth"


def classic_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd = {"tok_embeddings.weight": r(V, D_MODEL)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = r(H * HD, D_MODEL)
        sd[p + "attention.wk.weight"] = r(KV * HD, D_MODEL)
        sd[p + "attention.wv.weight"] = r(KV * HD, D_MODEL)
        sd[p + "attention.wo.weight"] = r(D_MODEL, H * HD)
        sd[p + "attention_norm.weight"] = 1 + r(D_MODEL) / 2
        sd[p + "ffn_norm.weight"] = 1 + r(D_MODEL) / 2
        sd[p + "feed_forward.w1.weight"] = r(FFN, D_MODEL)
        sd[p + "feed_forward.w2.weight"] = r(D_MODEL, FFN)
        sd[p + "feed_forward.w3.weight"] = r(FFN, D_MODEL)
    sd["norm.weight"] = 1 + r(D_MODEL) / 2
    sd["output.weight"] = sd["tok_embeddings.weight"]  # tied: one storage, two names
    return sd


def rms(x, w):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)).type_as(x)


def pos_cis(T):
    freqs = 1.0 / (THETA ** (torch.arange(0, HD, 2)[: HD // 2].float() / HD))
    return torch.polar(torch.ones(T, HD // 2), torch.outer(torch.arange(T).float(), freqs))


def rope(x, cis):  # MiniMind2-classic: adjacent pairs as complex numbers
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None, :]).flatten(3).type_as(x)


def classic_forward(sd, ids):
    B, T = ids.shape
    h, cis = sd["tok_embeddings.weight"][ids], pos_cis(T)
    for i in range(LAYERS):
        p = f"layers.{i}."
        x = rms(h, sd[p + "attention_norm.weight"])
        q = (x @ sd[p + "attention.wq.weight"].T).view(B, T, H, HD)
        k = (x @ sd[p + "attention.wk.weight"].T).view(B, T, KV, HD)
        v = (x @ sd[p + "attention.wv.weight"].T).view(B, T, KV, HD)
        q, k = rope(q, cis), rope(k, cis)
        k = k.repeat_interleave(H // KV, dim=2)
        v = v.repeat_interleave(H // KV, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + o.transpose(1, 2).reshape(B, T, -1) @ sd[p + "attention.wo.weight"].T
        x = rms(h, sd[p + "ffn_norm.weight"])
        ff = F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)
        h = h + ff @ sd[p + "feed_forward.w2.weight"].T
    return rms(h, sd["norm.weight"]) @ sd["output.weight"].T


def renamed_v2(sd):
    """MiniMind2 layout: HF names, q/k rows permuted (spec §2.3), fp16, tied weight stored twice."""
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm", "feed_forward.w1": "mlp.gate_proj",
             "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj"}
    out = {}
    for k, v in sd.items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            mod = rest.rsplit(".", 1)[0]
            if mod in ("attention.wq", "attention.wk"):
                v = v.view(-1, HD // 2, 2, D_MODEL).transpose(1, 2).reshape(-1, D_MODEL)
            k = f"model.layers.{i}.{names[mod]}.weight"
        else:
            k = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}[k]
        out[k] = v.half().clone()
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sd = classic_state()
    ids = torch.tensor([[1, 5, 9, 33, 2, 70, 96, 0, 41, 12, 7]])
    with torch.no_grad():
        logits = classic_forward(sd, ids)
    torch.save(sd, OUT / "classic_micro.pth")
    torch.save(renamed_v2(sd), OUT / "v2_micro_fp16.pth")
    meta = {"config": {"vocab_size": V, "hidden_size": D_MODEL, "num_attention_heads": H, "num_key_value_heads": KV,
                       "num_hidden_layers": LAYERS, "intermediate_size": FFN},
            "ids": ids[0].tolist(), "logits": [round(x, 6) for x in logits[0].flatten().tolist()],
            "torch": torch.__version__}
    (OUT / "classic_micro_logits.json").write_text(json.dumps(meta) + "\n")
    print("wrote", *sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
