"""hbit's BitNet models in PyTorch for transformers (`trust_remote_code=True`).

BitNet v2 (Wang, Ma, Wei, 2025) and the variants hbit trains, as hbit's DESIGN.md defines them:

* weights: ternary with one absmean scale per tensor, `W_q = clamp(round(W / (mean|W| + eps)),
  -1, 1) * mean|W|` (eqs. 1-2); stored `packed` (codes as transformers' BitNet packs them, four
  rows a byte, and `weight_scale` = 1 / mean|W|, which divides) or `latent` (float master
  weights, quantized in the forward with the straight-through estimator, so the model trains);
* activations per token: INT8 absmax `clamp(round(127 x / (max|x| + eps)), -128, 127)` (eq. 5)
  or INT4 absmean `clamp(round(sqrt(7) x / (mean|x| + eps)), -8, 7)` (eq. 6), rounding half away
  from zero, dequantized before the product (exact for the integer codes);
* H-BitLinear: the inputs of W_o and W_down pass through the orthonormal Hadamard transform
  first (eq. 7; Sylvester for 2^m, Paley x Sylvester for 12, 20, 28 x 2^m, block-diagonal when
  the config names a block), whose backward is the same transform (eq. 8);
* LLaMA blocks with BitNet's sub-norms before W_o and W_down, rotate-half RoPE, GQA, SwiGLU
  (or squared-ReLU GLU), tied or separate output head.

The forward is plain PyTorch without a KV cache: generation recomputes the whole prefix.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from transformers import GenerationMixin
except ImportError:  # older transformers: PreTrainedModel carries generate()
    GenerationMixin = object

from .configuration_hbit_bitnet import HbitBitnetConfig

EPS = 1e-5
INTERMEDIATE = ("o_proj", "down_proj")


# --- Hadamard transform (eqs. 3-4, 7-8) -------------------------------------------------------


def _chi(a, q):
    a %= q
    if a == 0:
        return 0
    return 1 if any(x * x % q == a for x in range(1, q)) else -1


def _paley(order):
    """Symmetric Hadamard matrices of order 12 and 20 (Paley I) and 28 (Paley II), built as
    hbit-kernels' paley.rs builds them, so both transforms are the same matrix."""

    def bordered(q, border):
        s = [[0] * (q + 1) for _ in range(q + 1)]
        s[0][1:] = [1] * q
        for a in range(q):
            s[a + 1][0] = border
            for b in range(q):
                s[a + 1][b + 1] = _chi(b - a, q)
        return s

    if order in (12, 20):
        q = order - 1
        s = bordered(q, -1)
        h = [[0] * order for _ in range(order)]
        for i in range(order):
            src = 0 if i == 0 else 1 + (q - (i - 1)) % q
            for j in range(order):
                h[i][j] = (s[src][j] + (1 if src == j else 0)) * (-1 if j == 0 else 1)
    elif order == 28:
        q, m = 13, 14
        s = bordered(q, 1)
        h = [[0] * order for _ in range(order)]
        for i in range(m):
            for j in range(m):
                v = s[i][j]
                block = [[1, -1], [-1, -1]] if v == 0 else [[v, v], [v, -v]]
                for di in range(2):
                    for dj in range(2):
                        h[2 * i + di][2 * j + dj] = block[di][dj]
    else:
        raise ValueError(f"no Paley matrix of order {order}")
    return torch.tensor(h, dtype=torch.float32)


def _fwht(x):
    """Unnormalized Walsh-Hadamard transform along the last dimension (a power of two)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


_PALEY = {}


def hadamard(x, block=None):
    """Orthonormal Hadamard transform of the last dimension: `H_n x / sqrt(n)`, or the same on
    each `block`-sized piece. Symmetric, so it is its own inverse and its own backward."""
    n = x.shape[-1]
    if block:
        y = _fwht(x.reshape(*x.shape[:-1], n // block, block))
        return (y * (1.0 / math.sqrt(block))).reshape(x.shape)
    pow2 = n & -n
    odd = n // pow2
    if odd == 1:
        return _fwht(x) * (1.0 / math.sqrt(n))
    order = 4 * odd
    if order not in (12, 20, 28):
        raise ValueError(f"no Hadamard transform of length {n}; give hadamard_block")
    if order not in _PALEY:
        _PALEY[order] = _paley(order)
    seg = n // order
    y = _fwht(x.reshape(*x.shape[:-1], order, seg))
    y = torch.matmul(_PALEY[order].to(y.dtype).to(y.device), y)
    return y.reshape(x.shape) * (1.0 / math.sqrt(n))


# --- quantizers (eqs. 1-2, 5-6) with the straight-through estimator ---------------------------


def _round_half_away(x):
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _ste(x, q):
    return x + (q - x).detach()


def quantize_weight(w):
    alpha = w.detach().double().abs().mean().float()  # the mean in f64, as hbit
    q = torch.clamp(_round_half_away(w.detach() / (alpha + EPS)), -1, 1) * alpha
    return _ste(w, q)


def quantize_activation(x, bits):
    xd = x.detach()
    if bits == 8:
        gamma = xd.abs().amax(dim=-1, keepdim=True)
        q = torch.clamp(_round_half_away(127.0 / (gamma + EPS) * xd), -128, 127) * (gamma / 127.0)
    else:
        beta = xd.abs().mean(dim=-1, keepdim=True)
        s7 = math.sqrt(7.0)
        q = torch.clamp(_round_half_away(s7 / (beta + EPS) * xd), -8, 7) * (beta / s7)
    return _ste(x, q)


def topk_sparsify(x, keep):
    """a4.8: the round(keep * n) largest |x| of each token survive (ties: lower index)."""
    n = x.shape[-1]
    k = max(1, int(math.floor(keep * n + 0.5)))
    xd = x.detach()
    order = torch.sort(-xd.abs(), dim=-1, stable=True).indices[..., :k]
    mask = torch.zeros_like(xd).scatter(-1, order, 1.0)
    return _ste(x, xd * mask)


def unpack_codes(packed):
    """Ternary codes of transformers' BitNet layout: row r is bits 2f..2f+1 of packed row
    r % (rows/4), f = r // (rows/4), holding code + 1."""
    fields = [((packed >> (2 * f)) & 3).to(torch.int8) - 1 for f in range(4)]
    return torch.cat(fields, dim=0)


