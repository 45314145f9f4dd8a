#!/usr/bin/env bash
# hbit's HF exports in PyTorch (torch, transformers, tokenizers from PyPI, in a venv):
#  1. transformers loads the bundled BitNet v2 a4 model's export with trust_remote_code and
#     its logits equal hbit's (scripts/hf_transformers_check.py);
#  2. every layout of transformers' BitNet integration, written by transformers' own model,
#     scores the same in hbit as in transformers (scripts/hf_bitnet_variants_check.py);
#  3. `torchrun --nproc-per-node 2` (gloo, CPU, DDP) trains the latent-weight export of a
#     micro checkpoint a8 -> a4 on pretrain/ text: the loss falls, both ranks end identical,
#     and hbit's logits of the trained model equal PyTorch's (scripts/torch_ddp_check.py).
# Usage: scripts/ci_torch_checks.sh [path/to/hbit] [data dir]
# HBIT_TORCH_VENV names a venv to reuse (created and filled when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
HBIT="$(realpath "${1:-./target/release/hbit}")"
DATA="${2:-../shared/data}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VENV="${HBIT_TORCH_VENV:-$WORK/venv}"

if [ ! -d "$DATA/pretrain/tiny_shakespeare" ]; then
  echo "missing $DATA/pretrain/tiny_shakespeare (the shared corpus)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c "import torch, transformers, tokenizers, accelerate" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers tokenizers accelerate
fi
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "-- transformers loads the bundled v2 a4 model's HF export"
"$HBIT" export --format hf --model models/hbit-tiny-v2-a4.hbit --out "$WORK/v2-a4"
"$VENV/bin/python" scripts/hf_transformers_check.py "$HBIT" "$WORK/v2-a4"

echo "-- transformers' BitNet layouts (bitlinear, autobitlinear offline / online) read by hbit"
"$VENV/bin/python" scripts/hf_bitnet_variants_check.py "$HBIT" "$WORK/variants"

echo "-- torchrun: DDP training of an exported micro BitNet v2 checkpoint, back into hbit"
"$HBIT" tokenizer train --data "$DATA/pretrain/tiny_shakespeare" --vocab-size 512 --out "$WORK/tok.json"
"$HBIT" init --preset micro --variant bitnet_v2 --vocab-size 512 --seed 3 --out "$WORK/ckpt"
cp "$WORK/tok.json" "$WORK/ckpt/tokenizer.json"
"$HBIT" export --format hf --model "$WORK/ckpt" --out "$WORK/export"
"$VENV/bin/torchrun" --nproc-per-node 2 scripts/torch_ddp_check.py \
  "$HBIT" "$WORK/export" "$DATA/pretrain/tiny_shakespeare" "$WORK/trained"
