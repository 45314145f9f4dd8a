#!/usr/bin/env python3
"""The same BitNet v2 training step as `hbit bench train`, in PyTorch on this CPU.

Model: scripts/golden_reference.py's independent implementation (STE fake-quantizers, dense
orthonormal Hadamard matrices before W_o / W_down). Step: forward, cross-entropy, backward,
global-norm clip 1.0, torch.optim.AdamW (betas 0.9/0.95, weight decay 0.1 on matrices).
Prints one JSON line: {"tokens_per_s", "seconds", "torch", "threads"}.

    python3 scripts/bench_train_torch.py --config-json '{...}' --act-bits 8 --batch-size 8 \
        --seq-len 256 --steps 5
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_reference as ref  # noqa: E402


def shapes(cfg):
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    out = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "self_attn.attn_sub_norm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "mlp.ffn_sub_norm.weight": (i,),
            }
        )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--act-bits", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    cfg = json.loads(a.config_json)
    gen = torch.Generator().manual_seed(0)
    params = {
        k: (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s, generator=gen)).requires_grad_(True)
        for k, s in shapes(cfg).items()
    }
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    variant = cfg["quantization"]["variant"]

    def step():
        tokens = torch.randint(0, cfg["vocab_size"], (a.batch_size, a.seq_len + 1), generator=gen)
        logits = ref.forward(cfg, params, tokens[:, :-1], variant, a.act_bits)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "tokens_per_s": a.steps * a.batch_size * a.seq_len / seconds,
                "seconds": seconds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