class HbitLinear(nn.Module):
    """A BitLinear (or H-BitLinear) projection: input transform and quantizer, ternary weight."""

    def __init__(self, in_features, out_features, name, config):
        super().__init__()
        q = config.hbit_quantization
        variant = q["variant"]
        self.in_features, self.out_features = in_features, out_features
        self.hadamard = name in (q.get("hadamard") or [])
        self.block = q.get("hadamard_block")
        self.rotate_weight = self.hadamard and variant in (
            "bitnet_v2_weight_rotation",
            "bitnet_b158_quarot",
            "bitnet_b158_spinquant",
        )
        self.topk = q.get("topk_keep") if variant == "bitnet_a48" and name in INTERMEDIATE else None
        self.bits = 8 if (variant == "bitnet_b158" or self.topk) else int(q["activation_bits"])
        self.packed = q.get("weights", "latent") == "packed"
        if self.packed:
            self.register_buffer("weight", torch.zeros(out_features // 4, in_features, dtype=torch.uint8))
            self.register_buffer("weight_scale", torch.ones(1))
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def ternary_weight(self):
        if self.packed:
            codes = unpack_codes(self.weight).to(torch.float32)
            return codes / self.weight_scale
        w = hadamard(self.weight, self.block) if self.rotate_weight else self.weight
        return quantize_weight(w)

    def forward(self, x):
        if self.hadamard:
            x = hadamard(x, self.block)
        if self.topk:
            x = topk_sparsify(x, self.topk)
        x = quantize_activation(x, self.bits)
        return torch.matmul(x, self.ternary_weight().to(x.dtype).t())


class HbitRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class HbitAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = h // self.heads
        kv = self.kv_heads * self.head_dim
        self.q_proj = HbitLinear(h, h, "q_proj", config)
        self.k_proj = HbitLinear(h, kv, "k_proj", config)
        self.v_proj = HbitLinear(h, kv, "v_proj", config)
        self.attn_sub_norm = HbitRMSNorm(h, config.rms_norm_eps)
        self.o_proj = HbitLinear(h, h, "o_proj", config)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        o = torch.matmul(torch.softmax(scores, dim=-1), v)
        o = o.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(self.attn_sub_norm(o))


class HbitMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = HbitLinear(h, f, "gate_proj", config)
        self.up_proj = HbitLinear(h, f, "up_proj", config)
        self.ffn_sub_norm = HbitRMSNorm(f, config.rms_norm_eps)
        self.down_proj = HbitLinear(f, h, "down_proj", config)
        self.relu2 = config.hidden_act == "relu2"

    def forward(self, x):
        g = self.gate_proj(x)
        a = torch.relu(g) ** 2 if self.relu2 else F.silu(g)
        return self.down_proj(self.ffn_sub_norm(a * self.up_proj(x)))


class HbitBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = HbitRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = HbitAttention(config)
        self.post_attention_layernorm = HbitRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = HbitMLP(config)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class HbitBitnetPreTrainedModel(PreTrainedModel):
    config_class = HbitBitnetConfig
    base_model_prefix = "model"
    _no_split_modules = ["HbitBlock"]

    def _init_weights(self, module):
        # N(0, 0.02^2) as hbit initialises; norms at one.
        if isinstance(module, HbitLinear) and not module.packed:
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, HbitRMSNorm):
            nn.init.ones_(module.weight)


class HbitBitnetModel(HbitBitnetPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([HbitBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = HbitRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        x = self.embed_tokens(input_ids)
        hd = self.config.hidden_size // self.config.num_attention_heads
        inv = torch.tensor(
            [self.config.rope_theta ** (-(2.0 * i) / hd) for i in range(hd // 2)], dtype=torch.float64
        )
        # Positions count real tokens only, so left padding (batched generate) changes nothing.
        if attention_mask is not None:
            positions = (attention_mask.to(torch.long).cumsum(-1) - 1).clamp(min=0).to(torch.float64)
        else:
            positions = torch.arange(t, dtype=torch.float64).expand(b, t)
        angles = positions[..., None] * inv
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [b, 1, t, hd]
        cos, sin = angles.cos().to(x.dtype).to(x.device), angles.sin().to(x.dtype).to(x.device)
        # The most negative finite value, not -inf: a padding row masked whole stays finite.
        lowest = torch.finfo(x.dtype).min
        mask = torch.triu(torch.full((t, t), lowest, dtype=x.dtype, device=x.device), diagonal=1)
        mask = mask[None, None]
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(torch.bool)
            mask = mask.masked_fill(~keep, lowest)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


class HbitBitnetForCausalLM(HbitBitnetPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = HbitBitnetModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.model(input_ids, attention_mask)
        if self.config.tie_word_embeddings:
            logits = torch.matmul(hidden, self.model.embed_tokens.weight.t())
        else:
            logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step runs the whole sequence.
        return {"input_ids": input_ids, "attention_mask": attention_mask}
