#!/usr/bin/env python3
"""Independent PyTorch implementation of the hbit BitNet v2 model, for golden tests.

Written from the paper's equations and DESIGN.md alone (no hbit code): ternary absmean weights
(eqs. 1-2), per-token INT8 absmax / INT4 absmean activations (eqs. 5-6), a dense orthonormal
Hadamard matrix before W_o / W_down (eq. 7, its backward by autograd = eq. 8), the STE as
`x + (q(x) - x).detach()`, LLaMA blocks with sub-norms, rotate-half RoPE, GQA, SwiGLU / ReLU^2 GLU.

Reads a `micro` checkpoint directory made by `hbit init --preset micro --seed 1234`, gives its
RMSNorm gains a trained-looking spread (1 + 0.1 N(0,1); with every gain at 1, position 0 repeats
quantized values exactly and a4.8's top-K would choose among exact ties by float noise), choosing
the first gain seed whose run is well-conditioned (MIN_MARGIN), and writes, for every variant on the same latent weights,
the logits of one sequence, the loss of a 2-sequence batch and gradients (full for small tensors,
norms for all). `crates/hbit-train/tests/golden.rs` compares hbit against this file.

    python3 scripts/golden_reference.py crates/hbit-train/tests/golden/micro \
        crates/hbit-train/tests/golden/micro/golden.json
"""
import json
import math
import struct
import sys

import numpy as np
import torch

EPS = 1e-5

# Inputs of the golden run: fixed, so the Rust test feeds the same tokens.
SEQUENCES = [
    [1, 17, 300, 2, 99, 45, 45, 7, 511],
    [200, 5, 5, 5, 77, 401, 12, 9, 310],
]
VARIANTS = [
    ("bitnet_b158", 8),
    ("bitnet_v2", 8),
    ("bitnet_v2", 4),
    ("bitnet_a48", 4),
    ("bitnet_v2_no_rotation", 4),
    ("bitnet_v2_weight_rotation", 4),
]
# Logit columns written (all positions): enough to check every position without megabytes.
LOGIT_COLUMNS = 128
# Gradients written in full for every variant (small), and for the a4 H-BitLinear run also the
# latent weight gradient of a rotated projection; every tensor's gradient norm is always written.
FULL_GRADIENTS = [
    "model.layers.0.mlp.ffn_sub_norm.weight",
    "model.layers.1.self_attn.attn_sub_norm.weight",
    "model.norm.weight",
]


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[8 + n + start : 8 + n + end], dtype="<f4").copy()
        out[name] = torch.from_numpy(raw.reshape(info["shape"]))
    return out


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        raw = tensors[name].numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def chi(a, q):
    a %= q
    if a == 0:
        return 0
    return 1 if any(x * x % q == a for x in range(1, q)) else -1


def paley_symmetric(order):
    """Symmetric Hadamard matrix of order 12/20 (Paley I) as documented in hbit-kernels
    paley.rs: border +1, corner -1, inside delta(a+b=0) + chi(a+b); 28 via Paley II."""
    if order in (12, 20):
        q = order - 1
        h = np.zeros((order, order))
        h[0, :] = 1
        h[:, 0] = 1
        h[0, 0] = -1
        for a in range(q):
            for b in range(q):
                h[a + 1, b + 1] = (1 if (a + b) % q == 0 else 0) + chi(a + b, q)
    else:
        raise ValueError(f"order {order} not needed by the micro golden model")
    assert np.array_equal(h @ h.T, order * np.eye(order)) and np.array_equal(h, h.T)
    return h


