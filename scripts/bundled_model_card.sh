#!/usr/bin/env bash
# Measures a packed model for its model card (models/README.md): WikiText-2 test bits per byte,
# the six zero-shot tasks, the training run's last validation loss, and five unedited samples
# from fixed prompts at fixed seeds. Writes everything under OUT_DIR.
#
#   scripts/bundled_model_card.sh MODEL.hbit RUN_DIR OUT_DIR   (from the repository root;
#                                                              needs ../shared/data)
set -euo pipefail

HBIT=${HBIT:-target/release/hbit}
MODEL=$1
RUN=$2
OUT=$3
DATA=../shared/data
FIXTURES=crates/hbit-eval/tests/fixtures
mkdir -p "$OUT"

lscpu | grep -E "^(Model name|CPU\(s\)|L3 cache)" > "$OUT/cpu.txt"
ls -l "$MODEL" | awk '{print $5}' > "$OUT/model-bytes.txt"

# WikiText-2 test: the whole file, rolling 256-token windows, f16 KV.
"$HBIT" eval ppl --model "$MODEL" --data "$DATA/wikitext2/wiki.test.raw" --json > "$OUT/wikitext2.json"

# The six tasks: ARC-Challenge/Easy, HellaSwag, PIQA from ../shared/data (first 1000 each);
# WinoGrande and LAMBADA from the bundled hand-written fixtures (no official copy is in shared/).
"$HBIT" eval tasks --model "$MODEL" --task all --data "$DATA" --data "$FIXTURES" --limit 1000 \
  --markdown "$OUT/tasks.md" --json > "$OUT/tasks.json"

# The training runs' logged validation (held-out 2% of the training text).
grep -h '"val_loss"' "$RUN/a8/metrics.jsonl" | tail -n 1 > "$OUT/val-a8.json"
grep -h '"val_loss"' "$RUN/a4/metrics.jsonl" | tail -n 1 > "$OUT/val-a4.json"

# Five samples: fixed prompts, seeds 1..5, the generate defaults (temperature 0.8, top-k 40,
# top-p 0.95), 64 tokens, unedited.
PROMPTS=(
  "The history of the city"
  "Once upon a time, there was a little girl who"
  "The President said that"
  "In the morning, the old man"
  "Scientists have discovered"
)
: > "$OUT/samples.md"
for i in "${!PROMPTS[@]}"; do
  seed=$((i + 1))
  {
    echo "**Prompt:** \`${PROMPTS[$i]}\` (seed $seed)"
    echo
    echo '```text'
    "$HBIT" generate --model "$MODEL" --prompt "${PROMPTS[$i]}" --max-tokens 64 --seed "$seed" --head-bits 16
    echo
    echo '```'
    echo
  } >> "$OUT/samples.md"
done
echo "wrote $OUT"
