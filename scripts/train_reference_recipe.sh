#!/usr/bin/env bash
# Issue 29 item 2: hbit on the recipe of the independent PyTorch implementation of DESIGN.md.
# 4 layers, hidden 256, FFN 1024, 4 heads, 4096-token BPE of pretrain/, seq 256, batch 16,
# 1400 steps (5.73 M tokens), warm-up 100, peak LR 1.5e-3 -> 1.0e-3 at the midpoint, weight
# decay 0.1 -> 0, seed $SEED (default 0); a8 for 1260 steps (0.9 of the tokens), then a4 with the optimizer state.
# Three models: BitNet v2 a4, BitNet v2 a8 (the same a8 run continued at a8), and BitNet v2 a4
# without the Hadamard (bitnet_v2_no_rotation). Each is scored on the first 200,000 characters of
# WikiText-2 test in bits per byte (non-overlapping 256-token windows).
# Every stage checkpoints every 50 steps; rerunning the same command resumes where it stopped.
#
#   [SEED=N] scripts/train_reference_recipe.sh [RUN_DIR]   (repository root; default
#                                                  runs/reference; needs ../shared/data)
set -euo pipefail

HBIT=${HBIT:-target/release/hbit}
RUN=${1:-runs/reference}
DATA=../shared/data/pretrain
WIKI=../shared/data/wikitext2/wiki.test.raw
STEPS=1400
A8_STEPS=1260
COMMON=(--data "$DATA" --cache-dir "$RUN/cache" --eval-every 200 --eval-sequences 64
  --checkpoint-every 50 --quiet)
SHAPE=(--preset tiny --layers 4 --intermediate-size 1024 --heads 4)

mkdir -p "$RUN"
if [ ! -f "$RUN/tokenizer.json" ]; then
  "$HBIT" tokenizer train --data "$DATA" --vocab-size 4096 --out "$RUN/tokenizer.json"
fi
if [ ! -f "$RUN/wiki200k.txt" ]; then
  head -c 200000 "$WIKI" > "$RUN/wiki200k.txt"
fi

# A checkpoint directory holds a run (complete or torn by a crash) when any of these exist.
started() { [ -f "$1/trainer_state.json" ] || [ -d "$1.old" ] || [ -d "$1.partial" ]; }
# The step a checkpoint reached.
step_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$1/trainer_state.json"; }

a8_stage() { # VARIANT DIR: from scratch to step A8_STEPS
  if started "$2"; then
    "$HBIT" train --resume --out "$2" --stop-after "$A8_STEPS" "${COMMON[@]}"
  else
    "$HBIT" train "${SHAPE[@]}" --variant "$1" --act-bits 8 --tokenizer "$RUN/tokenizer.json" \
      --steps "$STEPS" --stop-after "$A8_STEPS" --warmup 100 --lr1 1.5e-3 --lr2 1.0e-3 \
      --weight-decay 0.1 --batch-size 16 --seq-len 256 --seed "${SEED:-0}" --out "$2" "${COMMON[@]}"
  fi
}
continue_stage() { # SOURCE DIR ACT_BITS: from SOURCE's step A8_STEPS to the end of the schedule
  if started "$2"; then
    "$HBIT" train --resume --out "$2" "${COMMON[@]}"
  else
    "$HBIT" train --init-from "$1" --act-bits "$3" --out "$2" "${COMMON[@]}"
  fi
}
score() { # DIR
  if [ ! -f "$1/wiki200k.json" ]; then
    "$HBIT" eval ppl --model "$1" --data "$RUN/wiki200k.txt" --context 256 --stride 256 \
      --kv-bits 32 --json > "$1/wiki200k.json.tmp"
    mv "$1/wiki200k.json.tmp" "$1/wiki200k.json"
  fi
  echo "$1: $(cat "$1/wiki200k.json")"
}

for stage in v2 v2-a8 no-rotation; do
  case $stage in
    v2)
      a8_stage bitnet_v2 "$RUN/v2-a8-1260"
      [ "$(step_of "$RUN/v2-a8-1260")" = "$A8_STEPS" ] || exit 1
      continue_stage "$RUN/v2-a8-1260" "$RUN/v2-a4" 4
      score "$RUN/v2-a4" ;;
    v2-a8)
      continue_stage "$RUN/v2-a8-1260" "$RUN/v2-a8" 8
      score "$RUN/v2-a8" ;;
    no-rotation)
      a8_stage bitnet_v2_no_rotation "$RUN/norot-a8-1260"
      [ "$(step_of "$RUN/norot-a8-1260")" = "$A8_STEPS" ] || exit 1
      continue_stage "$RUN/norot-a8-1260" "$RUN/norot-a4" 4
      score "$RUN/norot-a4" ;;
  esac
done
