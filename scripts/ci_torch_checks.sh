#!/usr/bin/env bash
# hbit's HF exports in PyTorch (torch, transformers, tokenizers from PyPI, in a venv):
#  1. transformers loads the bundled BitNet v2 a4 model's export with trust_remote_code and
#     its logits equal hbit's (scripts/hf_transformers_check.py);
#  2. hbit's own PyTorch model (python/hbit_bitnet) of every variant, packed and latent, scores
#     as hbit does;
#  3. every layout of transformers' BitNet integration, written by transformers' own model,
#     scores the same in hbit as in transformers (scripts/hf_bitnet_variants_check.py);
#  4. `torchrun --nproc-per-node 2` (gloo, CPU, DDP) trains the latent-weight export of a
#     micro checkpoint a8 -> a4 on pretrain/ text: the loss falls, both ranks end identical,
#     and hbit's logits of the trained model equal PyTorch's (scripts/torch_ddp_check.py).
# Usage: scripts/ci_torch_checks.sh [path/to/hbit] [data dir]
# HBIT_TORCH_VENV names a venv to reuse (created and filled when missing).
set -euo pipefail
# Arguments are relative to the caller's directory; the defaults to the repository root.
HBIT="$(realpath -m "${1:-$(dirname "$0")/../target/release/hbit}")"
DATA="$(realpath -m "${2:-$(dirname "$0")/../../shared/data}")"
cd "$(dirname "$0")/.."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VENV="${HBIT_TORCH_VENV:-$WORK/venv}"

if [ ! -d "$DATA/pretrain/tiny_shakespeare" ]; then
  echo "missing $DATA/pretrain/tiny_shakespeare (the shared corpus)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c "import torch, transformers, tokenizers, accelerate" 2>/dev/null; then
  python3 -m venv "$VENV"
  # The versions the checks were written and measured against (reports/interop.md).
  "$VENV/bin/pip" install -q --no-cache-dir torch==2.15.0 transformers==5.25.0 tokenizers==0.23.3 accelerate==1.16.0
fi
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "-- transformers loads the bundled v2 a4 model's HF export"
"$HBIT" export --format hf --model models/hbit-tiny-v2-a4.hbit --out "$WORK/v2-a4"
"$VENV/bin/python" scripts/hf_transformers_check.py "$HBIT" "$WORK/v2-a4"

echo "-- hbit's PyTorch model against hbit for every variant (micro: Paley-size FFN, GQA), packed and latent"
"$HBIT" tokenizer train --data "$DATA/pretrain/tiny_shakespeare" --vocab-size 512 --out "$WORK/tok.json"
VARIANT_EXPORTS=()
for spec in bitnet_v2:8 bitnet_v2:4 bitnet_a48:4 bitnet_v2_weight_rotation:4 bitnet_v2_no_rotation:4 bitnet_b158_quarot:4 bitnet_b158_spinquant:4 bitnet_b158:8; do
  variant="${spec%%:*}" bits="${spec##*:}"
  ckpt="$WORK/$variant-a$bits"
  "$HBIT" init --preset micro --variant "$variant" --act-bits "$bits" --vocab-size 512 --seed 7 --out "$ckpt" >/dev/null
  cp "$WORK/tok.json" "$ckpt/tokenizer.json"
  "$VENV/bin/python" scripts/perturb_norm_gains.py "$ckpt"
  "$HBIT" export --format hf --model "$ckpt" --out "$ckpt-latent" >/dev/null
  VARIANT_EXPORTS+=("$ckpt-latent")
  if [ "$spec" != "bitnet_b158:8" ]; then
    "$HBIT" export --format hf --packed --model "$ckpt" --out "$ckpt-packed" >/dev/null
    VARIANT_EXPORTS+=("$ckpt-packed")
  fi
done
"$VENV/bin/python" scripts/hf_transformers_check.py --random-weights "$HBIT" "${VARIANT_EXPORTS[@]}"

echo "-- transformers' BitNet layouts (bitlinear, autobitlinear offline / online) read by hbit"
"$VENV/bin/python" scripts/hf_bitnet_variants_check.py "$HBIT" "$WORK/variants"

echo "-- torchrun: DDP training of an exported micro BitNet v2 checkpoint, back into hbit"
"$HBIT" init --preset micro --variant bitnet_v2 --vocab-size 512 --seed 3 --out "$WORK/ckpt"
cp "$WORK/tok.json" "$WORK/ckpt/tokenizer.json"
"$HBIT" export --format hf --model "$WORK/ckpt" --out "$WORK/export"
"$VENV/bin/torchrun" --nproc-per-node 2 scripts/torch_ddp_check.py \
  "$HBIT" "$WORK/export" "$DATA/pretrain/tiny_shakespeare" "$WORK/trained"