def sylvester(n):
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_matrix(n):
    """Orthonormal H_n: Sylvester for 2^m, kron(Paley, Sylvester) for 12/20/28 * 2^m."""
    p2 = n & -n
    odd = n // p2
    if odd == 1:
        h = sylvester(n)
    else:
        order = 4 * odd
        h = np.kron(paley_symmetric(order), sylvester(n // order))
    return torch.tensor(h / math.sqrt(n), dtype=torch.float32)


# Conditioning of the golden run. Two correct implementations differ by float rounding (~1e-7
# relative) before each quantizer; a value that close to a rounding boundary (or a top-K
# near-tie) would flip one code and move later logits by ~1e-3. The generator therefore only
# accepts inputs whose every quantizer input is at least MIN_MARGIN · max(|code|, 1) code units
# from a boundary (f32 noise is relative: a few ulp of the value, 1e-6 is ample).
MIN_MARGIN = 1e-6
CONDITION = {"margin": float("inf"), "topk_near_tie": False}


def track_margin(codes):
    mag = codes.abs()
    relative = ((mag - torch.floor(mag)) - 0.5).abs() / torch.clamp(mag, min=1.0)
    CONDITION["margin"] = min(CONDITION["margin"], float(relative.min()))


def round_half_away(x):
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def ste(x, q):
    return x + (q - x).detach()


def quant_weight(w, computed):
    """`computed`: the weight came out of arithmetic (W·H), so its codes carry float noise.
    Stored weights go through identical IEEE operations on both sides and need no margin."""
    alpha = w.detach().double().abs().mean().float()  # eq. (1), mean in f64
    if computed:
        track_margin(w.detach() / (alpha + EPS))
    q = torch.clamp(round_half_away(w.detach() / (alpha + EPS)), -1, 1) * alpha
    return ste(w, q)


def quant_act(x, bits):
    xd = x.detach()
    if bits == 8:  # eq. (5)
        gamma = xd.abs().amax(dim=-1, keepdim=True)
        track_margin(127.0 / (gamma + EPS) * xd)
        q = torch.clamp(round_half_away(127.0 / (gamma + EPS) * xd), -128, 127) * (gamma / 127.0)
    else:  # eq. (6)
        beta = xd.abs().mean(dim=-1, keepdim=True)
        s7 = math.sqrt(7.0)
        track_margin(s7 / (beta + EPS) * xd)
        q = torch.clamp(round_half_away(s7 / (beta + EPS) * xd), -8, 7) * (beta / s7)
    return ste(x, q)


def topk_sparsify(x, keep):
    """a4.8: keep round(keep*n) largest |x| per token (ties to the lower index); STE."""
    n = x.shape[-1]
    k = max(1, int(math.floor(keep * n + 0.5)))
    xd = x.detach()
    # Top-K is discontinuous too: a near-tie at the boundary lets float noise pick survivors.
    mags = torch.sort(xd.abs(), dim=-1, descending=True).values
    kth, next_ = mags[..., k - 1], mags[..., k]
    near_tie = (kth - next_ < 1e-4 * kth) & (kth > 1e-3)
    if bool(near_tie.any()):
        CONDITION["topk_near_tie"] = True
    # Stable sort by descending magnitude keeps the lower index first among ties.
    order = torch.sort(-xd.abs(), dim=-1, stable=True).indices[..., :k]
    mask = torch.zeros_like(xd).scatter(-1, order, 1.0)
    return ste(x, xd * mask)


def rms_norm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope_tables(hd, t, theta):
    inv = np.array([theta ** (-(2.0 * i) / hd) for i in range(hd // 2)])
    ang = np.outer(np.arange(t, dtype=np.float64), inv)
    ang = np.concatenate([ang, ang], axis=1)
    return (torch.tensor(np.cos(ang), dtype=torch.float32), torch.tensor(np.sin(ang), dtype=torch.float32))


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def forward(cfg, p, tokens, variant, bits):
    hdim = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = hdim // nh
    eps = cfg["rms_norm_eps"]
    relu2 = variant == "bitnet_a48"
    rotate = variant in ("bitnet_v2", "bitnet_v2_weight_rotation")
    rotate_w = variant == "bitnet_v2_weight_rotation"

    def linear(x, w, intermediate):
        computed = False
        if intermediate and rotate:
            h = hadamard_matrix(x.shape[-1])
            x = x @ h.T
            if rotate_w:
                w = w @ h.T
                computed = True
        if intermediate and variant == "bitnet_a48":
            x = quant_act(topk_sparsify(x, 0.5), 8)
        elif variant == "bitnet_b158":
            x = quant_act(x, 8)
        else:
            x = quant_act(x, bits)
        return x @ quant_weight(w, computed).T

    b, t = tokens.shape
    x = p["model.embed_tokens.weight"][tokens]
    cos, sin = rope_tables(hd, t, cfg["rope_theta"])
    mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
    for l in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = linear(h, p[pre + "self_attn.q_proj.weight"], False).view(b, t, nh, hd).transpose(1, 2)
        k = linear(h, p[pre + "self_attn.k_proj.weight"], False).view(b, t, nkv, hd).transpose(1, 2)
        v = linear(h, p[pre + "self_attn.v_proj.weight"], False).view(b, t, nkv, hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, t, hdim)
        o = rms_norm(o, p[pre + "self_attn.attn_sub_norm.weight"], eps)
        x = x + linear(o, p[pre + "self_attn.o_proj.weight"], True)
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        g = linear(h, p[pre + "mlp.gate_proj.weight"], False)
        u = linear(h, p[pre + "mlp.up_proj.weight"], False)
        a = torch.relu(g) ** 2 if relu2 else torch.nn.functional.silu(g)
        m = rms_norm(a * u, p[pre + "mlp.ffn_sub_norm.weight"], eps)
        x = x + linear(m, p[pre + "mlp.down_proj.weight"], True)
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return x @ head.T


def g6(v):
    """Seven significant digits: far below the compared tolerances, a third of the bytes."""
    return float(f"{v:.7g}")


def run_variants(cfg, base):
    seqs = torch.tensor(SEQUENCES, dtype=torch.long)
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    CONDITION.update(margin=float("inf"), topk_near_tie=False)
    results = []
    for variant, bits in VARIANTS:
        params = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        logits = forward(cfg, params, inputs, variant, bits)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        grads = {k: v.grad for k, v in params.items()}
        full = list(FULL_GRADIENTS)
        if (variant, bits) == ("bitnet_v2", 4):
            full.append("model.layers.1.mlp.down_proj.weight")
        results.append(
            {
                "variant": variant,
                "activation_bits": bits,
                "logits_seq0": [[g6(v) for v in row] for row in logits[0, :, :LOGIT_COLUMNS].tolist()],
                "loss": float(loss.detach()),
                "grad_norms": {k: float(g.norm()) for k, g in sorted(grads.items())},
                "grads": {k: [g6(v) for v in grads[k].flatten().tolist()] for k in full},
            }
        )
    return results


def main():
    """golden_reference.py CKPT OUT.json: rewrites CKPT's norm gains with the first seed whose run
    is well-conditioned (see MIN_MARGIN), then writes the golden values."""
    ckpt, out_path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{ckpt}/config.json"))
    path = f"{ckpt}/model.safetensors"
    base = read_safetensors(path)
    for seed in range(1, 500):
        gen = torch.Generator().manual_seed(seed)
        trial = {
            k: (1.0 + 0.1 * torch.randn(v.shape, generator=gen)) if k.endswith("norm.weight") else v
            for k, v in base.items()
        }
        results = run_variants(cfg, trial)
        margin = CONDITION["margin"]
        print(f"norm-gain seed {seed}: min relative margin {margin:.2e}, top-K near-tie {CONDITION['topk_near_tie']}")
        if margin >= MIN_MARGIN and not CONDITION["topk_near_tie"]:
            break
    else:
        raise SystemExit("no well-conditioned seed found")
    write_safetensors(path, trial)
    for r in results:
        print(f"{r['variant']} a{r['activation_bits']}: loss {r['loss']:.6f}")
    json.dump(
        {"torch": torch.__version__, "norm_gain_seed": seed, "min_margin": margin, "sequences": SEQUENCES, "results": results},
        open(out_path, "w"),
        separators=(",", ":"),
    )


if __name__ == "__main__":
    main()
