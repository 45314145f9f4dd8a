#!/usr/bin/env python3
"""transformers' BitNet checkpoint variants, read by hbit, against transformers itself.

One small random BitNet model (transformers' BitNetForCausalLM: squared-ReLU GLU, sub-norms,
GQA) is written in each layout transformers' BitNet integration loads:

* `bitlinear` (offline): packed U8 codes [out/4, in] + `weight_scale` = 1 / mean|W|;
* `autobitlinear` offline (microsoft/bitnet-b1.58-2B-4T): packed codes + `weight_scale` =
  mean|W|;
* `autobitlinear` online (the 2B4T -bf16 master weights): the float weights, no scale;

transformers loads each (`from_pretrained`, its BitNet quantizer) and scores one sequence; so
does `hbit logits --engine`. A layout passes when the relative error is <= 1e-2 and the same
file read under the other offline class (the opposite scale rule) is far off, so the rule hbit
applies is the one transformers' numbers prove.

Usage: scripts/hf_bitnet_variants_check.py path/to/hbit WORKDIR
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BitNetConfig, BitNetForCausalLM

HBIT, WORK = sys.argv[1], Path(sys.argv[2])
WORK.mkdir(parents=True, exist_ok=True)
TOKENS = [(i * 37 + 5) % 256 for i in range(32)]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hbit_logits(model_dir):
    out = subprocess.run(
        [HBIT, "logits", "--engine", "--model", str(model_dir), "--tokens", ",".join(map(str, TOKENS)), "--json"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"hbit on {model_dir}: {out.stderr}")
    return torch.tensor(json.loads(out.stdout)["logits"], dtype=torch.float64)


def torch_logits(model_dir):
    model = BitNetForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].to(torch.float64)


def pack(codes):
    """transformers' packing: row r is field r // (out/4) of packed row r % (out/4), code + 1."""
    rows = codes.shape[0]
    quarter = rows // 4
    shifted = (codes + 1).to(torch.uint8)
    packed = torch.zeros((quarter, codes.shape[1]), dtype=torch.uint8)
    for f in range(4):
        packed |= shifted[f * quarter:(f + 1) * quarter] << (2 * f)
    return packed


def write(dir_, config, tensors, quant):
    dir_.mkdir(parents=True, exist_ok=True)
    c = dict(config)
    c["quantization_config"] = quant
    (dir_ / "config.json").write_text(json.dumps(c, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dir_ / "model.safetensors"))


# A random float model, with norm gains away from 1 so every tensor matters.
torch.manual_seed(0)
config = BitNetConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
dense = BitNetForCausalLM(config)
with torch.no_grad():
    for name, p in dense.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
dense.save_pretrained(WORK / "dense")
base_config = json.loads((WORK / "dense" / "config.json").read_text())
master = load_file(str(WORK / "dense" / "model.safetensors"))

layouts = {}
packed_div, packed_mul = {}, {}
for name, w in master.items():
    if any(p in name for p in PROJECTIONS):
        m = w.abs().mean().clamp(min=1e-5)
        codes = torch.clamp(torch.round(w / m), -1, 1).to(torch.int8)
        packed_div[name] = pack(codes)
        packed_mul[name] = pack(codes)
        packed_div[name.replace(".weight", ".weight_scale")] = (1 / m).reshape(1)
        packed_mul[name.replace(".weight", ".weight_scale")] = m.reshape(1)
    else:
        packed_div[name] = packed_mul[name] = w
bitlinear = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
auto_offline = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
auto_online = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
cases = [
    ("bitlinear", packed_div, bitlinear, auto_offline),
    ("autobitlinear-offline", packed_mul, auto_offline, bitlinear),
    ("autobitlinear-online", master, auto_online, None),
]
failures = 0
for label, tensors, quant, other in cases:
    path = WORK / label
    write(path, base_config, tensors, quant)
    theirs = torch_logits(path)
    ours = hbit_logits(path)
    rel = float((ours - theirs).norm() / theirs.norm())
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).double().mean())
    verdict = rel <= 1e-2
    line = f"{label}: relative error {rel:.2e}, top-1 agreement {top1:.0%}"
    if other is not None:
        wrong = WORK / f"{label}-other-rule"
        write(wrong, base_config, tensors, other)
        off = float((hbit_logits(wrong) - theirs).norm() / theirs.norm())
        verdict &= off > 10 * max(rel, 1e-3)
        line += f"; read with the other class's rule: {off:.2e}"
    failures += not verdict
    print(f"{'ok  ' if verdict else 'FAIL'} {line}")
sys.exit(1 if failures else 0)
