#!/usr/bin/env bash
# Trains the English model meant for models/ (20.48 M tokens of ../shared/data) with the
# paper's BitNet v2 recipe: a8 from scratch for 90% of the tokens, then a4 reusing the optimizer
# state. Every stage checkpoints; rerunning the same command resumes where it stopped.
#
#   scripts/train_bundled_model.sh [RUN_DIR]    (from the repository root; default runs/bundled;
#                                                needs ../shared/data)
set -euo pipefail

HBIT=${HBIT:-target/release/hbit}
RUN=${1:-runs/bundled}
DATA=(../shared/data/pretrain ../shared/data/pretrain-large)
STEPS=5000        # × 16 sequences × 256 tokens = 20.48 M tokens
A8_STEPS=4500     # a8 for 0.9 of the tokens, then a4
COMMON=(--data "${DATA[@]}" --cache-dir "$RUN/cache" --eval-every 250 --eval-sequences 64
  --checkpoint-every 100 --quiet)

mkdir -p "$RUN"
if [ ! -f "$RUN/tokenizer.json" ]; then
  "$HBIT" tokenizer train --data "${DATA[@]}" --vocab-size 8192 --out "$RUN/tokenizer.json"
fi

if [ -f "$RUN/a8/trainer_state.json" ] || [ -d "$RUN/a8.old" ] || [ -d "$RUN/a8.partial" ]; then
  "$HBIT" train --resume --out "$RUN/a8" --stop-after "$A8_STEPS" "${COMMON[@]}"
else
  "$HBIT" train --preset tiny --variant bitnet_v2 --act-bits 8 --tokenizer "$RUN/tokenizer.json" \
    --steps "$STEPS" --stop-after "$A8_STEPS" --warmup 200 --lr1 1.5e-3 --lr2 1.0e-3 \
    --batch-size 16 --seq-len 256 --seed 0 --out "$RUN/a8" "${COMMON[@]}"
fi

if [ -f "$RUN/a4/trainer_state.json" ] || [ -d "$RUN/a4.old" ] || [ -d "$RUN/a4.partial" ]; then
  "$HBIT" train --resume --out "$RUN/a4" "${COMMON[@]}"
else
  "$HBIT" train --init-from "$RUN/a8" --act-bits 4 --out "$RUN/a4" "${COMMON[@]}"
fi

"$HBIT" pack --model "$RUN/a4" --out "$RUN/hbit-small-v2-a4.hbit"
